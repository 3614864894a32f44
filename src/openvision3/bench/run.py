"""The bench run (``run_bench``) and the whole-step comparison of config variants (``compare_steps``)."""
from __future__ import annotations

import sys
import time

import torch

from .options import DEFAULTS, SUBCOMPONENTS, BenchError, BenchOptions
from .report import write_report
from .step import StepRunner, _fixed_batch, build_config, encoder_vs_timm, vae_ratios
from .timing import _device, _machine, _peak_memory, _precision, alternating_median_seconds, count_flops, gpu_bf16_peak


def run_bench(opts: BenchOptions) -> dict:
    """Everything ``ov3 bench`` prints, as one dict (see the module docstring)."""
    device = _device(opts.device)
    cfg = build_config(opts, device)
    if cfg.train.batch_size < 1:
        raise BenchError("--batch must be >= 1")
    repeats = opts.repeats or (1 if opts.tiny else DEFAULTS.get(device.type, DEFAULTS["cpu"])["repeats"])
    amp, prec_name, bf16 = _precision(cfg.train.precision, device)
    t_start = time.perf_counter()
    memory = opts.memory and device.type == "cpu"
    from tqdm.auto import tqdm
    bar = tqdm(total=(5 if opts.ratios else 3) + memory, desc="bench", dynamic_ncols=True, file=sys.stderr,
               disable=not opts.progress)

    def phase(what: str):  # one tick per finished phase, the running phase in the description
        bar.update(1)
        bar.set_description_str(f"bench: {what}")

    runner = StepRunner(cfg, device, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar.set_description_str("bench: full step")
    med, _ = alternating_median_seconds({"step": runner.step}, repeats, device)
    step_s = med["step"]
    mem = _peak_memory(device)
    step_flops = count_flops(runner.step)
    runner.opt.zero_grad(set_to_none=True)

    phase("components")
    comps = runner.components()
    rows = {}
    for name, (fwd, fwd_bwd) in comps.items():
        m, _ = alternating_median_seconds({"fwd": fwd, "fwd_bwd": fwd_bwd}, repeats, device)
        rows[name] = {"fwd_s": m["fwd"], "fwd_bwd_s": m["fwd_bwd"], "fwd_flops": count_flops(fwd),
                      "fwd_bwd_flops": count_flops(fwd_bwd)}
        if name in SUBCOMPONENTS:
            rows[name]["part_of"] = SUBCOMPONENTS[name]
    runner.model.zero_grad(set_to_none=True)  # every parameter the optimizer holds
    total = sum(r["fwd_bwd_s"] for k, r in rows.items() if k not in SUBCOMPONENTS)
    # A part's share is its time / the step, other the rest; parts that add up to more than the step
    # (timed one at a time: noise) are normalised by their sum instead, other 0. A sub-component
    # gets its parent's scale, inside its share (docs/performance.md).
    normalised = total > step_s
    scale = 1.0 / (total if normalised else step_s)
    for r in rows.values():
        r["share_of_step"] = r["fwd_bwd_s"] * scale

    name, peak = gpu_bf16_peak(device)
    result = {
        **_machine(device), "config": opts.config or f"preset {cfg.model.preset}",
        "vae": ("inline, FLUX.1 VAE shape" if cfg.model.vae.block_out_channels == [128, 256, 512, 512]
                and cfg.model.vae.source == "inline" else cfg.model.vae.source),
        "vae_block_out_channels": cfg.model.vae.block_out_channels,
        "resolution": cfg.data.resolution, "batch": cfg.train.batch_size,
        "tokens": runner.model.token_grid(cfg.data.resolution)[0] ** 2, "precision": prec_name, **bf16,
        "attention_kernel": cfg.train.attention_kernel, "compile": cfg.train.compile, "repeats": repeats,
        "step_s": step_s, "images_per_s": cfg.train.batch_size / step_s, "step_flops": step_flops,
        "achieved_tflops": step_flops / step_s / 1e12, **mem,
        "mfu": (step_flops / step_s / peak) if peak else None, "mfu_peak_tflops": peak / 1e12 if peak else None,
        "components": rows, "components_sum_s": total, "other_s": step_s - total,
        "other_share": 0.0 if normalised else (step_s - total) / step_s, "shares_normalised": normalised,
        "parts_over_step": total / step_s,
    }
    if device.type == "cuda" and peak is None:
        result["mfu_note"] = f"{name}: not in the known-GPU table"
    if prec_name == "fp32" and not bf16["bf16_native"]:
        result["bf16"] = f"not applicable: {bf16['bf16_reason']}"
    if opts.ratios:
        phase("encoder vs timm")
        result.update(encoder_vs_timm(runner, repeats))
        phase("cache and pixel sub-batch")
        result.update(vae_ratios(runner, repeats))
    if memory:
        from .memory import activation_memory
        phase("activation memory")
        result["activation_memory"] = activation_memory(tiny=opts.tiny)
    bar.update(bar.total - bar.n)
    bar.close()
    result["bench_seconds"] = time.perf_counter() - t_start
    if opts.out:
        write_report(result, opts.out)
    return result


def parse_variant(text: str) -> tuple[str, list[str], bool]:
    """``"fused:train.adamw=fused,cached"`` -> ("fused", ["train.adamw=fused"], True): overrides,
    and the flag ``cached`` (steps on cached latents); ``"base:"`` -> no overrides."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise BenchError(f"--compare '{text}': expected NAME:key=value[,key=value...][,cached] (or NAME: for none)")
    items = [x for x in rest.split(",") if x] if rest else []
    cached = "cached" in items
    over = [x for x in items if x != "cached"]
    bad = [x for x in over if "=" not in x]
    if bad:
        raise BenchError(f"--compare '{text}': '{bad[0]}' is not key=value (or the flag cached)")
    return name, over, cached


def compare_steps(opts: BenchOptions, variants: list[str], cached: bool = False) -> dict:
    """Median s/step of whole training steps for each variant (same batch, alternating rounds);
    ``ratio_vs_first``: the first variant's time / each variant's (> 1: the variant is faster)."""
    device = _device(opts.device)
    parsed = [parse_variant(v) for v in variants]
    if len(parsed) < 2:
        raise BenchError("--compare needs at least two variants")
    repeats = opts.repeats or DEFAULTS.get(device.type, DEFAULTS["cpu"])["repeats"]
    base = build_config(opts, device)
    images, captions = _fixed_batch(base, device)  # one batch for every variant
    runners, info = {}, {}
    for name, over, variant_cached in parsed:
        cfg = build_config(BenchOptions(**{**opts.__dict__, "overrides": list(opts.overrides) + over}), device)
        amp, prec, _ = _precision(cfg.train.precision, device)
        runners[name] = StepRunner(cfg, device, amp, images=images, captions=captions)
        info[name] = {"overrides": over, "precision": prec, "cached_latents": cached or variant_cached}
    losses = {}
    for k, r in runners.items():  # the first step: same weights, batch and noise for every variant
        torch.manual_seed(1)
        losses[k] = float(r.step(cached=info[k]["cached_latents"])["loss"].detach())
    med, rounds = alternating_median_seconds({k: (lambda r=r, c=info[k]["cached_latents"]: r.step(cached=c))
                                              for k, r in runners.items()}, repeats, device)
    first = parsed[0][0]
    return {**_machine(device), "batch": base.train.batch_size, "resolution": base.data.resolution,
            "repeats": repeats, "cached_latents": cached, "variants": info, "first_step_loss": losses,
            "s_per_step": med, "rounds": rounds,
            "ratio_vs_first": {k: med[first] / v for k, v in med.items()}}
