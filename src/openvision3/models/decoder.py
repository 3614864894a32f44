"""Latent decoder: unified tokens -> VAE latents (a ViT with patch 1 over the token grid [S]).

It owns the reconstruction branch's input treatment, as RAE's decoder does [C]:
per-token normalisation, then noise augmentation z~ = z + sigma * eps with sigma ~ U[0, tau]
per sample, in training only [S]. Normalising first keeps the noise meaningful: the encoder
cannot out-grow it by inflating its token norms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TowerConfig
from .vit import LayerNorm, build_transformer, clip_init_, sincos_2d, token_grid


class LatentDecoder(nn.Module):
    def __init__(self, token_dim: int, tower: TowerConfig, latent_channels: int, patch_size: int = 2,
                 noise_tau: float = 0.8):
        super().__init__()
        self.width, self.patch_size, self.latent_channels = tower.width, patch_size, latent_channels
        self.noise_tau = noise_tau
        self.embed = nn.Linear(token_dim, tower.width)  # patch 1 on the token grid
        self.transformer = build_transformer(tower)
        self.ln_out = LayerNorm(tower.width)
        self.head = nn.Linear(tower.width, patch_size * patch_size * latent_channels)
        clip_init_(self.transformer)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None,
                sigma: float | None = None) -> torch.Tensor:
        """tokens (B, N, D) -> latents (B, C, gh * p, gw * p). Noise only in training mode, unless
        ``sigma`` asks for that fixed level (how robust the decoder is to noisy tokens, at inference)."""
        gh, gw = grid or token_grid(tokens.shape[1])
        x = F.layer_norm(tokens, tokens.shape[-1:])
        if sigma is not None:
            x = x + sigma * torch.randn_like(x)
        elif self.training and self.noise_tau > 0:  # sigma ~ U[0, tau] per sample
            x = x + torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) * self.noise_tau * torch.randn_like(x)
        x = self.embed(x) + sincos_2d(self.width, gh, gw, device=x.device, dtype=x.dtype)
        x = self.head(self.ln_out(self.transformer(x)))  # (B, N, p*p*C)
        b, p, c = x.shape[0], self.patch_size, self.latent_channels
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # unpatchify
        return x.reshape(b, c, gh * p, gw * p)
