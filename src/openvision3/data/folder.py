"""``folder:DIR``: images under DIR (recursive) with captions.

Caption: the first non-empty line of the same-name ``.txt`` (``a/b.jpg`` -> ``a/b.txt``), else the
``caption`` of a ``captions.jsonl`` line ``{"file": "a/b.jpg", "caption": ...}`` at the root.
Unreadable images and missing/empty/non-UTF-8 captions are skipped and counted by reason.
Labels (optional, for zero-shot): with a ``classes.txt`` at the root (one class name a line),
a sample's label is its ``captions.jsonl`` ``label`` (index or class name), else the index of
its first sub-directory's name in ``classes.txt``; -1 otherwise.
Split: the whole folder for any split name (use separate folders for train and val).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import errors as E
from .errors import DataSpecError
from .imageio import IMAGE_EXTS, decode_caption, decode_image, first_line, image_files
from .mapsource import MapSource


class FolderSource(MapSource):
    def __init__(self, root: str):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataSpecError(f"folder:{root}: no such directory")
        self.files = image_files(self.root)
        if not self.files:
            raise DataSpecError(f"folder:{root}: no image files ({', '.join(IMAGE_EXTS)}) found")
        self.num_samples = len(self.files)  # candidates; unreadable ones are skipped when read
        self.jsonl, self.jsonl_skipped = self._read_jsonl()
        classes = self.root / "classes.txt"
        self.class_names = ([ln.strip() for ln in classes.read_text(encoding="utf-8").splitlines()
                             if ln.strip()] if classes.is_file() else None)

    def _read_jsonl(self):
        path, out, bad = self.root / "captions.jsonl", {}, 0
        if not path.is_file():
            return out, bad
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line.decode("utf-8"))
                out[str(Path(rec["file"]))] = rec
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                bad += line.strip() != b""  # counted, reported by `ov3 data inspect`
        return out, bad

    def _label(self, rel: Path, rec) -> int:
        if not self.class_names:
            return -1
        lab = rec.get("label") if rec else None
        if isinstance(lab, int) and 0 <= lab < len(self.class_names):
            return lab
        if isinstance(lab, str) and lab in self.class_names:
            return self.class_names.index(lab)
        if len(rel.parts) > 1 and rel.parts[0] in self.class_names:
            return self.class_names.index(rel.parts[0])
        return -1

    def load(self, index: int, resolution):
        path = self.files[index]
        rel = path.relative_to(self.root)
        rec = self.jsonl.get(str(rel))
        txt = path.with_suffix(".txt")
        if txt.is_file():
            caption = decode_caption(txt.read_bytes())
        elif rec is not None and isinstance(rec.get("caption"), str):
            caption = first_line(rec["caption"])
        else:
            raise E.SkipSample(E.NO_CAPTION)
        image = decode_image(path.read_bytes())
        return image, caption, self._label(rel, rec), str(rel)
