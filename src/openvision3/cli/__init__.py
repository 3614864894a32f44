"""`ov3` command line: thin wrappers that parse arguments and call library functions.

Every subcommand exits non-zero with one clear line on bad input (no stack trace);
with --json the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import sys

# The subcommand groups live in one module each. Nothing here imports torch & co.: the heavy
# libraries load inside the _run_* functions.
from .common import OneLineParser, Stopped, UserError
from .data import _add_data, _add_info
from .evaluate import _add_eval
from .gen import _add_gen
from .serve import _add_serve
from .tools import _add_ablate, _add_bench, _add_demo, _add_export, _add_probe, _add_push
from .train import _add_train


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ov3", description="OpenVision 3: train, evaluate and use "
                           "unified visual encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_data, _add_train, _add_eval, _add_gen, _add_demo, _add_bench, _add_ablate,
                _add_export, _add_push, _add_probe, _add_serve):
        add(sub)
    return parser


def _user_error_types() -> tuple[type, ...]:
    """The exception types that mean bad input. Looked up in sys.modules, not imported: a module
    that was never imported cannot have raised its error, and importing ``openvision3.data`` would
    pull torch and open_clip into ``ov3 --help`` (seconds instead of milliseconds)."""
    found = [UserError, FileNotFoundError]
    for module, name in (("openvision3.config", "ConfigError"), ("openvision3.data.errors", "DataSpecError"),
                         ("openvision3.train.run_lock", "RunLockError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line, code 2) or --help (code 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except Stopped as e:
        print(f"ov3 {args.command}: stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except Exception as e:
        run_stopped = getattr(sys.modules.get("openvision3.train.run"), "RunStopped", None)
        if run_stopped is not None and isinstance(e, run_stopped):  # a run a command needed (e.g. the judge)
            print(f"ov3 {args.command}: stopped: {' '.join(str(e).split())}", file=sys.stderr)
            return 3
        if isinstance(e, _user_error_types()):
            what = str(e)
        elif isinstance(e, OSError):  # the machine said no (permissions, a path through a file, a full disk)
            what = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else (str(e) or type(e).__name__)
        else:
            raise
        print(f"ov3 {args.command}: error: {' '.join(what.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ov3 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
