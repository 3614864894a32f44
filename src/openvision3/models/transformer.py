"""The pre-norm transformer every tower is built on, with open_clip's parameter names [C].

``Transformer`` / ``ResidualAttentionBlock`` keep the state-dict layout of open_clip's classes
(``resblocks.{i}.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``), the layout of the released OV3 towers, so they load and export without renaming.
In training the packed in-projection is one ``F.linear`` on the batch-first tokens and SDPA runs on
views of it, not ``nn.MultiheadAttention``'s slower sequence-first path (docs/performance.md, "The
encoder against timm's"). At inference (eval mode, no gradients, no mask) the block calls the fused
kernel ``nn.MultiheadAttention`` calls there, so a released tower gives open_clip's outputs bit for bit.

Gradient checkpointing (``grad_checkpointing = True``) recomputes each block in backward on
the path its forward took: the same SDPA kernels (a ``sdpa_kernel`` context around the forward
is no longer active during backward), autocast state and RNG state.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters and initialisation."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"tower width {width} is not divisible by heads {heads}")
        self.embed_dim, self.num_heads, self.head_dim = width, heads, width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention._reset_parameters, in its order: a seed builds the same weights
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _inference_kernel(self, x: torch.Tensor, attn_mask) -> bool:
        """nn.MultiheadAttention's own conditions for its fused inference kernel (its "fast path")."""
        return (not self.training and attn_mask is None and self.num_heads % 2 == 0
                and not (torch.is_grad_enabled() and (x.requires_grad or self.in_proj_weight.requires_grad))
                and not torch.is_autocast_enabled() and x.dtype == self.in_proj_weight.dtype
                and x.device.type in ("cpu", "cuda") and torch.backends.mha.get_fastpath_enabled()
                and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self._inference_kernel(x, attn_mask):
            return torch._native_multi_head_attention(
                x, x, x, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
                self.out_proj.weight, self.out_proj.bias, None, False, True, None)[0]
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


def checkpointed(fn, *args):
    """``fn(*args)`` with its activations recomputed in backward instead of kept, on the forward's
    path: same SDPA kernels, autocast (torch's checkpoint keeps it) and RNG state."""
    if torch.compiler.is_compiling():  # the compiled graph fixes the kernels itself
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)
    from torch.nn.attention import _cur_sdpa_kernel_backends, sdpa_kernel
    backends = _cur_sdpa_kernel_backends()
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True,
                      context_fn=lambda: (contextlib.nullcontext(), sdpa_kernel(backends)))


class Transformer(nn.Module):
    """``layers`` pre-norm blocks over batch-first tokens (B, N, width)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.width, self.layers, self.batch_first = width, layers, True
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))

    def get_cast_dtype(self) -> torch.dtype:  # what open_clip's TextTransformer asks its tower
        return self.resblocks[0].mlp.c_fc.weight.dtype if self.layers else torch.float32

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self.resblocks:
            x = checkpointed(block, x, attn_mask) if recompute else block(x, attn_mask)
        return x


def replacing(tower: nn.Module) -> Transformer:
    """Our ``Transformer`` holding the weights of an open_clip ``Transformer`` (e.g. the one inside
    open_clip's TextTransformer); built without drawing from the RNG, so seeded models stay as
    they were."""
    first = tower.resblocks[0]
    with torch.random.fork_rng(devices=[]):
        ours = Transformer(tower.width, tower.layers, first.attn.num_heads, first.mlp.c_fc.out_features / tower.width)
    ours.load_state_dict(tower.state_dict())
    return ours
