"""Optimizer, learning-rate schedule and EMA, following OpenVision's recipe [C]:
AdamW beta (0.9, 0.95), weight decay 0.2 on weight matrices only, linear warmup + cosine decay,
base LR scaled by batch/256.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Parameters that never get weight decay, besides every 1-D tensor (norms, biases) and scalars.
_NO_DECAY_NAMES = ("embedding", "class_embedding", "positional_embedding", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(key in name for key in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train_cfg, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; ``train.adamw`` picks the kernel: ``fused`` (one kernel for
    every tensor), ``foreach`` (batched per op), ``auto`` = fused on CUDA, foreach elsewhere (on our
    CPU the fused kernel was no faster: docs/performance.md)."""
    impl = getattr(train_cfg, "adamw", "auto")
    fused = device.type == "cuda" if impl == "auto" else impl == "fused"
    return torch.optim.AdamW(param_groups(model, train_cfg.weight_decay), lr=lr,
                             betas=tuple(train_cfg.betas), fused=fused, foreach=None if fused else True)


def scaled_lr(base_lr: float, batch_size: int, scale_by_batch: bool = True) -> float:
    """[C] OpenVision: lr = base_lr * global_batch / 256."""
    return base_lr * batch_size / 256 if scale_by_batch else base_lr


def warmup_cosine(step: int, total: int, warmup: int, peak: float, min_ratio: float = 0.0) -> float:
    """LR for ``step`` (0-based) in a stage of ``total`` steps: linear warmup, then cosine."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_ema(model: nn.Module, decay: float):
    """timm ``ModelEmaV3`` of the trainable model, or None when ``decay`` is 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3
    return ModelEmaV3(model, decay=decay)
