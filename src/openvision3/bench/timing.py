"""Measuring primitives (alternating medians, FLOP counts, peak memory) and machine facts."""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time

import torch

from .options import BenchError

# bf16 dense peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (vendor data sheets).
GPU_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_median_seconds(fns: dict, rounds: int, device: torch.device) -> tuple[dict, dict]:
    """Time each ``fns[name]()`` in alternating rounds, after one warm-up call each, so every variant
    sees the same machine state; returns ({name: median s/call}, {name: [s/call per round]})."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
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
    tflops = next((t for key, t in GPU_BF16_PEAK_TFLOPS.items() if key.lower() in name.lower()), None)
    return name, None if tflops is None else tflops * 1e12


def _precision(name: str, device: torch.device):
    """(autocast dtype or None, label, bf16 note). Uses train/precision.py's decision."""
    from ..train.precision import choose_precision, native_bf16
    dtype = choose_precision(name, device).dtype
    native, why = native_bf16(device)
    return dtype, ("bf16" if dtype is not None else "fp32"), {"bf16_native": bool(native), "bf16_reason": why}


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
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        d["cpu"] = cpu
    with contextlib.suppress(OSError):  # no load average on this system
        d["load_avg_1m"] = os.getloadavg()[0]
    return d


def _device(name: str | None) -> torch.device:
    """The bench's device (CUDA when there is one, unless ``name`` says), made ready for timing."""
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name}: only cpu and cuda are supported")
    if dev.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    return dev
