"""Tokens computed once through the frozen encoder, stored as shards, read back for every step.

As MAR's ``main_cache.py`` does with VAE latents: each labelled training image is encoded once, with
its horizontal flip when ``cache.hflip`` (a class label survives a flip), and training picks one of
the two per sample and epoch. A cache lives in

    CACHE_DIR/<encoder id>_<space>_<resolution>px_<data hash>/
        meta.json                 encoder id, space, resolution, data spec, counts, skipped, shards
        shard_00000.safetensors   tokens (n, N, D) [, tokens_flip], labels (n,)
                                  [, images (n, 3, H, W) uint8, latents [, latents_flip]]
        [shard_00000.captions.json]
        stats.safetensors         per-channel mean / std of the generated view (token_space.py)

The bracketed parts are what heads trained on a frozen encoder need (recipes/complete.py): the
captions (any data, labelled or not), and with ``pixels`` the image and its VAE latents, the
targets of the reconstruction losses.

The encoder id is the fingerprint of the encoder's weights (the VAE's included, fingerprint.py),
so two encoders never share a directory, and ``open_cache`` refuses a cache whose meta names another encoder or size.
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
               max_samples: int, hflip: bool, variant: str = "") -> Path:
    """``variant``: anything else the contents depend on (the heads' cache: its fields and data options)."""
    data = hashlib.sha256(f"{spec}|{max_samples}|{hflip}{'|' + variant if variant else ''}".encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{enc_id}_{space}_{resolution}px_{data}"


def weights_id(*modules) -> str:
    """The weights fingerprint of modules in memory: an encoder that is no directory of files (a
    released tower loaded from a .bin) gets an id the way ``encoder_id`` gives one."""
    return weights_fingerprint({f"{i}.{k}": v for i, m in enumerate(modules) for k, v in m.state_dict().items()})


@torch.no_grad()
def build_cache(space: TokenSpace, path: Path, *, enc_id: str, spec: str, data_cfg, max_samples: int = 0,
                hflip: bool = True, shard_size: int = 4096, batch_size: int = 64, progress: bool = True,
                dtype: torch.dtype = torch.float16, captions: bool = False, pixels: bool = False) -> Path:
    """Encode the labelled training split of ``spec`` into ``path`` (written to a temp dir, renamed).
    ``captions``: keep every sample (labelled or not) with its caption; ``pixels``: also store the
    image (uint8) and its VAE latents (and the flip's), for reconstruction losses."""
    import shutil

    from tqdm.auto import tqdm

    from ..data import make_loader, open_data
    from ..data.transforms import to_uint8
    ds = open_data(spec, split="train", resolution=space.resolution, train=False, cfg=data_cfg, infinite=False)
    if not captions and not ds.class_names:
        raise CacheError(f"data spec '{spec}' has no class labels; class-conditional generation needs "
                         f"labelled data (shapes?kind=single, fashion-mnist, imagefolder:DIR)")
    total = min(max_samples or ds.num_samples or 0, ds.num_samples or max_samples) or None
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skipped, unlabelled = Counter(), 0
    parts, texts, shards, count, stat_chunks = [], [], [], 0, []  # parts: the open shard's tensors, by batch

    def flush():
        if not parts:
            return
        name = f"shard_{len(shards):05d}.safetensors"
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        save_file(out, str(tmp / name))
        shards.append({"file": name, "n": int(out["labels"].shape[0])})
        if captions:
            (tmp / name.replace(".safetensors", ".captions.json")).write_text(json.dumps(texts))
        parts.clear()
        texts.clear()

    bar = tqdm(total=total, desc="cache tokens", disable=not progress, dynamic_ncols=True)
    for batch in make_loader(ds, batch_size):
        skipped.update(batch["skipped"])
        keep = batch["label"] >= 0
        unlabelled += int((~keep).sum())
        if captions:
            keep = torch.ones_like(keep)
        if not keep.any():
            continue
        images, labels = batch["image"][keep], batch["label"][keep]
        kept_texts = [c for c, k in zip(batch["caption"], keep.tolist()) if k]
        cut = slice(None if total is None else total - count)  # the last batch stops at ``total``
        images, labels, kept_texts = images[cut], labels[cut], kept_texts[cut]
        part = {"labels": labels.long()}
        for suffix in ("", "_flip") if hflip else ("",):
            view = images.flip(-1) if suffix else images
            if pixels:
                raw, latents = space.encode_with_latents(view)
                part["latents" + suffix] = latents.to(dtype).cpu()
            else:
                raw = space.encode(view)
            part["tokens" + suffix] = raw = raw.to(dtype).cpu()
            stat_chunks.append(space.decoder_view(raw))
        if pixels:  # the image exactly as encoded (the eval transform of uint8 pixels: lossless)
            part["images"] = to_uint8(images)
        parts.append(part)
        texts.extend(kept_texts)
        count += len(labels)
        bar.update(len(labels))
        if sum(len(p["labels"]) for p in parts) >= shard_size:
            flush()
        if total is not None and count >= total:
            break
    flush()
    bar.close()
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"data spec '{spec}' yielded no {'' if captions else 'labelled '}training images "
                         f"(skipped: {dict(skipped)})")
    stats = TokenStats.from_tokens(stat_chunks)
    save_file(stats.state_dict(), str(tmp / STATS))
    meta = {"encoder_id": enc_id, "space": space.kind, "resolution": space.resolution, "spec": spec,
            "num_samples": count, "num_classes": len(ds.class_names or []), "class_names": list(ds.class_names or []),
            "grid": list(space.grid), "token_dim": space.token_dim, "hflip": hflip, "dtype": str(dtype),
            "captions": captions, "pixels": pixels, "skipped": dict(skipped), "unlabelled": unlabelled,
            "shards": shards}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


class TokenCache:
    """A cache read into memory: ``tokens`` (M, N, D), ``tokens_flip`` or None, ``labels`` (M,);
    ``extras`` the other stored tensors by name (images, latents, latents_flip), ``captions`` or None."""

    def __init__(self, path: Path, meta: dict, tokens, tokens_flip, labels, stats: TokenStats,
                 extras: dict | None = None, captions: list | None = None):
        self.path, self.meta = path, meta
        self.tokens, self.tokens_flip, self.labels, self.stats = tokens, tokens_flip, labels, stats
        self.extras, self.captions = extras or {}, captions

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
        captions = ([c for s in meta["shards"]
                     for c in json.loads((path / s["file"].replace(".safetensors", ".captions.json")).read_text())]
                    if meta.get("captions") else None)
    except Exception as e:  # truncated or corrupt shard files raise many exception types
        raise CacheError(f"token cache '{path}' is damaged ({type(e).__name__}); delete it to rebuild") from None
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # each stored tensor over all shards
    flips = joined.pop("tokens_flip") if meta.get("hflip") else None
    return TokenCache(path, meta, joined.pop("tokens"), flips, joined.pop("labels"), stats, joined, captions)


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

    def next_indices(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch's sample indices and which of them take the flipped copy (None: no flips)."""
        order, flip = self._order(self.epoch)
        if self.cursor + self.batch_size > len(order):  # drop the epoch's remainder
            self.epoch, self.cursor = self.epoch + 1, 0
            order, flip = self._order(self.epoch)
        idx = torch.from_numpy(order[self.cursor:self.cursor + self.batch_size])
        self.cursor += self.batch_size
        return idx, (torch.from_numpy(flip[idx.numpy()]) if flip is not None else None)

    def next(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        idx, use = self.next_indices()
        raw = self.cache.tokens[idx]
        if use is not None:
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


__all__ = ["CacheError", "encoder_id", "weights_id", "cache_path", "build_cache", "open_cache", "TokenCache",
           "TokenBatches"]
