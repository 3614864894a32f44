"""Errors and skip bookkeeping shared by every data source."""
from __future__ import annotations

from dataclasses import dataclass


class DataSpecError(ValueError):
    """A bad data spec (unknown scheme, missing directory, nothing matched). One line for the user."""


class SkipSample(Exception):
    """Raised by a source's ``load`` for one unreadable sample; ``reason`` is a short counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True, eq=False)
class Skip:
    """A marker a raw stream yields for something unreadable that is not a sample (e.g. a broken tar).

    It carries no stream position: the dataset counts it and moves on.
    """
    reason: str


# Reasons used across sources (keep the vocabulary small so reports are readable).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
NO_CAPTION = "no_caption"
EMPTY_CAPTION = "empty_caption"
CAPTION_NOT_UTF8 = "caption_not_utf8"
NO_IMAGE = "no_image"
TAR_ERROR = "tar_error"
DECOMPRESSION_BOMB = "decompression_bomb"  # a header declaring a huge image (PIL's bomb check)
DUPLICATE_KEY = "duplicate_key"  # a webdataset key met twice in one shard: the repeat is dropped
