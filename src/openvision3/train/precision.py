"""Which autocast dtype a run uses (every trainer's ``precision``), so ``auto`` means the same
thing everywhere: on CUDA, bf16 where the driver says the GPU has it; on a CPU, bf16 only where it
computes bf16 natively (AVX-512 BF16 or AMX on x86, the BF16 extension on Arm) *and* torch/oneDNN
may use those instructions (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``: how a user pins the
kernels; we read them, we add no settings of our own). Emulated bf16 runs on every CPU, slowly: on
an AVX2-only AMD EPYC (Zen 3) a small conv/matmul forward+backward under bf16 autocast was 16-20x
slower than fp32, while native bf16 was 2-4x faster.

An explicit ``bf16`` on a CPU without native support runs (emulated) with a warning; on a
device where bf16 does not run at all it is an error, not a silent fp32 run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import typing
import warnings
from dataclasses import dataclass

import torch

from ..config import ConfigError, Precision

PRECISIONS = typing.get_args(Precision)

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below the first level with bf16 dot products.
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class PrecisionChoice:
    """The autocast dtype of a run (None = fp32) and why it was chosen."""
    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"

    def as_row(self) -> dict:
        """Fields for metrics.jsonl / results.json."""
        return {"precision": self.name, "precision_reason": self.reason}


def _cpu_flags() -> set[str]:
    """Feature flags from /proc/cpuinfo (x86 'flags', Arm 'Features'); empty where unreadable."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    return set()


def cpu_native_bf16(flags: set[str] | None = None, capability: str | None = None,
                    onednn_isa: str | None = None, machine: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why (the arguments exist for tests)."""
    flags = _cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    onednn_isa = (os.environ.get("ONEDNN_MAX_CPU_ISA", "") if onednn_isa is None else onednn_isa).upper()
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        have = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if not have:
            return False, f"cpu kernels {capability}: no avx512_bf16/amx_bf16, bf16 would be emulated (slow)"
        if not capability.upper().startswith("AVX512"):
            return False, f"cpu has {'/'.join(have)} but torch runs {capability} kernels (ATEN_CPU_CAPABILITY)"
        if onednn_isa in _ONEDNN_NO_BF16:
            return False, f"cpu has {'/'.join(have)} but ONEDNN_MAX_CPU_ISA={onednn_isa} caps oneDNN below bf16"
        return True, f"cpu kernels {capability} with native {'/'.join(have)}"
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, f"arm cpu with the BF16 extension (kernels {capability})"
        return False, f"arm cpu without the BF16 extension (kernels {capability})"
    return False, f"{machine or 'unknown'} cpu: native bf16 not detected"


@functools.lru_cache(maxsize=None)
def _cpu_native_bf16_cached() -> tuple[bool, str]:
    return cpu_native_bf16()


def bf16_runs(device: torch.device) -> bool:
    """Whether a tiny matmul under bf16 autocast runs and stays finite (emulated counts)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
        return y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    except Exception:  # no bf16 autocast on this device/build
        return False


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 natively (fast), and why. Cached per process on CPU."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'supports' if ok else 'lacks'} bf16"
    if device.type == "cpu":
        return _cpu_native_bf16_cached()
    return False, f"{device.type}: bf16 autocast not enabled by default"


def choose_precision(name: str, device: torch.device) -> PrecisionChoice:
    """The precision a run uses for ``name`` in auto | bf16 | fp32, with the reason."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (got '{name}')")
    if name == "fp32":
        return PrecisionChoice(None, "asked for")
    native, why = native_bf16(device)
    if name == "auto":
        return PrecisionChoice(torch.bfloat16 if native else None, f"auto: {why}")
    if native:  # explicit bf16
        return PrecisionChoice(torch.bfloat16, f"asked for; {why}")
    if not bf16_runs(device):
        raise ConfigError(f"precision=bf16 was asked for but {device.type} here has no bf16 support; "
                          "use auto or fp32")
    warnings.warn(f"precision=bf16 on a device without native bf16 ({why}): expect steps many times "
                  "slower than fp32; precision=auto picks fp32 here", stacklevel=2)
    return PrecisionChoice(torch.bfloat16, f"asked for, emulated: {why}")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for fp32 (``choose_precision`` without the reason)."""
    return choose_precision(name, device).dtype


__all__ = ["PRECISIONS", "PrecisionChoice", "bf16_runs", "choose_precision", "cpu_native_bf16",
           "native_bf16", "resolve_precision"]
