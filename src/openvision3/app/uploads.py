"""A user's file -> the model's input: read like the evaluation reads images (short side resized
to the model's resolution, centre crop, [-1, 1]), with a note when the picture was changed a lot
and one clear line when it cannot be used."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from ..data.errors import SkipSample
from ..data.imageio import decode_image
from ..data.transforms import eval_transform

# Above this many bytes a file is not read at all (gradio's own upload limit is set to the same).
MAX_FILE_BYTES = 64 * 1024 * 1024


class InputError(ValueError):
    """An upload the page cannot use; the message is shown where the result would be."""


@lru_cache(maxsize=16)  # several views read the same upload; gradio gives every upload its own path
def read_upload(path: str, resolution: int) -> tuple[torch.Tensor, str]:
    """-> ((1, 3, R, R) in [-1, 1], a note for the page, "" when there is nothing to say)."""
    if not path:
        raise InputError("no image yet: upload one or click an example")
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"'{p.name}' is {size / 2**20:.0f} MB; the page reads images up to "
                             f"{MAX_FILE_BYTES // 2**20} MB")
        img = decode_image(p.read_bytes())
    except SkipSample as e:
        raise InputError(f"'{p.name}' cannot be used: {(str(e) or 'unreadable image').replace('_', ' ')}") from None
    except OSError as e:
        raise InputError(f"'{p.name}' cannot be read: {e.strerror or type(e).__name__}") from None
    w, h = img.size
    note = ""
    if max(w, h) > 8 * resolution:
        # shrink large photos in one cheap step first (antialiased, exactly what the transform would do
        # but on far fewer pixels); the model only ever sees `resolution` pixels
        scale = 2 * resolution / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=2.0)
        note = (f"{w} x {h} px picture: the model reads it at {resolution} x {resolution} "
                "(short side resized, centre crop)")
    elif w != h:
        note = f"{w} x {h} px picture: centre-cropped to a square, read at {resolution} x {resolution}"
    return eval_transform(resolution)(img).unsqueeze(0), note
