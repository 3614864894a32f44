"""Is this code slower than another revision at the same training run? A ratio, in one run.

    .venv/bin/python benchmarks/code_cost.py --base db8df95 [--head HEAD] [--rounds 3] [--steps 60]
        [--config configs/demo.yaml] [--json] [key=value ...]

Checks out ``--base`` and ``--head`` (git revisions) into temporary worktrees and runs the same
``ov3 train --config CONFIG train.steps=N`` from each one's own ``src/`` and config file, in
alternating rounds (ABBA order, so neither revision always runs on a warmer or cooler machine).
Per run it reads two figures:

  wall   the whole command, start-up, data and model set-up included (what a user waits for),
  step   the seconds per step of the steady state: the metrics rows after the first (so no
         start-up or first-step warm-up), from each row's ``samples_per_s`` and the batch size.

and prints, per figure, head / base as the median of the per-round ratios with their range. A
revision's run directory and output are kept in a temporary directory and removed at the end.
Timings want a quiet machine: nothing else running. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev],
                   check=True, capture_output=True)
    return where


def tree_env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "TQDM_DISABLE": "1"}


def batch_size(tree: Path, config: str, overrides: list[str]) -> int:
    """The run's batch size as ``tree``'s own config code reads it (to turn samples/s into s/step)."""
    code = ("import json, sys; from openvision3.config import get_config; "
            "print(json.dumps(get_config(sys.argv[1], sys.argv[2:]).train.batch_size))")
    out = subprocess.run([sys.executable, "-c", code, str(tree / config), *overrides], cwd=tree, env=tree_env(tree),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run_once(tree: Path, out: Path, config: str, steps: int, batch: int, overrides: list[str]) -> dict:
    """One ``ov3 train`` from ``tree``'s own sources; its wall seconds and steady-state s/step."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "openvision3.cli", "train", "--config", str(tree / config), "--out", str(out),
            f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.log_every=10", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: ov3 train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "samples_per_s" in r]
    steady = rows[1:]  # the first row holds start-up and the first steps' warm-up
    seconds = sum((r["step"] - p["step"]) * batch / r["samples_per_s"] for p, r in zip(rows, steady))
    return {"wall": wall, "step": seconds / (steady[-1]["step"] - rows[0]["step"]) if steady else float("nan"),
            "final_loss": rows[-1].get("loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the reference revision, e.g. a commit before a change")
    ap.add_argument("--head", default="HEAD", help="the revision measured against it")
    ap.add_argument("--config", default="configs/demo.yaml", help="a config path inside each revision")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ov3_code_cost_"))
    trees = {}
    try:
        trees = {name: checkout(rev, tmp / name) for name, rev in (("base", args.base), ("head", args.head))}
        batches = {name: batch_size(tree, args.config, args.overrides) for name, tree in trees.items()}
        runs = {"base": [], "head": []}
        for r in range(args.rounds):
            for name in (("base", "head") if r % 2 == 0 else ("head", "base")):
                res = run_once(trees[name], tmp / f"run_{name}", args.config, args.steps, batches[name],
                               args.overrides)
                runs[name].append(res)
                print(f"round {r + 1} {name}: {res['wall']:.1f} s wall, {res['step']:.3f} s/step, "
                      f"final loss {res['final_loss']:.4f}", flush=True)
        ratios = {k: [h[k] / b[k] for h, b in zip(runs["head"], runs["base"])] for k in ("wall", "step")}
        result = {"base": args.base, "head": args.head, "config": args.config, "steps": args.steps,
                  "rounds": args.rounds, "runs": runs,
                  "ratio": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                            for k, v in ratios.items()}}
        for k, v in result["ratio"].items():
            print(f"{k}: head / base = {v['median']:.3f} (rounds {v['min']:.3f} to {v['max']:.3f})")
        if args.json:
            print(json.dumps(result))
    finally:
        for where in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
