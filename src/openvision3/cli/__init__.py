"""`ov3` command line: thin wrappers that parse arguments and call library functions.

Every subcommand exits non-zero with one clear line on bad input (no stack trace);
with --json the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import sys

# The subcommand groups live in one module each. Nothing here imports torch & co.: the heavy
# libraries load inside the _run_* functions.
from .common import OneLineParser, UserError
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


# The library's errors that mean bad input (one line, exit 2), by defining module; with UserError and
# FileNotFoundError. The subcommands let them through rather than each catching its own few.
_USER_ERRORS = (("openvision3.config_build", "ConfigError"), ("openvision3.data.errors", "DataSpecError"),
               ("openvision3.train.run_lock", "RunLockError"), ("openvision3.train.checkpoint", "CheckpointError"),
               ("openvision3.train.run", "TrainError"), ("openvision3.eval.common", "EvalError"),
               ("openvision3.generation.generator", "GeneratorError"),
               ("openvision3.generation.token_cache", "CacheError"), ("openvision3.bench.options", "BenchError"),
               ("openvision3.app.parts", "ServeError"), ("openvision3.recipes.demo", "DemoRefused"),
               ("openvision3.recipes.llava_probe", "ProbeError"))


def _loaded(table) -> tuple[type, ...]:
    """The classes of ``table`` whose modules are loaded. Looked up in sys.modules, not imported: a
    module that was never imported cannot have raised its error, and importing ``openvision3.data``
    would pull torch and open_clip into ``ov3 --help`` (seconds instead of milliseconds)."""
    return tuple(getattr(sys.modules[module], name) for module, name in table if module in sys.modules)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line, code 2) or --help (code 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except Exception as e:
        # a run stopped before its end (ours, or one a command needed, e.g. the judge): the same command resumes it
        if isinstance(e, _loaded([("openvision3.train.run", "RunStopped")])):
            print(f"ov3 {args.command}: stopped: {' '.join(str(e).split())}", file=sys.stderr)
            return 3
        if isinstance(e, (UserError, FileNotFoundError, *_loaded(_USER_ERRORS))):
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
