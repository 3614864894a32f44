"""`ov3 gen train`: class-conditional flow matching of DiT-DH on cached tokens of a frozen encoder.

    ov3 gen train --config configs/gen_tiny.yaml --encoder runs/demo/model --out runs/gen_tiny
    torchrun --nproc_per_node 8 -m openvision3.cli gen train --config configs/gen_imagenet_xl.yaml ...

Everything around the step is the run engine's (train/run.py), as for `ov3 train`. What is this
trainer's own is ``GeneratorTask``: the token cache, DiT-DH, its AdamW, and the flow-matching step.

Run directory: config.yaml, metrics.jsonl, losses.png, tensorboard/, checkpoints/step_N/ (DiT-DH
weights + stats, EMA, optimizer, trainer state), generator/ (the finished generator, generator.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import ConfigError, config_to_yaml, load_config_file
from ..models.openvision3 import is_saved_model
from ..train.distributed import barrier, launched_world_size, seed_everything
from ..train.optim import LRSchedule
from ..train.run import Parts, Run, RunSettings, Task, run_task
from .config import GenConfig
from .dit import DiTDH, count_parameters
from .flow import flow_loss
from .generator import EXPORT_DIR, Generator, flow_shift
from .token_cache import TokenBatches, build_cache, cache_path, encoder_id, open_cache
from .token_space import TokenSpace


def check_encoder(cfg: GenConfig) -> Path:
    """The encoder directory exists, is a saved model, and was trained at the config's resolution."""
    if not cfg.encoder:
        raise ConfigError("no encoder given: pass --encoder MODEL_DIR (a saved OpenVision 3 model)")
    d = Path(cfg.encoder).expanduser()
    if not d.is_dir():
        raise ConfigError(f"encoder directory '{cfg.encoder}' does not exist")
    if not is_saved_model(d):
        raise ConfigError(f"'{cfg.encoder}' is not a saved OpenVision 3 model (config.yaml / model.safetensors missing)")
    size = load_config_file(d / "config.yaml").model.image_size
    if size != cfg.data.resolution:
        raise ConfigError(f"encoder '{cfg.encoder}' was trained at {size} px but the config asks for "
                          f"data.resolution={cfg.data.resolution}; use an encoder of that size or set "
                          f"data.resolution={size}")
    return d.resolve()


def prepare_cache(cfg: GenConfig, space: TokenSpace, enc_id: str, is_main: bool, progress: bool = True):
    """Build the token cache on rank 0 when it is missing, then open it everywhere."""
    path = cache_path(cfg.cache.dir, enc_id, cfg.space, cfg.data.resolution, cfg.data.train,
                      cfg.cache.max_samples, cfg.cache.hflip)
    if is_main and not (path / "meta.json").is_file():
        build_cache(space, path, enc_id=enc_id, spec=cfg.data.train, data_cfg=cfg.data,
                    max_samples=cfg.cache.max_samples, hflip=cfg.cache.hflip, shard_size=cfg.cache.shard_size,
                    batch_size=cfg.cache.batch_size, progress=progress)
    barrier()
    return open_cache(path, enc_id, cfg.data.resolution, cfg.space)


class GeneratorTask(Task):
    """The step of ``ov3 gen train``: a batch of normalised cached tokens and their labels,
    ``flow.flow_loss`` through DiT-DH, under RAE's constant + linear-decay LR [C]."""
    name = "gen train"

    def __init__(self, cfg: GenConfig, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        t = cfg.train
        self.lr = LRSchedule(t.lr, t.steps, t.warmup_steps, shape="linear", decay_start=t.decay_start,
                                   decay_end=t.decay_end, final=t.final_lr)

    def settings(self) -> RunSettings:
        t = self.cfg.train
        return RunSettings(steps=t.steps, seed=self.cfg.seed, precision=t.precision, grad_clip=t.grad_clip,
                           max_bad_steps=t.max_bad_steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                           keep_last=t.keep_last, ema_decay=t.ema_decay, find_unused=False, attention_kernel="auto")

    def build(self, run: Run) -> Parts:
        cfg, t, info = self.cfg, self.cfg.train, run.info
        self.run = run
        t_cache = time.perf_counter()
        self.space = space = TokenSpace.load(cfg.encoder, cfg.space, info.device)
        enc_id = encoder_id(cfg.encoder)
        self.cache = cache = prepare_cache(cfg, space, enc_id, info.is_main, self.progress)
        self.cache_seconds = time.perf_counter() - t_cache
        # Seeded after the cache: building it draws random numbers that a run finding it ready does
        # not, so two runs of one config would otherwise differ from the first step.
        seed_everything(cfg.seed, info.rank)
        self.meta = {"grid": list(space.grid), "token_dim": space.token_dim, "num_classes": cache.num_classes,
                     "class_names": cache.meta["class_names"], "encoder_id": enc_id, "cache": str(cache.path),
                     "space": cfg.space}
        with torch.random.fork_rng(devices=[]):  # the same initial weights whatever happened before
            torch.manual_seed(cfg.seed)
            self.dit = dit = DiTDH(space.token_dim, space.grid, cache.num_classes, cfg.dit).to(info.device)
        dit.grad_checkpointing = t.grad_checkpointing
        self.shift = flow_shift(cfg, space.grid[0] * space.grid[1], space.token_dim)
        optimizer = lambda: torch.optim.AdamW(  # noqa: E731
            dit.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
            fused=info.device.type == "cuda")
        self.batches = TokenBatches(cache, space, t.batch_size // info.world_size, cfg.seed, info.rank,
                                    info.world_size)
        self.t_start = time.perf_counter()
        # the token statistics ride in the checkpoint's weights: `gen sample` can use a checkpoint
        return Parts(dit, optimizer, self.batches, extra_weights=cache.stats.state_dict())

    def batch(self, step: int) -> dict:
        x, y = self.batches.next(self.run.device)
        return {"x": x, "y": y}

    def losses(self, batch: dict, step: int) -> dict:
        return {"loss": flow_loss(self.run.model, batch["x"], batch["y"], self.cfg.flow, self.shift)}

    def state_dict(self) -> dict:
        return {"generator_meta": self.meta}

    def finish(self, run: Run) -> dict:
        if run.info.is_main:
            weights = run.ema.module.state_dict() if run.ema is not None else self.dit.state_dict()
            Generator.save(run.out / EXPORT_DIR, self.cfg, weights, self.cache.stats,
                           {**self.meta, "steps": self.cfg.train.steps, "parameters": count_parameters(self.dit),
                            "shift": self.shift})
        return {"generator_dir": str(run.out / EXPORT_DIR)}

    def info(self) -> dict:
        return {"cache": str(self.cache.path), "cache_samples": len(self.cache),
                "cache_seconds": round(self.cache_seconds, 1),
                "train_seconds": round(time.perf_counter() - self.t_start, 1), "shift": self.shift,
                "parameters": count_parameters(self.dit), "generator_dir": None,
                "skipped": dict(self.cache.meta.get("skipped", {}))}


def train_generator(cfg: GenConfig, out_dir, resume: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Train (or continue) a generator run in ``out_dir``; returns the engine's summary."""
    cfg.encoder = str(check_encoder(cfg))  # before anything is written
    from ..data import open_source
    open_source(cfg.data.train, "train", cfg.data)  # a bad data spec stops here, before the run directory
    world_size = launched_world_size()
    if cfg.train.batch_size % world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by the world size {world_size}")
    task = GeneratorTask(cfg, progress)
    summary = run_task(task, task.settings(), out_dir, config_yaml=config_to_yaml(cfg), resume=resume,
                       overwrite=overwrite, progress=progress)
    return {**task.info(), **summary}


__all__ = ["train_generator", "check_encoder", "prepare_cache", "GeneratorTask"]
