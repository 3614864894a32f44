"""``wds:PATTERN``: webdataset tar shards (DataComp style), read with the webdataset library.

PATTERN: a local brace pattern, a glob, a directory, or any URL / ``pipe:`` command that
``webdataset.gopen`` accepts (``::`` joins several; docs/data.md). A sample is the tar members
sharing a key: an image and a caption (``txt`` or the ``caption`` of ``json``, whose int ``label``
is used when present).

Splitting: shards are shuffled per epoch (train), then dealt to (rank, worker) parts; with fewer
shards than parts every part reads all shards and keeps every n-th sample instead. Either way each
sample is read once per epoch across the job. Training adds a seeded shuffle buffer
(``DataConfig.shuffle_buffer``). Resume replays the part's stream up to the saved cursor without
decoding images (I/O only). A broken shard (truncated, unreadable) counts one ``tar_error`` and
the stream moves on. An ``info.json`` beside local shards (written by ``ov3 data pack``) gives
the sample count, class names and templates.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from pathlib import Path

import numpy as np
import webdataset
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from . import errors as E
from .errors import DataSpecError, Skip
from .imageio import caption_from_json, decode_caption, decode_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHARD_EXTS = (".tar", ".tar.gz", ".tgz")  # gzip-compressed tars are read transparently


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def list_shards(pattern: str) -> list[str]:
    """Expand PATTERN into shard URLs/paths; DataSpecError if nothing local matches."""
    urls: list[str] = []
    for pat in pattern.split("::"):
        if _is_remote(pat):
            urls += list(braceexpand(pat))
            continue
        p = Path(pat).expanduser()
        if p.is_dir():
            found = sorted(str(q) for ext in SHARD_EXTS for q in p.rglob(f"*{ext}"))
            if not found:
                raise DataSpecError(f"wds:{pat}: directory has no {' / '.join(SHARD_EXTS)} files")
            urls += found
            continue
        expanded = [q for b in braceexpand(str(p)) for q in (sorted(glob.glob(b)) if glob.has_magic(b) else [b])]
        present = [q for q in expanded if os.path.isfile(q)]
        if not present:
            raise DataSpecError(f"wds:{pat}: no shard matches (no such file or directory)")
        if len(present) < len(expanded):
            warnings.warn(f"wds:{pat}: {len(expanded) - len(present)} of {len(expanded)} shards missing")
        urls += present
    return urls


def read_shard(url: str):
    """Yield grouped samples ``{"__key__", ext: bytes}`` of one shard, then Skip on a broken tar.

    A key met again in the same shard (after other keys, or as a repeated member of the current
    sample) starts a duplicate sample: it is dropped and counted as ``duplicate_key``, so the first
    copy wins and no member of one sample silently overwrites another's."""
    group, seen = None, set()

    def finish(g):
        return Skip(E.DUPLICATE_KEY) if g.pop("__duplicate__", False) else g

    try:
        stream = webdataset.gopen(url)
    except Exception:  # noqa: BLE001 - any open failure is one unreadable shard
        yield Skip(E.TAR_ERROR)
        return
    try:
        for member in tar_file_iterator(stream):
            prefix, suffix = base_plus_ext(member["fname"])
            if prefix is None:
                continue
            suffix = suffix.lower()
            if group is None or prefix != group["__key__"] or suffix in group:
                if group is not None:
                    yield finish(group)
                group = {"__key__": prefix, "__duplicate__": prefix in seen}
                seen.add(prefix)
            group[suffix] = member["data"]
        if group is not None:
            yield finish(group)
    except Exception:  # noqa: BLE001 - truncated / corrupt tar or gzip: the rest of the shard is lost
        if group is not None:
            yield finish(group)  # what was read before the break; an incomplete one is skipped by reason
        yield Skip(E.TAR_ERROR)
    finally:
        stream.close()


def _shuffle(items, bufsize: int, rng):
    """Seeded shuffle buffer; Skip markers pass straight through (they hold no position)."""
    buf = []
    for it in items:
        if isinstance(it, Skip):
            yield it
            continue
        buf.append(it)
        if len(buf) >= bufsize:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class WdsSource:
    def __init__(self, pattern: str, shuffle_buffer: int = 1000):
        self.pattern, self.shuffle_buffer = pattern, shuffle_buffer
        self.shards = list_shards(pattern)
        self.num_samples, self.class_names, self.templates = None, None, None
        info = Path(self.shards[0]).parent / "info.json" if not _is_remote(self.shards[0]) else None
        if info is not None and info.is_file():
            meta = json.loads(info.read_text())
            sizes = meta.get("sizes", {})
            names = [Path(s).name for s in self.shards]
            if all(n in sizes for n in names):
                self.num_samples = sum(sizes[n] for n in names)
            self.class_names, self.templates = meta.get("class_names"), meta.get("templates")

    def raw_stream(self, epoch, shuffle, seed, rank, world_size, part, num_parts):
        total, me = world_size * num_parts, rank + world_size * part
        n = len(self.shards)
        order = np.random.default_rng([seed, epoch]).permutation(n).tolist() if shuffle else list(range(n))
        stream = self._by_shard(order, me, total) if len(order) >= total else self._by_sample(order, me, total)
        if shuffle and self.shuffle_buffer > 1:
            stream = _shuffle(stream, self.shuffle_buffer, np.random.default_rng([seed, epoch, rank, part, 1]))
        return stream

    def _by_shard(self, order, me, total):
        for s in order[me::total]:
            yield from read_shard(self.shards[s])

    def _by_sample(self, order, me, total):
        i = 0
        for k, s in enumerate(order):
            for item in read_shard(self.shards[s]):
                if isinstance(item, Skip):
                    if k % total == me:  # a broken shard is reported by one part only
                        yield item
                    continue
                if i % total == me:
                    yield item
                i += 1

    def load(self, sample: dict, resolution):
        img_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if "txt" in sample:
            caption = decode_caption(sample["txt"])
        elif "json" in sample:
            caption = caption_from_json(sample["json"])
        else:
            raise E.SkipSample(E.NO_CAPTION)
        if img_key is None:
            raise E.SkipSample(E.NO_IMAGE)
        image = decode_image(sample[img_key])
        try:  # a label is optional: a json that is no object or has no int label means none
            label = json.loads(sample["json"].decode("utf-8")).get("label", -1) if "json" in sample else -1
        except (ValueError, UnicodeDecodeError, AttributeError):
            label = -1
        return image, caption, label if isinstance(label, int) else -1, sample["__key__"]
