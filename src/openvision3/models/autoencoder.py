"""The trainable autoencoder of ``ov3 train-vae``: a diffusers ``AutoencoderKL`` built from its
shape, one pass of it as a module, and the optional PatchGAN discriminator. Once trained and
saved, the autoencoder is loaded frozen through ``FrozenVAE`` (vae.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError


def build_autoencoder(arch):
    """``arch``: the autoencoder's shape (block_out_channels, layers_per_block, latent_channels,
    norm_num_groups, mid_block_attention, logvar_init)."""
    from diffusers import AutoencoderKL

    n = len(arch.block_out_channels)
    if any(c % arch.norm_num_groups for c in arch.block_out_channels):
        raise ConfigError(f"arch.norm_num_groups={arch.norm_num_groups} must divide every "
                          f"arch.block_out_channels {arch.block_out_channels}")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch.block_out_channels), layers_per_block=arch.layers_per_block,
        latent_channels=arch.latent_channels, norm_num_groups=arch.norm_num_groups,
        mid_block_add_attention=arch.mid_block_attention, scaling_factor=1.0)
    with torch.no_grad():  # conv_out emits [mean; logvar]: start the log-variance at logvar_init
        conv = vae.encoder.conv_out
        conv.weight[arch.latent_channels:] = 0.0
        conv.bias[arch.latent_channels:] = arch.logvar_init
    return vae


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (pix2pix / taming style) for the optional adversarial term."""

    def __init__(self, ch: int = 32):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), act,
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(8, ch * 2), act,
            nn.Conv2d(ch * 2, ch * 4, 4, 1, 1), nn.GroupNorm(8, ch * 4), act,
            nn.Conv2d(ch * 4, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)


class Autoencode(nn.Module):
    """One pass of the autoencoder as a module (so DDP sees it): images -> (reconstructions,
    posterior), decoding a sample of the posterior."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        post = self.vae.encode(x).latent_dist
        return self.vae.decode(post.sample()).sample, post
