"""Which autocast dtype a run uses (``train.precision`` and the VAE trainer's ``precision``).

One function for both trainers, so ``auto`` means the same thing everywhere: bf16 where the
device runs it (on our 2-core CPU bf16 autocast made small-VAE convolutions 2-4x faster), fp32
where it does not. An explicit ``bf16`` on a device without it is an error, not a silent fp32 run.
"""

from __future__ import annotations

import typing

import torch

from ..config import ConfigError, Precision

PRECISIONS = typing.get_args(Precision)


def bf16_supported(device: torch.device) -> bool:
    """CUDA: the driver's answer. CPU: whether a tiny matmul under bf16 autocast runs and stays
    finite (some CPUs/builds have no bf16 kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
        return y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    except Exception:  # no bf16 autocast on this device/build
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (got '{name}')")
    if name == "fp32":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    if name == "bf16":
        raise ConfigError(f"precision=bf16 was asked for but {device.type} here has no bf16 support; "
                          "use auto or fp32")
    return None


__all__ = ["PRECISIONS", "bf16_supported", "resolve_precision"]
