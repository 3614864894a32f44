"""``ov3 bench``: where a training step's time goes, what it costs in FLOPs, how far from the hardware.

    ov3 bench [--config C | --preset P] [--resolution R] [--batch N] [--device cpu|cuda] [--json] [--out DIR]

For one model and one fixed batch: each component's forward and forward+backward time and share of
the step, the step's images/s, peak memory, FLOPs (``torch.utils.flop_counter``) and, on CUDA, MFU;
beside them ratios measured in the same run (these machines are noisy: only ratios travel):
``encoder_vs_timm``, ``cache_speedup`` / ``cache_bound``, ``pixel_subbatch_speedup``. Every figure
is explained in docs/performance.md. ``--compare NAME:key=value,...`` instead times whole training
steps of config variants in alternating rounds (the speed switches, attention kernels, tokenizers).
"""
from __future__ import annotations

from .options import FLUX_VAE, BenchError, BenchOptions
from .report import format_bench, format_compare, write_report
from .run import compare_steps, run_bench
from .timing import GPU_BF16_PEAK_TFLOPS, alternating_median_seconds, count_flops

__all__ = ["BenchOptions", "BenchError", "run_bench", "compare_steps", "format_bench", "format_compare",
           "write_report", "alternating_median_seconds", "count_flops", "FLUX_VAE", "GPU_BF16_PEAK_TFLOPS"]
