"""Training checkpoints: ``OUT/checkpoints/step_N/``, written atomically, validated on load.

A checkpoint directory holds
  model.safetensors      trainable weights (``OpenVision3.trainable_state_dict`` keys)
  ema.safetensors        EMA weights (when train.ema_decay > 0)
  optimizer.pt           optimizer state: tensors and plain types only (loaded weights_only=True)
  trainer_state.pt       step, stage, schedule position, grad scaler, counters, and per rank
                         the RNG states (Python, NumPy, torch, CUDA) and the data position
  config.yaml            the full run config
  meta.json              step, package version, git commit, time
It is written to ``.tmp_step_N`` and renamed, so a ``step_N`` directory is always complete; a
file damaged afterwards (disk, copy) is caught on load and ``--resume auto`` falls back.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step_(\d+)$")
REQUIRED = ("model.safetensors", "optimizer.pt", "trainer_state.pt", "meta.json")


class CheckpointError(Exception):
    """A missing or unreadable checkpoint; the message is one line for the user."""


# ---------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Every RNG this process uses, as plain Python types: safe for weights_only loading and
    for ``all_gather_object`` (which cannot ship tensors in this torch version)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *(x.item() if hasattr(x, "item") else x
                                                           for x in np_state[2:])],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------- metadata
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    try:
        from importlib.metadata import version
        return version("openvision3")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


# ---------------------------------------------------------------------------------- listing
def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete ``step_N`` directories, oldest first."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- save
def save_checkpoint(ckpt_root: Path, step: int, *, model_state: dict, optimizer_state: dict,
                    trainer_state: dict, config_yaml: str, ema_state: dict | None = None,
                    keep_last: int = 0) -> Path:
    """Write ``step_N`` atomically (rank 0 only; callers gather per-rank state first)."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final, tmp = ckpt_root / f"step_{step}", ckpt_root / f".tmp_step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"format": "safetensors", "library": "openvision3"}
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
              str(tmp / "model.safetensors"), metadata=meta)
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()},
                  str(tmp / "ema.safetensors"), metadata=meta)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "meta.json").write_text(json.dumps({"step": step, "version": package_version(),
                                               "git_commit": git_commit(), "time": time.time()}))
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        shutil.rmtree(final)
    tmp.rename(final)
    prune(ckpt_root, keep_last)
    return final


# ---------------------------------------------------------------------------------- load
def load_checkpoint(path: Path) -> dict:
    """Read and validate every file of one checkpoint; raises CheckpointError if any is damaged."""
    path = Path(path)
    for name in REQUIRED:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
    try:
        out = {"path": path,
               "model": load_file(str(path / "model.safetensors")),
               "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
               "trainer_state": torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True),
               "meta": json.loads((path / "meta.json").read_text())}
        ema = path / "ema.safetensors"
        out["ema"] = load_file(str(ema)) if ema.is_file() else None
    except Exception as e:  # truncated / corrupted files surface as many exception types
        raise CheckpointError(f"{path}: damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    return out


def resolve_resume(resume: str, out_dir: Path) -> dict:
    """``auto``: the newest loadable checkpoint of ``out_dir`` (falls back, with a warning, past
    damaged ones). A path: that checkpoint, or the newest inside that run / checkpoints dir."""
    if resume == "auto":
        candidates = list_checkpoints(Path(out_dir) / "checkpoints")
        where = Path(out_dir) / "checkpoints"
    else:
        p = Path(resume)
        if not p.exists():
            raise CheckpointError(f"resume path '{p}' does not exist")
        if _STEP_DIR.match(p.name):
            return load_checkpoint(p)
        candidates = list_checkpoints(p / "checkpoints") or list_checkpoints(p)
        where = p
    if not candidates:
        raise CheckpointError(f"no checkpoints found in '{where}' (nothing to resume)")
    errors = []
    for cand in reversed(candidates):
        try:
            ckpt = load_checkpoint(cand)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"checkpoint {cand.name} is damaged, falling back to the previous one ({e})")
            continue
        return ckpt
    raise CheckpointError(f"every checkpoint in '{where}' is damaged: {'; '.join(errors)}")
