"""Decoding images and captions from bytes, with every failure mapped to a skip reason."""
from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import errors as E

# Truncated files must fail loudly so they are counted, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS)


def decode_image(data: bytes) -> Image.Image:
    """bytes -> RGB PIL image (first frame; EXIF orientation applied; alpha composited on white;
    16-bit scaled to 8). Raises SkipSample; a decompression bomb (a header declaring more than
    twice PIL's ``Image.MAX_IMAGE_PIXELS``, ~179 M pixels) is refused before any pixel is decoded."""
    if not data:
        raise E.SkipSample(E.EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x MAX_IMAGE_PIXELS PIL only warns; such images are decoded (large, real).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.seek(0)  # gif/webp animations: first frame
            img.load()
    except Image.DecompressionBombError:
        raise E.SkipSample(E.DECOMPRESSION_BOMB) from None
    except UnidentifiedImageError:
        raise E.SkipSample(E.NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError):
        # a damaged file surfaces as any of these, depending on the format plugin and where it breaks
        raise E.SkipSample(E.TRUNCATED_IMAGE) from None
    try:
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF, not in pixels
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        pass  # a damaged EXIF block: the pixels are fine, keep them as stored
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: PIL's convert("RGB") clips to 0..255 instead of scaling (a white image)
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Composite on white: transparent regions of logos/icons are meant to be background.
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_caption(data: bytes) -> str:
    """bytes of a caption file -> first non-empty line. Raises SkipSample."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise E.SkipSample(E.CAPTION_NOT_UTF8) from None
    return first_line(text)


def first_line(text: str) -> str:
    for line in text.lstrip("\ufeff").splitlines():
        if line.strip():
            return line.strip()
    raise E.SkipSample(E.EMPTY_CAPTION)


def caption_from_json(data: bytes) -> str:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise E.SkipSample(E.CAPTION_NOT_UTF8) from None
    except ValueError:
        raise E.SkipSample(E.NO_CAPTION) from None
    cap = obj.get("caption") if isinstance(obj, dict) else None
    if not isinstance(cap, str):
        raise E.SkipSample(E.NO_CAPTION)
    return first_line(cap)
