"""Shared raw-stream logic for sources with random access (shapes, folder, fashion-mnist)."""
from __future__ import annotations

import numpy as np


class MapSource:
    """Base: subclasses set ``num_samples`` and implement ``load(index, resolution)``."""

    num_samples: int = 0
    class_names = None
    templates = None

    def raw_stream(self, epoch, shuffle, seed, rank, world_size, part, num_parts):
        """The indices of one (rank, worker) part of one epoch.

        Every rank draws the same permutation (seeded by seed and epoch), takes every world_size-th
        index, and its workers split that again, so each sample appears exactly once per epoch
        across the whole job. Ranks may differ by one sample when n % world_size != 0.
        """
        n = self.num_samples
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        return iter(order[rank::world_size][part::num_parts].tolist())
