"""What `make demo` costs on this machine, against the de38a3d recipe, as a ratio in one run.

    .venv/bin/python benchmarks/demo_cost.py [--rounds 4] [--steps-per-round 2] [--precision fp32] [--json] [key=value ...]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/demo_cost.py   # an AVX2-only CPU

Times, in alternating rounds (so every recipe sees the same machine state):
  * a training step of the de38a3d demo VAE (benchmarks/configs/vae_demo_de38a3d.yaml; the old demo
    trained it for 500 steps in phase 1; the new demo loads the shipped VAE instead),
  * a training step of the de38a3d OpenVision 3 recipe (benchmarks/configs/demo_de38a3d.yaml),
  * a training step of each stage of the current recipe (configs/demo.yaml; its stages differ in
    resolution, so in cost),
each step with its real data loading (the `shapes` loader), forward, backward, clipping and AdamW.
The held-out evaluation (500 images per task) is timed once per recipe. Then

    cost = VAE steps x VAE step + sum over stages of steps x step + evaluation      (per recipe)

A recipe that repeats a small set with its memos on (`data.shapes.memo`, `train.latent_memo`)
renders and encodes a sample only the first time it comes. Its step is then timed twice: on
samples seen for the first time ("new": rendered and encoded) and on samples seen before ("seen":
read from the memos, a set of one batch shown again), and

    step = seen step + (distinct samples / samples drawn) x (new step - seen step)

with the distinct samples counted from the run's own data stream (rendering and VAE encode cost
the same for every sample, so a batch of mixed samples costs in proportion).

and the ratio new / old. Weights do not change the cost, so the VAEs are untrained inline
copies of the demo VAE's shape. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from openvision3.config import get_config
from openvision3.data import make_loader, open_data
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.vae import build_autoencoder
from openvision3.train.optim import build_optimizer
from openvision3.train.precision import choose_precision
from openvision3.train.latent_memo import LatentMemo
from openvision3.train.trainer import forward_backward
from openvision3.train.vae_config import get_vae_config

HERE = Path(__file__).resolve().parent
OLD_VAE, OLD_OV3 = HERE / "configs" / "vae_demo_de38a3d.yaml", HERE / "configs" / "demo_de38a3d.yaml"
OLD_VAE_STEPS = 500  # the old demo's VAE phase, uncapped (issue 22)
INLINE_DEMO_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[32,64]",
                   "model.vae.latent_channels=16", "model.vae.norm_num_groups=16", "model.vae.layers_per_block=1"]


def vae_step_fn(precision: str):
    cfg = get_vae_config(str(OLD_VAE), [])
    dtype = choose_precision(precision, torch.device("cpu")).dtype
    vae = build_autoencoder(cfg.arch).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    ds = open_data(cfg.data.train, split="train", resolution=cfg.data.resolution, train=True, cfg=cfg.data, seed=0)
    batches = iter(make_loader(ds, cfg.batch_size))

    def step():
        x = next(batches)["image"]
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            post = vae.encode(x).latent_dist
            y = vae.decode(post.sample()).sample
        y = y.float()
        loss = cfg.l1_weight * (y - x).abs().mean() + cfg.mse_weight * ((y - x) ** 2).mean() \
            + cfg.kl_weight * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
    return step, cfg.steps


def ov3_step_fns(config: str, precision: str, overrides=()):
    """One training-step function per stage of ``config`` (stages differ in resolution and batch),
    the stages, and the model (for the evaluation timing)."""
    from openvision3.train.trainer import build_stages
    cfg = get_config(config, INLINE_DEMO_VAE + [f"train.precision={precision}", *overrides])
    torch.manual_seed(0)
    model = OpenVision3(cfg).train()
    opt = build_optimizer(model, cfg.train, cfg.train.lr, torch.device("cpu"))
    amp = choose_precision(precision, torch.device("cpu")).dtype
    params = [p for p in model.parameters() if p.requires_grad]
    stages = build_stages(cfg)
    memo = LatentMemo(model.vae.encode, cfg.train.latent_memo) if cfg.train.latent_memo else None

    def stream(spec, stage):
        ds = open_data(spec, split="train", resolution=stage.resolution, train=True, cfg=cfg.data, seed=0)
        return iter(make_loader(ds, stage.batch_size))

    def step_fn(batches, resolution):
        def step():
            model.cfg.model.image_size = resolution  # as the trainer does at a stage switch
            batch = next(batches)
            latents = memo(batch["image"]) if memo is not None else None  # as the trainer does
            tokens = model.tokenizer(batch["caption"])
            forward_backward(model, batch["image"], tokens, cfg.loss.lpips_weight, 1, amp,
                             cfg.train.attention_kernel, latents=latents)
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    fns = []
    for stage in stages:
        fns.append({"": step_fn(stream(cfg.data.train, stage), stage.resolution)})
        if memo is not None or cfg.data.shapes.memo:  # the same step on samples seen before
            if not cfg.data.train.startswith("shapes"):
                raise SystemExit("demo_cost: memo timing needs a shapes recipe")
            fns[-1] = {" new": fns[-1][""],
                       " seen": step_fn(stream(f"shapes?n={stage.batch_size}", stage), stage.resolution)}
    model.cfg.model.image_size = stages[-1].resolution
    return fns, stages, model, cfg


def distinct_fraction(cfg, samples: int) -> float:
    """Distinct (sample, curriculum phase) pairs among the first ``samples`` the run draws, over
    ``samples``: the share of samples a memo has not seen before."""
    from openvision3.data import open_source
    src = open_source(cfg.data.train, "train", cfg.data)
    seen, drawn, epoch = set(), 0, 0
    while drawn < samples:
        for raw in src.raw_stream(epoch, True, cfg.seed, 0, 1, 0, 1):
            index, phase = raw if isinstance(raw, tuple) else (raw, None)
            seen.add((index, None if phase is None else (phase["single_fraction"], phase["single_sizes"])))
            drawn += 1
            if drawn == samples:
                break
        epoch += 1
    return len(seen) / samples


def eval_seconds(model, num_samples: int) -> float:
    from openvision3.eval import evaluate
    model.eval()
    t0 = time.perf_counter()
    evaluate(model, f"shapes?captions={model.cfg.data.shapes.captions}", tasks=("recon", "zeroshot", "retrieval",
             "caption"), num_samples=num_samples, progress=False, write_files=False)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps-per-round", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="fp32 (the issue's comparison) or auto")
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help="key=value changes to the new recipe (configs/demo.yaml), "
                    "to cost a candidate before it ships, e.g. model.patch_size=4 train.steps=400")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    vae_step, _ = vae_step_fn(args.precision)
    old_fns, (old_stage,), old_model, _ = ov3_step_fns(str(OLD_OV3), args.precision)
    old_step = old_fns[0][""]
    new_fns, new_stages, new_model, new_cfg = ov3_step_fns("demo", args.precision, args.overrides)
    fns = {"vae": vae_step, "old": old_step,
           **{f"new {st.name} ({st.resolution} px){flavour}": fn
              for st, flavours in zip(new_stages, new_fns) for flavour, fn in flavours.items()}}
    for fn in fns.values():  # warm-up (and it fills the "seen" flavours' memos)
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                fn()
            times[k].append((time.perf_counter() - t0) / args.steps_per_round)
    med = {k: statistics.median(v) for k, v in times.items()}
    ev = {"old": eval_seconds(old_model, args.num_samples), "new": eval_seconds(new_model, args.num_samples)}
    new_parts = []
    for st, flavours in zip(new_stages, new_fns):
        name = f"new {st.name} ({st.resolution} px)"
        if "" in flavours:
            new_parts.append((name, med[name], st.steps))
        else:  # memos on: seen step + share of new samples x (new - seen)
            frac = distinct_fraction(new_cfg, new_stages[-1].end * st.batch_size)
            t_new, t_seen = med[name + " new"], med[name + " seen"]
            print(f"{name}: {frac:.3f} of the samples are new; s/step new {t_new:.3f}, seen {t_seen:.3f}")
            new_parts.append((name, t_seen + frac * (t_new - t_seen), st.steps))
    cost_old = OLD_VAE_STEPS * med["vae"] + old_stage.steps * med["old"] + ev["old"]
    cost_new = sum(t * n for _, t, n in new_parts) + ev["new"]
    print(f"cpu kernels {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{args.precision}; median of {args.rounds} rounds x {args.steps_per_round} steps")
    print("| part | s/step | steps | seconds |\n|---|---:|---:|---:|")
    print(f"| de38a3d VAE (phase 1) | {med['vae']:.3f} | {OLD_VAE_STEPS} | {OLD_VAE_STEPS * med['vae']:.0f} |")
    print(f"| de38a3d OpenVision 3 | {med['old']:.3f} | {old_stage.steps} | {old_stage.steps * med['old']:.0f} |")
    print(f"| de38a3d evaluation | | | {ev['old']:.0f} |")
    print(f"| **de38a3d total** | | | **{cost_old:.0f}** |")
    print("| new: shipped VAE | | 0 | 0 |")
    for k, t, n in new_parts:
        print(f"| {k} | {t:.3f} | {n} | {t * n:.0f} |")
    print(f"| new evaluation | | | {ev['new']:.0f} |")
    print(f"| **new total** | | | **{cost_new:.0f}** |")
    print(f"new / de38a3d cost: {cost_new / cost_old:.3f}")
    if args.json:
        print(json.dumps({"s_per_step": med, "rounds": times, "eval_s": ev,
                          "steps": {"old": old_stage.steps, "old_vae": OLD_VAE_STEPS,
                                    **{k: n for k, _, n in new_parts}},
                          "cost_old_s": cost_old, "cost_new_s": cost_new, "ratio": cost_new / cost_old,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "precision": args.precision}))


if __name__ == "__main__":
    main()
