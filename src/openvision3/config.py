"""Typed configuration: one dataclass tree, YAML presets, dotted ``key=value`` overrides.

Every default names its source with a PAPER.md confidence tag:
[P] stated by the paper, [C] read in the authors' released code, [S] secondary summary,
[?] not published, our own documented choice.

Resolution order: dataclass defaults -> model size preset (``model.preset``) -> YAML -> overrides.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The builder (coercion, bounds, overrides, YAML) is config_build.py's, shared with the other trees.
from .config_build import (MOVED, ConfigError, Decay, Fraction, NonNegFloat, NonNegInt, OpenFraction, PosFloat, PosInt,
                           _deep_merge, build_with_preset, parse_overrides, read_yaml)


PoolType = typing.Literal["mean", "max"]  # model.pool, see models/encoder.py
POOL_TYPES = typing.get_args(PoolType)
AttentionKernel = typing.Literal["auto", "math", "default"]  # train.attention_kernel, see models/vit.py
Precision = typing.Literal["auto", "bf16", "fp32"]  # train.precision, see train/precision.py
LpipsNet = typing.Literal["alex", "vgg"]  # loss.lpips_net, see perceptual.py
CaptionStyle = typing.Literal["rich", "simple", "compact", "minimal"]  # data.shapes.captions, see data/shapes.py
LatentConvention = typing.Literal["scale", "shift_scale"]  # model.vae.convention, see models/vae.py
TokenizerKind = typing.Literal["bpe", "words"]  # model.tokenizer, see data/tokenizer.py
AdamWImpl = typing.Literal["auto", "fused", "foreach"]  # train.adamw, see train/optim.py


@dataclass
class TowerConfig:
    """Size of one transformer tower."""

    width: PosInt = 768
    layers: PosInt = 12
    heads: PosInt = 12
    mlp_ratio: PosFloat = 4.0


@dataclass
class TextTowerConfig(TowerConfig):
    context_length: PosInt = 80  # [C] OpenVision text encoder context; caption decoder uses 128


@dataclass
class VAEArchConfig:
    """The shape of a diffusers ``AutoencoderKL`` (built by models/vae.py ``build_autoencoder``):
    the keys of ``model.vae`` for ``source: inline``, and ``arch`` of ``ov3 train-vae``
    (train/vae_config.py, with its own defaults). Downsampling is 2 ** (len(block_out_channels) - 1)."""

    latent_channels: PosInt = 16
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    layers_per_block: PosInt = 1
    norm_num_groups: PosInt = 32
    mid_block_attention: bool = True  # diffusers' default; costly at small sizes
    # The encoder's log-variance bias at init (None: diffusers' init). diffusers starts near 0 (std
    # 1 noise on the latents), which a decoder in training must first learn to ignore; near -8 the
    # posterior starts almost deterministic. The frozen VAE reads only the posterior mean.
    logvar_init: float | None = None


@dataclass
class VAEConfig(VAEArchConfig):
    """``model.vae``: which frozen VAE and its latent normalisation; the architecture keys
    (VAEArchConfig) are read for ``source: inline`` only (random init; tests, or benchmarks)."""

    # [P] FLUX.1-dev VAE (16 channels, 8x). Alias, hub id, local diffusers dir, or "inline".
    source: str = "flux-ov3"
    # [C] released OV3 code: latents = posterior.mean * scaling_factor, no shift ("scale").
    # diffusers FLUX pipelines use (z - shift) * scale ("shift_scale").
    convention: LatentConvention = "scale"
    scaling_factor: float | None = None  # None: take it from the VAE's own config
    shift_factor: float | None = None  # None: take it from the VAE's own config
    # [?] ours: run the frozen VAE in channels-last memory format (measured with `ov3 bench`,
    # docs/performance.md); the latents and images it returns are the same either way
    channels_last: bool = False


@dataclass
class ModelConfig:
    preset: str = "b2"  # size preset, applied before the other model keys (see MODEL_PRESETS)
    image_size: PosInt = 256  # [P] stage-2 resolution; the trainer sets it per stage
    patch_size: PosInt = 2  # [P] ViT patch over VAE latents -> 16x total downsampling
    encoder: TowerConfig = field(default_factory=TowerConfig)  # [P] B/2: 768/12/12, MLP 3072
    # [S] decoder-size ablation: M -> B clearly better, L unstable; so a B decoder by default.
    decoder: TowerConfig = field(default_factory=TowerConfig)
    # [C] OpenVision B-size text towers: 512 wide, 12 layers, 8 heads; contexts 80 / 128.
    text: TextTowerConfig = field(
        default_factory=lambda: TextTowerConfig(width=512, layers=12, heads=8, context_length=80))
    caption: TextTowerConfig = field(
        default_factory=lambda: TextTowerConfig(width=512, layers=12, heads=8, context_length=128))
    # [C] released towers average the tokens; "max" is our option for short CPU runs (encoder.py)
    pool: PoolType = "mean"
    embed_dim: PosInt = 512  # [?] contrastive embedding width (open_clip B-size convention)
    vocab_size: PosInt = 49408  # [?] open_clip BPE (OpenVision used BERT WordPiece; not shipped offline)
    # [?] ours: "words" = a closed word-level vocabulary (model.words; vocab_size is then ignored)
    # for small synthetic caption sets, where a 49,408-way caption softmax is most of a CPU step.
    tokenizer: TokenizerKind = "bpe"
    words: list[str] = field(default_factory=list)
    # [?] tau is unpublished; RAE uses 0.8 on per-token-normalised features [C]. Our tokens pass
    # through a final LayerNorm, so they have unit scale per token as in RAE -> 0.8.
    noise_tau: NonNegFloat = 0.8
    caption_keep_ratio: OpenFraction = 1.0  # [?] OpenVision 2 keeps 25-35 % [C]; OV3 does not say
    logit_scale_init: float = 14.285714  # [P] learnable temperature, init 1/0.07
    vae: VAEConfig = field(default_factory=VAEConfig)


@dataclass
class ShapesConfig:
    """Options of the embedded ``shapes`` data (``data.shapes``, see data/shapes.py). A spec's own
    query overrides three of them for that spec: ``shapes?single=F&captions=C&single_size=S``."""

    single_fraction: Fraction = 0.5  # [?] share of single-object samples in `shapes`
    # [?] ours, a curriculum: the first `single_switch` training samples of a run use this share of
    # single objects instead (None: off). Singles first teach the shape words, the multi-object
    # scenes after them bind words to objects (docs/experiments.md)
    single_fraction_start: Fraction | None = None
    single_switch: NonNegInt = 0
    # [?] ours: the sizes single objects may take during those first samples (None: all three).
    # [medium, large] lets shape be learnt first where it is visible (docs/experiments.md)
    single_sizes_start: list[str] | None = None
    # [?] data-layer addition: caption style, rich (varied) | simple | compact | minimal
    captions: CaptionStyle = "rich"
    # [?] `compact` captions only: share of single-object captions that also name the size
    # ("small red star"); the rest stay the bare class name the zero-shot prompts use
    single_size: Fraction = 0.0
    # [?] ours: keep every rendered training sample in memory (about 3 KB each at 32 px), so a run
    # that repeats a small set (`shapes?n=10240`) renders each sample once per curriculum phase
    memo: bool = False


@dataclass
class DataConfig:
    train: str = "shapes"  # data spec: shapes | wds:PATTERN | folder:DIR | fashion-mnist
    val: str = "shapes"
    resolution: PosInt = 128  # [P] stage 1 at 128 px; stages may change it
    num_workers: NonNegInt = 0
    shuffle_buffer: PosInt = 1000
    augment: bool = True
    min_crop_area: OpenFraction = 0.4  # [C] OpenVision inception crop, min area 40 %
    color_jitter: NonNegFloat = 0.4  # [C] OpenVision colour jitter
    hflip: bool = True  # [?] captions with left/right words make flips wrong; shapes turns it off
    # options of the embedded `shapes` data (data/shapes.py)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    # [?] ours, MAR's idea [C]: a directory written by `ov3 data cache-latents`; training then reads
    # images + precomputed VAE latents from it instead of data.train (data/latent_cache.py)
    latent_cache: str | None = None


@dataclass
class StageConfig:
    """One training stage; a None field inherits the value from the train/data/loss section."""

    name: str = "stage"
    resolution: PosInt | None = None
    steps: PosInt | None = None
    epochs: PosFloat | None = None
    batch_size: PosInt | None = None
    lr: NonNegFloat | None = None
    lpips_weight: NonNegFloat | None = None
    warmup_steps: NonNegInt | None = None


@dataclass
class TrainConfig:
    steps: PosInt = 1000
    epochs: PosFloat | None = None  # if set, overrides steps using data.epoch_size
    epoch_size: PosInt = 1_281_167  # [S] one epoch ~ 1.28 M samples
    batch_size: PosInt = 256  # global batch
    lr: NonNegFloat = 8e-6  # [S] stage-1 base LR, scaled by batch/256 [C]
    lr_scale_by_batch: bool = True  # [C] OpenVision: lr = base_lr * batch / 256
    min_lr_ratio: Fraction = 0.0  # [C] cosine to zero
    warmup_steps: NonNegInt = 100
    weight_decay: NonNegFloat = 0.2  # [C]
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # [C]
    grad_clip: NonNegFloat = 1.0  # [?] (RAE [C] uses 1.0)
    ema_decay: Decay = 0.0  # 0 = off; timm ModelEmaV3 when > 0
    # [?] ours: keep the frozen VAE's latents of up to this many distinct training images in memory
    # and encode an image again only when it is new (0 = off); pays when a run repeats a small set
    # without augmentation, as the demo does (train/latent_memo.py; 16 KB an image at 32 px)
    latent_memo: NonNegInt = 0
    grad_accum_steps: PosInt = 1
    # [?] ours: AdamW kernel. auto = fused on CUDA, foreach on CPU (measured: docs/performance.md)
    adamw: AdamWImpl = "auto"
    precision: Precision = "auto"  # auto: bf16 on CUDA or on CPUs with native bf16 (train/precision.py)
    compile: bool = False
    # [?] ours: "auto" = SDPA's math kernel on CPU (a train step of the demo ~14% faster than the CPU
    # flash kernel, whose backward is slow on short sequences; benchmarks/attention_kernels.py),
    # torch's own choice elsewhere. "math" / "default" force one everywhere.
    attention_kernel: AttentionKernel = "auto"
    fsdp: bool = False
    grad_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_last: NonNegInt = 3
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    max_bad_steps: PosInt = 5  # non-finite steps in a row before the run stops
    init_from: str | None = None  # a saved model dir to start from (e.g. stage 2 after stage 1)
    # [?] ours: parameter-name prefixes kept frozen (e.g. [encoder.] to train a latent decoder on an
    # encoder's frozen tokens, as `ov3 gen compare` does for the understanding-only encoder)
    freeze: list[str] = field(default_factory=list)
    # [?] ours: the vision tower the encoder starts from: a released OV3 tower (hub id, directory or
    # open_clip weights file; interop/official.py) or a saved model directory (its encoder only).
    # Its shape is taken, and checked against model.* and the data, before training (recipes/complete.py)
    init_encoder: str | None = None
    # recorded by the run from init_encoder, for the model card: "released" | "openvision3"
    init_encoder_kind: str | None = None
    # [?] ours: with init_encoder and the encoder's token-producing weights frozen, its tokens (and
    # their flips) are computed once into this directory and the heads train on them
    # (generation/token_cache.py); null: the frozen encoder runs forward (no backward) every step
    token_cache: str | None = "runs/token_cache"
    token_cache_samples: NonNegInt = 0  # samples of data.train the cache holds; 0: all (a finite data set)
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class LossConfig:
    w_rec: NonNegFloat = 0.5  # [S] omega_rec
    w_und: NonNegFloat = 1.0  # [S] omega_und
    beta_latent: NonNegFloat = 0.4  # [S] beta, latent L1
    lpips_weight: NonNegFloat = 0.0  # [S] lambda: 0 in stage 1, 0.5 in stage 2
    alpha_contrastive: NonNegFloat = 1.0  # [S] alpha
    caption_weight: NonNegFloat = 1.0  # [S] L_und = L_caption + alpha * L_con
    lpips_net: LpipsNet = "alex"  # [?] the paper does not name the LPIPS backbone
    pixel_subbatch: NonNegInt = 0  # [?] our CPU option: pixel/LPIPS losses on the first N images; 0 = all
    # [?] our CPU option: the whole reconstruction branch (latent decoder, latent L1, then the pixel
    # sub-batch) on the first N images, 0 = all; the understanding losses still see every image
    rec_subbatch: NonNegInt = 0
    # [?] our CPU option: the caption loss on the first N images of the batch, 0 = all (the
    # contrastive loss always sees the whole batch; a cheaper alternative to caption_keep_ratio
    # that keeps every token of the images it reads)
    caption_subbatch: NonNegInt = 0
    # [?] ours, for the synergy ablation (recipes/synergy.py): a branch whose weight (w_rec or
    # w_und) is 0 is still trained, with weight 1, on *detached* unified tokens, so its losses
    # measure what the encoder learnt without ever shaping it. The token-producing encoder gets no
    # gradient from it; the contrastive read-out (encoder.ln_post, encoder.proj) is part of the probe.
    probe_detached: bool = False


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["recon", "zeroshot", "retrieval", "caption"])
    num_samples: PosInt = 500
    batch_size: PosInt = 64


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0


def _tower(width, layers, heads, mlp_ratio=4.0):
    return {"width": width, "layers": layers, "heads": heads, "mlp_ratio": mlp_ratio}


def _text(width, layers, heads, context_length):
    return {**_tower(width, layers, heads), "context_length": context_length}


# Model size presets. b2 / l2 follow the paper [P] (encoder) and OpenVision's text sizes [C].
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "nano": {"encoder": _tower(128, 4, 4), "decoder": _tower(128, 3, 4),
             "text": _text(128, 3, 4, 32), "caption": _text(128, 2, 4, 32), "embed_dim": 128},
    "tiny": {"encoder": _tower(192, 6, 3), "decoder": _tower(192, 4, 3),
             "text": _text(192, 4, 3, 32), "caption": _text(192, 3, 3, 32), "embed_dim": 192},
    "small": {"encoder": _tower(384, 12, 6), "decoder": _tower(384, 8, 6),
              "text": _text(384, 8, 6, 80), "caption": _text(384, 6, 6, 128), "embed_dim": 384},
    "b2": {"encoder": _tower(768, 12, 12), "decoder": _tower(768, 12, 12),
           "text": _text(512, 12, 8, 80), "caption": _text(512, 12, 8, 128), "embed_dim": 512},
    "l2": {"encoder": _tower(1024, 24, 16), "decoder": _tower(768, 12, 12),
           "text": _text(768, 12, 12, 80), "caption": _text(768, 12, 12, 128), "embed_dim": 768},
}

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


# The `shapes` options were flat `data.shapes_*` keys before they got their own section.
SHAPES_FLAT_KEYS = {f"shapes_{k.name}": k.name for k in dataclasses.fields(ShapesConfig)}
MOVED["DataConfig"] = {old: f"shapes.{new}" for old, new in SHAPES_FLAT_KEYS.items()}


def _nest_flat_shapes_keys(values: dict) -> dict:
    """A saved config (a model's or run's ``config.yaml``) written while the `shapes` options were
    flat ``data.shapes_*`` keys, with them moved into ``data.shapes``: saved models and run
    directories stay loadable. Configs a person writes get a one-line error instead (MOVED)."""
    data = values.get("data")
    if not isinstance(data, dict) or not any(k in SHAPES_FLAT_KEYS for k in data):
        return values
    data = dict(data)
    nested = {SHAPES_FLAT_KEYS[k]: data.pop(k) for k in list(data) if k in SHAPES_FLAT_KEYS}
    data["shapes"] = {**nested, **(data.get("shapes") or {})}
    return {**values, "data": data}


def resolve_config_path(name_or_yaml: str) -> Path:
    p = Path(name_or_yaml)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for cand in (Path("configs") / f"{name_or_yaml}.yaml", CONFIG_DIR / f"{name_or_yaml}.yaml"):
        if cand.exists():
            return cand
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.exists() else []
    raise ConfigError(f"config '{name_or_yaml}' not found (not a file; known presets: {', '.join(known)})")


def config_from_dict(values: dict) -> Config:
    """Build a Config: defaults, then the model size preset, then ``values``."""
    cfg = build_with_preset(Config, values, "model", MODEL_PRESETS)
    if cfg.model.tokenizer == "words" and not cfg.model.words:
        raise ConfigError("model.tokenizer=words needs its word list in model.words")
    return cfg


def load_values(name_or_yaml: str | None = None, overrides: list[str] | None = None) -> dict:
    """The raw nested values of a preset name (``configs/NAME.yaml``) or YAML path, with
    ``key=value`` overrides merged in; shared by every config tree (OpenVision 3, VAE)."""
    values = read_yaml(resolve_config_path(name_or_yaml)) if name_or_yaml else {}
    return _deep_merge(values, parse_overrides(overrides or []))


def get_config(name_or_yaml: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset name (``configs/NAME.yaml``) or a YAML path, then apply ``key=value`` overrides."""
    return config_from_dict(load_values(name_or_yaml, overrides))


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def load_config_file(path: str | Path) -> Config:
    """Load a config saved by ``config_to_yaml`` (a checkpoint's or model's ``config.yaml``)."""
    return config_from_dict(_nest_flat_shapes_keys(read_yaml(path)))
