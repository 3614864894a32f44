"""Tokens computed once through the frozen encoder, stored as shards, read back for every step.

As MAR's ``main_cache.py`` does with VAE latents: each labelled training image is encoded once, with
its horizontal flip when ``cache.hflip`` (a class label survives a flip), and training picks one of
the two per sample and epoch. A cache lives in

    CACHE_DIR/<encoder id>_<space>_<resolution>px_<data hash>/
        meta.json                 encoder id, space, resolution, data spec, counts, skipped, shards
        shard_00000.safetensors   tokens (n, N, D) [, tokens_flip], labels (n,)
        stats.safetensors         per-channel mean / std of the generated view (token_space.py)

The encoder id is the fingerprint of the encoder's weights (the VAE's included, fingerprint.py), so two encoders never
share a directory, and ``open_cache`` refuses a cache whose meta names another encoder or size.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..fingerprint import weights_fingerprint
from .token_space import TokenSpace, TokenStats

META, STATS = "meta.json", "stats.safetensors"


class CacheError(ValueError):
    """A cache that cannot be used (another encoder, another resolution, damaged). One line."""


def encoder_id(model_dir: str | Path) -> str:
    """The weights fingerprint of every .safetensors file under the model directory (its VAE's too)."""
    try:
        return weights_fingerprint(model_dir)
    except FileNotFoundError as e:
        raise CacheError(f"{e} (the encoder of a token cache)") from None


def cache_path(cache_dir: str | Path, enc_id: str, space: str, resolution: int, spec: str,
               max_samples: int, hflip: bool) -> Path:
    data = hashlib.sha256(f"{spec}|{max_samples}|{hflip}".encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{enc_id}_{space}_{resolution}px_{data}"


@torch.no_grad()
def build_cache(space: TokenSpace, path: Path, *, enc_id: str, spec: str, data_cfg, max_samples: int = 0,
                hflip: bool = True, shard_size: int = 4096, batch_size: int = 64, progress: bool = True,
                dtype: torch.dtype = torch.float16) -> Path:
    """Encode the labelled training split of ``spec`` into ``path`` (written to a temp dir, renamed)."""
    import shutil

    from tqdm.auto import tqdm

    from ..data import make_loader, open_data
    ds = open_data(spec, split="train", resolution=space.resolution, train=False, cfg=data_cfg, infinite=False)
    if not ds.class_names:
        raise CacheError(f"data spec '{spec}' has no class labels; class-conditional generation needs "
                         f"labelled data (shapes?kind=single, fashion-mnist, imagefolder:DIR)")
    total = min(max_samples or ds.num_samples or 0, ds.num_samples or max_samples) or None
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skipped, unlabelled = Counter(), 0
    buf: dict = {"tokens": [], "tokens_flip": [], "labels": []}
    shards, count, stat_chunks = [], 0, []

    def flush():
        if not buf["labels"]:
            return
        name = f"shard_{len(shards):05d}.safetensors"
        out = {"tokens": torch.cat(buf["tokens"]), "labels": torch.cat(buf["labels"])}
        if hflip:
            out["tokens_flip"] = torch.cat(buf["tokens_flip"])
        save_file(out, str(tmp / name))
        shards.append({"file": name, "n": int(out["labels"].shape[0])})
        for k in buf:
            buf[k].clear()

    bar = tqdm(total=total, desc="cache tokens", disable=not progress, dynamic_ncols=True)
    for batch in make_loader(ds, batch_size):
        skipped.update(batch["skipped"])
        keep = batch["label"] >= 0
        unlabelled += int((~keep).sum())
        if not keep.any():
            continue
        images, labels = batch["image"][keep], batch["label"][keep]
        if total is not None:
            images, labels = images[: total - count], labels[: total - count]
        raw = space.encode(images).to(dtype).cpu()
        buf["tokens"].append(raw)
        stat_chunks.append(space.decoder_view(raw))
        if hflip:
            raw_f = space.encode(images.flip(-1)).to(dtype).cpu()
            buf["tokens_flip"].append(raw_f)
            stat_chunks.append(space.decoder_view(raw_f))
        buf["labels"].append(labels.long())
        count += len(labels)
        bar.update(len(labels))
        if sum(len(x) for x in buf["labels"]) >= shard_size:
            flush()
        if total is not None and count >= total:
            break
    flush()
    bar.close()
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"data spec '{spec}' yielded no labelled training images (skipped: {dict(skipped)})")
    stats = TokenStats.from_tokens(stat_chunks)
    save_file(stats.state_dict(), str(tmp / STATS))
    meta = {"encoder_id": enc_id, "space": space.kind, "resolution": space.resolution, "spec": spec,
            "num_samples": count, "num_classes": len(ds.class_names), "class_names": list(ds.class_names),
            "grid": list(space.grid), "token_dim": space.token_dim, "hflip": hflip, "dtype": str(dtype),
            "skipped": dict(skipped), "unlabelled": unlabelled, "shards": shards}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


class TokenCache:
    """A cache read into memory: ``tokens`` (M, N, D), ``tokens_flip`` or None, ``labels`` (M,)."""

    def __init__(self, path: Path, meta: dict, tokens, tokens_flip, labels, stats: TokenStats):
        self.path, self.meta = path, meta
        self.tokens, self.tokens_flip, self.labels, self.stats = tokens, tokens_flip, labels, stats

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def open_cache(path: str | Path, enc_id: str, resolution: int, space: str) -> TokenCache:
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"token cache '{path}' is unreadable ({type(e).__name__})") from None
    if meta.get("encoder_id") != enc_id:
        raise CacheError(f"token cache '{path}' was made by encoder {meta.get('encoder_id')}, not by this "
                         f"encoder ({enc_id}); use another cache.dir or delete that directory")
    if meta.get("resolution") != resolution or meta.get("space") != space:
        raise CacheError(f"token cache '{path}' holds {meta.get('space')} at {meta.get('resolution')} px, "
                         f"not {space} at {resolution} px")
    try:
        parts = [load_file(str(path / s["file"])) for s in meta["shards"]]
        stats = TokenStats.from_state_dict(load_file(str(path / STATS)))
    except Exception as e:  # truncated or corrupt shard files raise many exception types
        raise CacheError(f"token cache '{path}' is damaged ({type(e).__name__}); delete it to rebuild") from None
    tokens = torch.cat([p["tokens"] for p in parts])
    flips = torch.cat([p["tokens_flip"] for p in parts]) if meta.get("hflip") else None
    labels = torch.cat([p["labels"] for p in parts])
    return TokenCache(path, meta, tokens, flips, labels, stats)


class TokenBatches:
    """Shuffled batches of (normalised generated view, labels) from a cache, resumable exactly.

    Each epoch draws a permutation seeded by (seed, epoch); rank r takes every world_size-th index.
    With flips, a second seeded draw picks the flipped copy for half the samples. The position is
    (epoch, cursor): ``state_dict`` / ``load_state_dict`` continue with the very next batch.
    """

    def __init__(self, cache: TokenCache, space: TokenSpace, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.cache, self.space, self.batch_size = cache, space, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        if len(cache) < batch_size * world_size:
            raise CacheError(f"the cache holds {len(cache)} samples, fewer than one global batch "
                             f"({batch_size * world_size}); lower train.batch_size")

    def _order(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cache))[self.rank::self.world_size]
        flip = rng.random(len(self.cache)) < 0.5 if self.cache.tokens_flip is not None else None
        return order, flip

    def next(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        order, flip = self._order(self.epoch)
        if self.cursor + self.batch_size > len(order):  # drop the epoch's remainder
            self.epoch, self.cursor = self.epoch + 1, 0
            order, flip = self._order(self.epoch)
        idx = torch.from_numpy(order[self.cursor:self.cursor + self.batch_size])
        self.cursor += self.batch_size
        raw = self.cache.tokens[idx]
        if flip is not None:
            use = torch.from_numpy(flip[idx.numpy()])
            raw = torch.where(use[:, None, None], self.cache.tokens_flip[idx], raw)
        x = self.cache.stats.normalize(self.space.decoder_view(raw))
        return x.to(device), self.cache.labels[idx].to(device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.cursor = int(d["epoch"]), int(d["cursor"])

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (a resume on another number of processes)."""
        self.epoch, self.cursor = int(epoch), 0


__all__ = ["CacheError", "encoder_id", "cache_path", "build_cache", "open_cache", "TokenCache", "TokenBatches"]
