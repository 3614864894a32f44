"""The generator's configuration: one dataclass tree for `ov3 gen train|sample|eval|compare`.

Kept apart from the OpenVision 3 ``Config`` (as the VAE trainer's is): a generator run shares only
the data section with an encoder run. Presets and ``key=value`` overrides go through config_build.py,
so errors read the same. Tags as everywhere: [P] paper, [C] the authors' / RAE's released code,
[S] secondary summary, [?] our documented choice. RAE's ImageNet 256 recipe is configs/gen_imagenet_xl.yaml.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from ..config import ConfigError, DataConfig, Precision, load_values
from ..config_build import build_with_preset

TokenSpaceKind = typing.Literal["tokens", "vae"]  # what is generated, see token_space.py
TimeDist = typing.Literal["logit_normal", "uniform"]  # flow.time_dist, see flow.py
SamplerKind = typing.Literal["euler", "heun"]


@dataclass
class DiTConfig:
    """DiT-DH size (dit.py). ``preset`` fills the fields below, then explicit keys override them."""

    preset: str = "s"
    width: int = 384  # body
    depth: int = 12
    heads: int = 6
    head_width: int = 2048  # RAE's shallow wide head [C]; head_depth 0 = a plain DiT
    head_depth: int = 2
    head_heads: int = 16
    mlp_ratio: float = 4.0  # [C]
    class_dropout: float = 0.1  # [C] label dropout for classifier-free guidance


# [C] RAE: DiT-DH-S body 384/12/6 and DiT-DH-XL body 1152/28/16, both with a 2048/2/16 head.
# b: DiT-B's body (768/12/12, DiT paper) with the same head [?]. nano: ours for CPUs [?]: a body
# as wide as the demo encoder's 192-d tokens (RAE: width >= token dim), a 1-layer 256 head (the
# head is modulated per token, so its adaLN costs 6 x width^2 per token: a wider one is most of
# a CPU step).
DIT_PRESETS: dict[str, dict] = {
    "nano": {"width": 192, "depth": 4, "heads": 3, "head_width": 256, "head_depth": 1, "head_heads": 4},
    "s": {"width": 384, "depth": 12, "heads": 6, "head_width": 2048, "head_depth": 2, "head_heads": 16},
    "b": {"width": 768, "depth": 12, "heads": 12, "head_width": 2048, "head_depth": 2, "head_heads": 16},
    "xl": {"width": 1152, "depth": 28, "heads": 16, "head_width": 2048, "head_depth": 2, "head_heads": 16},
}


@dataclass
class FlowConfig:
    time_dist: TimeDist = "logit_normal"  # [C] PAPER.md: logit-normal(0, 1) training times
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # [C] RAE's time shift t' = s t / (1 + (s - 1) t), s = sqrt(N * D / shift_base); null = that s
    shift: float | None = None
    shift_base: int = 4096  # [C]
    sampler: SamplerKind = "euler"  # [C] Euler ODE
    steps: int = 50  # [C]
    cfg_scale: float = 1.0  # guidance scale used by `gen eval` unless given
    # [C] RAE's guidance interval: guidance only where t (1 = noise) lies in [lo, hi]
    cfg_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])


@dataclass
class CacheConfig:
    dir: str = "runs/gen_cache"  # shards live in DIR/<encoder id>_<resolution>px_<data hash>/
    max_samples: int = 0  # 0 = the whole training split
    hflip: bool = True  # [C] MAR / RAE: cache the flipped copy too, pick one per sample
    shard_size: int = 4096
    batch_size: int = 64


@dataclass
class GenTrainConfig:
    steps: int = 1000
    batch_size: int = 1024  # [C] RAE global batch
    lr: float = 2.0e-4  # [C]
    final_lr: float = 2.0e-5  # [C] linear decay to this ...
    decay_start: int = 0  # ... from this step ...
    decay_end: int = 0  # ... to this one (0 = no decay)
    warmup_steps: int = 0  # [C] none
    weight_decay: float = 0.0  # [C]
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # [C] AdamW defaults
    grad_clip: float = 1.0  # [C]
    ema_decay: float = 0.9995  # [C]
    precision: Precision = "auto"
    grad_checkpointing: bool = False  # [?] ours: recompute each DiT-DH block in backward (less memory)
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    max_bad_steps: int = 5


@dataclass
class JudgeConfig:
    """The project's own classifier that judges samples (judge.py)."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 2.0e-3
    width: int = 32
    max_train: int = 20000  # real training images it learns from
    min_accuracy: float = 0.9  # below this on held-out real images the class set must change


@dataclass
class GenEvalConfig:
    samples_per_class: int = 50  # [C] ADM protocol: 50 per class (50k for ImageNet)
    real_samples: int = 2000  # held-out real images for fd / precision / recall
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])  # guidance sweep
    sweep_samples_per_class: int = 0  # 0 = samples_per_class
    pr_k: int = 3  # [C] Kynkaanniemi et al. k = 3
    batch_size: int = 256


@dataclass
class CompareConfig:
    """`ov3 gen compare`: three token spaces, same generator budget and seeds (gen_compare.py)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # (b): an understanding-only encoder. "{seed}" is replaced by the seed; empty = train one
    # from encoder_config with loss.w_rec=0, then its latent decoder on the frozen tokens.
    und_encoder: str = ""
    encoder_config: str = "demo"  # recipe for the (b) encoder when it has to be trained
    encoder_overrides: list[str] = field(default_factory=list)
    decoder_steps: int = 300  # latent-decoder training on the frozen (b) tokens
    spaces: list[str] = field(default_factory=lambda: ["joint", "und_only", "vae"])


@dataclass
class GenConfig:
    encoder: str = ""  # a saved OpenVision 3 model directory (`--encoder` sets it)
    space: TokenSpaceKind = "tokens"  # "tokens": unified tokens; "vae": patchified VAE latents
    data: DataConfig = field(default_factory=lambda: DataConfig(augment=False))
    val_split: str = "val"  # held-out real images for the judge's accuracy and the metrics
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: GenTrainConfig = field(default_factory=GenTrainConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval: GenEvalConfig = field(default_factory=GenEvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    seed: int = 0


def gen_config_from_dict(values: dict) -> GenConfig:
    """Defaults, then the DiT preset (``dit.preset``), then ``values``."""
    cfg = build_with_preset(GenConfig, values, "dit", DIT_PRESETS)
    lo, hi = (cfg.flow.cfg_interval + [None, None])[:2]
    if len(cfg.flow.cfg_interval) != 2 or not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"flow.cfg_interval must be [lo, hi] with 0 <= lo <= hi <= 1, got {cfg.flow.cfg_interval}")
    return cfg


def get_gen_config(name_or_yaml: str | None = None, overrides: list[str] | None = None) -> GenConfig:
    return gen_config_from_dict(load_values(name_or_yaml, overrides))


__all__ = ["GenConfig", "DiTConfig", "FlowConfig", "CacheConfig", "GenTrainConfig", "JudgeConfig",
           "GenEvalConfig", "CompareConfig", "DIT_PRESETS", "gen_config_from_dict", "get_gen_config"]
