"""Train-step time of the demo with open_clip's BPE (49,408 ids) against its closed word list
(model.tokenizer=words, 17 words + 4 special ids).

    .venv/bin/python benchmarks/tokenizer_vocab.py [--config demo] [--rounds 6] [--json] [key=value ...]

Builds both models with an untrained inline VAE of the demo VAE's shape, times full training
steps (forward, backward, gradient clipping, AdamW) on one fixed `shapes` batch, alternating the
two in rounds; reports the median seconds per step and their ratio. The vocabulary sets the size
of the caption softmax and of both text towers' embedding tables. Not part of the test run.

(Not named tokenizers.py: run as a script, benchmarks/ comes first on sys.path, and that name
would shadow the `tokenizers` package that transformers and diffusers import.)
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
from openvision3.train.optim import build_optimizer
from openvision3.train.precision import resolve_precision
from openvision3.train.trainer import forward_backward

VARIANTS = {"bpe": ["model.tokenizer=bpe"], "words": ["model.tokenizer=words"]}


def main():
    args = step_benchmark_args()
    device = device_and_setup()
    base = get_config(args.config, DEMO_VAE + args.overrides)  # the variants differ only in the tokenizer
    ds = open_data(base.data.train, split="train", resolution=base.data.resolution, train=True, cfg=base.data, seed=0)
    batch = next(iter(make_loader(ds, base.train.batch_size)))
    images = batch["image"].to(device)
    steps, sizes = {}, {}
    for name, extra in VARIANTS.items():
        cfg = get_config(args.config, DEMO_VAE + args.overrides + extra)
        torch.manual_seed(0)
        model = OpenVision3(cfg).to(device).train()
        opt = build_optimizer(model, cfg.train, 1e-4, device)
        amp = resolve_precision(cfg.train.precision, device)
        tokens = model.tokenizer(batch["caption"]).to(device)
        params = model.trainable_parameters()
        sizes[name] = model.tokenizer.vocab_size

        def step(model=model, opt=opt, params=params, images=images, tokens=tokens, amp=amp, t=cfg.train):
            forward_backward(model, images, tokens, 0.0, 1, amp, t.attention_kernel)
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[name] = step

    med, times = median_step_seconds(steps, args.rounds, args.steps_per_round, device)
    print_step_table(args, device, med, times, "tokenizer", ("words", "bpe"),
                     extra_cols={"vocabulary": sizes}, extra_json={"vocab_size": sizes})


if __name__ == "__main__":
    main()
