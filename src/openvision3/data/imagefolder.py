"""``imagefolder:DIR``: labelled images in torchvision's ImageFolder layout (ImageNet's train layout).

    DIR/<class name>/**/<image>     one sub-folder per class (images found recursively inside it)

Classes are the sub-folder names in sorted order (torchvision's ``ImageFolder`` order, so class ids
agree with it); a label is the index of its folder, the caption is "a photo of a <class>." (the
class name with "_" read as a space). Unreadable images are skipped and counted, as in every source.
Splits: when DIR holds exactly the folders ``train`` and ``val`` (and optionally ``test``), each
split reads its own folder (``imagefolder:/data/imagenet`` with ``train/`` and ``val/``); otherwise
the whole of DIR serves every split (use separate folders for train and val).
Fewer than two classes, or no image at all, is a DataSpecError: there is nothing to condition on.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataSpecError
from .imageio import IMAGE_EXTS, decode_image, image_files
from .mapsource import MapSource

SPLIT_DIRS = {"train", "val", "test"}


class ImageFolderSource(MapSource):
    def __init__(self, root: str, split: str = "train"):
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataSpecError(f"imagefolder:{root}: no such directory")
        subdirs = {p.name for p in base.iterdir() if p.is_dir()}
        if {"train", "val"} <= subdirs <= SPLIT_DIRS:
            if split not in subdirs:
                raise DataSpecError(f"imagefolder:{root}: no '{split}' folder (has {', '.join(sorted(subdirs))})")
            base = base / split
        self.root = base
        classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DataSpecError(f"imagefolder:{root}: needs one sub-folder per class and at least two classes, "
                                f"found {len(classes)} in {base}")
        # (path, label) pairs, class by class as torchvision's ImageFolder lists them
        self.samples = [(path, i) for i, name in enumerate(classes) for path in image_files(base / name)]
        if not self.samples:
            raise DataSpecError(f"imagefolder:{root}: no image files ({', '.join(IMAGE_EXTS)}) in its "
                                f"{len(classes)} class folders")
        self.num_samples = len(self.samples)  # candidates; unreadable ones are skipped when read
        self.class_names = [c.replace("_", " ") for c in classes]
        self.templates = ["a photo of a {}."]

    def load(self, index: int, resolution):
        path, label = self.samples[index]
        image = decode_image(path.read_bytes())
        caption = self.templates[0].format(self.class_names[label])
        return image, caption, label, str(path.relative_to(self.root))
