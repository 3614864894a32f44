"""Complete a vision tower: train the heads OpenVision 3 needs on a frozen encoder.

    ov3 train --config configs/complete_b2_256.yaml \
        train.init_encoder=UCSC-VLAA/openvision3-vit-base-patch2-32 train.freeze=[encoder.]

The released towers come without their latent decoder, text encoder and caption decoder [C]. With
the encoder frozen, training them is RAE's recipe for the decoder (a frozen encoder, the decoder
trained with noise on its tokens [C]; the noise is the model's own, models/decoder.py) and LiT's
for the text tower (a frozen image tower, its pooled read-out included, a text tower trained
contrastively to it), with the caption decoder on the same tokens. It is ``ov3 train``'s task
(train/trainer.py) on the same run engine, with three additions:

* ``load_source`` / ``apply_source``, before the run directory is touched: the tower (a released
  one through interop/official.py, or the encoder of a saved model), its shape taken into
  ``model.*``; a file that is no tower, a hub id neither reachable nor cached, a width the heads
  are not sized for: one line each;
* in ``build``: the checks that need the VAE (latent channels, the released towers' latent
  convention, the resolution the tower was trained at), the encoder's weights, and, when the
  weights that make the tokens are frozen, the token cache (generation/token_cache.py): each
  training image's tokens, their flip's, its VAE latents and pixels, computed once;
* the step on cached tokens: ``OpenVision3.forward(unified=...)`` skips the VAE encoder and the
  encoder; the reconstruction losses still decode through the frozen VAE (pixel L1 + LPIPS, on
  ``loss.pixel_subbatch`` images when set).

What a cache gives up is what data/latent_cache.py gives up: the crop is fixed (the evaluation
transform) and there is no colour jitter; the flip survives, drawn per sample and epoch.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch

from ..config import Config, ConfigError, TowerConfig, VAEConfig, config_to_dict, config_to_yaml
from ..generation.token_cache import (CacheError, TokenBatches, build_cache, cache_path, open_cache,
                                      weights_id)
from ..generation.token_space import TokenSpace
from ..models.encoder import UnifiedEncoder
from ..train.distributed import barrier, launched_world_size, seed_everything
from ..train.run import Parts, Run, run_task
from ..train.trainer import OpenVision3Task, _warn_unknown_words

# [C] the released towers read FLUX.1-dev latents as posterior mean x 0.3611, no shift ("flux-ov3")
RELEASED_CONVENTION, RELEASED_SCALE = "scale", 0.3611
# encoder parameters that do not make the unified tokens: the pooled read-out (encoder.pool)
_READOUT = ("ln_post.", "proj")
# data options that do not change what the cache holds (it is made with the evaluation transform)
_NOT_IN_CACHE = ("val", "num_workers", "shuffle_buffer", "augment", "min_crop_area", "color_jitter",
                 "latent_cache")


@dataclass
class EncoderSource:
    """A tower to start from: ``kind`` "released" (a UCSC-VLAA tower) or "openvision3" (a saved
    model's encoder), its weights, its native token grid side, and the VAE a saved model read."""
    kind: str
    source: str
    encoder: UnifiedEncoder
    grid: int | None
    vae: VAEConfig | None = None


# ------------------------------------------------------------------------------------ the source
def load_source(source: str) -> EncoderSource:
    """The tower behind ``train.init_encoder``; every way it can be wrong is one ConfigError line."""
    from ..interop.official import OfficialWeightsError, check_source, load_official_tower
    from ..models.openvision3 import is_saved_model
    what = f"train.init_encoder '{source}'"
    if is_saved_model(source):
        from ..models.openvision3 import OpenVision3
        try:
            model = OpenVision3.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what}: cannot load the saved model ({str(e).splitlines()[0]})") from None
        return EncoderSource("openvision3", str(source), model.encoder, model.token_grid()[0],
                             copy.deepcopy(model.cfg.model.vae))
    try:
        local = check_source(source)
    except FileNotFoundError as e:
        raise ConfigError(f"{what}: {e}") from None
    try:
        encoder, grid = load_official_tower(source)
    except OfficialWeightsError as e:
        raise ConfigError(f"{what}: {e}") from None
    except Exception as e:  # safetensors / hub / network errors come in many types
        if local:
            raise ConfigError(f"{what}: not an OpenVision 3 vision tower ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'})") from None
        raise ConfigError(f"{what}: the hub cannot be reached and the tower is not in the local Hugging Face "
                          f"cache ({type(e).__name__}); download it once online (huggingface-cli download "
                          f"{source}) or pass a local directory or weights file") from None
    return EncoderSource("released", str(source), encoder, grid)


def apply_source(cfg: Config, src: EncoderSource) -> Config:
    """A copy of ``cfg`` with the tower's shape (layers, heads, MLP, patch, embedding, pooling) and,
    for a saved model, its VAE; a width other than the config's is refused: the heads are sized for it."""
    cfg = copy.deepcopy(cfg)
    m, enc = cfg.model, src.encoder
    if m.encoder.width != enc.width:
        raise ConfigError(f"train.init_encoder '{src.source}' is {enc.width} wide but model.encoder.width is "
                          f"{m.encoder.width}, the width the heads are sized for; use a config made for this "
                          f"tower (configs/complete_*.yaml) or set model.encoder.width={enc.width}")
    blocks = enc.transformer.resblocks
    m.encoder = TowerConfig(width=enc.width, layers=len(blocks), heads=blocks[0].attn.num_heads,
                            mlp_ratio=blocks[0].mlp.c_fc.out_features / enc.width)
    m.patch_size, m.embed_dim, m.pool = enc.patch_size, enc.embed_dim, enc.pool_type
    if src.vae is not None:
        if src.vae.convention != m.vae.convention:
            raise ConfigError(f"train.init_encoder '{src.source}' was trained over latents of convention "
                              f"'{src.vae.convention}', but model.vae.convention is '{m.vae.convention}'")
        m.vae = copy.deepcopy(src.vae)
    cfg.train.init_encoder_kind = src.kind
    return cfg


def check_against_model(model, src: EncoderSource, resolutions) -> None:
    """What needs the built VAE: latent channels, the released latent convention, the resolution."""
    vae, what = model.vae, f"train.init_encoder '{src.source}'"
    if src.encoder.in_channels != vae.latent_channels:
        raise ConfigError(f"{what} reads {src.encoder.in_channels}-channel latents but model.vae "
                          f"'{vae.source}' makes {vae.latent_channels}")
    if src.kind == "released" and (vae.convention != RELEASED_CONVENTION
                                   or abs(vae.scaling_factor - RELEASED_SCALE) > 1e-3):
        raise ConfigError(f"{what} reads FLUX.1 latents normalised as posterior mean x {RELEASED_SCALE}, no shift "
                          f"(flux-ov3, convention scale) [C], but model.vae gives convention '{vae.convention}', "
                          f"scale {vae.scaling_factor:g}, shift {vae.shift_factor:g}; set model.vae.source=flux-ov3 "
                          f"model.vae.convention=scale")
    if src.grid is not None:
        native = src.grid * model.downsample
        for res in sorted(set(resolutions)):
            if model.token_grid(res)[0] != src.grid:
                raise ConfigError(f"{what} was trained at {native} px ({src.grid}x{src.grid} tokens) but this run "
                                  f"trains at {res} px; set data.resolution={native} model.image_size={native} "
                                  f"(configs/complete_b2_224.yaml is the 224 px tower's)")


def tokens_frozen(model) -> bool:
    """True when no encoder weight that makes the unified tokens trains (its read-out may)."""
    return not any(p.requires_grad for n, p in model.encoder.named_parameters() if not n.startswith(_READOUT))


# ------------------------------------------------------------------------------------ cached data
class CachedHeadsData(TokenBatches):
    """The heads' batches from a token cache: the unified tokens, VAE latents and image of each
    sample (all three flipped together when the flip is drawn) and its caption. The order, the
    flips and the position are TokenBatches' (seeded by epoch, resumable exactly)."""

    def __init__(self, cache, space: TokenSpace, batch_size: int, seed: int, rank: int, world_size: int):
        if cache.captions is None or "latents" not in cache.extras:
            raise CacheError(f"token cache '{cache.path}' holds no captions or latents (a generation cache?)")
        super().__init__(cache, space, batch_size, seed, rank, world_size)

    def next(self, device) -> dict:
        c = self.cache
        idx, flip = self.next_indices()
        tokens, latents, images = c.tokens[idx], c.extras["latents"][idx], c.extras["images"][idx]
        if flip is not None:
            tokens = torch.where(flip[:, None, None], c.tokens_flip[idx], tokens)
            latents = torch.where(flip[:, None, None, None], c.extras["latents_flip"][idx], latents)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        pixels = images.float().div(255).sub(0.5).div(0.5)  # as the evaluation transform makes them
        return {"unified": tokens.to(device).float(), "latent": latents.to(device).float(),
                "image": pixels.to(device), "caption": [c.captions[i] for i in idx.tolist()]}


# ------------------------------------------------------------------------------------ the task
class CompleteTask(OpenVision3Task):
    """``ov3 train`` with ``train.init_encoder``: the encoder from a tower, then (frozen) the heads on
    its cached tokens, or (not frozen) the usual joint step from that start."""
    name = "train heads"

    def __init__(self, cfg: Config, source: EncoderSource, eval_fn=None, progress: bool = True):
        super().__init__(cfg, eval_fn)
        self.source, self.progress, self.cached = source, progress, None
        self.cache_seconds = 0.0

    def build(self, run: Run) -> Parts:
        import time
        parts = super().build(run)
        model, cfg, info = self.model, self.cfg, run.info
        check_against_model(model, self.source, [s.resolution for s in self.stages])
        with torch.no_grad():
            model.encoder.load_state_dict(self.source.encoder.state_dict())
        if cfg.train.token_cache and tokens_frozen(model):
            resolutions = {s.resolution for s in self.stages}
            if len(resolutions) > 1:
                raise ConfigError(f"a token cache holds one resolution, but the stages train at {sorted(resolutions)};"
                                  f" use one stage or train.token_cache=null")
            t0 = time.perf_counter()
            cache, space = self._prepare_cache(run, resolutions.pop())
            self.cache_seconds = time.perf_counter() - t0
            # Seeded after the cache, as `gen train` is: building it draws random numbers that a
            # run finding it ready does not.
            seed_everything(cfg.seed, info.rank)
            self.cached = CachedHeadsData(cache, space, self.stages[0].batch_size // info.world_size, cfg.seed,
                                          info.rank, info.world_size)
            parts.data = self.cached
        return parts

    def _prepare_cache(self, run: Run, resolution: int):
        """Build the cache on rank 0 when it is missing, then open it everywhere."""
        cfg, model, info = self.cfg, self.model, run.info
        flags = [p.requires_grad for p in model.parameters()]
        space = TokenSpace(model, "tokens")  # it sets the model to eval and no-grad: undone below
        space.resolution, space.grid = resolution, model.token_grid(resolution)
        try:
            enc_id = weights_id(model.encoder, model.vae.vae)
            data = {k: v for k, v in config_to_dict(cfg.data).items() if k not in _NOT_IN_CACHE}
            data["shapes"] = {k: v for k, v in data["shapes"].items() if k != "memo"}  # a memo changes no sample
            path = cache_path(cfg.train.token_cache, enc_id, "tokens", resolution, cfg.data.train,
                              cfg.train.token_cache_samples, cfg.data.hflip,
                              variant="heads|" + json.dumps(data, sort_keys=True))
            if info.is_main and not (path / "meta.json").is_file():
                build_cache(space, path, enc_id=enc_id, spec=cfg.data.train, data_cfg=cfg.data,
                            max_samples=cfg.train.token_cache_samples, hflip=cfg.data.hflip,
                            batch_size=max(1, min(64, self.stages[0].batch_size // info.world_size)),
                            progress=self.progress and info.is_main, captions=True, pixels=True)
            barrier()
            cache = open_cache(path, enc_id, resolution, "tokens")
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            model.train()
        return cache, space

    def batch(self, step: int) -> dict:
        if self.cached is None:
            return super().batch(step)
        info = self.run.info
        stage = self._stage_at(step)
        if stage is not self.stage:  # a new batch size (the resolution is the cache's)
            self.stage = stage
            self.cached.batch_size = stage.batch_size // info.world_size
        out = self.cached.next(info.device)
        captions = out.pop("caption")
        if self.first_batch and info.is_main:
            _warn_unknown_words(self.model.tokenizer, captions)
        self.first_batch = False
        out["tokens"] = self.model.tokenizer(captions).to(info.device, non_blocking=True)
        return out

    def losses(self, batch: dict, step: int) -> dict:
        if "unified" not in batch:
            return super().losses(batch, step)
        return self.run.model(batch["image"], batch["tokens"], lpips_weight=self._stage_at(step).lpips_weight,
                              latents=batch["latent"], unified=batch["unified"])

    def finish(self, run: Run) -> dict:
        out = super().finish(run)
        if self.cached is not None:
            out.update(token_cache=str(self.cached.cache.path), token_cache_samples=len(self.cached.cache),
                       token_cache_seconds=round(self.cache_seconds, 1))
        return out


def train_heads(cfg: Config, out_dir, resume: str | None = None, overwrite: bool = False, eval_fn=None,
                progress: bool = True) -> dict:
    """``ov3 train`` with ``train.init_encoder`` set: returns the engine's summary (plus the cache's
    path and size when the heads trained on cached tokens)."""
    if not cfg.train.init_encoder:
        raise ConfigError("train_heads needs train.init_encoder (a released tower or a saved model)")
    source = load_source(cfg.train.init_encoder)
    cfg = apply_source(cfg, source)
    task = CompleteTask(cfg, source, eval_fn, progress)
    return run_task(task, task.settings(launched_world_size()), out_dir, config_yaml=config_to_yaml(cfg),
                    resume=resume, overwrite=overwrite, progress=progress)


__all__ = ["CompleteTask", "CachedHeadsData", "EncoderSource", "apply_source", "check_against_model", "load_source",
           "tokens_frozen", "train_heads"]
