"""The one dataset class behind every spec: a resumable, rank/worker-split IterableDataset.

A *source* (shapes, folder, wds, fashion-mnist) provides
  ``raw_stream(epoch, shuffle, seed, rank, world_size, part, num_parts)`` -> cheap raw items (and
  ``Skip`` markers), and ``load(raw, resolution) -> (PIL image, caption, label, key)`` which may
  raise ``SkipSample``. This class decodes, transforms, counts skips and tracks the position.

Position and resume (what is guaranteed)
  The samples of one rank are cut into ``num_parts`` sub-streams, one per loader worker (1 with
  ``num_workers=0``). Each yielded sample carries ``(part, (epoch, cursor))``, the raw position
  after it in its sub-stream. ``make_loader`` batches inside workers, so a batch comes from one
  sub-stream; as the trainer *consumes* a batch, the loader records that cursor in the dataset's
  main-process state (prefetched batches do not count). ``state_dict()`` is that record and the
  next sub-stream the loader would read. ``load_state_dict`` + a new loader with the same
  ``num_workers`` continues each sub-stream where it stopped, starting with that next one, so a
  resumed run sees exactly the batches the uninterrupted run would have seen (augmentation is
  seeded per sample, too). Exact for num_workers=0 and, in infinite (training) mode, for any
  num_workers. Finite passes with workers>0 resume to the same remaining samples; their order
  near the end may differ. Changing num_workers on resume restarts the current epoch (warned).
  Batch size may change freely. Datasets opened with ``train=False`` restart at the beginning of
  every new loader iteration (evaluation never resumes mid-pass).

Skips are never silent: the reasons counted since the previous yielded sample ride on the next
sample (``_skipped``); at the end of a finite pass a skip-only marker carries the rest. Counts
during a resume replay are not repeated.
"""
from __future__ import annotations

import warnings
import zlib
from collections import Counter

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import DataSpecError, Skip, SkipSample


class StreamDataset(IterableDataset):
    def __init__(self, source, *, spec: str, split: str, resolution: int | None, train: bool,
                 transform_factory, seed: int = 0, rank: int = 0, world_size: int = 1,
                 infinite: bool = False):
        super().__init__()
        if not 0 <= rank < world_size:
            raise DataSpecError(f"rank {rank} outside world_size {world_size}")
        self.source, self.spec, self.split, self.train = source, spec, split, train
        self.seed, self.rank, self.world_size, self.infinite = seed, rank, world_size, infinite
        self._transform_factory = transform_factory
        self.raw_resolution = None  # with resolution=None: the size generated sets render at
        self.class_names = getattr(source, "class_names", None)
        self.class_attributes = getattr(source, "class_attributes", None)  # e.g. shapes: shape, colour
        self.templates = getattr(source, "templates", None) or ["a photo of a {}."]
        self.num_samples = getattr(source, "num_samples", None)  # whole split, all ranks
        self.set_resolution(resolution)
        self.set_epoch(0)

    # --- configuration -----------------------------------------------------------------------
    def set_resolution(self, resolution: int | None) -> None:
        """Change the output size (e.g. between training stages). Takes effect for new iterators."""
        self.resolution = resolution
        self.transform = None if resolution is None else self._transform_factory(resolution)

    def set_epoch(self, epoch: int) -> None:
        self._state = {"epoch": int(epoch), "num_parts": None, "next_part": 0, "cursors": {}}

    def state_dict(self) -> dict:
        cursors = {str(k): list(v) for k, v in self._state["cursors"].items()}  # JSON/yaml friendly
        return {"spec": self.spec, "split": self.split, "seed": self.seed, **self._state, "cursors": cursors}

    def load_state_dict(self, d: dict) -> None:
        self._state = {"epoch": int(d.get("epoch", 0)), "num_parts": d.get("num_parts"),
                       "next_part": int(d.get("next_part", 0)),
                       "cursors": {int(k): (int(v[0]), int(v[1])) for k, v in d.get("cursors", {}).items()}}

    # --- called by the loader in the main process ----------------------------------------------
    def _advance(self, part: int, cursor, num_parts: int) -> None:
        st = self._state
        if st["num_parts"] != num_parts:
            st["num_parts"], st["cursors"] = num_parts, {}
        st["cursors"][part] = tuple(cursor)
        st["next_part"] = (part + 1) % num_parts

    # --- iteration -----------------------------------------------------------------------------
    def _start(self, num_parts: int, worker: int):
        st = self._state
        if st["num_parts"] not in (None, num_parts) and st["cursors"]:
            start = min(c[0] for c in st["cursors"].values())
            warnings.warn(f"data position was saved with {st['num_parts']} loader workers, now "
                          f"{num_parts}: restarting epoch {start}")
            return worker, start, 0
        part = (worker + st["next_part"]) % num_parts
        epoch, pos = st["cursors"].get(part, (st["epoch"], 0))
        return part, epoch, pos

    def __iter__(self):
        info = get_worker_info()
        num_parts, worker = (info.num_workers, info.id) if info else (1, 0)
        part, epoch, pos = self._start(num_parts, worker)
        pending: Counter = Counter()
        while True:
            i, produced = 0, 0
            for raw in self.source.raw_stream(epoch, self.train, self.seed, self.rank,
                                              self.world_size, part, num_parts):
                if isinstance(raw, Skip):
                    if i >= pos:  # not already reported before the resume point
                        pending[raw.reason] += 1
                    continue
                i += 1
                if i <= pos:
                    continue
                try:
                    image, caption, label, key = self.source.load(raw, self.resolution or self.raw_resolution)
                except SkipSample as s:
                    pending[s.reason] += 1
                    continue
                produced += 1
                yield {"image": self._apply(image, epoch, key), "caption": caption, "label": label,
                       "key": key, "_skipped": dict(pending), "_state": (part, (epoch, i), num_parts)}
                pending = Counter()
            if not self.infinite:
                if pending:
                    yield {"_skip_only": True, "_skipped": dict(pending), "_state": (part, (epoch, i), num_parts)}
                return
            if produced == 0 and pos == 0:
                raise DataSpecError(f"{self.spec}: no readable samples in split '{self.split}' "
                                    f"(part {part}/{num_parts}; skipped: {dict(pending)})")
            epoch, pos = epoch + 1, 0

    def _apply(self, image, epoch: int, key: str):
        if self.transform is None:
            return image
        if not self.train:
            return self.transform(image)
        # Per-sample seed: a resumed run draws the same crops/flips, whatever the worker layout.
        # Only the CPU generator (the one the transforms draw from) is seeded and restored:
        # torch.manual_seed would also reseed a GPU's generator, which fork_rng(devices=[]) does
        # not restore, and without a GPU it records a stack trace per call (half the load time).
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(zlib.crc32(f"{self.seed}/{epoch}/{key}".encode()))
            return self.transform(image)

    def __repr__(self):
        return (f"StreamDataset({self.spec!r}, split={self.split!r}, resolution={self.resolution}, "
                f"train={self.train}, num_samples={self.num_samples})")


def collate(items: list[dict]) -> dict:
    """Samples of one worker -> a batch; sums the per-sample skip deltas into ``skipped``."""
    real = [x for x in items if not x.get("_skip_only")]
    skipped: Counter = Counter()
    for x in items:  # one counter updated in place, not a new one per sample
        skipped.update(x["_skipped"])
    images = [x["image"] for x in real]
    extra = {}
    if images and isinstance(images[0], dict):  # a latent cache: {"image", "latent"} per sample
        extra = {k: torch.stack([im[k] for im in images]) for k in images[0] if k != "image"}
        images = [im["image"] for im in images]
    if images and isinstance(images[0], torch.Tensor):
        images = torch.stack(images)
    return {"image": images, **extra, "caption": [x["caption"] for x in real],
            "label": torch.tensor([x["label"] for x in real], dtype=torch.long),
            "key": [x["key"] for x in real], "skipped": skipped, "_state": items[-1]["_state"]}


class Loader:
    """A DataLoader over a StreamDataset that records the consumed position and the skips.

    Iterating yields batches ``{"image", "caption", "label", "key", "skipped"}``; batches emptied by
    skips are folded into the next one. ``skipped_total`` counts every skip seen so far.
    """

    def __init__(self, dataset: StreamDataset, batch_size: int, num_workers: int = 0):
        self.dataset = dataset
        self.skipped_total: Counter = Counter()
        # Batching happens inside each worker so that every batch belongs to one sub-stream.
        self._dl = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                              persistent_workers=False)  # workers must re-read state/resolution

    def __iter__(self):
        if not self.dataset.train:  # evaluation passes always start at the beginning
            self.dataset.set_epoch(self.dataset._state["epoch"])
        carry: Counter = Counter()
        for batch in self._dl:
            self.dataset._advance(*batch.pop("_state"))
            self.skipped_total.update(batch["skipped"])
            if not batch["caption"]:
                carry.update(batch["skipped"])
                continue
            if carry:
                batch["skipped"] = batch["skipped"] + carry
                carry = Counter()
            yield batch
        if not self.dataset.infinite:  # a finished pass: the next one starts the next epoch
            self.dataset.set_epoch(self.dataset._state["epoch"] + 1)
