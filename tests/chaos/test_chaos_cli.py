"""Bad input everywhere: every `ov3` subcommand, read from the parser, with no arguments, an unknown
flag, a bad number, missing paths, and (where it takes key=value overrides) an unknown key, a
wrong type and an out-of-range value: exit code 2 and one line, never a traceback.

Cases come from the parser itself, so a subcommand added later is covered by the generic rows
the day it lands; OVERRIDE_CASES adds the config-specific rows for the commands that take
overrides on a config this suite can name.
"""
import argparse

import pytest
from .faults import TINY

from openvision3 import cli

MISSING = "/nonexistent/ov3-chaos"


def leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for a in subs:
        for name, sp in a.choices.items():
            yield from leaves(sp, path + (name,))


LEAVES = dict(leaves(cli.build_parser()))
NUMERIC = {int, float}


def _is_numeric(action) -> bool:
    return action.type in NUMERIC or getattr(action.type, "__name__", "") in ("_positive_int", "_positive_float")


def _filled(parser, value_for):
    """argv supplying every required option and positional, from value_for(action)."""
    argv = []
    for a in parser._actions:
        if a.dest == "help" or not a.required or a.dest == "overrides":
            continue
        v = value_for(a)
        argv += ([a.option_strings[0], v] if a.option_strings else [v])
    return argv


def _missing_value(a):
    if _is_numeric(a):
        return "32"
    if a.choices:
        return next(iter(a.choices))
    if a.dest in ("spec", "data"):
        return f"folder:{MISSING}"
    return f"{MISSING}/{a.dest}"


def generic_cases():
    for path, p in LEAVES.items():
        name = " ".join(path)
        yield name, [*path, "--no-such-flag"]
        if any(a.required and a.dest != "overrides" for a in p._actions):
            yield name + ": nothing", list(path)
            yield name + ": missing paths", [*path, *_filled(p, _missing_value)]
        for a in p._actions:
            if a.option_strings and _is_numeric(a) and not a.required:
                yield f"{name}: {a.option_strings[0]} not a number", [*path, *_filled(p, _missing_value),
                                                                     a.option_strings[0], "lots"]


VAE_YAML = "{tmp}/vae.yaml"
# command: (valid arguments, [(case, overrides)])
OVERRIDE_CASES = {
    "train": (["--config", TINY, "--out", "{tmp}/run"],
              [("unknown key", ["train.no_such_key=1"]), ("wrong type", ["train.steps=many"]),
               ("out of range", ["train.steps=-3"]), ("out of range", ["train.batch_size=0"]),
               ("out of range", ["data.resolution=0"]), ("out of range", ["train.lr=-1"]),
               ("out of range", ["train.grad_accum_steps=0"]), ("wrong type", ["train.stages=7"]),
               ("missing path", [f"data.train=folder:{MISSING}"]), ("not key=value", ["steps"])]),
    "train-vae": (["--config", VAE_YAML, "--out", "{tmp}/vae"],
                  [("unknown key", ["no_such_key=1"]), ("wrong type", ["steps=many"]),
                   ("out of range", ["steps=-3"]), ("out of range", ["batch_size=0"]),
                   ("out of range", ["data.resolution=0"]), ("missing path", [f"data.train=folder:{MISSING}"])]),
    "info": ([], [("unknown key", ["model.no_such_key=1"]), ("wrong type", ["model.encoder.width=wide"]),
                  ("out of range", ["model.encoder.width=0"]), ("out of range", ["model.preset=huge"])]),
}


def override_cases():
    for name, (base, rows) in OVERRIDE_CASES.items():
        if tuple(name.split()) not in LEAVES:
            continue
        for case, over in rows:
            yield f"{name}: {case} {over[0]}", [*name.split(), *base, *over]


CASES = list(generic_cases()) + list(override_cases())


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_and_one_line(argv, tmp_path, capsys):
    (tmp_path / "vae.yaml").write_text("data: {train: shapes, val: shapes}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = cli.main(argv)  # an exception escaping here is the traceback a user would see
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln
           and "Warning" not in ln and not ln.startswith("  ")]
    assert rc == 2, (argv, err)
    assert len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0], (argv, err)


def test_every_subcommand_is_covered():
    covered = {tuple(c[1][: len(p)]) for c in CASES for p in LEAVES if tuple(c[1][: len(p)]) == p}
    assert covered == set(LEAVES)
    assert {"train", "train-vae", "eval", "data inspect"} <= {" ".join(p) for p in LEAVES}
