"""FrozenVAE: the fixed pixel <-> latent map under the unified encoder.

* ``encode`` returns the posterior mean, runs under ``torch.no_grad`` and in fp32 by default.
* ``decode`` is differentiable w.r.t. its input, so pixel / LPIPS losses reach the latent decoder
  that predicted the latents; the VAE's own weights never require grad.
* Latent normalisation (``VAEConfig.convention``):
  ``scale``       z = mean * scaling_factor             (released OV3 code [C], default)
  ``shift_scale`` z = (mean - shift_factor) * scaling_factor   (diffusers FLUX pipelines)
* Precision: fp32 unless ``compute_dtype`` (attribute) or ``autocast_dtype`` (argument) names a
  dtype, e.g. ``torch.bfloat16``; then encode/decode run under autocast in that dtype and return
  fp32. Choosing it is the caller's business (bf16 was 2-4x faster for small VAEs on our CPU).
"""
from __future__ import annotations

import contextlib
import os
import typing
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, LatentConvention, VAEArchConfig, VAEConfig

# source alias -> (hub id, subfolder)
VAE_ALIASES: dict[str, tuple[str, str | None]] = {
    "flux": ("black-forest-labs/FLUX.1-dev", "vae"),  # [P] gated repo
    # [C] the ungated mirror used by the released OV3 inference code
    # (UCSC-VLAA/OpenVision, openvision3_test.py: --vae_id default).
    "flux-ov3": ("Letian2003/black-forest-labs_FLUX.1-dev_vae", None),
    "sd": ("stabilityai/sd-vae-ft-mse", None),
}
CONVENTIONS = typing.get_args(LatentConvention)
_RANGE_LIMIT = 1.5  # inputs must be in [-1, 1]; [0, 1] passes, 0..255 fails


class VAELoadError(ConfigError):
    """The VAE named by ``vae.source`` cannot be loaded. One line meant for the user."""


def build_autoencoder(arch: VAEArchConfig, scaling_factor: float = 1.0, shift_factor: float | None = None):
    """A randomly initialised ``AutoencoderKL`` of the shape ``arch`` (model.vae for
    ``source: inline``, or ``ov3 train-vae``'s ``arch``)."""
    from diffusers import AutoencoderKL

    if any(c % arch.norm_num_groups for c in arch.block_out_channels):
        raise ConfigError(f"norm_num_groups={arch.norm_num_groups} must divide every "
                          f"block_out_channels {arch.block_out_channels}")
    n = len(arch.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch.block_out_channels), layers_per_block=arch.layers_per_block,
        latent_channels=arch.latent_channels, norm_num_groups=arch.norm_num_groups,
        mid_block_add_attention=arch.mid_block_attention,
        scaling_factor=scaling_factor, shift_factor=shift_factor)
    if arch.logvar_init is not None:
        with torch.no_grad():  # conv_out emits [mean; logvar]: start the log-variance at logvar_init
            conv = vae.encoder.conv_out
            conv.weight[arch.latent_channels:] = 0.0
            conv.bias[arch.latent_channels:] = arch.logvar_init
    return vae


def load_autoencoder(source: str):
    """AutoencoderKL from an alias, a local diffusers directory, or a hub id (``owner/name[/subfolder]``).

    Hub ids are looked up in the local HF cache first; the network is only tried after that, and
    only when the Hub answers (``hub_access``).
    """
    from diffusers import AutoencoderKL

    path = Path(os.path.expanduser(source))
    if path.is_dir():
        if (path / "config.json").exists():
            return AutoencoderKL.from_pretrained(str(path), low_cpu_mem_usage=False)  # no accelerate nag
        if (path / "vae" / "config.json").exists():  # a whole pipeline directory
            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", low_cpu_mem_usage=False)
        raise VAELoadError(f"cannot load VAE '{source}': directory has no config.json (nor vae/config.json)")
    repo, subfolder = VAE_ALIASES.get(source, (source, None))
    parts = repo.split("/")
    if source not in VAE_ALIASES and len(parts) > 2:  # owner/name/subfolder
        repo, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    if len(repo.split("/")) != 2:
        raise VAELoadError(f"cannot load VAE '{source}': not an alias ({', '.join(VAE_ALIASES)}, inline), "
                           "a local diffusers directory, or a hub id owner/name")
    from ..hub_access import cached_snapshot, hub_unreachable_reason, snapshot

    # diffusers is only ever given a local directory: its own hub path retries for half a minute
    # without a network (and passes huggingface_hub a deprecated argument)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    kwargs["low_cpu_mem_usage"] = False  # avoids diffusers' accelerate nag; the VAE is small
    cached = cached_snapshot(repo)
    if cached is not None:
        with contextlib.suppress(Exception):  # an incomplete snapshot: download what is missing below
            return AutoencoderKL.from_pretrained(str(cached), **kwargs)
    reason = hub_unreachable_reason()
    if reason is None:
        prefix = f"{subfolder}/" if subfolder else ""
        try:
            directory = snapshot(repo, allow_patterns=[f"{prefix}config.json", f"{prefix}*.safetensors"])
            return AutoencoderKL.from_pretrained(str(directory), **kwargs)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise VAELoadError(
        f"cannot load VAE '{source}' ({repo}{'/' + subfolder if subfolder else ''}): offline and not in "
        f"the local HF cache ({reason}); pass a local diffusers directory or vae.source=inline")


class FrozenVAE(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` with OV3's latent normalisation."""

    def __init__(self, cfg: VAEConfig | None = None, compute_dtype: torch.dtype | None = None):
        super().__init__()
        cfg = cfg or VAEConfig()
        if cfg.convention not in CONVENTIONS:
            raise ConfigError(f"unknown vae.convention '{cfg.convention}'; valid: {', '.join(CONVENTIONS)}")
        self.source, self.convention = cfg.source, cfg.convention
        if cfg.source == "inline":  # a random VAE: identity factors unless the config says otherwise
            scaling = 1.0 if cfg.scaling_factor is None else cfg.scaling_factor
            self.vae = build_autoencoder(cfg, scaling, cfg.shift_factor)
        else:
            self.vae = load_autoencoder(cfg.source)
        self.vae.requires_grad_(False)
        self.vae.eval()
        vc = self.vae.config
        self.latent_channels = int(vc.latent_channels)
        self.downsample = 2 ** (len(vc.block_out_channels) - 1)
        # resolved: the config's value, else the VAE's own, else identity
        self.scaling_factor = float(cfg.scaling_factor if cfg.scaling_factor is not None
                                    else getattr(vc, "scaling_factor", None) or 1.0)
        self.shift_factor = float(cfg.shift_factor if cfg.shift_factor is not None
                                  else getattr(vc, "shift_factor", None) or 0.0)
        self.compute_dtype = compute_dtype  # None = fp32; e.g. torch.bfloat16 to run under autocast
        # channels-last weights and inputs (a speed switch; outputs are returned contiguous)
        self.channels_last = bool(getattr(cfg, "channels_last", False))
        if self.channels_last:
            self.vae.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        # Frozen: stays in eval mode whatever the parent module asks.
        return super().train(False)

    def _precision(self, x: torch.Tensor, autocast_dtype: torch.dtype | None):
        dtype = autocast_dtype if autocast_dtype is not None else self.compute_dtype
        if dtype is None or dtype == torch.float32:
            return torch.autocast(x.device.type, enabled=False)  # fp32 even inside a bf16 region
        return torch.autocast(x.device.type, dtype=dtype)

    def _check_images(self, images: torch.Tensor):
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"FrozenVAE.encode expects images of shape (B, 3, H, W), got {shape}")
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if hi > _RANGE_LIMIT or lo < -_RANGE_LIMIT:
            raise ValueError(f"FrozenVAE.encode expects images in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(0..255 input? scale it with x / 127.5 - 1)")
        (h, w), f = images.shape[-2:], self.downsample
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the VAE downsample factor {f}")

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def normalize(self, mean: torch.Tensor) -> torch.Tensor:
        if self.convention == "shift_scale":
            return (mean - self.shift_factor) * self.scaling_factor
        return mean * self.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        if self.convention == "shift_scale":
            return latents / self.scaling_factor + self.shift_factor
        return latents / self.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """images (B,3,H,W) in [-1,1] -> normalised posterior-mean latents (B,C,H/f,W/f), fp32."""
        self._check_images(images)
        with self._precision(images, autocast_dtype):
            mean = self.vae.encode(self._layout(images.float())).latent_dist.mean
        return self.normalize(mean.float()).contiguous()

    def decode(self, latents: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """normalised latents (B,C,h,w) -> images (B,3,h*f,w*f), about [-1,1] (not clamped, so
        gradients survive), fp32. Differentiable w.r.t. ``latents``."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"FrozenVAE.decode expects latents (B, {self.latent_channels}, h, w), "
                             f"got {tuple(latents.shape)}")
        with self._precision(latents, autocast_dtype):
            images = self.vae.decode(self._layout(self.denormalize(latents.float()))).sample
        return images.float().contiguous()

    def save_pretrained(self, directory: str | os.PathLike):
        """Diffusers format; the resolved factors are written into its config so that
        ``FrozenVAE(VAEConfig(source=directory, convention=...))`` reproduces this module."""
        self.vae.register_to_config(scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)
        self.vae.save_pretrained(str(directory), safe_serialization=True)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "resolved": "/".join(filter(None, VAE_ALIASES.get(self.source, (self.source,)))),
            "convention": self.convention,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "parameters": sum(p.numel() for p in self.vae.parameters()),
        }


__all__ = ["FrozenVAE", "VAELoadError", "VAE_ALIASES", "CONVENTIONS", "load_autoencoder"]
