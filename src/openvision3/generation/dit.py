"""DiT-DH: a DiT body plus RAE's shallow, wide head, predicting the flow velocity of a token grid.

    x_t (B, N, D) ──Linear──▶ + 2-D sin-cos ──▶ body: adaLN-Zero blocks (width W), condition c = t + y
                                                 │ s = SiLU(s + t)  ─Linear─▶ per-token condition (width H)
    x_t ──Linear──▶ head: adaLN-Zero blocks (width H), conditioned per token on s ──▶ adaLN final ─▶ v (B, N, D)

The body is DiT's (Peebles & Xie): patch 1 on the token grid (each unified token is one patch),
fixed 2-D sin-cos positions, a sinusoidal timestep embedding and a class embedding with one extra
"null" class for classifier-free guidance (label dropout 0.1 [C]). The head is RAE's DDT head [C]:
a few blocks of width H >= the token dimension that re-read x_t and are modulated per token by the
body's output, so a narrow body can still predict a wide token. RAE's finding is that the network
must be at least as wide as the tokens; the wide head is their cheap way to get there. Head depth
0 gives a plain DiT (the body's own final layer), which docs/generation.md compares at our scale.

Built on timm's ``Attention`` (torch SDPA inside) and ``Mlp``; the positions are the project's
``models.vit.sincos_2d``. Differences from RAE's released blocks [C] (SwiGLU, RMSNorm, RoPE): we
keep DiT's LayerNorm / GELU-tanh MLP / additive sin-cos, as the issue asks [?].
"""
from __future__ import annotations

from functools import partial

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

from ..models.transformer import checkpointed
from ..models.vit import sincos_2d
from .config import DiTConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of 1000 t (DiT's, cos first: diffusers' helper) -> MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = get_timestep_embedding(1000 * t.float(), self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class ids -> embeddings; id ``num_classes`` is the null (unconditional) class. In training,
    each label is replaced by the null class with probability ``dropout`` [C]."""

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + 1, width)

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(y.shape[0], device=y.device) >= self.dropout
        return torch.where(keep, y, torch.full_like(y, self.num_classes))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            y = self.drop(y)
        return self.table(y)


class AdaLNBlock(nn.Module):
    """DiT's adaLN-Zero block; ``c`` is (B, 1, W) for the whole sequence or (B, N, W) per token."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"DiT width {width} is not divisible by {heads} heads")
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiTDH(nn.Module):
    """``forward(x_t (B, N, D), t (B,), y (B,)) -> velocity (B, N, D)`` on a ``grid`` of N tokens."""

    def __init__(self, token_dim: int, grid: tuple[int, int], num_classes: int, cfg: DiTConfig):
        super().__init__()
        self.token_dim, self.grid, self.num_classes = token_dim, tuple(grid), num_classes
        self.grad_checkpointing = False  # recompute each block in backward (train.grad_checkpointing)
        w = cfg.width
        self.x_embed = nn.Linear(token_dim, w)  # patch 1 on the token grid
        self.t_embed = TimestepEmbedder(w)
        self.y_embed = LabelEmbedder(num_classes, w, cfg.class_dropout)
        self.body = nn.ModuleList(AdaLNBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.has_head = cfg.head_depth > 0
        if self.has_head:
            h = cfg.head_width
            self.s_proj = nn.Linear(w, h)
            self.head_x_embed = nn.Linear(token_dim, h)
            self.head = nn.ModuleList(AdaLNBlock(h, cfg.head_heads, cfg.mlp_ratio) for _ in range(cfg.head_depth))
        self.final = FinalLayer(cfg.head_width if self.has_head else w, token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        blocks = [*self.body, *(self.head if self.has_head else [])]
        for layer in [*(block.ada[-1] for block in blocks), self.final.ada[-1], self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.grid[0] * self.grid[1] or x.shape[2] != self.token_dim:
            raise ValueError(f"DiT-DH expects tokens (B, {self.grid[0] * self.grid[1]}, {self.token_dim}), "
                             f"got {tuple(x.shape)}")
        t_emb = self.t_embed(t)
        c = (t_emb + self.y_embed(y))[:, None]  # one condition for every token
        s = self.x_embed(x) + sincos_2d(self.x_embed.out_features, *self.grid, device=x.device, dtype=x.dtype)
        for block in self.body:
            s = self._block(block, s, c)
        if not self.has_head:
            return self.final(s, c)
        s = self.s_proj(nn.functional.silu(s + t_emb[:, None]))  # [C] RAE: per-token head condition
        h = self.head_x_embed(x)
        for block in self.head:
            h = self._block(block, h, s)
        return self.final(h, s)

    def _block(self, block: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpointed(block, x, c)
        return block(x, c)


def count_parameters(model: nn.Module) -> dict:
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("head", "s_proj", "final")))
    return {"total": sum(p.numel() for p in model.parameters()), "body": body}


__all__ = ["DiTDH", "AdaLNBlock", "FinalLayer", "TimestepEmbedder", "LabelEmbedder", "count_parameters"]
