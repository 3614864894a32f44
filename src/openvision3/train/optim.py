"""Optimizer, learning-rate schedule and EMA for every trainer. The OpenVision 3 defaults follow
OpenVision's recipe [C]: AdamW beta (0.9, 0.95), weight decay 0.2 on weight matrices only, linear
warmup + cosine decay, base LR scaled by batch/256.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Parameters that never get weight decay, besides every 1-D tensor (norms, biases) and scalars.
_NO_DECAY_NAMES = ("embedding", "class_embedding", "positional_embedding", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    trained = [(p, p.ndim < 2 or any(key in name for key in _NO_DECAY_NAMES))
               for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for p, exempt in trained if not exempt], "weight_decay": weight_decay},
            {"params": [p for p, exempt in trained if exempt], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train_cfg, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; ``train.adamw`` picks the kernel: ``fused`` (one kernel for
    every tensor), ``foreach`` (batched per op), ``auto`` = fused on CUDA, foreach elsewhere (on our
    CPU the fused kernel was no faster: docs/performance.md)."""
    fused = device.type == "cuda" if train_cfg.adamw == "auto" else train_cfg.adamw == "fused"
    return torch.optim.AdamW(param_groups(model, train_cfg.weight_decay), lr=lr,
                             betas=tuple(train_cfg.betas), fused=fused, foreach=None if fused else True)


def scaled_lr(base_lr: float, batch_size: int, scale_by_batch: bool = True) -> float:
    """[C] OpenVision: lr = base_lr * global_batch / 256."""
    return base_lr * batch_size / 256 if scale_by_batch else base_lr


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate over one stretch of ``steps`` steps, in the two shapes the project uses:

    ``cosine``  linear warmup to ``peak``, then cosine decay to ``min_ratio * peak`` [C] OpenVision;
    ``linear``  linear warmup, constant ``peak`` until ``decay_start``, then linear decay to
                ``final`` at ``decay_end`` (and after) [C] RAE's DiT-DH schedule.
    """
    peak: float
    steps: int
    warmup: int = 0
    shape: str = "cosine"
    min_ratio: float = 0.0
    decay_start: int = 0
    decay_end: int = 0
    final: float = 0.0

    def __post_init__(self):
        if self.shape not in ("cosine", "linear"):
            raise ValueError(f"unknown LR schedule shape '{self.shape}'; choose cosine or linear")

    def __call__(self, step: int) -> float:
        """LR at ``step`` (0-based, counted from the start of this stretch)."""
        if self.warmup > 0 and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.shape == "linear":
            if self.decay_end <= self.decay_start or step < self.decay_start:
                return self.peak
            frac = min(1.0, (step - self.decay_start) / (self.decay_end - self.decay_start))
            return self.peak + (self.final - self.peak) * frac
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_ema(model: nn.Module, decay: float):
    """timm ``ModelEmaV3`` of the trainable model, or None when ``decay`` is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3
    return ModelEmaV3(model, decay=decay)
