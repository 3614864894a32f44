"""Image transforms: PIL RGB -> float tensor (3, R, R) in [-1, 1] (torchvision.transforms.v2)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def _to_unit_range():
    # uint8 -> float in [0, 1] -> [-1, 1], the range the frozen VAE expects.
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]


def eval_transform(resolution: int):
    """Resize the short side to ``resolution``, then centre crop."""
    return v2.Compose([v2.ToImage(), v2.Resize(resolution, antialias=True),
                       v2.CenterCrop(resolution), *_to_unit_range()])


def train_transform(resolution: int, min_crop_area: float = 0.4, hflip: bool = True,
                    color_jitter: float = 0.4):
    """Inception crop (area in [min_crop_area, 1]) [C], optional flip, colour jitter [C]."""
    ops = [v2.ToImage(), v2.RandomResizedCrop(resolution, scale=(min_crop_area, 1.0), antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        # [?] brightness/contrast/saturation only: OpenVision's hue setting is not documented.
        ops.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                  saturation=color_jitter))
    return v2.Compose(ops + _to_unit_range())


def build_transform(resolution: int, train: bool, cfg, augment: bool = True):
    """The transform for one split (``cfg``: a DataConfig); ``augment=False`` (e.g. ``shapes``) trains on eval crops."""
    if not (train and augment and cfg.augment):
        return eval_transform(resolution)
    return train_transform(resolution, cfg.min_crop_area, cfg.hflip, cfg.color_jitter)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images made from uint8 pixels -> those exact uint8 pixels (B, 3, H, W)."""
    return ((images.clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8)
