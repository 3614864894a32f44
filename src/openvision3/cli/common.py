"""Shared pieces of the `ov3` subcommands: the bad-input error, the one-line parser, JSON output and
the model/argument helpers several subcommand groups use."""
from __future__ import annotations

import argparse
import json


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2 (as the library's own bad-input
    errors, cli/__init__.py _USER_ERRORS)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other bad input (exit code 2); the
    usage text is one ``--help`` away. Subcommand parsers inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def json_command(p, run) -> None:
    """The end of a subcommand's arguments: ``--json`` (``run`` prints its results with print_json) and
    ``run(args)``, what the subcommand does."""
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.set_defaults(func=run)


def print_json(args, obj) -> None:
    """With --json: ``obj`` as one JSON object, the last line on stdout."""
    if args.json:
        print(json.dumps(obj, default=str))


# --- argument and model helpers (eval/, data/, gen, tools) -------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _add_model_args(p, images: bool = False):
    p.add_argument("--model", required=True, help="a saved model directory (OUT/model) or a hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="pixels (short side resized, then centre crop; default: the model's image size)")
    p.add_argument("--batch-size", type=_positive_int, default=16 if images else 64)
    if images:
        p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def _load_model(path: str, device: str | None):
    """OpenVision3.from_pretrained + .to(device).eval(); any failure is one line for the user."""
    import torch
    from safetensors import SafetensorError

    from ..models.openvision3 import OpenVision3
    try:
        model = OpenVision3.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as e:  # missing files, shape/key mismatch, bad file
        raise UserError(str(e) if isinstance(e, FileNotFoundError) else f"cannot load model '{path}': {e}") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(dev)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"cannot use device '{dev}': {str(e).splitlines()[0]}") from None
    return model.eval()


def command_group(sub, name: str, help: str):
    """A subcommand that only groups others (`ov3 data ...`): bare, it prints its help."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=lambda a: p.print_help())
    return p.add_subparsers(dest=f"{name}_command")
