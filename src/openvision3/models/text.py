"""Text side: a CLIP text encoder (contrastive) and a caption decoder, both reading unified tokens.

TextEncoder is open_clip's TextTransformer (causal, pooled at the end-of-text token) [P][C], its
blocks swapped for ours (same names and weights: models/transformer.py).
CaptionDecoder is a decoder over [projected image tokens; caption tokens] as in OpenVision 2 [C],
with a prefix mask (image tokens see each other, caption tokens see all image tokens and the
caption so far) [?], loss on caption tokens only, and an optional random subset of image tokens
kept in training (``caption_keep_ratio``; OpenVision 2 keeps 25-35 %) [C].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer
from torch import nn

from ..config import TextTowerConfig
from .transformer import replacing
from .vit import LayerNorm, build_transformer, clip_init_


class TextEncoder(nn.Module):
    def __init__(self, tower: TextTowerConfig, vocab_size: int, embed_dim: int):
        super().__init__()
        self.context_length = tower.context_length
        self.model = TextTransformer(context_length=tower.context_length, vocab_size=vocab_size,
                                     width=tower.width, heads=tower.heads, layers=tower.layers,
                                     mlp_ratio=tower.mlp_ratio, output_dim=embed_dim, pool_type="argmax")
        self.model.transformer = replacing(self.model.transformer)
        self.model.init_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) from the model's tokenizer -> features (B, embed_dim)."""
        return self.model(fit_context(tokens, self.context_length))


def fit_context(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad token ids to ``length``; a cropped row keeps its end-of-text id last
    (argmax pooling and the caption target both rely on it)."""
    b, t = tokens.shape
    if t == length:
        return tokens
    if t < length:
        return F.pad(tokens, (0, length - t))
    eot = tokens.max(dim=1).values  # end-of-text is the largest id (both tokenizers, data/tokenizer.py)
    cropped = tokens[:, :length].clone()
    overflow = tokens[:, length:].ne(0).any(dim=1)
    cropped[overflow, -1] = eot[overflow]
    return cropped


class CaptionDecoder(nn.Module):
    def __init__(self, token_dim: int, tower: TextTowerConfig, vocab_size: int, keep_ratio: float = 1.0):
        super().__init__()
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"caption_keep_ratio must be in (0, 1], got {keep_ratio}")
        self.context_length, self.keep_ratio = tower.context_length, keep_ratio
        self.image_proj = nn.Sequential(LayerNorm(token_dim), nn.Linear(token_dim, tower.width))
        self.token_embedding = nn.Embedding(vocab_size, tower.width)
        self.positional_embedding = nn.Parameter(torch.randn(tower.context_length, tower.width) * 0.01)
        self.transformer = build_transformer(tower)
        self.ln_final = LayerNorm(tower.width)
        self.lm_head = nn.Linear(tower.width, vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.lm_head.weight = self.token_embedding.weight  # tied [?]: halves the vocabulary's parameters
        clip_init_(self.transformer)

    def keep_subset(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """A random subset of image tokens per sample (training only), in their original order."""
        b, n, d = image_tokens.shape
        k = max(1, math.ceil(n * self.keep_ratio))
        idx = torch.rand(b, n, device=image_tokens.device).argsort(dim=1)[:, :k].sort(dim=1).values
        return image_tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))

    def hidden(self, image_tokens: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, width) at the text positions."""
        prefix = self.image_proj(image_tokens)
        n = prefix.shape[1]
        x = torch.cat([prefix, self.token_embedding(text_in) + self.positional_embedding[:text_in.shape[1]]], dim=1)
        # additive prefix mask: full attention among the image tokens, causal after them
        mask = torch.full((x.shape[1],) * 2, float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        mask[:n, :n] = 0
        return self.ln_final(self.transformer(x, attn_mask=mask)[:, n:])

    def logits(self, image_tokens: torch.Tensor, text_in: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(image_tokens, text_in))

    def forward(self, image_tokens: torch.Tensor, tokens: torch.Tensor, pad_id: int = 0):
        """Teacher forcing. Returns (logits (M, V), targets (M,)) for the M non-pad target positions
        only: the vocabulary projection and its softmax dominate a small model's step (49k
        classes), and pad positions carry no loss anyway."""
        tokens = fit_context(tokens, self.context_length)
        if self.training and self.keep_ratio < 1:
            image_tokens = self.keep_subset(image_tokens)
        targets = tokens[:, 1:]
        keep = targets != pad_id
        return self.lm_head(self.hidden(image_tokens, tokens[:, :-1])[keep]), targets[keep]

    @torch.no_grad()
    def generate(self, image_tokens: torch.Tensor, sot_id: int, eot_id: int, max_len: int = 32) -> torch.Tensor:
        """Greedy, batched decoding. Returns ids (B, <= max_len) starting with sot; 0 after eot."""
        b = image_tokens.shape[0]
        out = torch.full((b, 1), sot_id, dtype=torch.long, device=image_tokens.device)
        done = torch.zeros(b, dtype=torch.bool, device=image_tokens.device)
        for _ in range(min(max_len, self.context_length) - 1):
            next_id = self.logits(image_tokens, out)[:, -1].argmax(dim=-1)
            next_id = torch.where(done, torch.zeros_like(next_id), next_id)
            out = torch.cat([out, next_id[:, None]], dim=1)
            done |= next_id.eq(eot_id)
            if done.all():
                break
        return out
