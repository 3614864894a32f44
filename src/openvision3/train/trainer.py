"""Train OpenVision 3: reconstruction + contrastive + captioning on one unified token stream.

    ov3 train --config configs/tiny.yaml --out runs/tiny            # one process
    torchrun --nproc_per_node 8 -m openvision3.cli train --config configs/ov3_b2.yaml --out runs/b2

What is this trainer's own is ``OpenVision3Task``: the model, its optimizer, the data stream and
the stages (resolution, batch, LPIPS weight and LR schedule change between them), and the step,
``OpenVision3.forward`` on images and tokenized captions. The rest is the run engine's (train/run.py).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..config import Config, ConfigError, config_to_yaml
from ..models.openvision3 import OpenVision3
from .distributed import all_reduce_mean, enable_grad_checkpointing, full_state_dict, launched_world_size
from .latent_memo import LatentMemo
from .optim import LRSchedule, build_optimizer, scaled_lr
from .run import Parts, Run, RunSettings, Task, TrainError, forward_context, run_task
from .run import forward_backward as forward_backward_micro

VAL_BATCHES = 4  # validation losses are the mean over this many batches per rank


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
    for s in t.stages or [None]:
        get = (lambda k, d: d if s is None or getattr(s, k) is None else getattr(s, k))
        batch = get("batch_size", t.batch_size)
        epochs = get("epochs", t.epochs)
        steps = get("steps", t.steps if epochs is None else math.ceil(epochs * t.epoch_size / batch))
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


# ------------------------------------------------------------------------------------ the step
def forward_backward(model, images, tokens, lpips_weight, accum: int, amp_dtype, attention_kernel: str = "auto",
                     latents=None) -> dict:
    """One OpenVision 3 step's forward and backward outside a run (benchmarks, switch tests): the
    engine's ``forward_backward`` with this trainer's loss call. ``latents``: the images' VAE
    latents when they come from a latent cache."""
    batch = {"image": images, "tokens": tokens, **({} if latents is None else {"latent": latents})}
    context = lambda: forward_context(images.device, amp_dtype, attention_kernel)  # noqa: E731
    return forward_backward_micro(model, lambda b: _model_losses(model, b, lpips_weight), batch, accum, context)


def _model_losses(model, batch: dict, lpips_weight: float) -> dict:
    return model(batch["image"], batch["tokens"], lpips_weight=lpips_weight,
                 **({"latents": batch["latent"]} if "latent" in batch else {}))


# ------------------------------------------------------------------------------------ the trainer
class OpenVision3Task(Task):
    """The step of ``ov3 train``: images (or cached latents) and tokenized captions through
    ``OpenVision3.forward``, in stages that change resolution, batch, LPIPS weight and LR."""
    name = "train"

    def __init__(self, cfg: Config, eval_fn=None):
        self.cfg, self.eval_fn = cfg, eval_fn
        self.skipped: Counter = Counter()

    def settings(self, world_size: int) -> RunSettings:
        t = self.cfg.train
        self.stages = build_stages(self.cfg, world_size)
        return RunSettings(steps=self.stages[-1].end, seed=self.cfg.seed, precision=t.precision,
                           grad_clip=t.grad_clip, grad_accum_steps=t.grad_accum_steps, max_bad_steps=t.max_bad_steps,
                           log_every=t.log_every, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
                           keep_last=t.keep_last, ema_decay=t.ema_decay, fsdp=t.fsdp, compile=t.compile,
                           attention_kernel=t.attention_kernel)

    def build(self, run: Run) -> Parts:
        from ..data import open_data
        cfg, t, info = self.cfg, self.cfg.train, run.info
        self.run = run
        model = OpenVision3(cfg)
        if t.init_from:
            model.load_weights(OpenVision3.from_pretrained(t.init_from).trainable_state_dict())
        if t.freeze:  # e.g. a latent decoder trained afterwards on an encoder's frozen tokens (gen compare)
            frozen = [p for name, p in model.named_parameters() if name.startswith(tuple(t.freeze))]
            if not frozen:
                raise ConfigError(f"train.freeze {t.freeze} matches no parameter name (e.g. 'encoder.')")
            for p in frozen:
                p.requires_grad_(False)
        model.to(info.device)
        if t.grad_checkpointing:
            enable_grad_checkpointing(model)
        self.model = model
        optimizer = lambda: build_optimizer(model, t, self.stages[0].lr, info.device)  # noqa: E731

        # Data: one resumable stream for the whole run; stages only change resolution and batch.
        if cfg.data.latent_cache:  # images + precomputed latents; refused if made with another VAE/size
            from ..data.latent_cache import open_latent_cache
            self.ds = open_latent_cache(cfg.data.latent_cache, model.vae, [s.resolution for s in self.stages],
                                        cfg=cfg.data, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        else:
            self.ds = open_data(cfg.data.train, split="train", resolution=self.stages[0].resolution, train=True,
                                cfg=cfg.data, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        # Latents of images seen before, when a run repeats its images (a latent cache has them already)
        self.memo = (LatentMemo(model.vae.encode, t.latent_memo) if t.latent_memo and not cfg.data.latent_cache
                     else None)
        self.stage, self.loader, self.first_batch = None, None, True
        return Parts(model, optimizer, self.ds, weight_keys=set(model.trainable_state_dict()))

    def _stage_at(self, step: int) -> Stage:
        return next(x for x in self.stages if x.start <= step < x.end)

    def lr(self, step: int) -> float:
        s, t = self._stage_at(step), self.cfg.train
        return LRSchedule(s.lr, s.steps, s.warmup_steps, min_ratio=t.min_lr_ratio)(step - s.start)

    def batch(self, step: int) -> dict:
        from ..data import make_loader
        info = self.run.info
        stage = self._stage_at(step)
        if stage is not self.stage:  # a new resolution (token count) and batch size
            self.stage = stage
            self.ds.set_resolution(stage.resolution)
            self.loader = iter(make_loader(self.ds, stage.batch_size // info.world_size, self.cfg.data.num_workers))
        batch = next(self.loader)
        self.skipped.update(batch["skipped"])
        images = batch["image"].to(info.device, non_blocking=True)
        out = {"image": images}
        if "latent" in batch:
            out["latent"] = batch["latent"].to(info.device, non_blocking=True)
        elif self.memo is not None:
            out["latent"] = self.memo(images)
        if self.first_batch and info.is_main:  # the first batch this process trains on
            _warn_unknown_words(self.model.tokenizer, batch["caption"])
        self.first_batch = False
        out["tokens"] = self.model.tokenizer(batch["caption"]).to(info.device, non_blocking=True)
        return out

    def losses(self, batch: dict, step: int) -> dict:
        return _model_losses(self.run.model, batch, self._stage_at(step).lpips_weight)

    def log_extras(self, step: int) -> dict:
        stage = self._stage_at(step - 1)
        grid = self.model.token_grid(stage.resolution)
        return {"stage": stage.name, "resolution": stage.resolution, "tokens": grid[0] * grid[1],
                "skipped": dict(self.skipped), **(self.memo.stats() if self.memo is not None else {})}

    def evaluate(self, step: int) -> dict:
        val = validate(self.run.model, self.model, self.cfg, self._stage_at(step - 1), self.run)
        if self.eval_fn is not None:
            val.update(self.eval_fn(self.run.ema.module if self.run.ema is not None else self.model, step) or {})
        return val

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = Counter(state.get("skipped", {}))

    def finish(self, run: Run) -> dict:
        """The exported model(s), save_pretrained format, at the last stage's resolution."""
        info, model, ema = run.info, self.model, run.ema
        final_size = self.stages[-1].resolution
        export = _plain_copy(model, info.is_main) if self.cfg.train.fsdp and info.distributed else model  # collective
        if info.is_main:
            for m, name in ((export, "model"), (ema.module if ema is not None else None, "model_ema")):
                if m is not None:
                    m.cfg.model.image_size = final_size
                    m.save_pretrained(run.out / name)
        return {"model_dir": str(run.out / "model"), "skipped": dict(self.skipped)}


@torch.no_grad()
def validate(model, raw, cfg: Config, stage: Stage, run: Run) -> dict:
    """Mean losses on the first VAL_BATCHES batches of data.val (eval mode: no noise)."""
    from ..data import make_loader, open_data
    info = run.info
    ds = open_data(cfg.data.val, split="val", resolution=stage.resolution, train=False, cfg=cfg.data,
                   seed=cfg.seed, rank=info.rank, world_size=info.world_size, infinite=True)
    loader = iter(make_loader(ds, stage.batch_size // info.world_size))
    raw.eval()
    sums: dict = {}
    for _ in range(VAL_BATCHES):
        batch = next(loader)
        with forward_context(info.device, run.precision.dtype, cfg.train.attention_kernel):
            out = model(batch["image"].to(info.device), raw.tokenizer(batch["caption"]).to(info.device),
                        lpips_weight=stage.lpips_weight)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.float() / VAL_BATCHES
    raw.train()
    keys = sorted(sums)
    means = all_reduce_mean(torch.stack([sums[k] for k in keys]))
    return {f"val_{k}": float(v) for k, v in zip(keys, means) if k.startswith("loss")}


def train(cfg: Config, out_dir, resume: str | None = None, overwrite: bool = False, eval_fn=None,
          progress: bool = True) -> dict:
    """Train (or continue) an OpenVision 3 run in ``out_dir``; returns the engine's summary.

    ``resume``: None, ``"auto"`` (newest complete checkpoint of out_dir) or a checkpoint/run path.
    ``eval_fn(model, step) -> dict``: an extra evaluation, run on every rank where validation
    runs; its numbers are logged beside ``val_*``.
    """
    if cfg.train.init_encoder:  # its checks, weights and token cache: recipes/complete.py
        raise ConfigError("train.init_encoder is trained by openvision3.recipes.complete.train_heads "
                          "(ov3 train calls it)")
    task = OpenVision3Task(cfg, eval_fn)
    world_size = launched_world_size()
    return run_task(task, task.settings(world_size), out_dir, config_yaml=config_to_yaml(cfg), resume=resume,
                    overwrite=overwrite, progress=progress)


def _plain_copy(model, is_main: bool):
    """An unsharded CPU copy of an FSDP2 model (every rank must call: gathering is a collective;
    only rank 0 gets the copy, the others None)."""
    full = full_state_dict(model)
    if not is_main:
        return None
    plain = OpenVision3(model.cfg)
    missing = plain.load_state_dict(full, strict=False).missing_keys
    if missing:
        raise TrainError(f"cannot export the FSDP model: {len(missing)} weights missing, e.g. {missing[:3]}")
    return plain


def _warn_unknown_words(tokenizer, captions) -> None:
    """A closed word list (``model.tokenizer: words``) that misses caption words trains on <unk>:
    say so once, on the first batch, rather than let it quietly cost accuracy."""
    unknown = tokenizer.unknown_words(captions)
    if unknown:
        import warnings
        shown = ", ".join(repr(w) for w in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        warnings.warn(f"model.words lacks {len(unknown)} word(s) of the training captions ({shown}); "
                      f"they become the unknown id", stacklevel=2)
