"""The ``ov3 train-vae`` configuration: ``VAETrainConfig`` and its loaders. The autoencoder's shape
(``arch``) is config.py's ``VAEArchConfig``, the same dataclass ``model.vae`` uses."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DataConfig, LpipsNet, Precision, VAEArchConfig, load_values
from ..config_build import Fraction, NonNegFloat, NonNegInt, PosInt, _build


@dataclass
class VAETrainConfig:
    # Measured on shapes at 64 px (configs/vae_shapes64.yaml): 4x, small, cheap to backprop through;
    # no mid-block attention (costly and unneeded at 64 px); the log-variance bias starts at -8, an
    # almost deterministic posterior (measured +2 dB in a 150 s prototype against diffusers' init).
    arch: VAEArchConfig = field(default_factory=lambda: VAEArchConfig(
        block_out_channels=[16, 32, 64], layers_per_block=1, latent_channels=8, norm_num_groups=16,
        mid_block_attention=False, logvar_init=-8.0))
    # Mild/no augmentation: the VAE should reproduce the images the OV3 model will see.
    data: DataConfig = field(default_factory=lambda: DataConfig(resolution=64, augment=False))
    val_split: str = "val"  # held-out split of data.val used for the final PSNR / SSIM
    eval_samples: PosInt = 256
    steps: PosInt = 400
    batch_size: PosInt = 16
    lr: NonNegFloat = 2e-3
    warmup_steps: NonNegInt = 20
    min_lr_ratio: Fraction = 0.0
    weight_decay: NonNegFloat = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: NonNegFloat = 1.0
    max_bad_steps: PosInt = 5  # non-finite steps in a row before the run stops (train/run.py)
    l1_weight: NonNegFloat = 1.0
    # L1's gradient has the same size at every pixel, so small objects (a few % of the pixels) are
    # learnt late; an MSE term weighs their large errors more (and PSNR is an MSE metric).
    mse_weight: NonNegFloat = 0.0
    kl_weight: NonNegFloat = 1e-6  # tiny, as in SD/FLUX VAEs: a regulariser, not a bottleneck
    lpips_weight: NonNegFloat = 0.0
    lpips_net: LpipsNet = "alex"
    lpips_start: Fraction = 0.0  # fraction of the steps after which LPIPS is on (its backward is costly)
    gan_weight: NonNegFloat = 0.0  # PatchGAN hinge loss; 0 = off (no discriminator is built)
    gan_start: Fraction = 0.5  # fraction of the steps after which the GAN loss is on
    precision: Precision = "auto"  # auto: bf16 on CUDA or on CPUs with native bf16 (train/precision.py)
    log_every: int = 10
    eval_every: int = 0  # steps between held-out PSNR evaluations; 0 = only at the end
    checkpoint_every: int = 200
    keep_last: NonNegInt = 1
    seed: int = 0


def get_vae_config(name_or_yaml: str | None = None, overrides: list[str] | None = None) -> VAETrainConfig:
    """A preset name (``configs/NAME.yaml``) or YAML path, then ``key=value`` overrides."""
    return _build(VAETrainConfig, load_values(name_or_yaml, overrides), "")


__all__ = ["VAETrainConfig", "get_vae_config"]
