"""The run engine: everything around a training step, once, for every trainer in the project:
``ov3 train`` (trainer.py), ``ov3 train-vae`` (vae_trainer.py), ``ov3 gen train`` (generation/
trainer.py), the LLaVA probe's stages (recipes/llava_probe.py) and the judge (generation/judge.py).

A trainer is a ``Task``: it builds its model, optimizer and data (``Parts``) and says what one step
computes (``losses(batch, step)``). ``run_task`` owns the rest, the same way for all five: the run
directory (a non-empty one is refused unless ``resume`` / ``overwrite``; one writer, run_lock.py);
processes (torchrun: DDP, or FSDP2 when asked), seeding, precision (precision.py), EMA; the step
(micro-batches with one all-reduce, backward, clip, the non-finite guard: the update is skipped and
counted, ``max_bad_steps`` in a row stop the run with one line; the task's LR, the update, the EMA);
logs (logging.py, a tqdm bar); stops (stop.py: the step is checkpointed and the summary's ``status``
names the signal); checkpoints (checkpoint.py: atomic, with every rank's RNG states and data
position, ``--resume auto`` falling back past a damaged one).

World size on resume: a checkpoint resumes on any number of processes. With the number it was
saved with, the run continues exactly (every rank's RNG and data position restored). With another,
the weights, optimizer, EMA and step are restored, and the data restarts at the next epoch with
fresh per-rank streams, with a warning: a requeued cluster job often gets another node count, and
refusing it would throw away the run; exactness is what the warning says is lost.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError
from ..models.vit import attention_kernels
from . import checkpoint as ckpt_lib
from .distributed import (DistInfo, all_reduce_mean, any_rank, barrier, cleanup, full_state_dict, gather_objects,
                          init_distributed, load_full_state_dict, reshard_fsdp, seed_everything, set_grad_sync,
                          sync_replicated_grads, wrap_model)
from .logging import MetricsLogger, plot_losses
from .optim import build_ema, set_lr
from .precision import choose_precision
from .run_lock import LOCK_NAME, RunLockError, run_lock
from .stop import StopRequest


class TrainError(Exception):
    """The run cannot go on (diverged, out of memory, bad run directory); one line for the user."""


class RunStopped(Exception):
    """A run a command needed was stopped by a signal and checkpointed; the same command again
    resumes it (the CLI prints the line and exits 3)."""


@dataclass
class RunSettings:
    """The engine's knobs; each trainer fills them from its own config section."""
    steps: int
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp32 (precision.py)
    grad_clip: float = 1.0  # 0: no clipping (the norm is still measured for the guard and the log)
    grad_accum_steps: int = 1
    max_bad_steps: int = 5  # non-finite steps in a row that stop the run
    log_every: int = 10
    eval_every: int = 0  # 0: only at the last step
    checkpoint_every: int = 0  # 0: only at the last step (and on a stop)
    keep_last: int = 2
    ema_decay: float = 0.0
    fsdp: bool = False
    compile: bool = False
    find_unused: bool | None = None  # DDP's flag (None: wrap_model derives it for an OpenVision 3 model)
    attention_kernel: str | None = None  # the towers' SDPA kernels (models/vit.py); None: torch's own choice
    device: str | None = None  # None: cuda:LOCAL_RANK when there is a GPU, else cpu
    distributed: bool = True  # join torchrun's process group when launched by it


@dataclass
class Parts:
    """What a task builds (``Task.build``); the engine wraps, checkpoints and restores it."""
    model: nn.Module  # what ``losses`` trains; the engine wraps it (``Run.model``) for DDP/FSDP
    # () -> the optimizer over the parameter groups, called after wrapping (FSDP2 replaces the
    # parameters with sharded ones); its LR follows ``Task.lr``, its step is skipped on non-finite steps
    make_optimizer: Callable[[], torch.optim.Optimizer]
    data: object  # per-rank position: ``state_dict()`` / ``load_state_dict()`` (+ ``set_epoch(n)``)
    weight_keys: set | None = None  # the model's state-dict keys a checkpoint holds (None: all)
    extra_weights: dict = field(default_factory=dict)  # tensors saved beside them (e.g. token stats)
    # other (module, optimizer) pairs the task steps itself, e.g. {"discriminator": (disc, disc_opt)}
    others: dict = field(default_factory=dict)


class Task:
    """What a trainer supplies. ``build``, ``batch``, ``losses`` and ``lr`` are required."""
    name = "train"  # the progress bar's label

    def build(self, run: "Run") -> Parts:
        raise NotImplementedError

    def batch(self, step: int) -> dict:
        """The batch of ``step`` (the engine keeps its random draws out of the model's RNG)."""
        raise NotImplementedError

    def losses(self, batch: dict, step: int) -> dict:
        """Forward one (micro-)batch: scalar tensors, ``loss`` is what backward sees."""
        raise NotImplementedError

    def lr(self, step: int) -> float:
        raise NotImplementedError

    def evaluate(self, step: int) -> dict:
        """Numbers logged every ``eval_every`` steps and at the last one."""
        return {}

    def log_extras(self, step: int) -> dict:
        """Fields added to every metrics row (stage, data wait, ...)."""
        return {}

    def state_dict(self) -> dict:
        """Plain data the task needs back on resume (counters); saved in trainer_state.pt."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def finish(self, run: "Run") -> dict:
        """After the last step: write what the run exports; returns extra summary fields."""
        return {}


class Run:
    """The live run a task sees: processes, device, precision, the wrapped model, the output."""

    def __init__(self, out: Path, info: DistInfo, precision):
        self.out, self.info, self.precision = out, info, precision
        self.model: nn.Module | None = None  # the wrapped model (DDP / FSDP2 / compiled)
        self.ema = None

    @property
    def device(self) -> torch.device:
        return self.info.device


# ------------------------------------------------------------------------------------ run directory
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
def hold_run_dir(out: Path, info: DistInfo):
    """Rank 0 holds ``OUT/.lock`` for the whole run; if another live process holds it, every rank
    stops with one line instead of writing into that run."""
    with contextlib.ExitStack() as held:
        error = None
        try:
            held.enter_context(run_lock(out, enabled=info.is_main))
        except RunLockError as e:
            error = str(e)
        if any_rank(error is not None, info.device):
            raise TrainError(error or "the run directory is in use (rank 0 says by whom)")
        yield


# ------------------------------------------------------------------------------------ micro-batches
def split_batch(batch: dict, n: int) -> list[dict]:
    """``n`` micro-batches: tensors and lists split along the batch; anything else goes to all."""
    if n == 1:
        return [batch]
    sizes = {len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list))}
    if len(sizes) != 1 or next(iter(sizes)) % n:
        raise TrainError(f"a batch of {sorted(sizes)} samples does not split into {n} micro-batches")
    size = next(iter(sizes)) // n
    return [{k: v[i * size:(i + 1) * size] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
            for i in range(n)]


@contextlib.contextmanager
def forward_context(device: torch.device, amp_dtype, attention_kernel: str | None = "auto"):
    """bf16 autocast (when ``amp_dtype``) and the attention kernel choice (None: leave torch's) for
    one forward pass; every trainer's step runs under it (``RunSettings``)."""
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    with attention_kernels(device, attention_kernel) if attention_kernel else contextlib.nullcontext(), autocast:
        yield


def forward_backward(model: nn.Module, losses, batch: dict, accum: int, context) -> dict:
    """One optimizer step's forward and backward over ``accum`` micro-batches of ``batch``:
    ``losses(micro_batch) -> {"loss": ..., ...}`` under ``context()`` (forward_context); returns the
    mean of every term. The gradient all-reduce runs once, on the last micro-batch."""
    totals: dict = {}
    for i, micro in enumerate(split_batch(batch, accum)):
        with set_grad_sync(model, i == accum - 1):
            with context():
                out = losses(micro)
            (out["loss"] / accum).backward()
        if i == accum - 1:
            sync_replicated_grads(model)  # FSDP2 leaves scalars (logit_scale) unsharded
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / accum
    return totals


def _batch_size(batch: dict) -> int:
    return next((len(v) for v in batch.values() if isinstance(v, torch.Tensor)), 0)


def _due(step: int, every: int) -> bool:
    """``every`` steps; 0 (or less) means never (the loop still acts at the last step)."""
    return every > 0 and step % every == 0


# ------------------------------------------------------------------------------------ the engine
def run_task(task: Task, settings: RunSettings, out_dir, *, config_yaml: str, resume: str | None = None,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Train ``task`` in ``out_dir`` (or continue it: ``resume="auto"`` or a checkpoint path).

    Returns a summary: ``status`` ("finished" or "stopped by SIGTERM" / SIGUSR1 / SIGINT), ``step``,
    ``total_steps``, ``last_checkpoint``, ``bad_steps``, ``final`` (the last step's losses), the
    precision, and what ``Task.finish`` adds."""
    out = Path(out_dir)
    info = init_distributed() if settings.distributed else DistInfo(
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if settings.device is not None:
        info.device = torch.device(settings.device)
    try:
        with hold_run_dir(out, info):
            return _Engine(task, settings, out, info, config_yaml, progress).run(resume, overwrite)
    finally:
        if settings.distributed:
            cleanup()


class _Engine:
    def __init__(self, task: Task, settings: RunSettings, out: Path, info: DistInfo, config_yaml: str,
                 progress: bool):
        self.task, self.s, self.out, self.info = task, settings, out, info
        self.config_yaml, self.show_progress = config_yaml, progress
        self.step, self.bad_steps, self.bad_in_row = 0, 0, 0
        self.window: list[dict] = []  # the losses of the steps since the last metrics row
        self.last_good: str | None = None

    # --------------------------------------------------------------------- set-up
    def run(self, resume, overwrite) -> dict:
        s, info = self.s, self.info
        if s.fsdp and s.ema_decay > 0:
            raise ConfigError("EMA (ema_decay > 0) with fsdp=true is not supported yet; use DDP for EMA")
        prepare_out_dir(self.out, resume, overwrite, info.is_main)
        ckpt = ckpt_lib.resolve_resume(resume, self.out) if resume else None
        if info.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
        seed_everything(s.seed, info.rank)
        precision = choose_precision(s.precision, info.device)
        if info.is_main:
            print(f"precision: {precision.name} ({precision.reason})", flush=True)
        run = Run(self.out, info, precision)
        self.parts = parts = self.task.build(run)  # a bad data spec or model fails here, before any file
        if info.is_main:
            (self.out / "config.yaml").write_text(self.config_yaml)
        parts.model.to(info.device)
        run.ema = self.ema = build_ema(parts.model, s.ema_decay)
        wrapped = wrap_model(parts.model, info, fsdp=s.fsdp, find_unused=s.find_unused)
        run.model = torch.compile(wrapped) if s.compile else wrapped
        self.optimizer = parts.make_optimizer()
        self.params = [p for p in parts.model.parameters() if p.requires_grad]  # clipped and guarded
        if ckpt is not None:
            self._restore(ckpt)
            self.last_good = str(ckpt["path"])
            if info.is_main:
                print(f"resuming {self.out} from step {self.step} ({ckpt['path']})", flush=True)
        # On resume (also one that found no checkpoint yet) the rows a killed run wrote after its
        # checkpoint are dropped: they are written again, identically.
        self.logger = MetricsLogger(self.out, enabled=info.is_main, resume_step=self.step if resume else None)
        try:
            return self._loop(run, precision)
        finally:
            self.logger.close()

    # --------------------------------------------------------------------- the loop
    def _loop(self, run: Run, precision) -> dict:
        s, task, info = self.s, self.task, self.info
        from tqdm.auto import tqdm
        stop = StopRequest()
        bar = tqdm(total=s.steps, initial=self.step, desc=task.name, dynamic_ncols=True,
                   disable=not (info.is_main and self.show_progress))
        last, evaluated, status = {}, {}, "finished"
        t_last, wait, seen, first_row = time.perf_counter(), 0.0, 0, True
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        try:
            while self.step < s.steps:
                step = self.step
                set_lr(self.optimizer, task.lr(step))
                t0 = time.perf_counter()
                with torch.random.fork_rng(devices=[]):  # data loading (e.g. a new DataLoader iterator's
                    batch = task.batch(step)            # seed) must not shift the model's RNG on resume
                wait += time.perf_counter() - t0
                terms = self._forward_backward(run, batch, step)
                values = self._update(terms, step)
                self.step = step = step + 1
                seen += _batch_size(batch) * info.world_size
                last = values
                self.window.append(values)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")

                if _due(step, s.log_every) or step == s.steps:
                    dt = time.perf_counter() - t_last
                    row = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[0]}
                    row.update(lr=self.optimizer.param_groups[0]["lr"], samples_per_s=seen / dt,
                               data_wait_frac=wait / dt, bad_steps=self.bad_steps,
                               peak_mem_gb=(torch.cuda.max_memory_allocated(info.device) / 2**30
                                            if info.device.type == "cuda" else None),
                               **task.log_extras(step))
                    if first_row:  # the first row after every start (and resume) says what it ran in
                        row.update(precision.as_row())
                        first_row = False
                    self.logger.log(step, row)
                    self.window, t_last, wait, seen = [], time.perf_counter(), 0.0, 0

                if _due(step, s.eval_every) or step == s.steps:
                    evaluated = task.evaluate(step) or {}
                    if evaluated:
                        self.logger.log(step, evaluated)

                stopped = stop.end_of_step(info.device, _due(step, s.checkpoint_every) or step == s.steps,
                                           lambda: self._save(step))
                if stopped:
                    status = stopped
                    break
        finally:
            stop.close()
            bar.close()
        summary = {"status": status, "step": self.step, "total_steps": s.steps, "out_dir": str(self.out),
                   **precision.as_row(), "last_checkpoint": self.last_good, "bad_steps": self.bad_steps,
                   "final": last, "val": evaluated}
        if status == "finished":
            summary.update(task.finish(run) or {})
        barrier()
        return summary

    def _forward_backward(self, run: Run, batch: dict, step: int) -> dict:
        n = self.s.grad_accum_steps
        context = lambda: forward_context(run.device, run.precision.dtype, self.s.attention_kernel)  # noqa: E731
        try:
            return forward_backward(run.model, lambda micro: self.task.losses(micro, step), batch, n, context)
        except torch.OutOfMemoryError:
            raise TrainError(
                f"out of memory at step {step} with {_batch_size(batch)} samples per device ({n} micro-batch"
                f"{'es' if n > 1 else ''}); try grad_accum_steps={2 * n}, grad_checkpointing=true, fsdp=true, "
                f"or a smaller batch") from None

    def _update(self, terms: dict, step: int) -> dict:
        """Clip, reduce across ranks, and update unless the loss or the gradient norm is non-finite
        (every rank sees the same reduced values, so all skip together)."""
        s, parts = self.s, self.parts
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip if s.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        keys = sorted(terms)
        reduced = all_reduce_mean(torch.stack([terms[k] for k in keys] + [grad_norm.float().detach()]))
        values = dict(zip(keys, reduced[:-1].tolist()))
        values["grad_norm"] = float(reduced[-1])
        if math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"]):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(parts.model, step=step)
            self.bad_in_row = 0
        else:
            self.bad_in_row += 1
            self.bad_steps += 1
            if self.bad_in_row >= s.max_bad_steps:
                raise TrainError(f"{self.bad_in_row} non-finite steps in a row (last at step {step + 1}); "
                                 f"lower the learning rate; last good checkpoint: {self.last_good or 'none'}")
        self.optimizer.zero_grad(set_to_none=True)
        return values

    # --------------------------------------------------------------------- checkpoints
    def _model_state(self, module: nn.Module) -> dict:
        keys = self.parts.weight_keys
        return {k: v for k, v in full_state_dict(module).items() if keys is None or k in keys}

    def _save(self, at_step: int) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        parts, info = self.parts, self.info
        trainer_state = {"step": at_step, "bad_steps": self.bad_steps, "world_size": info.world_size,
                         "log_window": self.window,  # a resumed run's next row averages the same steps
                         "rng": gather_objects(ckpt_lib.rng_state()), "data": gather_objects(parts.data.state_dict()),
                         "others": {name: opt.state_dict() for name, (_, opt) in parts.others.items()},
                         **self.task.state_dict()}
        reshard_fsdp(parts.model)  # a no_grad forward (validation) leaves FSDP2 roots unsharded
        opt_state = get_optimizer_state_dict(parts.model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model_state = {**self._model_state(parts.model), **parts.extra_weights}
        ema_state = self._model_state(self.ema.module) if self.ema is not None else None
        if info.is_main:
            ckpt_lib.save_checkpoint(self.out / "checkpoints", at_step, model_state=model_state,
                                     optimizer_state=opt_state, trainer_state=trainer_state,
                                     config_yaml=self.config_yaml, ema_state=ema_state, keep_last=self.s.keep_last,
                                     others={name: m.state_dict() for name, (m, _) in parts.others.items()})
            plot_losses(self.logger.path, self.out / "losses.png")
        barrier()
        self.last_good = str(self.out / "checkpoints" / f"step_{at_step}")

    def _restore(self, ckpt: dict) -> None:
        """Weights, optimizer, EMA, the others, counters, and (same world size) this rank's RNG
        and data position; see the module docstring for another world size."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        parts, info = self.parts, self.info
        load_full_state_dict(parts.model, ckpt["model"])
        set_optimizer_state_dict(parts.model, self.optimizer, ckpt["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        if self.ema is not None:
            if ckpt["ema"] is None:
                raise TrainError(f"{ckpt['path']}: has no EMA weights but ema_decay > 0")
            self.ema.module.load_state_dict(ckpt["ema"], strict=False)
        st = ckpt["trainer_state"]
        for name, (module, opt) in parts.others.items():
            if name not in ckpt["others"] or name not in st.get("others", {}):
                raise TrainError(f"{ckpt['path']}: has no {name} weights, but this run trains one")
            module.load_state_dict(ckpt["others"][name])
            opt.load_state_dict(st["others"][name])
        self.step, self.bad_steps = int(st["step"]), int(st["bad_steps"])
        self.window = list(st.get("log_window", []))
        self.task.load_state_dict(st)
        if st["world_size"] == info.world_size:
            ckpt_lib.set_rng_state(st["rng"][info.rank])
            parts.data.load_state_dict(st["data"][info.rank])
        else:
            warnings.warn(f"resuming with {info.world_size} processes (saved with {st['world_size']}): weights, "
                          f"optimizer and step are restored; the data restarts at the next epoch with new random "
                          f"streams, so the run is not an exact continuation")
            seed_everything(self.s.seed + self.step, info.rank)
            if hasattr(parts.data, "set_epoch"):
                parts.data.set_epoch(int(st["data"][0].get("epoch", 0)) + 1)


__all__ = ["Parts", "Run", "RunSettings", "RunStopped", "Task", "TrainError", "forward_backward", "forward_context",
           "hold_run_dir", "prepare_out_dir", "run_task", "split_batch"]
