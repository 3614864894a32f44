"""Decoding images and captions from bytes, with every failure mapped to a skip reason."""
from __future__ import annotations

import io
import json

from PIL import Image, ImageFile, UnidentifiedImageError

from . import errors as E

# Truncated files must fail loudly so they are counted, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def decode_image(data: bytes) -> Image.Image:
    """bytes -> RGB PIL image (first frame; alpha composited on white). Raises SkipSample."""
    if not data:
        raise E.SkipSample(E.EMPTY_FILE)
    try:
        img = Image.open(io.BytesIO(data))
        img.seek(0)  # gif/webp animations: first frame
        img.load()
    except UnidentifiedImageError:
        raise E.SkipSample(E.NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise E.SkipSample(E.TRUNCATED_IMAGE) from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
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
