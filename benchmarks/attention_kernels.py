"""Train-step time with torch's own SDPA kernel choice against the math kernel (train.attention_kernel).

    .venv/bin/python benchmarks/attention_kernels.py [--config demo] [--rounds 6] [--json] [key=value ...]

Builds the config's model with an untrained inline VAE of the demo VAE's shape (the weights do
not change the cost), then times full training steps (forward, backward, AdamW) on one fixed
`shapes` batch, alternating the two kernel choices in rounds so that both see the same machine
state; reports the median seconds per step of each and their ratio. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from openvision3.config import get_config
from openvision3.data import make_loader, open_data
from openvision3.models.openvision3 import OpenVision3
from openvision3.train.trainer import forward_context, resolve_precision

DEMO_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[32,64]", "model.vae.latent_channels=16",
            "model.vae.norm_num_groups=16", "model.vae.layers_per_block=1"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="demo")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    cfg = get_config(args.config, DEMO_VAE + args.overrides)
    torch.manual_seed(0)
    model = OpenVision3(cfg).to(device).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    amp = resolve_precision(cfg.train.precision, device)
    ds = open_data(cfg.data.train, split="train", resolution=cfg.data.resolution, train=True, cfg=cfg.data, seed=0)
    batch = next(iter(make_loader(ds, cfg.train.batch_size)))
    images, tokens = batch["image"].to(device), model.tokenizer(batch["caption"]).to(device)

    def step(kernel: str):
        with forward_context(device, amp, kernel):
            loss = model(images, tokens)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    kernels = ("default", "math")
    for k in kernels:  # warm-up: allocator, kernel selection
        step(k)
    times = {k: [] for k in kernels}
    for _ in range(args.rounds):
        for k in kernels:
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                step(k)
            sync()
            times[k].append((time.perf_counter() - t0) / args.steps_per_round)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.config} on {device.type} ({torch.get_num_threads()} threads), batch {cfg.train.batch_size}, "
          f"{'bf16' if amp else 'fp32'} autocast, median of {args.rounds} rounds x {args.steps_per_round} steps")
    print("| attention kernel | s/step |\n|---|---:|")
    for k in kernels:
        print(f"| {k} | {med[k]:.3f} |")
    print(f"math / default time: {med['math'] / med['default']:.2f}")
    if args.json:
        print(json.dumps({"device": device.type, "s_per_step": med, "rounds": times,
                          "ratio_math_over_default": med["math"] / med["default"]}))


if __name__ == "__main__":
    main()
