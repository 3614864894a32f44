"""`imagefolder:DIR` (data/imagefolder.py): ImageFolder labels, split folders, skipped files, bad specs."""
import pytest
from PIL import Image

from openvision3.data import DataSpecError, make_loader, open_data


def _img(path, color, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _read_all(spec, split="train"):
    ds = open_data(spec, split=split, resolution=16, train=False, infinite=False)
    batches = list(make_loader(ds, 4))
    labels = [int(x) for b in batches for x in b["label"]]
    captions = [c for b in batches for c in b["caption"]]
    skipped = sum((b["skipped"] for b in batches), start=__import__("collections").Counter())
    return ds, labels, captions, skipped


def test_labels_follow_sorted_class_folders_and_broken_files_are_counted(tmp_path):
    root = tmp_path / "data"
    _img(root / "tabby_cat" / "a.png", "red")
    _img(root / "tabby_cat" / "deep" / "b.jpg", "red")  # images are found recursively in a class folder
    _img(root / "dog" / "c.png", "blue")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    (root / "dog" / "notes.txt").write_text("not an image, not counted")
    ds, labels, captions, skipped = _read_all(f"imagefolder:{root}")
    assert ds.class_names == ["dog", "tabby cat"]  # torchvision order (sorted folder names)
    assert sorted(labels) == [0, 1, 1] and "a photo of a tabby cat." in captions
    assert sum(skipped.values()) == 2 and skipped["empty_file"] == 1
    assert ds.num_samples == 5


def test_train_and_val_folders_are_splits(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("n01", "n02"):
            for i in range(n):
                _img(root / split / cls / f"{i}.png", "green")
    _, train_labels, _, _ = _read_all(f"imagefolder:{root}", "train")
    _, val_labels, _, _ = _read_all(f"imagefolder:{root}", "val")
    assert sorted(train_labels) == [0, 0, 0, 1, 1, 1] and sorted(val_labels) == [0, 1]
    with pytest.raises(DataSpecError, match="no 'test' folder"):
        open_data(f"imagefolder:{root}", split="test", resolution=16, train=False)


def test_bad_imagefolders(tmp_path):
    with pytest.raises(DataSpecError, match="no such directory"):
        open_data(f"imagefolder:{tmp_path / 'nope'}", resolution=16)
    (tmp_path / "one" / "only").mkdir(parents=True)
    _img(tmp_path / "one" / "only" / "x.png", "red")
    with pytest.raises(DataSpecError, match="at least two classes, found 1"):
        open_data(f"imagefolder:{tmp_path / 'one'}", resolution=16)
    (tmp_path / "two" / "a").mkdir(parents=True)
    (tmp_path / "two" / "b").mkdir(parents=True)
    with pytest.raises(DataSpecError, match="no image files"):
        open_data(f"imagefolder:{tmp_path / 'two'}", resolution=16)
    with pytest.raises(DataSpecError, match="needs a path"):
        open_data("imagefolder:", resolution=16)
