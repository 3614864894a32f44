"""The unified encoder: a ViT over frozen-VAE latents (patch 2 -> 16x total downsampling [P]).

Layout follows the released OV3 vision towers [C] (open_clip VisionTransformer with a
16-channel conv1, no ln_pre, fixed 2-D sin-cos positions with a class slot, average pooling,
final LayerNorm after pooling, projection): ``forward`` returns the pre-pool tokens, which are
the *unified tokens* z_u, and ``pool`` maps them to the contrastive embedding.

``pool_type`` "max" (ours [?], used by the CPU demo) takes the per-channel maximum over tokens
instead of the mean: with a few small objects among 64 tokens, the mean is dominated by the
background and a short run learns which colours and shapes are present far more slowly
(docs/results.md). It changes only the contrastive read-out, not the unified tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import POOL_TYPES, TowerConfig
from .vit import LayerNorm, build_transformer, clip_init_, sincos_2d


class UnifiedEncoder(nn.Module):
    def __init__(self, in_channels: int, tower: TowerConfig, patch_size: int = 2, embed_dim: int = 512,
                 pool_type: str = "mean"):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"unknown pool type '{pool_type}'; choose one of {', '.join(POOL_TYPES)}")
        self.pool_type = pool_type
        width = tower.width
        self.in_channels, self.patch_size, self.width, self.embed_dim = in_channels, patch_size, width, embed_dim
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.transformer = build_transformer(tower)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))
        clip_init_(self.transformer)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> unified tokens (B, h/p * w/p, width)."""
        x = self.transformer(self.embed(latents))
        return x[:, 1:]  # avg pooling excludes the class slot [C]

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> the transformer's input (B, 1 + N, width): class slot first, then
        the patch tokens, fixed positions added (the transformers vision tower walks the blocks itself)."""
        if latents.ndim != 4 or latents.shape[1] != self.in_channels:
            raise ValueError(f"encoder expects latents (B, {self.in_channels}, h, w), got {tuple(latents.shape)}"
                             " (does the VAE's latent channel count match the encoder?)")
        h, w = latents.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {self.patch_size}")
        x = self.conv1(latents).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        gh, gw = h // self.patch_size, w // self.patch_size
        return x + sincos_2d(self.width, gh, gw, cls_token=True, device=x.device, dtype=x.dtype)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unified tokens -> pooled embedding (B, embed_dim): mean (or max), ln_post, proj [C]."""
        pooled = tokens.amax(dim=1) if self.pool_type == "max" else tokens.mean(dim=1)
        return self.ln_post(pooled) @ self.proj
