"""Shared pieces of the step-time benchmarks: the demo VAE's shape, alternating timing rounds and
the printed table."""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# An untrained inline VAE of the demo VAE's shape (configs/vae_demo.yaml): weights do not change the cost.
DEMO_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[32,64]", "model.vae.latent_channels=16",
            "model.vae.norm_num_groups=16", "model.vae.layers_per_block=1"]


def step_benchmark_args() -> argparse.Namespace:
    """The options every step-time benchmark takes: --config, --rounds, --steps-per-round, --json, overrides."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="demo")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    return ap.parse_args()


def device_and_setup() -> torch.device:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    return device


def median_step_seconds(steps: dict, rounds: int, steps_per_round: int, device: torch.device):
    """Time each ``steps[name]()`` in alternating rounds, so every variant sees the same machine
    state; returns ({name: median s/step}, {name: [s/step per round]})."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in steps.values():  # warm-up: allocator, kernel selection
        fn()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            sync()
            times[k].append((time.perf_counter() - t0) / steps_per_round)
    return {k: statistics.median(v) for k, v in times.items()}, times


def print_step_table(args, device: torch.device, med: dict, times: dict, label: str, ratio: tuple[str, str],
                     setting: str = "", extra_cols: dict | None = None, extra_json: dict | None = None):
    """The Markdown table of median s/step per variant, the ``ratio[0] / ratio[1]`` time ratio and,
    with --json, the same as one JSON line. ``extra_cols``: {column: {variant: value}}."""
    extra_cols = extra_cols or {}
    print(f"{args.config} on {device.type} ({torch.get_num_threads()} threads), {setting}"
          f"median of {args.rounds} rounds x {args.steps_per_round} steps")
    cols = [label, *extra_cols, "s/step"]
    print("| " + " | ".join(cols) + " |\n|---|" + "---:|" * (len(cols) - 1))
    for k in med:
        print("| " + " | ".join([k, *(f"{v[k]:,}" for v in extra_cols.values()), f"{med[k]:.3f}"]) + " |")
    num, den = ratio
    print(f"{num} / {den} time: {med[num] / med[den]:.2f}")
    if args.json:
        print(json.dumps({"device": device.type, "s_per_step": med, "rounds": times, **(extra_json or {}),
                          f"ratio_{num}_over_{den}": med[num] / med[den]}))
