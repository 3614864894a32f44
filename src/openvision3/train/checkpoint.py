"""Training checkpoints: ``OUT/checkpoints/step_N/``, written atomically, validated on load.

A checkpoint directory holds
  model.safetensors      trainable weights (``OpenVision3.trainable_state_dict`` keys)
  ema.safetensors        EMA weights (when train.ema_decay > 0)
  NAME.safetensors       weights of other modules a trainer steps itself (e.g. a discriminator)
  optimizer.pt           optimizer state: tensors and plain types only (loaded weights_only=True)
  trainer_state.pt       step, counters, log window, the task's state, other optimizers, and per
                         rank the RNG states (Python, NumPy, torch, CUDA) and the data position
  config.yaml            the full run config
  meta.json              step, package version, git commit, time
It is written to ``.tmp_step_N``, synced and renamed, so a ``step_N`` directory is always
complete, whenever the process is killed: replacing or pruning a checkpoint first renames it
away (``.old_step_N``), and leftovers of a killed write are removed at the next save. A disk that
fills during the write stops with one line naming the directory and the space needed, and the
previous checkpoint stays as it was. A file damaged afterwards (disk, copy) or holding a pickle
that is more than tensors and plain data is caught on load, and ``--resume auto`` falls back.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
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

from .. import __version__

_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEFTOVER = re.compile(r"^\.(tmp|old)_step_\d+$")  # a write or a removal cut short by a kill
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


# ---------------------------------------------------------------------------------- listing
def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete ``step_N`` directories, oldest first."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last > 0:  # 0 keeps all
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            _remove(old)


def _remove(path: Path) -> None:
    """Rename, then delete: a kill halfway through never leaves a partial ``step_N``."""
    gone = path.with_name(f".old_{path.name}")
    shutil.rmtree(gone, ignore_errors=True)
    path.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)


def remove_leftovers(ckpt_root: Path) -> None:
    """Delete ``.tmp_step_N`` / ``.old_step_N`` left by a killed process (the run lock makes this
    process the only writer of the directory, so none of them is being written now)."""
    for p in Path(ckpt_root).iterdir():
        if _LEFTOVER.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------- disk space
_OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# torch.save and safetensors report a short write without an errno; these are their words for it
_SHORT_WRITE_WORDS = ("unexpected pos", "file write failed", "no space left", "file too large",
                      "quota exceeded", "os error 28", "os error 27", "os error 122", "storagefull")


def nbytes(obj) -> int:
    """Bytes of the tensors (and arrays) inside nested dicts/lists: a checkpoint's size, roughly."""
    if isinstance(obj, dict):
        return nbytes(list(obj.values()))
    if isinstance(obj, (list, tuple)):
        return sum(map(nbytes, obj))
    return obj.nbytes if isinstance(obj, (torch.Tensor, np.ndarray)) else 0


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.2f} GB"


def is_out_of_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _OUT_OF_SPACE_ERRNOS:
        return True
    text = str(e).lower()
    return any(w in text for w in _SHORT_WRITE_WORDS)


def out_of_space_message(where: Path, needed: int, reason: str) -> str:
    free = shutil.disk_usage(where).free
    limit = "" if free < needed else "; the disk has room, so a quota or a file-size limit applies"
    return (f"cannot write the checkpoint in {where}: {reason}; it needs about {_mb(needed)}, "
            f"{_mb(free)} free there{limit}. The previous checkpoint is intact: free space, then "
            f"rerun with --resume auto")


@contextlib.contextmanager
def checkpoint_writer(ckpt_root: Path, step: int, needed: int):
    """Yield a fresh ``.tmp_step_N`` to fill; on success it becomes ``step_N`` atomically. ``needed``
    (bytes) is checked against the free space first; a write that runs out of space anyway (quota,
    file-size limit, a disk filled by someone else) removes the partial directory and raises
    CheckpointError with one line."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(ckpt_root)
    final, tmp = ckpt_root / f"step_{step}", ckpt_root / f".tmp_step_{step}"
    needed = int(needed) + 2**16  # headers, config, metadata
    if shutil.disk_usage(ckpt_root).free < needed:
        raise CheckpointError(out_of_space_message(ckpt_root, needed, "not enough free space"))
    tmp.mkdir()
    try:
        yield tmp
        _sync_tree(tmp)  # the data is on disk before the name says the checkpoint exists
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_out_of_space(e):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write was cut short"
            raise CheckpointError(out_of_space_message(ckpt_root, needed, reason)) from None
        raise
    if final.exists():  # re-saving the same step
        _remove(final)
    tmp.rename(final)
    _fsync(ckpt_root, is_dir=True)


def _sync_tree(root: Path) -> None:
    for p in [*sorted(root.rglob("*"), reverse=True), root]:
        _fsync(p, is_dir=not p.is_file())


def _fsync(path: Path, is_dir: bool = False) -> None:
    # some file systems cannot open or sync a directory; a file that cannot be synced is an error
    with contextlib.suppress(OSError) if is_dir else contextlib.nullcontext():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- save
def save_checkpoint(ckpt_root: Path, step: int, *, model_state: dict, optimizer_state: dict,
                    trainer_state: dict, config_yaml: str, ema_state: dict | None = None,
                    keep_last: int = 0, others: dict | None = None) -> Path:
    """Write ``step_N`` atomically (rank 0 only; callers gather per-rank state first).
    ``others``: {name: state dict} of further modules, saved as ``NAME.safetensors``."""
    ckpt_root = Path(ckpt_root)
    weights = {"model": model_state, **({} if ema_state is None else {"ema": ema_state}), **(others or {})}
    needed = nbytes(weights) + nbytes(optimizer_state) + nbytes(trainer_state)
    with checkpoint_writer(ckpt_root, step, needed) as tmp:
        for name, state in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"),
                      metadata={"format": "safetensors", "library": "openvision3"})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "meta.json").write_text(json.dumps({"step": step, "version": __version__,
                                                   "git_commit": git_commit(), "time": time.time()}))
    prune(ckpt_root, keep_last)
    return ckpt_root / f"step_{step}"


# ---------------------------------------------------------------------------------- load
def load_plain(path: Path, map_location="cpu"):
    """``torch.load`` of tensors and plain data only (``weights_only=True``). A file holding any
    other pickled object (one that could run code when unpickled) is refused with one line
    before anything in it runs; other damage raises as it comes."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(f"{path}: refused: it pickles Python objects that are not tensors or plain "
                              f"data{f' ({found.group(1)})' if found else ''}, which could run code when "
                              f"loaded; nothing in it was run") from None


def load_checkpoint(path: Path) -> dict:
    """Read and validate every file of one checkpoint; raises CheckpointError if any is damaged."""
    path = Path(path)
    for name in REQUIRED:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
    try:
        weights = {f.stem: load_file(str(f)) for f in sorted(path.glob("*.safetensors"))}
        out = {"path": path, "model": weights.pop("model"), "ema": weights.pop("ema", None), "others": weights,
               "optimizer": load_plain(path / "optimizer.pt"), "trainer_state": load_plain(path / "trainer_state.pt"),
               "meta": json.loads((path / "meta.json").read_text())}
    except CheckpointError:
        raise
    except Exception as e:  # truncated / corrupted files surface as many exception types
        raise CheckpointError(f"{path}: damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    return out


def resolve_resume(resume: str, out_dir: Path) -> dict | None:
    """``auto``: the newest loadable checkpoint of ``out_dir`` (falls back, with a warning, past
    damaged or refused ones); None, with a warning, when the run has no checkpoint yet (killed
    before its first one), so a requeued job that always passes ``--resume auto`` starts from
    step 0. A path: that checkpoint, or the newest inside that run / checkpoints dir."""
    if resume == "auto":
        where = Path(out_dir) / "checkpoints"
        candidates = list_checkpoints(where)
        if not candidates:
            warnings.warn(f"--resume auto: no checkpoint in '{where}' yet; starting from step 0")
            return None
    else:
        where = Path(resume)
        if not where.exists():
            raise CheckpointError(f"resume path '{where}' does not exist")
        if _STEP_DIR.match(where.name):
            return load_checkpoint(where)
        candidates = list_checkpoints(where / "checkpoints") or list_checkpoints(where)
    if not candidates:
        raise CheckpointError(f"no checkpoints found in '{where}' (nothing to resume)")
    errors = []
    for cand in reversed(candidates):
        try:
            return load_checkpoint(cand)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"checkpoint {cand.name} is damaged or refused, falling back to the previous one ({e})")
    raise CheckpointError(f"every checkpoint in '{where}' is damaged: {'; '.join(errors)}")
