"""Shared transformer parts: the towers' Transformer (models/transformer.py), fixed 2-D sin-cos
positions, CLIP init."""
from __future__ import annotations

import contextlib
import math
from functools import lru_cache

import torch
from torch import nn

from ..config import TowerConfig
from .transformer import LayerNorm, Transformer


def attention_kernels(device: torch.device, choice: str = "auto"):
    """Context choosing the SDPA kernels of every tower for the forward passes inside it (the
    backward uses the kernel its forward chose). ``auto``: the math kernel on CPU, whose backward
    is faster than the CPU flash kernel's for our short token sequences (benchmarks/
    attention_kernels.py); torch's own choice on other devices. ``math``/``default``: forced."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if choice not in ("auto", "math", "default"):
        raise ValueError(f"unknown attention kernel choice '{choice}'; choose auto, math or default")
    if choice == "math" or (choice == "auto" and torch.device(device).type == "cpu"):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def build_transformer(tower: TowerConfig) -> Transformer:
    return Transformer(tower.width, tower.layers, tower.heads, tower.mlp_ratio)


def clip_init_(transformer: Transformer) -> None:
    """CLIP's initialisation (as in open_clip's TextTransformer.init_parameters): residual
    projections scaled down with depth so deep towers start near identity."""
    width, layers = transformer.width, transformer.layers
    if layers == 0:  # a tower without blocks (the VAE-latent floor of the LLaVA probe)
        return
    proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
    attn_std = width ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        attn, mlp = block.attn, block.mlp
        for weight, std in ((attn.in_proj_weight, attn_std), (attn.out_proj.weight, proj_std),
                            (mlp.c_fc.weight, fc_std), (mlp.c_proj.weight, proj_std)):  # the RNG's order
            nn.init.normal_(weight, std=std)
        for bias in (attn.in_proj_bias, attn.out_proj.bias, mlp.c_fc.bias, mlp.c_proj.bias):
            nn.init.zeros_(bias)


@lru_cache(maxsize=32)
def _sincos_2d_cpu(width: int, grid_h: int, grid_w: int, cls_token: bool) -> torch.Tensor:
    # Same formula and float64 arithmetic as open_clip/MAE get_2d_sincos_pos_embed (w first).
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    gy, gx = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def one_axis(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([one_axis(gx), one_axis(gy)], dim=1)  # open_clip puts the w grid first
    if cls_token:
        emb = torch.cat([torch.zeros(1, width, dtype=torch.float64), emb], dim=0)
    return emb.float()


def sincos_2d(width: int, grid_h: int, grid_w: int, cls_token: bool = False,
              device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, recomputed for any grid: (grid_h*grid_w [+1], width)."""
    return _sincos_2d_cpu(width, grid_h, grid_w, cls_token).to(device=device, dtype=dtype)


def token_grid(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid; pass grid=(h, w)")
    return side, side


__all__ = ["LayerNorm", "Transformer", "build_transformer", "clip_init_", "sincos_2d", "token_grid"]
