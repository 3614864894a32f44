"""The space the generator works in: which tokens, in which scale, and how they become pixels.

Two kinds (``GenConfig.space``):
  ``tokens``  the unified tokens z_u of a frozen OpenVision 3 encoder, decoded by its own frozen
              LatentDecoder and VAE decoder (the paper's setting; also the understanding-only
              encoder of the comparison, with a decoder trained afterwards on its frozen tokens).
  ``vae``     the frozen VAE's latents, patchified exactly as the encoder's first layer cuts them
              (patch p: C x p x p channels per token on the same grid), decoded by the VAE alone
              (the SD-VAE + SiT analogue).

Scale. The latent decoder layer-normalises each token before anything else (models/decoder.py),
so what it *reads* is LN(z_u): the per-token norm and offset of z_u carry nothing for pixels. We
therefore generate LN(z_u), as RAE generates its encoder's final-LayerNorm output [C], and then
standardise every channel with its mean and std over the training tokens (RAE's normalisation
statistics [C]). The diffusion model sees unit-scale channels (what the noise schedule assumes);
``TokenStats.denormalize`` hands the decoder tokens in its own scale. The statistics are computed
once, when the token cache is built, and saved inside the generator (generator.safetensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class TokenStats:
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    @classmethod
    def from_tokens(cls, chunks) -> "TokenStats":
        """Per-channel mean / std over every token of every sample (float64 sums, one pass)."""
        n, s, s2 = 0, None, None
        for x in chunks:
            x = x.reshape(-1, x.shape[-1]).double()
            s = x.sum(0) if s is None else s + x.sum(0)
            s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
            n += x.shape[0]
        mean = s / n
        std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
        return cls(mean.float(), std.float().clamp_min(1e-4))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.std.to(x.device) + self.mean.to(x.device)

    def state_dict(self) -> dict:
        return {"stats.mean": self.mean.contiguous(), "stats.std": self.std.contiguous()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TokenStats":
        return cls(state["stats.mean"].float(), state["stats.std"].float())


class TokenSpace:
    """A frozen OpenVision 3 model seen as ``images -> tokens -> images`` for one space kind."""

    def __init__(self, model, kind: str = "tokens"):
        if kind not in ("tokens", "vae"):
            raise ValueError(f"unknown token space '{kind}'; choose tokens or vae")
        self.model, self.kind = model.eval().requires_grad_(False), kind
        self.patch = model.cfg.model.patch_size
        self.resolution = model.image_size
        self.grid = model.token_grid(self.resolution)
        c = model.vae.latent_channels
        self.token_dim = model.cfg.model.encoder.width if kind == "tokens" else c * self.patch ** 2

    @classmethod
    def load(cls, model_dir: str | Path, kind: str = "tokens", device="cpu") -> "TokenSpace":
        from ..models.openvision3 import OpenVision3
        return cls(OpenVision3.from_pretrained(model_dir).to(device), kind)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    # ---------------------------------------------------------------- images -> tokens
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the raw tokens the cache stores (B, N, D): z_u, or patchified latents."""
        images = images.to(self.device)
        if self.kind == "tokens":
            return self.model.encode_image(images)
        return self.patchify(self.model.vae.encode(images))

    @torch.no_grad()
    def encode_with_latents(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (unified tokens z_u, the VAE latents they were computed from); ``tokens`` kind only."""
        if self.kind != "tokens":
            raise ValueError("encode_with_latents needs the tokens space")
        latents = self.model.vae.encode(images.to(self.device))
        return self.model.encoder(latents), latents

    def decoder_view(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw tokens -> what is generated: LN(z_u) (what the latent decoder reads) or the latents."""
        return F.layer_norm(raw.float(), raw.shape[-1:]) if self.kind == "tokens" else raw.float()

    # ---------------------------------------------------------------- tokens -> images
    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens in the decoder's own scale (B, N, D) -> images in [-1, 1]."""
        tokens = tokens.to(self.device)
        if self.kind == "tokens":
            latents = self.model.decoder(tokens, self.grid)  # eval mode: no noise augmentation
        else:
            latents = self.unpatchify(tokens)
        return self.model.vae.decode(latents).clamp(-1, 1)

    # ---------------------------------------------------------------- latents <-> tokens
    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h/p * w/p, C p p), the encoder's conv1 cut (channel-major patches)."""
        b, c, h, w = z.shape
        p = self.patch
        z = z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return z.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        (gh, gw), p = self.grid, self.patch
        c = x.shape[-1] // (p * p)
        x = x.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, gh * p, gw * p)


__all__ = ["TokenSpace", "TokenStats"]
