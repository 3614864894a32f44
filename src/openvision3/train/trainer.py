"""Train OpenVision 3: reconstruction + contrastive + captioning on one unified token stream.

    ov3 train --config configs/tiny.yaml --out runs/tiny            # one process
    torchrun --nproc_per_node 8 -m openvision3.cli train --config configs/ov3_b2.yaml --out runs/b2

The whole loop is in ``train`` below, top to bottom: set up processes and the run directory,
build the model and optimizer, resume, then for every step: pick the stage, fetch a batch,
forward/backward (with gradient accumulation), guard against non-finite values, step, log,
validate, checkpoint. Checkpoint files live in checkpoint.py, processes in distributed.py,
optimizer/schedule/EMA in optim.py, logs in logging.py.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, ConfigError, config_to_yaml
from ..losses import OpenVision3Loss
from ..models.openvision3 import OpenVision3
from ..models.vit import attention_kernels
from . import checkpoint as ckpt_lib
from .distributed import (all_reduce_mean, any_rank, barrier, cleanup, enable_grad_checkpointing,
                          full_state_dict, gather_objects, init_distributed, load_full_state_dict,
                          reshard_fsdp, seed_everything, set_grad_sync, sync_replicated_grads, wrap_model)
from .latent_memo import LatentMemo
from .logging import MetricsLogger
from .optim import build_ema, build_optimizer, scaled_lr, set_lr, warmup_cosine
from .precision import choose_precision
from .run_lock import LOCK_NAME, RunLock, RunLockError
from .stop import StopRequest

VAL_BATCHES = 4  # validation losses are the mean over this many batches per rank


class TrainError(Exception):
    """The run cannot go on (diverged, out of memory, bad run directory); one line for the user."""


def guarded_update(optimizer, ema, model, step: int, loss: float, grad_norm: float, bad_in_row: int,
                   max_bad_steps: int, last_good) -> int:
    """The optimizer (and EMA) update, skipped when the loss or the gradient norm is non-finite
    (every rank sees the same reduced values, so all skip together). Returns the count of
    non-finite steps in a row (0 after a good step); max_bad_steps in a row stop the run."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
        if ema is not None:
            ema.update(model, step=step)
        return 0
    bad_in_row += 1
    if bad_in_row >= max_bad_steps:
        raise TrainError(f"{bad_in_row} non-finite steps in a row (last at step {step + 1}); "
                         f"last good checkpoint: {last_good or 'none'}")
    return bad_in_row


# ------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    name: str
    start: int  # first global step of the stage
    steps: int
    resolution: int
    batch_size: int  # global
    lr: float  # peak LR, already scaled by batch/256
    lpips_weight: float
    warmup_steps: int

    @property
    def end(self) -> int:
        return self.start + self.steps


def build_stages(cfg: Config, world_size: int = 1) -> list[Stage]:
    """``train.stages`` with None fields inherited from the top-level keys; [] -> one stage."""
    t = cfg.train
    stages, start = [], 0
    for i, s in enumerate(t.stages or [None]):
        get = (lambda k, d: d if s is None or getattr(s, k) is None else getattr(s, k))
        batch = get("batch_size", t.batch_size)
        epochs = get("epochs", t.epochs)
        steps = get("steps", t.steps) if (s is not None and s.steps is not None) or epochs is None else (
            math.ceil(epochs * t.epoch_size / batch))
        name = s.name if s is not None else "main"
        if batch % (world_size * t.grad_accum_steps):
            raise ConfigError(f"stage '{name}': global batch {batch} is not divisible by world size "
                              f"{world_size} x grad_accum_steps {t.grad_accum_steps}")
        if steps <= 0:
            raise ConfigError(f"stage '{name}': needs steps > 0 (got {steps})")
        stages.append(Stage(name, start, steps, get("resolution", cfg.data.resolution), batch,
                            scaled_lr(get("lr", t.lr), batch, t.lr_scale_by_batch),
                            get("lpips_weight", cfg.loss.lpips_weight), get("warmup_steps", t.warmup_steps)))
        start += steps
    return stages


# ------------------------------------------------------------------------------------ helpers
def prepare_out_dir(out: Path, resume: str | None, overwrite: bool, is_main: bool) -> None:
    """Never write over an existing run unless asked to (--resume or --overwrite). The run lock
    (``.lock``, held by this run) is neither content nor cleared."""
    content = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.exists() else []
    if content and resume is None:
        if not overwrite:
            raise TrainError(f"run directory '{out}' is not empty; pass --resume auto to continue it "
                             f"or --overwrite to start over")
        if is_main:
            for p in content:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    barrier()  # nobody creates files before rank 0 has cleared the directory
    out.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def hold_run_dir(out: Path, info):
    """Rank 0 holds ``OUT/.lock`` for the whole run (train/run_lock.py); if another live process
    holds it, every rank stops with one line instead of writing into that run."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunLock(out).acquire()
        except RunLockError as e:
            error = str(e)
    if any_rank(error is not None, info.device):
        raise TrainError(error or "the run directory is in use (rank 0 says by whom)")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def forward_context(device: torch.device, amp_dtype, attention_kernel: str = "auto"):
    """bf16 autocast (when ``amp_dtype``) and the attention kernel choice for one forward pass."""
    with contextlib.ExitStack() as stack:  # a bad choice raises with nothing left entered
        stack.enter_context(attention_kernels(device, attention_kernel))
        stack.enter_context(torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                           enabled=amp_dtype is not None))
        return stack.pop_all()


def forward_backward(model, images, tokens, lpips_weight, accum: int, amp_dtype,
                     attention_kernel: str = "auto", latents=None) -> dict:
    """One optimizer step's forward and backward over ``accum`` micro-batches; mean loss terms.
    ``latents``: the images' VAE latents when they come from a latent cache."""
    totals: dict = {}
    lats = latents.chunk(accum) if latents is not None else [None] * accum
    for i, (x, t, z) in enumerate(zip(images.chunk(accum), tokens.chunk(accum), lats)):
        with set_grad_sync(model, i == accum - 1):  # all-reduce once, on the last micro-batch
            with forward_context(x.device, amp_dtype, attention_kernel):
                out = model(x, t, lpips_weight=lpips_weight, **({} if z is None else {"latents": z}))
            (out["loss"] / accum).backward()
        if i == accum - 1:
            sync_replicated_grads(model)  # FSDP2 leaves scalars (logit_scale) unsharded
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / accum
    return totals


@torch.no_grad()
def validate(model, raw, cfg: Config, stage: Stage, info, amp_dtype) -> dict:
    """Mean losses on the first VAL_BATCHES batches of data.val (eval mode: no noise)."""
    from ..data import make_loader, open_data
    ds = open_data(cfg.data.val, split="val", resolution=stage.resolution, train=False, cfg=cfg.data,
                   seed=cfg.seed, rank=info.rank, world_size=info.world_size, infinite=True)
    loader = iter(make_loader(ds, stage.batch_size // info.world_size))
    raw.eval()
    sums: dict = {}
    for _ in range(VAL_BATCHES):
        batch = next(loader)
        with forward_context(info.device, amp_dtype, cfg.train.attention_kernel):
            out = model(batch["image"].to(info.device), raw.tokenizer(batch["caption"]).to(info.device),
                        lpips_weight=stage.lpips_weight)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.float() / VAL_BATCHES
    raw.train()
    keys = sorted(sums)
    means = all_reduce_mean(torch.stack([sums[k] for k in keys]))
    return {f"val_{k}": float(v) for k, v in zip(keys, means) if k.startswith("loss")}


# ------------------------------------------------------------------------------------ the loop
def train(cfg: Config, out_dir, resume: str | None = None, overwrite: bool = False, eval_fn=None) -> dict:
    """Train (or continue) a run in ``out_dir``; returns a summary dict.

    ``resume``: None, ``"auto"`` (newest complete checkpoint of out_dir) or a checkpoint/run path.
    ``eval_fn(model, step) -> dict``: an extra evaluation hook, run on every rank where validation
    runs; its numbers are logged beside ``val_*``.
    """
    info = init_distributed()
    try:
        with hold_run_dir(Path(out_dir), info):
            return _train(cfg, Path(out_dir), resume, overwrite, eval_fn, info)
    finally:
        cleanup()


def _train(cfg, out, resume, overwrite, eval_fn, info) -> dict:
    from ..data import make_loader, open_data
    t = cfg.train
    stages = build_stages(cfg, info.world_size)
    total_steps = stages[-1].end
    if t.fsdp and t.ema_decay > 0:
        raise ConfigError("train.ema_decay > 0 with train.fsdp=true is not supported yet; use DDP for EMA")
    prepare_out_dir(out, resume, overwrite, info.is_main)
    ckpt = ckpt_lib.resolve_resume(resume, out) if resume else None
    if info.is_main:
        (out / "config.yaml").write_text(config_to_yaml(cfg))
    if info.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    seed_everything(cfg.seed, info.rank)

    # Model: the loss gathers contrastive features across ranks, so it needs rank / world size.
    model = OpenVision3(cfg)
    if t.init_from:
        model.load_weights(OpenVision3.from_pretrained(t.init_from).trainable_state_dict())
    if t.freeze:  # e.g. a latent decoder trained afterwards on an encoder's frozen tokens (gen compare)
        frozen = [p for name, p in model.named_parameters() if name.startswith(tuple(t.freeze))]
        if not frozen:
            raise ConfigError(f"train.freeze {t.freeze} matches no parameter name (e.g. 'encoder.')")
        for p in frozen:
            p.requires_grad_(False)
    model.loss_fn = OpenVision3Loss(cfg.loss, rank=info.rank, world_size=info.world_size)
    model.to(info.device)
    if t.grad_checkpointing:
        enable_grad_checkpointing(model)
    precision = choose_precision(t.precision, info.device)
    amp_dtype = precision.dtype
    if info.is_main:
        print(precision.describe(), flush=True)
    ema = build_ema(model, t.ema_decay)
    wrapped = wrap_model(model, info, fsdp=t.fsdp)  # bf16 via autocast, as with DDP: the VAE stays fp32
    if t.compile:
        wrapped = torch.compile(wrapped)
    optimizer = build_optimizer(model, t, stages[0].lr, info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable_keys = set(model.trainable_state_dict())

    # Data: one resumable stream for the whole run; stages only change resolution and batch.
    if cfg.data.latent_cache:  # images + precomputed latents; refused if made with another VAE/size
        from ..data.latent_cache import open_latent_cache
        ds = open_latent_cache(cfg.data.latent_cache, model.vae, [s.resolution for s in stages], cfg=cfg.data,
                               seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    else:
        ds = open_data(cfg.data.train, split="train", resolution=stages[0].resolution, train=True,
                       cfg=cfg.data, seed=cfg.seed, rank=info.rank, world_size=info.world_size)

    # Latents of images seen before, when a run repeats its images (not with a latent cache: it has them)
    memo = LatentMemo(model.vae.encode, t.latent_memo) if t.latent_memo and not cfg.data.latent_cache else None

    step, counters = 0, {"bad_steps": 0, "skipped": Counter()}
    if ckpt is not None:
        step = _restore(ckpt, model, optimizer, ema, ds, counters, info)
        if info.is_main:
            print(f"resuming {out} from step {step} ({ckpt['path']})", flush=True)
    last_good = str(ckpt["path"]) if ckpt is not None else None
    # On resume (also one that found no checkpoint yet) the rows a killed run wrote after its
    # checkpoint are dropped: they are written again, identically.
    logger = MetricsLogger(out, enabled=info.is_main, resume_step=step if resume else None)

    stop = StopRequest()  # SIGTERM / SIGUSR1: checkpoint at the end of this step, then return

    def save(at_step: int) -> str:
        nonlocal last_good
        trainer_state = {"step": at_step, "bad_steps": counters["bad_steps"],
                         "skipped": dict(counters["skipped"]), "world_size": info.world_size,
                         "rng": gather_objects(ckpt_lib.rng_state()), "data": gather_objects(ds.state_dict()),
                         "scaler": None}  # bf16 needs no grad scaler; kept for the file format
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        reshard_fsdp(model)  # validation's no_grad forward leaves FSDP2 roots unsharded
        opt_state = get_optimizer_state_dict(model, optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model_state = {k: v for k, v in full_state_dict(model).items() if k in trainable_keys}
        ema_state = ({k: v for k, v in ema.module.state_dict().items() if k in trainable_keys}
                     if ema is not None else None)
        path = out / "checkpoints" / f"step_{at_step}"
        if info.is_main:
            ckpt_lib.save_checkpoint(out / "checkpoints", at_step, model_state=model_state,
                                     optimizer_state=opt_state, trainer_state=trainer_state,
                                     config_yaml=config_to_yaml(cfg), ema_state=ema_state, keep_last=t.keep_last)
            logger.plot()
        barrier()
        last_good = str(path)
        return last_good

    stage, loader_it, window, val, bad_in_row, last = None, None, [], {}, 0, {}
    first_step = step  # 0, or where a resumed run picks up
    progress = None
    if info.is_main:
        from tqdm.auto import tqdm
        progress = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True)
    t_last, wait, seen, logged_reason = time.perf_counter(), 0.0, 0, False
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    status = "finished"

    while step < total_steps:
        # Stage switch: new resolution (token count), batch size, LPIPS weight and LR schedule.
        s = next(x for x in stages if x.start <= step < x.end)
        if s is not stage:
            stage = s
            model.cfg.model.image_size = stage.resolution
            ds.set_resolution(stage.resolution)
            loader_it = iter(make_loader(ds, stage.batch_size // info.world_size, cfg.data.num_workers))
        set_lr(optimizer, warmup_cosine(step - stage.start, stage.steps, stage.warmup_steps, stage.lr,
                                        t.min_lr_ratio))

        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # data loading (e.g. a new DataLoader iterator's
            batch = next(loader_it)             # seed) must not shift the model's noise RNG on resume
        wait += time.perf_counter() - t0
        counters["skipped"].update(batch["skipped"])
        images = batch["image"].to(info.device, non_blocking=True)
        latents = batch["latent"].to(info.device, non_blocking=True) if "latent" in batch else None
        if memo is not None:
            latents = memo(images)
        if step == first_step and info.is_main:  # the first batch this process trains on
            _warn_unknown_words(model.tokenizer, batch["caption"])
        tokens = model.tokenizer(batch["caption"]).to(info.device, non_blocking=True)
        if images.shape[0] % t.grad_accum_steps:
            raise TrainError(f"step {step}: batch of {images.shape[0]} does not split into "
                             f"{t.grad_accum_steps} micro-batches")
        try:
            terms = forward_backward(wrapped, images, tokens, stage.lpips_weight, t.grad_accum_steps, amp_dtype,
                                     t.attention_kernel, latents=latents)
        except torch.OutOfMemoryError:
            raise TrainError(
                f"out of memory at step {step} with global batch {stage.batch_size} "
                f"({stage.batch_size // info.world_size // t.grad_accum_steps} images per device per "
                f"micro-batch); try train.grad_accum_steps={2 * t.grad_accum_steps}, "
                f"train.grad_checkpointing=true, train.fsdp=true, or a smaller train.batch_size") from None
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        keys = sorted(terms)
        reduced = all_reduce_mean(torch.stack([terms[k] for k in keys] + [grad_norm.float().detach()]))
        values = dict(zip(keys, reduced[:-1].tolist()))
        grad_norm = float(reduced[-1])

        bad_in_row = guarded_update(optimizer, ema, model, step, values["loss"], grad_norm, bad_in_row,
                                    t.max_bad_steps, last_good)
        counters["bad_steps"] += bad_in_row > 0
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen += images.shape[0] * info.world_size
        last = {**values, "grad_norm": grad_norm}
        window.append(last)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{values['loss']:.4f}", stage=stage.name)

        if _due(step, t.log_every) or step == total_steps:
            dt = time.perf_counter() - t_last
            row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            row.update(lr=optimizer.param_groups[0]["lr"], stage=stage.name, resolution=stage.resolution,
                       tokens=model.token_grid(stage.resolution)[0] * model.token_grid(stage.resolution)[1],
                       samples_per_s=seen / dt, data_wait_frac=wait / dt, bad_steps=counters["bad_steps"],
                       skipped=dict(counters["skipped"]),
                       peak_mem_gb=(torch.cuda.max_memory_allocated(info.device) / 2**30
                                    if info.device.type == "cuda" else None), precision=precision.name,
                       **(memo.stats() if memo is not None else {}))
            if not logged_reason:  # the first row after every start (and resume) says why
                row["precision_reason"], logged_reason = precision.reason, True
            logger.log(step, row)
            window, t_last, wait, seen = [], time.perf_counter(), 0.0, 0

        if _due(step, t.eval_every) or step == total_steps:
            val = validate(wrapped, model, cfg, stage, info, amp_dtype)
            if eval_fn is not None:
                val.update(eval_fn(ema.module if ema is not None else model, step) or {})
            logger.log(step, val)

        stopped = stop.end_of_step(info.device, _due(step, t.checkpoint_every) or step == total_steps,
                                   lambda: save(step))
        if stopped:
            status = stopped
            break

    if progress is not None:
        progress.close()
    if status == "finished":  # the exported model(s), save_pretrained format
        export = _plain_copy(model, info.is_main) if t.fsdp and info.distributed else model  # collective
        if info.is_main:
            export.save_pretrained(out / "model")
            if ema is not None:
                ema.module.cfg.model.image_size = model.cfg.model.image_size
                ema.module.save_pretrained(out / "model_ema")
    barrier()
    logger.close()
    return {"status": status, "step": step, "total_steps": total_steps, "out_dir": str(out),
            "precision": precision.name, "precision_reason": precision.reason,
            "last_checkpoint": last_good, "bad_steps": counters["bad_steps"],
            "skipped": dict(counters["skipped"]), "final": last,
            "val": val, "model_dir": str(out / "model") if status == "finished" else None}


def _plain_copy(model, is_main: bool):
    """An unsharded CPU copy of an FSDP2 model (every rank must call: gathering is a collective;
    only rank 0 gets the copy, the others None)."""
    full = full_state_dict(model)
    if not is_main:
        return None
    plain = OpenVision3(model.cfg)  # the final stage's image size, as in the unsharded export
    own = plain.state_dict()
    missing = sorted(set(own) - set(full))
    if missing:
        raise TrainError(f"cannot export the FSDP model: {len(missing)} weights missing, e.g. {missing[:3]}")
    plain.load_state_dict({k: v for k, v in full.items() if k in own})
    return plain


def _restore(ckpt: dict, model, optimizer, ema, ds, counters, info) -> int:
    """Load weights, optimizer, EMA, counters, this rank's RNG and data position; return the step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    load_full_state_dict(model, ckpt["model"])
    set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
    if ema is not None:
        if ckpt["ema"] is None:
            raise TrainError(f"{ckpt['path']}: has no EMA weights but train.ema_decay > 0")
        ema.module.load_state_dict(ckpt["ema"], strict=False)
    st = ckpt["trainer_state"]
    counters["bad_steps"], counters["skipped"] = st["bad_steps"], Counter(st["skipped"])
    if st["world_size"] == info.world_size:
        ckpt_lib.set_rng_state(st["rng"][info.rank])
        ds.load_state_dict(st["data"][info.rank])
    else:  # the data split changes with the world size: restart the position, keep the epoch
        import warnings
        warnings.warn(f"resuming with {info.world_size} processes (saved with {st['world_size']}): "
                      f"data order and random streams are not exactly reproduced")
        ds.set_epoch(st["data"][0]["epoch"] + 1)
    return int(st["step"])


def _due(step: int, every: int) -> bool:
    """``every`` steps; 0 (or less) means never (the loop still acts at the last step)."""
    return every > 0 and step % every == 0


def _warn_unknown_words(tokenizer, captions) -> None:
    """A closed word list (``model.tokenizer: words``) that misses caption words trains on <unk>:
    say so once, on the first batch, rather than let it quietly cost accuracy."""
    unknown = tokenizer.unknown_words(captions)
    if unknown:
        import warnings
        shown = ", ".join(repr(w) for w in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        warnings.warn(f"model.words lacks {len(unknown)} word(s) of the training captions ({shown}); "
                      f"they become the unknown id", stacklevel=2)
