"""FLOPs per training sample of completing a released tower (recipes/complete.py), against the joint
step, and the GPU-hours they imply for a sample budget. The GPU-hours are ESTIMATES: counted FLOPs
divided by an assumed utilisation of a GPU's bf16 dense peak, not a measured run.

    .venv/bin/python benchmarks/complete_cost.py [--configs complete_b2_256,...] [--mfu 0.3] [--json]

FLOPs are counted by torch.utils.flop_counter (bench/timing.count_flops: matmuls, convolutions,
attention), forward and backward, on one sample at the config's resolution, over an untrained
inline VAE of the FLUX.1 VAE's shape (bench/options.FLUX_VAE; weights do not change the count):

  heads_cached   the heads on cached tokens: latent decoder, VAE decode + pixel L1 + LPIPS (fwd+bwd),
                 text encoder, caption decoder (train.token_cache)
  heads_stream   the same plus the frozen VAE encode and encoder forward (train.token_cache=null)
  joint          the whole model trained (ov3 train without init_encoder): the encoder's backward too
  pixel_part     the VAE decode + LPIPS share of a sample (fwd+bwd): what loss.pixel_subbatch saves

Not part of the test run. Takes about a minute per config on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from openvision3.bench.options import FLUX_VAE  # noqa: E402
from openvision3.bench.timing import GPU_BF16_PEAK_TFLOPS, count_flops  # noqa: E402
from openvision3.config import get_config  # noqa: E402
from openvision3.models.openvision3 import OpenVision3  # noqa: E402


def per_sample_flops(name: str) -> dict:
    cfg = get_config(name, FLUX_VAE)
    res = cfg.data.resolution
    torch.manual_seed(0)
    model = OpenVision3(cfg).train()
    images = torch.rand(1, 3, res, res) * 2 - 1
    tokens = model.tokenizer(["a photo of a small red bird on a branch"])
    lpips = cfg.loss.lpips_weight
    with torch.no_grad():
        latents = model.vae.encode(images)
        unified = model.encoder(latents)

    def step(**kw):
        def run():
            model.zero_grad(set_to_none=True)
            model(images, tokens, lpips_weight=lpips, **kw)["loss"].backward()
        return run

    def pixel_part():
        z = latents.clone().requires_grad_(True)
        recon = model.vae.decode(z)
        loss = (recon - images).abs().mean()
        if lpips > 0:
            loss = loss + model.loss_fn._lpips(images.device)(recon, images, normalize=False).mean()
        loss.backward()

    out = {"config": name, "resolution": res, "tokens": unified.shape[1], "lpips_weight": lpips}
    out["joint"] = count_flops(step())
    model.encoder.requires_grad_(False)  # train.freeze=[encoder.]
    out["heads_stream"] = count_flops(step())
    out["heads_cached"] = count_flops(step(latents=latents, unified=unified))
    out["pixel_part"] = count_flops(pixel_part)
    out["parameters_trained"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


def gpu_hours(flops_per_sample: float, samples: float, peak_tflops: float, mfu: float) -> float:
    return flops_per_sample * samples / (peak_tflops * 1e12 * mfu) / 3600


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="complete_b2_256,complete_b2_224,complete_l2_256")
    ap.add_argument("--samples", type=float, default=None,
                    help="sample budget (default: each config's epochs x epoch_size)")
    ap.add_argument("--gpu", default="H100", choices=sorted(GPU_BF16_PEAK_TFLOPS))
    ap.add_argument("--mfu", type=float, default=0.3, help="ASSUMED utilisation of the bf16 dense peak")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    peak = GPU_BF16_PEAK_TFLOPS[args.gpu]
    rows = []
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        r = per_sample_flops(name)
        cfg = get_config(name)
        samples = args.samples or math.ceil(cfg.train.epochs * cfg.train.epoch_size / cfg.train.batch_size) * \
            cfg.train.batch_size
        quarter = r["heads_cached"] - 0.75 * r["pixel_part"]
        r.update(samples=samples, heads_cached_pixel_quarter=quarter, seconds=round(time.perf_counter() - t0, 1),
                 estimate={"gpu": args.gpu, "peak_tflops": peak, "assumed_mfu": args.mfu,
                           **{f"gpu_hours_{k}": round(gpu_hours(v, samples, peak, args.mfu))
                              for k, v in (("heads_cached", r["heads_cached"]), ("heads_stream", r["heads_stream"]),
                                           ("heads_cached_pixel_quarter", quarter), ("joint", r["joint"]))}})
        rows.append(r)
        e = r["estimate"]
        print(f"{name}: {r['resolution']} px, {r['tokens']} tokens; GFLOP/sample (fwd+bwd) heads cached "
              f"{r['heads_cached'] / 1e9:.0f}, streamed {r['heads_stream'] / 1e9:.0f}, joint {r['joint'] / 1e9:.0f} "
              f"(VAE decode + LPIPS {r['pixel_part'] / 1e9:.0f}); {samples / 1e6:.0f} M samples -> ESTIMATED "
              f"{args.gpu}-hours at {args.mfu:.0%} MFU: cached {e['gpu_hours_heads_cached']}, pixel quarter "
              f"{e['gpu_hours_heads_cached_pixel_quarter']}, streamed {e['gpu_hours_heads_stream']}, "
              f"joint {e['gpu_hours_joint']} ({r['seconds']} s)", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
