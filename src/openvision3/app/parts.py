"""What `ov3 serve --model` loaded: a whole OpenVision 3 model, or only a vision tower.

A saved OpenVision3 directory (``save_pretrained``) has every part. An ``ov3 export hf``
directory or a released OV3 tower (hub id, directory or weights file, with its VAE) has the VAE
and the unified encoder only: the page then shows the tokens and says that reconstruction,
understanding and retrieval need the parts such a tower does not ship.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class ServeError(ValueError):
    """A model, generator or option `ov3 serve` cannot use (one line)."""


@dataclass
class Parts:
    source: str
    vae: torch.nn.Module  # FrozenVAE (a whole model) or the tower's own VAE: has .encode, .downsample
    encoder: torch.nn.Module  # UnifiedEncoder, or the tower's ViT over latents (conv1, proj, width)
    image_size: int
    model: torch.nn.Module | None = None  # the whole OpenVision3 when there is one
    tower: torch.nn.Module | None = None  # the transformers tower when that is what was loaded

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // (self.vae.downsample * self.encoder.patch_size)
        return side, side

    @property
    def device(self) -> torch.device:
        return self.encoder.proj.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, R, R) in [-1, 1] -> unified tokens (B, N, D)."""
        if self.tower is not None:  # the tower's last hidden state without its class slot is z_u
            return self.tower(pixel_values=images.to(self.device)).last_hidden_state[:, 1:]
        return self.encoder(self.vae.encode(images.to(self.device)))

    def describe(self) -> str:
        gh, gw = self.grid
        what = ("every part (VAE, unified encoder, latent decoder, text encoder, caption decoder)"
                if self.model is not None else "a vision tower only (VAE + unified encoder)")
        return (f"`{self.source}`: {what}; {self.image_size} px in, {gh} x {gw} = {gh * gw} tokens of "
                f"{self.encoder.width} channels")


def load_parts(source: str, vae: str = "flux-ov3", device: str | None = None) -> Parts:
    """``source``: a saved OpenVision3 directory, an ``ov3 export hf`` directory, or a released
    tower (hub id, directory or weights file; ``vae`` is the VAE it reads). Raises ServeError."""
    from safetensors import SafetensorError
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(source)
    try:
        from ..models.openvision3 import OpenVision3, is_saved_model
        if is_saved_model(path):
            model = OpenVision3.from_pretrained(path).to(dev).eval()
            return Parts(str(source), model.vae, model.encoder, model.image_size, model)
        from ..interop import transformers as hf  # registers the Auto classes
        from ..interop.hub import is_vision_tower_dir
        from ..interop.official import check_source
        if path.is_dir() and is_vision_tower_dir(path):
            tower = hf.OpenVision3VisionModel.from_pretrained(path)
        else:
            check_source(str(source))  # a mistyped path fails here, before the VAE is fetched
            tower = hf.vision_model_from_official(str(source), vae=vae)
    except (OSError, ValueError, SafetensorError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ServeError(f"cannot load model '{source}': {first}") from None
    tower = tower.to(dev).eval()
    return Parts(str(source), tower.vae, tower.encoder, tower.config.image_size, tower=tower)


def load_generator(run: str, device=None):
    """A trained ``ov3 gen train`` run (its EMA weights), or ServeError."""
    from ..generation.generator import Generator, GeneratorError
    try:
        return Generator.load(run, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (GeneratorError, OSError, ValueError, KeyError) as e:
        raise ServeError(f"cannot load generator '{run}': {e}") from None
