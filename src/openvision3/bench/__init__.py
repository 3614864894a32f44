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

from .options import FLUX_VAE, BenchError, BenchOptions
from .report import format_bench, format_compare, write_report
from .run import compare_steps, run_bench
from .timing import GPU_BF16_PEAK_TFLOPS, alternating_median_seconds, count_flops

__all__ = ["BenchOptions", "BenchError", "run_bench", "compare_steps", "format_bench", "format_compare",
           "write_report", "alternating_median_seconds", "count_flops", "FLUX_VAE", "GPU_BF16_PEAK_TFLOPS"]
