"""A trained generator: DiT-DH weights (EMA), the token statistics, its config and its encoder.

A run directory of `ov3 gen train` holds ``generator/`` once training finished:
    generator.safetensors   DiT-DH weights (the EMA copy when train.ema_decay > 0) + stats.mean/std
    config.yaml             the GenConfig (``encoder`` is an absolute path to the frozen model)
    meta.json               grid, token dim, classes, class names, steps, the cache it learnt from
Before that, ``Generator.load`` falls back to the newest checkpoint (its EMA weights), so a run
stopped half-way can still be sampled and evaluated.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import config_to_yaml
from .config import GenConfig, gen_config_from_dict
from .dit import DiTDH
from .flow import guided_velocity, sample, shift_factor
from .token_space import TokenSpace, TokenStats

EXPORT_DIR, WEIGHTS, META = "generator", "generator.safetensors", "meta.json"


class GeneratorError(ValueError):
    """No generator to load (no checkpoint), a bad class id, a missing encoder. One line."""


def flow_shift(cfg: GenConfig, num_tokens: int, token_dim: int) -> float:
    return cfg.flow.shift if cfg.flow.shift is not None else shift_factor(num_tokens, token_dim, cfg.flow.shift_base)


class Generator:
    def __init__(self, cfg: GenConfig, dit: DiTDH, stats: TokenStats, space: TokenSpace, meta: dict):
        self.cfg, self.dit, self.stats, self.space, self.meta = cfg, dit.eval(), stats, space, meta
        self.shift = flow_shift(cfg, dit.grid[0] * dit.grid[1], dit.token_dim)

    @property
    def num_classes(self) -> int:
        return self.dit.num_classes

    @property
    def class_names(self) -> list:
        return list(self.meta.get("class_names") or range(self.num_classes))

    # ---------------------------------------------------------------- save / load
    @staticmethod
    def save(out: Path, cfg: GenConfig, dit_state: dict, stats: TokenStats, meta: dict) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"dit.{k}": v.detach().contiguous().cpu() for k, v in dit_state.items()}
        tensors.update(stats.state_dict())
        save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "library": "openvision3"})
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        (out / META).write_text(json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device="cpu") -> "Generator":
        run = Path(run_dir)
        if not run.is_dir():
            raise GeneratorError(f"run directory '{run}' does not exist")
        export = run / EXPORT_DIR
        if (export / WEIGHTS).is_file():
            cfg = gen_config_from_dict(yaml.safe_load((export / "config.yaml").read_text()))
            meta = json.loads((export / META).read_text())
            state = load_file(str(export / WEIGHTS))
            dit_state = {k[4:]: v for k, v in state.items() if k.startswith("dit.")}
        else:
            from ..train import checkpoint as ckpt_lib
            if not ckpt_lib.list_checkpoints(run / "checkpoints"):
                raise GeneratorError(f"run '{run}' has no generator/ and no checkpoint yet; train it first "
                                     f"(ov3 gen train --out {run})")
            try:
                ckpt = ckpt_lib.resolve_resume("auto", run)
            except ckpt_lib.CheckpointError as e:
                raise GeneratorError(str(e)) from None
            cfg = gen_config_from_dict(yaml.safe_load((ckpt["path"] / "config.yaml").read_text()))
            meta = ckpt["trainer_state"]["generator_meta"]
            dit_state = ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"]
            state = {k: v for k, v in ckpt["model"].items() if k.startswith("stats.")}
            dit_state = {k: v for k, v in dit_state.items() if not k.startswith("stats.")}
        if not Path(cfg.encoder).is_dir():
            raise GeneratorError(f"the run's encoder '{cfg.encoder}' does not exist any more")
        space = TokenSpace.load(cfg.encoder, cfg.space, device)
        dit = DiTDH(meta["token_dim"], tuple(meta["grid"]), meta["num_classes"], cfg.dit)
        dit.load_state_dict(dit_state)
        return cls(cfg, dit.to(device), TokenStats.from_state_dict(state), space, meta)

    # ---------------------------------------------------------------- sampling
    def check_classes(self, classes) -> list[int]:
        bad = [c for c in classes if not 0 <= int(c) < self.num_classes]
        if bad:
            raise GeneratorError(f"class id(s) {', '.join(map(str, bad))} out of range: this generator knows "
                                 f"classes 0..{self.num_classes - 1}")
        return [int(c) for c in classes]

    @torch.no_grad()
    def sample_tokens(self, labels, cfg_scale: float | None = None, steps: int | None = None, seed: int = 0,
                      method: str | None = None) -> torch.Tensor:
        """Class ids -> tokens in the decoder's own scale (B, N, D); same seed, same samples."""
        labels = torch.as_tensor(self.check_classes(list(labels)), device=self.space.device)
        f = self.cfg.flow
        scale = f.cfg_scale if cfg_scale is None else cfg_scale
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        n = self.dit.grid[0] * self.dit.grid[1]
        noise = torch.randn(len(labels), n, self.dit.token_dim, generator=gen).to(self.space.device)

        def velocity(x, t):
            return guided_velocity(self.dit, x, t, labels, self.dit.null_class, scale, f.cfg_interval)
        from ..train.run import forward_context
        with forward_context(self.space.device, None):
            x = sample(velocity, noise, steps or f.steps, self.shift, method or f.sampler)
        return self.stats.denormalize(x)

    def sample_images(self, labels, batch_size: int = 256, seed: int = 0, **kw) -> torch.Tensor:
        """Class ids -> images in [-1, 1]; batched, each batch seeded from ``seed`` and its index."""
        labels = list(labels)
        out = []
        for i in range(0, len(labels), batch_size):
            tokens = self.sample_tokens(labels[i:i + batch_size], seed=int(seed) * 100003 + i, **kw)
            out.append(self.space.decode(tokens).cpu())
        return torch.cat(out) if out else torch.empty(0)


__all__ = ["Generator", "GeneratorError", "flow_shift", "EXPORT_DIR"]
