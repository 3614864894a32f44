"""`ov3` command line: thin wrappers that parse arguments and call library functions.

Every subcommand exits non-zero with one clear line on bad input (no stack trace);
with --json the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def print_json(obj) -> None:
    print(json.dumps(obj, default=str))


# --- ov3 info -------------------------------------------------------------------------------
def _add_info(sub):
    p = sub.add_parser("info", help="parameter counts per part and token grids")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="model size preset (nano, tiny, small, b2, l2)")
    g.add_argument("--model", default=None, help="a saved model directory")
    p.add_argument("--config", default=None, help="a config name or YAML")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_run_info)


def _run_info(args):
    from .models.info import model_info, format_info
    info = model_info(preset=args.preset, model_dir=args.model, config=args.config,
                      overrides=args.overrides)
    print(format_info(info))
    if args.json:
        print_json(info)


# --- ov3 data (data/ owner) ------------------------------------------------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="inspect, pack and cache data sets")
    p.set_defaults(func=lambda a: p.print_help())


# --- ov3 train / train-vae (train/ owner) ----------------------------------------------------
def _add_train(sub):
    pass


# --- ov3 eval / reconstruct / caption / encode / demo (eval/ owner) ---------------------------
def _add_eval(sub):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ov3", description="OpenVision 3: train, evaluate and use "
                                     "unified visual encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_data, _add_train, _add_eval):
        add(sub)
    return parser


def main(argv=None) -> int:
    from .config import ConfigError
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"ov3 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ov3 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
