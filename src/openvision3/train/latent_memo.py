"""The frozen VAE's latents of images a run has already seen, kept in memory (``train.latent_memo``).

The VAE is frozen and ``encode`` returns the posterior mean, so an image's latents never change
during a run. A run that shows the same images more than once (a small set repeated over several
epochs without augmentation, as the demo's ``shapes?n=...``) can encode each image once and reuse
the result: on a CPU the VAE encode is about a tenth of a demo step (docs/performance.md).

Images are keyed by their pixels (a hash of the tensor), not by a sample name, so an augmented
view, a different resolution or a new rendering of the same name is simply a miss. This is the
in-memory sibling of ``ov3 data cache-latents`` (data/latent_cache.py), which precomputes latents
on disk for a dataset read many times.
"""
from __future__ import annotations

import hashlib

import torch


def image_key(image: torch.Tensor) -> bytes:
    """A 16-byte digest of one (CPU) image's pixels, shape and dtype."""
    data = image.detach().contiguous()
    h = hashlib.blake2b(repr((tuple(data.shape), str(data.dtype))).encode(), digest_size=16)
    h.update(data.view(torch.uint8).numpy().tobytes())
    return h.digest()


class LatentMemo:
    """``memo(images)`` -> the VAE latents of ``images``, encoding only the ones not seen before.

    Holds at most ``max_entries`` latents (on the CPU); once full, new images are encoded every
    time they come and nothing is evicted. ``hits`` / ``misses`` count images since the start;
    ``stats()`` reports the hit rate since its previous call (one log row's window).
    """

    def __init__(self, encode, max_entries: int):
        if max_entries <= 0:
            raise ValueError(f"LatentMemo needs max_entries > 0, got {max_entries}")
        self.encode, self.max_entries = encode, int(max_entries)
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._reported = (0, 0)  # hits, misses at the previous stats()

    def __len__(self) -> int:
        return len(self.store)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [image_key(x) for x in images.detach().cpu()]  # one transfer for the batch
        first: dict[bytes, int] = {}  # each key's first position in the batch, in batch order
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        new = [k for k in first if k not in self.store]  # each unseen image encoded once
        fresh = dict(zip(new, self.encode(images[[first[k] for k in new]]))) if new else {}
        for k, z in fresh.items():
            if len(self.store) < self.max_entries:
                self.store[k] = z.detach().to("cpu", copy=True)
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        return torch.stack([(fresh[k] if k in fresh else self.store[k]).to(images.device) for k in keys])

    def stats(self) -> dict:
        hits, misses = self.hits - self._reported[0], self.misses - self._reported[1]
        self._reported = (self.hits, self.misses)
        return {"latent_memo_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
                "latent_memo_size": len(self.store)}
