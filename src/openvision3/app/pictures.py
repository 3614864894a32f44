"""Tensors -> pictures for the page (H x W x 3 uint8 arrays, what gradio shows as they are)."""
from __future__ import annotations

import numpy as np
import torch

# The difference image is |x - x^| scaled by this gain (small errors are invisible at 1x).
DIFF_GAIN = 4


def picture(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    u = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return (u.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def difference(x: torch.Tensor, r: torch.Tensor) -> np.ndarray:
    """|x - x^| in [0, 1] units times DIFF_GAIN, clipped: black where the reconstruction is exact."""
    d = ((x.float() - r.float()).abs() / 2 * DIFF_GAIN).clamp(0, 1)
    return (d.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def blocks(grid_values: np.ndarray, block: int) -> np.ndarray:
    """(gh, gw, C) -> (gh * block, gw * block, C): each token a square of the pixels it covers."""
    return np.repeat(np.repeat(grid_values, block, axis=0), block, axis=1)


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Tokens (N, D) -> (gh, gw, 3) uint8: the first three principal components over this image's
    tokens, each scaled to [0, 1] by its own range; signs fixed so the largest loading is positive
    (the same image gives the same colours)."""
    x = tokens.detach().float().cpu()
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    proj = torch.nn.functional.pad(x @ comps.T, (0, 3 - len(comps)))  # (N, 3): zeros where N or D < 3
    lo, hi = proj.min(0).values, proj.max(0).values
    unit = (proj - lo) / (hi - lo).clamp_min(1e-8)
    return (unit.reshape(*grid, 3).numpy() * 255).round().astype(np.uint8)


def heat_map(values: np.ndarray, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """(gh, gw) floats -> (gh, gw, 3) uint8 through matplotlib's viridis (dark low, yellow high)."""
    from matplotlib import colormaps
    unit = np.clip((values - vmin) / (vmax - vmin), 0, 1)
    return (colormaps["viridis"](unit)[..., :3] * 255).round().astype(np.uint8)


def grid_picture(images: torch.Tensor, nrow: int) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> one picture of them in rows of ``nrow``, 2 px white gaps."""
    from torchvision.utils import make_grid
    return picture(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0))  # pad 1.0: white
