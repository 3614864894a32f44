"""Transforms ([-1, 1] tensors, crops, resolution changes) and the BPE tokenizer wrapper."""
import numpy as np
import torch
from PIL import Image

from openvision3.config import DataConfig
from openvision3.data import Tokenizer, make_loader, open_data
from openvision3.data.transforms import build_transform, eval_transform, train_transform


def _img(w=80, h=60):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255  # left half white, right half black
    return Image.fromarray(a)


def test_eval_transform_shape_range_and_centre_crop():
    x = eval_transform(32)(_img(120, 60))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, :, 0].mean() > 0.9 and x[:, :, -1].mean() < -0.9  # centre crop keeps both halves


def test_train_transform_random_but_bounded():
    t = train_transform(32, min_crop_area=0.4, hflip=True, color_jitter=0.4)
    outs = []
    for s in range(6):
        torch.manual_seed(s)
        y = t(_img())
        assert y.shape == (3, 32, 32) and y.min() >= -1 and y.max() <= 1
        outs.append(y)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_no_augmentation_when_disabled():
    cfg = DataConfig(augment=False)
    a, b = build_transform(32, True, cfg)(_img()), build_transform(32, True, cfg)(_img())
    assert torch.equal(a, b)


def test_resolution_change_between_stages():
    ds = open_data("shapes", resolution=32)
    assert next(iter(make_loader(ds, 4)))["image"].shape == (4, 3, 32, 32)
    ds.set_resolution(64)
    assert next(iter(make_loader(ds, 4)))["image"].shape == (4, 3, 64, 64)


def test_training_augmentation_is_seeded_per_sample(tmp_path):
    for i in range(6):
        _img(64 + i, 64).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    ds = open_data(f"folder:{tmp_path}", resolution=32, train=True)
    a = next(iter(make_loader(ds, 6)))
    ds.set_epoch(0)
    b = next(iter(make_loader(ds, 6)))
    assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    ds.set_epoch(1)
    c = next(iter(make_loader(ds, 6)))
    assert not torch.equal(a["image"], c["image"])


def test_tokenizer_layout_and_decode():
    tok = Tokenizer(16)
    assert tok.pad_id == 0 and tok.vocab_size == 49408 and tok.sot_id != tok.eot_id
    ids = tok(["a small red star left of a large blue circle", "hi"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.sot_id).all()
    n = int((ids[1] != 0).sum())
    assert ids[1, n - 1] == tok.eot_id and (ids[1, n:] == 0).all()
    assert tok.decode(ids[0]) == "a small red star left of a large blue circle"
    assert tok.decode(ids[1].tolist()) == "hi"
    long = tok(["word " * 40])
    assert long[0, -1] == tok.eot_id and (long[0] != 0).all()  # cut, still ends in eot
    assert tok.decode([tok.sot_id, *tok.encode("red star"), tok.eot_id, *tok.encode("junk")]) == "red star"
