"""Train-step time with torch's own SDPA kernel choice against the math kernel (train.attention_kernel).

    .venv/bin/python benchmarks/attention_kernels.py [--config demo] [--rounds 6] [--json] [key=value ...]

Builds the config's model with an untrained inline VAE of the demo VAE's shape (the weights do
not change the cost), then times full training steps (forward, backward, AdamW) on one fixed
`shapes` batch, alternating the two kernel choices in rounds so that both see the same machine
state; reports the median seconds per step of each and their ratio. Not part of the test run.
"""
from __future__ import annotations

import torch
from common import (
    DEMO_VAE,
    device_and_setup,
    median_step_seconds,
    print_step_table,
    step_benchmark_args,
)

from openvision3.config import get_config
from openvision3.data import make_loader, open_data
from openvision3.models.openvision3 import OpenVision3
from openvision3.train.precision import resolve_precision
from openvision3.train.run import forward_context


def main():
    args = step_benchmark_args()
    device = device_and_setup()
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

    kernels = ("default", "math")
    med, times = median_step_seconds({k: (lambda k=k: step(k)) for k in kernels}, args.rounds,
                                     args.steps_per_round, device)
    print_step_table(args, device, med, times, "attention kernel", ("math", "default"),
                     setting=f"batch {cfg.train.batch_size}, {'bf16' if amp else 'fp32'} autocast, ")


if __name__ == "__main__":
    main()
