"""``ov3 bench``: where a training step's time goes, what it costs in FLOPs, how far from the hardware.

    ov3 bench [--config C | --preset P] [--resolution R] [--batch N] [--device cpu|cuda] [--json] [--out DIR]

For one model and one fixed batch it measures, per component of a training step (VAE encode,
unified encoder, latent decoder, VAE decode + pixel/LPIPS losses, text encoder, caption decoder
with its vocabulary head, contrastive loss, optimizer), the forward and forward+backward time and
the share of the step; the whole step's images/s; peak memory; model FLOPs counted by
``torch.utils.flop_counter``; on CUDA the MFU against the device's bf16 dense peak. Beside them,
ratios measured in the same run (these machines are noisy: only ratios travel):

* ``encoder_vs_timm``: our encoder's throughput / a timm ``VisionTransformer`` of identical shape
  (same latents, attention kernels and precision); > 1 means ours is faster.
* ``cache_speedup``: a step on cached latents / the same step encoding on the fly (time ratio of
  on-the-fly to cached), beside ``cache_bound``, the same ratio predicted from counted FLOPs.
* ``pixel_subbatch_speedup``: the full step / the step with the pixel/LPIPS terms on a quarter
  of the batch, both on cached latents (the two switches are meant to be combined).

The VAE ratios are only meaningful with a FLUX-sized VAE; without ``--config`` the model gets an
untrained inline VAE of the FLUX VAE's exact shape (weights do not change the cost).
``--compare NAME:key=value,...`` instead times whole training steps of config variants in
alternating rounds (the speed switches, attention kernels, tokenizers: benchmarks/).
"""
from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The FLUX.1 VAE's shape [P]: 16 latent channels, 8x down, (128, 256, 512, 512), 2 layers per block.
FLUX_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[128,256,512,512]",
            "model.vae.layers_per_block=2", "model.vae.latent_channels=16", "model.vae.norm_num_groups=32"]
# The smallest complete model (tests, --tiny): nano-sized towers over a 2x, 4-channel inline VAE.
TINY = ["model.preset=nano", "model.encoder.width=32", "model.encoder.layers=1", "model.encoder.heads=2",
        "model.decoder.width=32", "model.decoder.layers=1", "model.decoder.heads=2",
        "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.text.context_length=16",
        "model.caption.width=32", "model.caption.layers=1", "model.caption.heads=2",
        "model.caption.context_length=16", "model.embed_dim=16", "model.vae.source=inline",
        "model.vae.latent_channels=4", "model.vae.block_out_channels=[8,16]", "model.vae.norm_num_groups=4"]
# Default problem per device: the paper's B/2 at 256 px on a GPU; on a CPU what fits in ~3 minutes
# with the FLUX-sized VAE (nano towers, 32 px, batch 8; docs/performance.md).
DEFAULTS = {"cuda": {"preset": "b2", "resolution": 256, "batch": 32, "repeats": 5},
            "cpu": {"preset": "nano", "resolution": 32, "batch": 8, "repeats": 3}}
# bf16 dense peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (vendor data sheets).
GPU_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
COMPONENTS = ("vae_encode", "encoder", "latent_decoder", "vae_decode_pixel", "text_encoder",
              "caption_decoder", "contrastive", "optimizer")
SUBCOMPONENTS = {"caption_vocab_head": "caption_decoder"}  # timed on its own, already inside its parent


class BenchError(ValueError):
    """Bad bench input; one line for the user."""


@dataclass
class BenchOptions:
    config: str | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    resolution: int | None = None
    batch: int | None = None
    device: str | None = None
    precision: str = "auto"
    repeats: int | None = None
    tiny: bool = False
    ratios: bool = True
    out: str | None = None
    progress: bool = True


# ------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_median_seconds(fns: dict, rounds: int, device: torch.device, per_round: int = 1,
                               warmup: int = 1) -> tuple[dict, dict]:
    """Time each ``fns[name]()`` in alternating rounds so every variant sees the same machine state;
    returns ({name: median s/call}, {name: [s/call per round]})."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / per_round)
    return {k: statistics.median(v) for k, v in times.items()}, times


def count_flops(fn) -> int:
    """Model FLOPs of one call (matmuls, convolutions, attention) by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def gpu_bf16_peak(device: torch.device) -> tuple[str | None, float | None]:
    """(device name, bf16 dense peak FLOP/s) from the known-GPU table; (name, None) if unknown."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return name, tflops * 1e12
    return name, None


def _precision(name: str, device: torch.device):
    """(autocast dtype or None, label, bf16 note). Uses train/precision.py's decision."""
    from .train import precision as P
    if hasattr(P, "choose_precision"):
        choice = P.choose_precision(name, device)
        dtype, reason = choice.dtype, choice.reason
    else:  # older precision.py
        dtype, reason = P.resolve_precision(name, device), name
    native, why = P.native_bf16(device) if hasattr(P, "native_bf16") else (dtype is not None, reason)
    return dtype, ("bf16" if dtype is not None else "fp32"), {"bf16_native": bool(native), "bf16_reason": why}


def build_config(opts: BenchOptions, device: torch.device):
    from .config import get_config
    d = DEFAULTS[device.type if device.type in DEFAULTS else "cpu"]
    over = []
    if opts.tiny:
        over += TINY
        res, batch = opts.resolution or 16, opts.batch or 4
    else:
        if opts.config is None:
            over += [f"model.preset={opts.preset or d['preset']}"] + FLUX_VAE
        elif opts.preset:
            over += [f"model.preset={opts.preset}"]
        res, batch = opts.resolution or d["resolution"], opts.batch or d["batch"]
    over += [f"data.resolution={res}", f"model.image_size={res}", f"train.batch_size={batch}",
             f"train.precision={opts.precision}"]
    return get_config(opts.config, over + list(opts.overrides))


def _fixed_batch(cfg, device):
    """One fixed batch of real `shapes` images and captions (or of cfg.data.train)."""
    from .data import make_loader, open_data
    ds = open_data(cfg.data.train, split="train", resolution=cfg.data.resolution, train=True, cfg=cfg.data, seed=0)
    batch = next(iter(make_loader(ds, cfg.train.batch_size)))
    images = batch["image"].to(device)
    if images.shape[0] < cfg.train.batch_size:
        raise BenchError(f"data gave {images.shape[0]} images, fewer than --batch {cfg.train.batch_size}")
    return images, batch["caption"]


# ------------------------------------------------------------------------------------ the step
class StepRunner:
    """A model, its optimizer and one fixed batch; runs components and whole steps."""

    def __init__(self, cfg, device: torch.device, amp_dtype, images=None, captions=None):
        from .models.openvision3 import OpenVision3
        from .train.optim import build_optimizer
        torch.manual_seed(0)
        self.cfg, self.device, self.amp = cfg, device, amp_dtype
        self.model = OpenVision3(cfg).to(device).train()
        self.opt = build_optimizer(self.model, cfg.train, 1e-5, device)
        self.params = self.model.trainable_parameters()
        if images is None:
            images, captions = _fixed_batch(cfg, device)
        self.images, self.captions = images, captions
        self.tokens = self.model.tokenizer(captions).to(device)
        with torch.no_grad():
            self.latents = self.model.vae.encode(images)
        self.fwd = self.model
        if cfg.train.compile:
            self.fwd = torch.compile(self.model)

    def ctx(self):
        from .train.trainer import forward_context
        return forward_context(self.device, self.amp, self.cfg.train.attention_kernel)

    def step(self, cached: bool = False, pixel_subbatch: int | None = None):
        """One full training step: forward, backward, clipping, AdamW."""
        lc = self.model.cfg.loss
        old = lc.pixel_subbatch
        if pixel_subbatch is not None:
            lc.pixel_subbatch = pixel_subbatch
        try:
            with self.ctx():
                out = self.fwd(self.images, self.tokens, latents=self.latents if cached else None)
            out["loss"].backward()
        finally:
            lc.pixel_subbatch = old
        self.optimizer_step()
        return out

    def optimizer_step(self):
        t = self.cfg.train
        torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    # -- components: each returns (forward fn, forward+backward fn) ---------------------------
    def components(self) -> dict:
        m, lf, lc = self.model, self.model.loss_fn, self.model.cfg.loss
        images, tokens, latents = self.images, self.tokens, self.latents
        with torch.no_grad(), self.ctx():
            z_u = m.encoder(latents).float()
            pred = m.decoder(z_u).float()
        n = lc.pixel_subbatch if 0 < lc.pixel_subbatch < images.shape[0] else images.shape[0]
        lam = lc.lpips_weight

        def grad_like(x):
            return torch.ones_like(x) / x.numel()

        def run(fn, backward):
            def go():
                with self.ctx():
                    out = fn()
                if backward and out.requires_grad:
                    out.backward()
            return go

        def leaf(x):
            return x.detach().requires_grad_(True)

        def encoder():
            z = m.encoder(latents)
            return (z.float() * grad_like(z)).sum()

        def decoder():
            p = m.decoder(leaf(z_u))
            return torch.nn.functional.l1_loss(p.float(), latents)

        def decode_pixel():
            p = leaf(pred)
            recon = m.vae.decode(p[:n])
            return lf.reconstruction(images[:n], recon, latents, p, lpips_weight=lam)["loss_rec"]

        def text():
            f = m.text_encoder(tokens)
            return (f.float() * grad_like(f)).sum()

        def caption():
            logits, targets = m.caption_decoder(leaf(z_u), tokens)  # the loss as losses.py computes it
            return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=0)

        with torch.no_grad(), self.ctx():
            from .models.text import fit_context
            tk = fit_context(tokens, m.caption_decoder.context_length)
            keep = tk[:, 1:] != 0
            hidden = m.caption_decoder.hidden(z_u, tk[:, :-1])[keep].float()
            head_targets = tk[:, 1:][keep]

        def vocab_head():
            logits = m.caption_decoder.lm_head(leaf(hidden))
            return torch.nn.functional.cross_entropy(logits.float(), head_targets)

        text_feats = None
        with torch.no_grad(), self.ctx():
            text_feats = m.text_encoder(tokens).float()

        def contrastive():
            feats = torch.nn.functional.normalize(m.encoder.pool(leaf(z_u)).float(), dim=-1)
            return lf.clip_loss(feats, torch.nn.functional.normalize(leaf(text_feats), dim=-1), m.logit_scale.exp())

        def optimizer():
            for p in self.params:  # gradients as after a backward, without timing one
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            t = self.cfg.train
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else float("inf"))
            self.opt.step()

        def encode():
            return m.vae.encode(images)

        comps = {"vae_encode": (run(encode, False), run(encode, False)),
                 "encoder": (run(encoder, False), run(encoder, True)),
                 "latent_decoder": (run(decoder, False), run(decoder, True)),
                 "vae_decode_pixel": (run(decode_pixel, False), run(decode_pixel, True)),
                 "text_encoder": (run(text, False), run(text, True)),
                 "caption_decoder": (run(caption, False), run(caption, True)),
                 "caption_vocab_head": (run(vocab_head, False), run(vocab_head, True)),
                 "contrastive": (run(contrastive, False), run(contrastive, True)),
                 "optimizer": (optimizer, optimizer)}
        if not lf.rec_enabled:
            comps.pop("latent_decoder"), comps.pop("vae_decode_pixel")
        if not lf.und_enabled or lc.caption_weight <= 0:
            comps.pop("caption_decoder"), comps.pop("caption_vocab_head")
        if not lf.und_enabled or lc.alpha_contrastive <= 0:
            comps.pop("contrastive"), comps.pop("text_encoder")
        return comps


def encoder_vs_timm(runner: StepRunner, repeats: int) -> dict:
    """Our unified encoder against timm's VisionTransformer of the same shape: forward+backward
    over the same latents, same attention kernels and autocast; alternating rounds."""
    from timm.models.vision_transformer import VisionTransformer
    enc, lat = runner.model.encoder, runner.latents
    tower = runner.cfg.model.encoder
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=tuple(lat.shape[-2:]), patch_size=enc.patch_size, in_chans=enc.in_channels,
                            num_classes=0, global_pool="avg", embed_dim=tower.width, depth=tower.layers,
                            num_heads=tower.heads, mlp_ratio=tower.mlp_ratio, class_token=True,
                            ).to(runner.device).train()

    def ours():
        with runner.ctx():
            z = enc(lat)
        z.float().mean().backward()

    def timm_vit():
        with runner.ctx():
            z = ref.forward_features(lat)
        z.float().mean().backward()

    med, rounds = alternating_median_seconds({"ours": ours, "timm": timm_vit}, max(3, repeats), runner.device)
    enc.zero_grad(set_to_none=True)
    return {"encoder_vs_timm": med["timm"] / med["ours"], "encoder_s": med["ours"], "timm_s": med["timm"],
            "encoder_params": sum(p.numel() for p in enc.parameters()),
            "timm_params": sum(p.numel() for p in ref.parameters())}


def vae_ratios(runner: StepRunner, repeats: int) -> dict:
    """cache_speedup / cache_bound / pixel_subbatch_speedup on ``runner``'s model (same run)."""
    b = runner.images.shape[0]
    quarter = max(1, b // 4)
    steps = {"on_the_fly": lambda: runner.step(cached=False), "cached": lambda: runner.step(cached=True),
             "cached_pixel_quarter": lambda: runner.step(cached=True, pixel_subbatch=quarter)}
    med, rounds = alternating_median_seconds(steps, repeats, runner.device)
    flops = {k: count_flops(fn) for k, fn in steps.items()}
    runner.opt.zero_grad(set_to_none=True)
    return {"cache_speedup": med["on_the_fly"] / med["cached"],
            "cache_bound": flops["on_the_fly"] / flops["cached"],
            "pixel_subbatch_speedup": med["cached"] / med["cached_pixel_quarter"],
            "pixel_subbatch_bound": flops["cached"] / flops["cached_pixel_quarter"],
            "cache_and_pixel_subbatch_speedup": med["on_the_fly"] / med["cached_pixel_quarter"],
            "cache_and_pixel_subbatch_bound": flops["on_the_fly"] / flops["cached_pixel_quarter"],
            "pixel_subbatch": quarter, "step_s": med, "step_s_rounds": rounds, "step_flops": flops}


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30, "peak_mem_kind": "cuda max allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"peak_mem_gb": rss_kb / 2**20, "peak_mem_kind": "process peak RSS (whole process)"}


def _machine(device: torch.device) -> dict:
    import platform
    d = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        except OSError:
            pass
        d["cpu"] = cpu
    try:
        import os
        d["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return d


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name}: only cpu and cuda are supported")
    return dev


# ------------------------------------------------------------------------------------ the bench
def run_bench(opts: BenchOptions) -> dict:
    """Everything ``ov3 bench`` prints, as one dict (see the module docstring)."""
    device = _device(opts.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    cfg = build_config(opts, device)
    if cfg.train.batch_size < 1:
        raise BenchError("--batch must be >= 1")
    repeats = opts.repeats or (1 if opts.tiny else DEFAULTS.get(device.type, DEFAULTS["cpu"])["repeats"])
    amp, prec_name, bf16 = _precision(cfg.train.precision, device)
    t_start = time.perf_counter()
    bar = _Progress(opts.progress, 5 if opts.ratios else 3)
    runner = StepRunner(cfg, device, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar.next("full step")
    med, _ = alternating_median_seconds({"step": runner.step}, repeats, device)
    step_s = med["step"]
    mem = _peak_memory(device)
    step_flops = count_flops(runner.step)
    runner.opt.zero_grad(set_to_none=True)

    bar.next("components")
    comps = runner.components()
    rows = {}
    for name, (fwd, fwd_bwd) in comps.items():
        m, _ = alternating_median_seconds({"fwd": fwd, "fwd_bwd": fwd_bwd}, repeats, device)
        rows[name] = {"fwd_s": m["fwd"], "fwd_bwd_s": m["fwd_bwd"], "fwd_flops": count_flops(fwd),
                      "fwd_bwd_flops": count_flops(fwd_bwd)}
        if name in SUBCOMPONENTS:
            rows[name]["part_of"] = SUBCOMPONENTS[name]
    runner.model.zero_grad(set_to_none=True)
    runner.opt.zero_grad(set_to_none=True)
    top = [k for k in rows if k not in SUBCOMPONENTS]
    total = sum(rows[k]["fwd_bwd_s"] for k in top)
    for r in rows.values():
        r["share_of_step"] = r["fwd_bwd_s"] / step_s
    other = step_s - total

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
        "components": rows, "components_sum_s": total, "other_s": other,
    }
    if device.type == "cuda" and peak is None:
        result["mfu_note"] = f"{name}: not in the known-GPU table"
    if prec_name == "fp32" and not bf16["bf16_native"]:
        result["bf16"] = f"not applicable: {bf16['bf16_reason']}"
    if opts.ratios:
        bar.next("encoder vs timm")
        result.update(encoder_vs_timm(runner, repeats))
        bar.next("cache and pixel sub-batch")
        vr = vae_ratios(runner, repeats)
        result.update({k: vr[k] for k in ("cache_speedup", "cache_bound", "pixel_subbatch_speedup",
                                          "pixel_subbatch_bound", "cache_and_pixel_subbatch_speedup",
                                          "cache_and_pixel_subbatch_bound", "pixel_subbatch")})
        result["ratio_steps_s"], result["ratio_steps_flops"] = vr["step_s"], vr["step_flops"]
        result["cache_fraction_of_bound"] = result["cache_speedup"] / result["cache_bound"]
    bar.close()
    result["bench_seconds"] = time.perf_counter() - t_start
    if opts.out:
        write_report(result, opts.out)
    return result


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="bench", dynamic_ncols=True, file=sys.stderr)

    def next(self, what: str):
        if self.bar is not None:
            if self.bar.n or self.bar.desc != "bench":
                self.bar.update(1)
            self.bar.set_description(f"bench: {what}")
            self.bar.desc = f"bench: {what}"

    def close(self):
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


# ------------------------------------------------------------------------------------ compare
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
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    parsed = [parse_variant(v) for v in variants]
    if len(parsed) < 2:
        raise BenchError("--compare needs at least two variants")
    repeats = opts.repeats or DEFAULTS.get(device.type, DEFAULTS["cpu"])["repeats"]
    base = build_config(opts, device)
    images, captions = _fixed_batch(base, device)  # one batch for every variant
    runners, info, cache_of = {}, {}, {}
    for name, over, variant_cached in parsed:
        cfg = build_config(BenchOptions(**{**opts.__dict__, "overrides": list(opts.overrides) + over}), device)
        amp, prec, _ = _precision(cfg.train.precision, device)
        runners[name] = StepRunner(cfg, device, amp, images=images, captions=captions)
        info[name] = {"overrides": over, "precision": prec, "cached_latents": cached or variant_cached}
        cache_of[name] = cached or variant_cached
    losses = {}
    for k, r in runners.items():  # the first step: same weights, batch and noise for every variant
        torch.manual_seed(1)
        losses[k] = float(r.step(cached=cache_of[k])["loss"].detach())
    med, rounds = alternating_median_seconds({k: (lambda r=r, c=cache_of[k]: r.step(cached=c))
                                              for k, r in runners.items()}, repeats, device, warmup=1)
    first = parsed[0][0]
    return {**_machine(device), "batch": base.train.batch_size, "resolution": base.data.resolution,
            "repeats": repeats, "cached_latents": cached, "variants": info, "first_step_loss": losses,
            "s_per_step": med, "rounds": rounds,
            "ratio_vs_first": {k: med[first] / v for k, v in med.items()}}


# ------------------------------------------------------------------------------------ output
def format_bench(r: dict) -> str:
    lines = [f"ov3 bench: {r['config']}, VAE {r['vae']} {r['vae_block_out_channels']}, {r['resolution']} px "
             f"({r['tokens']} tokens), batch {r['batch']}, {r['precision']}, on {r.get('gpu') or r.get('cpu')} "
             f"({r['threads']} threads, load {r.get('load_avg_1m', float('nan')):.1f}), torch {r['torch']}",
             "", "| component | fwd s | fwd+bwd s | share of step | fwd+bwd GFLOP |", "|---|---:|---:|---:|---:|"]
    for k, c in r["components"].items():
        label = f"  {k} (inside {c['part_of']})" if "part_of" in c else k
        lines.append(f"| {label} | {c['fwd_s']:.4f} | {c['fwd_bwd_s']:.4f} | {100 * c['share_of_step']:.1f} % | "
                     f"{c['fwd_bwd_flops'] / 1e9:.2f} |")
    lines.append(f"| other (step - sum) | | {r['other_s']:.4f} | {100 * r['other_s'] / r['step_s']:.1f} % | |")
    lines += ["", f"step {r['step_s']:.4f} s, {r['images_per_s']:.1f} images/s, {r['step_flops'] / 1e9:.1f} GFLOP/step "
              f"({r['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved), peak memory {r['peak_mem_gb']:.2f} GB "
              f"({r['peak_mem_kind']})",
              "MFU: " + (f"{100 * r['mfu']:.1f} % of {r['mfu_peak_tflops']:.0f} TFLOP/s bf16 dense"
                         if r.get("mfu") is not None else f"n/a ({r.get('mfu_note', 'CPU: no known peak')})")]
    if "bf16" in r:
        lines.append(f"bf16: {r['bf16']}")
    if "encoder_vs_timm" in r:
        lines.append(f"encoder_vs_timm {r['encoder_vs_timm']:.2f} (ours {r['encoder_s']:.4f} s, timm "
                     f"{r['timm_s']:.4f} s fwd+bwd)")
        lines.append(f"cache_speedup {r['cache_speedup']:.2f} beside cache_bound {r['cache_bound']:.2f} "
                     f"({100 * r['cache_fraction_of_bound']:.0f} % of the bound)")
        lines.append(f"pixel_subbatch_speedup {r['pixel_subbatch_speedup']:.2f} (pixel terms on "
                     f"{r['pixel_subbatch']} of {r['batch']}, cached latents; FLOP bound {r['pixel_subbatch_bound']:.2f})")
        lines.append(f"cache_and_pixel_subbatch_speedup {r['cache_and_pixel_subbatch_speedup']:.2f} (plain step / "
                     f"cached + pixel quarter; FLOP bound {r['cache_and_pixel_subbatch_bound']:.2f})")
    lines.append(f"bench took {r['bench_seconds']:.0f} s")
    return "\n".join(lines)


def format_compare(r: dict) -> str:
    lines = [f"ov3 bench --compare: batch {r['batch']}, {r['resolution']} px, on {r.get('gpu') or r.get('cpu')} "
             f"({r['threads']} threads, load {r.get('load_avg_1m', float('nan')):.1f}), median of {r['repeats']} rounds",
             "", "| variant | overrides | s/step | speed vs first | first-step loss |", "|---|---|---:|---:|---:|"]
    for k, v in r["s_per_step"].items():
        over = r['variants'][k]['overrides'] + (["(cached latents)"] if r['variants'][k]['cached_latents'] else [])
        lines.append(f"| {k} | {' '.join(over) or '-'} | {v:.4f} | "
                     f"{r['ratio_vs_first'][k]:.2f} | {r['first_step_loss'][k]:.5f} |")
    return "\n".join(lines)


def write_report(r: dict, out_dir) -> None:
    """bench.json, bench.md and bench.png (the step breakdown as bars) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "bench.md").write_text("# ov3 bench\n\n" + format_bench(r) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [k for k in r["components"] if "part_of" not in r["components"][k]]
    fwd = [r["components"][k]["fwd_s"] for k in names]
    bwd = [max(0.0, r["components"][k]["fwd_bwd_s"] - r["components"][k]["fwd_s"]) for k in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(y, fwd, label="forward")
    ax.barh(y, bwd, left=fwd, label="backward")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step")
    ax.set_title(f"step {r['step_s']:.3f} s, {r['images_per_s']:.1f} img/s ({r['resolution']} px, batch {r['batch']}, "
                 f"{r['precision']}, {r['device']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=100)
    plt.close(fig)


def finite_numbers(obj) -> bool:
    """True if every number inside ``obj`` is finite (tests)."""
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


__all__ = ["BenchOptions", "BenchError", "run_bench", "compare_steps", "format_bench", "format_compare",
           "write_report", "alternating_median_seconds", "count_flops", "FLUX_VAE", "GPU_BF16_PEAK_TFLOPS"]
