"""``fashion-mnist`` (or ``fashion-mnist:DIR``): the 70k Fashion-MNIST images from the Debian
package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist, idx files, gzipped or not).

Splits: ``train`` = the first 55,000 of the official 60k training images, ``val`` = the last
5,000 of them, ``test`` = the official 10k test set. 28x28 grey images are converted to RGB and
resized by the transform. Captions come from the prompt templates below (template chosen by
index, so deterministic); labels index ``CLASS_NAMES``.
"""
from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataSpecError
from .mapsource import MapSource

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot"]
TEMPLATES = ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
             "a photo of the {}, a type of clothing.", "a centered photo of a {}.", "a {}."]
VAL_SIZE = 5000


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (uint8 payload) as an array; a damaged file is one DataSpecError line."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":  # magic: two zero bytes, type 0x08 = uint8
            raise ValueError("not an idx file of uint8")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, EOFError, ValueError, zlib.error) as e:  # truncated gzip, short payload, bad header
        raise DataSpecError(f"fashion-mnist: {path} is damaged ({type(e).__name__}: {e}); reinstall "
                            f"dataset-fashion-mnist or pass fashion-mnist:DIR") from None


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataSpecError(f"fashion-mnist: {root / stem}[.gz] not found; install the Debian package "
                        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist, or `make data`) "
                        f"or pass fashion-mnist:DIR")


@functools.cache  # read once per process (an error is not kept: the next call reads again)
def load_arrays(root: str | None, official_split: str):
    root = Path(root or DEFAULT_DIR).expanduser()
    stem = "train" if official_split == "train" else "t10k"
    images = _read_idx(_find(root, f"{stem}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{stem}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataSpecError(f"fashion-mnist: {root}: {stem} images {images.shape} and labels "
                            f"{labels.shape} do not match")
    if labels.size and not 0 <= labels.min() <= labels.max() < len(CLASS_NAMES):
        raise DataSpecError(f"fashion-mnist: {root}: {stem} labels outside 0..{len(CLASS_NAMES) - 1}")
    return images, labels


class FashionMnistSource(MapSource):
    def __init__(self, split: str, root: str | None = None):
        if split not in ("train", "val", "test"):
            raise DataSpecError(f"fashion-mnist: unknown split '{split}' (train, val, test)")
        images, labels = load_arrays(root, "test" if split == "test" else "train")
        sl = {"train": slice(0, len(images) - VAL_SIZE), "val": slice(len(images) - VAL_SIZE, None),
              "test": slice(None)}[split]
        self.offset = sl.start or 0  # keys keep the official index
        self.images, self.labels = images[sl], labels[sl]
        self.split, self.num_samples = split, len(self.images)
        self.class_names, self.templates = list(CLASS_NAMES), list(TEMPLATES)

    def load(self, index: int, resolution):
        label = int(self.labels[index])
        caption = TEMPLATES[index % len(TEMPLATES)].format(CLASS_NAMES[label])
        image = Image.fromarray(self.images[index]).convert("RGB")
        return image, caption, label, f"fashion-mnist-{self.split}-{index + self.offset:05d}"
