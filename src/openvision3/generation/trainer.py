"""`ov3 gen train`: class-conditional flow matching of DiT-DH on cached tokens of a frozen encoder.

    ov3 gen train --config configs/gen_tiny.yaml --encoder runs/demo/model --out runs/gen_tiny
    torchrun --nproc_per_node 8 -m openvision3.cli gen train --config configs/gen_imagenet_xl.yaml ...

Everything around the step comes from ``train/``, as for `ov3 train`: the run directory rules and
TrainError (trainer.py), processes, seeding and DDP (distributed.py), atomic checkpoints with every
RNG state and the data position, resumed by ``--resume auto`` (checkpoint.py), metrics.jsonl +
TensorBoard + losses.png (logging.py), the EMA (optim.py), bf16 autocast (precision.py), the
SIGTERM / SIGUSR1 checkpoint-and-stop, the non-finite-step guard and the tqdm bar. What is new is
only the step itself: a batch of normalised cached tokens, ``flow.flow_loss``, clip, AdamW, EMA.

Run directory: config.yaml, metrics.jsonl, losses.png, tensorboard/, checkpoints/step_N/ (DiT-DH
weights + stats, EMA, optimizer, trainer state), generator/ (the finished generator, generator.py).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import torch

from ..config import ConfigError
from ..train import checkpoint as ckpt_lib
from ..train.distributed import (all_reduce_mean, barrier, cleanup, gather_objects, init_distributed,
                                 seed_everything, wrap_model)
from ..train.logging import MetricsLogger
from ..train.optim import build_ema, set_lr
from ..train.precision import choose_precision
from ..train.stop import StopRequest
from ..train.trainer import TrainError, forward_context, guarded_update, hold_run_dir, prepare_out_dir
from .config import GenConfig, gen_config_to_yaml
from .dit import DiTDH, count_parameters
from .flow import flow_loss
from .generator import EXPORT_DIR, Generator, flow_shift
from .token_cache import TokenBatches, build_cache, cache_path, encoder_id, open_cache
from .token_space import TokenSpace


def check_encoder(cfg: GenConfig) -> Path:
    """The encoder directory exists, is a saved model, and was trained at the config's resolution."""
    from ..config import load_config_file
    if not cfg.encoder:
        raise ConfigError("no encoder given: pass --encoder MODEL_DIR (a saved OpenVision 3 model)")
    d = Path(cfg.encoder).expanduser()
    if not d.is_dir():
        raise ConfigError(f"encoder directory '{cfg.encoder}' does not exist")
    if not (d / "config.yaml").is_file() or not (d / "model.safetensors").is_file():
        raise ConfigError(f"'{cfg.encoder}' is not a saved OpenVision 3 model (config.yaml / model.safetensors missing)")
    size = load_config_file(d / "config.yaml").model.image_size
    if size != cfg.data.resolution:
        raise ConfigError(f"encoder '{cfg.encoder}' was trained at {size} px but the config asks for "
                          f"data.resolution={cfg.data.resolution}; use an encoder of that size or set "
                          f"data.resolution={size}")
    return d.resolve()


def lr_at(step: int, t) -> float:
    """[C] RAE: constant, then linear decay from decay_start to decay_end (to final_lr); optional warmup."""
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.decay_end <= t.decay_start or step < t.decay_start:
        return t.lr
    frac = min(1.0, (step - t.decay_start) / (t.decay_end - t.decay_start))
    return t.lr + (t.final_lr - t.lr) * frac


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


def train_generator(cfg: GenConfig, out_dir, resume: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Train (or continue) a generator run in ``out_dir``; returns a summary dict."""
    info = init_distributed()
    try:
        with hold_run_dir(Path(out_dir), info):  # one writer per run directory (train/run_lock.py)
            return _train(cfg, Path(out_dir), resume, overwrite, progress, info)
    finally:
        cleanup()


def _train(cfg: GenConfig, out: Path, resume, overwrite, progress, info) -> dict:
    t = cfg.train
    cfg.encoder = str(check_encoder(cfg))  # before anything is written
    if t.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by the world size {info.world_size}")
    from ..data import open_source
    open_source(cfg.data.train, "train", cfg.data)  # a bad data spec stops here, before the run directory
    prepare_out_dir(out, resume, overwrite, info.is_main)
    ckpt = ckpt_lib.resolve_resume(resume, out) if resume else None
    if info.is_main:
        (out / "config.yaml").write_text(gen_config_to_yaml(cfg))
    if info.device.type == "cpu":
        torch.set_flush_denormal(True)

    t_cache = time.perf_counter()
    space = TokenSpace.load(cfg.encoder, cfg.space, info.device)
    enc_id = encoder_id(cfg.encoder)
    cache = prepare_cache(cfg, space, enc_id, info.is_main, progress)
    cache_seconds = time.perf_counter() - t_cache
    # Seeded after the cache: building it draws random numbers that a run finding it ready does not,
    # so seeding before it made two runs of one config differ from step 1 (issue 16).
    seed_everything(cfg.seed, info.rank)
    meta = {"grid": list(space.grid), "token_dim": space.token_dim, "num_classes": cache.num_classes,
            "class_names": cache.meta["class_names"], "encoder_id": enc_id, "cache": str(cache.path),
            "space": cfg.space}
    stats_state = cache.stats.state_dict()

    with torch.random.fork_rng(devices=[]):  # the same initial weights whatever happened before
        torch.manual_seed(cfg.seed)
        dit = DiTDH(space.token_dim, space.grid, cache.num_classes, cfg.dit).to(info.device)
    dit.grad_checkpointing = t.grad_checkpointing
    shift = flow_shift(cfg, space.grid[0] * space.grid[1], space.token_dim)
    precision = choose_precision(t.precision, info.device)
    amp_dtype = precision.dtype
    if info.is_main:
        print(precision.describe(), flush=True)
    ema = build_ema(dit, t.ema_decay)
    wrapped = wrap_model(dit, info, find_unused=False)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                                  fused=info.device.type == "cuda")
    batches = TokenBatches(cache, space, t.batch_size // info.world_size, cfg.seed, info.rank, info.world_size)

    step, bad_steps = 0, 0
    if ckpt is not None:
        dit.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("stats.")})
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            if ckpt["ema"] is None:
                raise TrainError(f"{ckpt['path']}: has no EMA weights but train.ema_decay > 0")
            ema.module.load_state_dict(ckpt["ema"])
        st = ckpt["trainer_state"]
        step, bad_steps = int(st["step"]), int(st["bad_steps"])
        if st["world_size"] != info.world_size:
            raise TrainError(f"{ckpt['path']} was saved with {st['world_size']} processes, not {info.world_size}")
        ckpt_lib.set_rng_state(st["rng"][info.rank])
        batches.load_state_dict(st["data"][info.rank])
    last_good = str(ckpt["path"]) if ckpt is not None else None
    logger = MetricsLogger(out, enabled=info.is_main, resume_step=step if resume else None)

    stop = StopRequest()  # SIGTERM / SIGUSR1: checkpoint at the end of this step, then return

    def save(at_step: int) -> None:
        nonlocal last_good
        state = {"step": at_step, "bad_steps": bad_steps, "skipped": {}, "world_size": info.world_size,
                 "rng": gather_objects(ckpt_lib.rng_state()), "data": gather_objects(batches.state_dict()),
                 "scaler": None, "generator_meta": meta}
        if info.is_main:
            ckpt_lib.save_checkpoint(out / "checkpoints", at_step,
                                     model_state={**dit.state_dict(), **stats_state},
                                     optimizer_state=optimizer.state_dict(), trainer_state=state,
                                     config_yaml=gen_config_to_yaml(cfg),
                                     ema_state=ema.module.state_dict() if ema is not None else None,
                                     keep_last=t.keep_last)
            logger.plot()
        barrier()
        last_good = str(out / "checkpoints" / f"step_{at_step}")

    bar = None
    if info.is_main and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=t.steps, initial=step, desc="gen train", dynamic_ncols=True)
    window, status, last, bad_in_row, logged_reason = [], "finished", {}, 0, False
    t_start, t_last, seen = time.perf_counter(), time.perf_counter(), 0
    dit.train()
    while step < t.steps:
        set_lr(optimizer, lr_at(step, t))
        x, y = batches.next(info.device)
        with forward_context(info.device, amp_dtype):
            loss = flow_loss(wrapped, x, y, cfg.flow, shift)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(dit.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
        loss_v, grad_v = all_reduce_mean(torch.stack([loss.detach().float(), grad_norm.float()])).tolist()
        bad_in_row = guarded_update(optimizer, ema, dit, step, loss_v, grad_v, bad_in_row, t.max_bad_steps, last_good)
        bad_steps += bad_in_row > 0
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen += x.shape[0] * info.world_size
        last = {"loss": loss_v, "grad_norm": grad_v}
        window.append(last)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}")
        if (t.log_every > 0 and step % t.log_every == 0) or step == t.steps:
            dt = time.perf_counter() - t_last
            row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            row.update(lr=optimizer.param_groups[0]["lr"], samples_per_s=seen / dt, bad_steps=bad_steps)
            if not logged_reason:  # the first row after every start (and resume) says what it ran in
                row.update(precision.as_row())
                logged_reason = True
            logger.log(step, row)
            window, t_last, seen = [], time.perf_counter(), 0
        stopped = stop.end_of_step(info.device, (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
                                   or step == t.steps, lambda: save(step))
        if stopped:
            status = stopped
            break
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_start
    if status == "finished" and info.is_main:
        weights = ema.module.state_dict() if ema is not None else dit.state_dict()
        Generator.save(out / EXPORT_DIR, cfg, weights, cache.stats,
                       {**meta, "steps": step, "parameters": count_parameters(dit), "shift": shift})
    barrier()
    logger.close()
    return {"status": status, "step": step, "total_steps": t.steps, "out_dir": str(out), "final": last,
            "precision": precision.name, "precision_reason": precision.reason,
            "bad_steps": bad_steps, "last_checkpoint": last_good, "cache": str(cache.path),
            "cache_samples": len(cache), "cache_seconds": round(cache_seconds, 1),
            "train_seconds": round(train_seconds, 1), "shift": shift, "parameters": count_parameters(dit),
            "generator_dir": str(out / EXPORT_DIR) if status == "finished" else None,
            "skipped": dict(Counter(cache.meta.get("skipped", {})))}


__all__ = ["train_generator", "check_encoder", "prepare_cache", "lr_at"]
