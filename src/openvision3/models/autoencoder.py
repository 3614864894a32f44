"""What ``ov3 train-vae`` trains beside the autoencoder itself (built by vae.py's
``build_autoencoder``): one pass of it as a module, and the optional PatchGAN discriminator. Once
trained and saved, the autoencoder is loaded frozen through ``FrozenVAE`` (vae.py)."""
from __future__ import annotations

from torch import nn


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
