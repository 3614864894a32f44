"""folder:, wds:, pack round-trip, fashion-mnist; rank/worker splits and exact resume."""
import io
import json
import os
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image

from openvision3.config import DataConfig
from openvision3.data import DataSpecError, make_loader, open_data
from openvision3.data.pack import pack_data


def _keys(ds, bs=8, workers=0, limit=None):
    keys = []
    for b in make_loader(ds, bs, num_workers=workers):
        keys += b["key"]
        if limit and len(keys) >= limit:
            break
    return keys


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    r = pack_data("shapes?n=60", str(out), shard_size=16, split="val", resolution=32, image_format="png")
    assert r == {"out": str(out), "samples": 60, "shards": 4, "skipped": 0, "skipped_by_reason": {}}
    return out


def test_folder_captions_recursive_rgba_gif_labels(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog" / "deep").mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "cat" / "a.jpg")
    (tmp_path / "cat" / "a.txt").write_text("\n\n  a red cat  \nsecond line\n")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent -> white
    rgba.save(tmp_path / "dog" / "deep" / "b.png")
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 255, 0), (0, 0, 0))]
    frames[0].save(tmp_path / "c.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (20, 20)).save(tmp_path / "d.webp")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "dog/deep/b.png", "caption": "a clear dog"}) + "\n"
        + json.dumps({"file": "c.gif", "caption": "a green gif", "label": "cat"}) + "\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    ds = open_data(f"folder:{tmp_path}", split="val", resolution=16, train=False)
    assert ds.num_samples == 4 and ds.class_names == ["cat", "dog"]
    loader = make_loader(ds, 8)
    (b,) = list(loader)
    got = dict(zip(b["key"], zip(b["caption"], b["label"].tolist(), b["image"])))
    assert got["cat/a.jpg"][:2] == ("a red cat", 0)
    assert got["dog/deep/b.png"][:2] == ("a clear dog", 1)
    assert got["c.gif"][:2] == ("a green gif", 0)
    assert torch.allclose(got["dog/deep/b.png"][2], torch.ones(3, 16, 16))  # white, not blue/black
    g = got["c.gif"][2].mean((1, 2))
    assert g[1] > 0.9 and g[0] < -0.9  # first frame (green)
    assert loader.skipped_total == Counter({"no_caption": 1})  # d.webp has no caption


def test_pack_round_trip_and_info(shards):
    src = open_data("shapes?n=60", split="val", resolution=32, train=False)
    ref = {b_k: c for b in make_loader(src, 16) for b_k, c in zip(b["key"], b["caption"])}
    ds = open_data(f"wds:{shards}", split="val", resolution=32, train=False)
    assert ds.num_samples == 60 and ds.class_names == src.class_names
    got = {}
    for b in make_loader(ds, 16):
        assert b["image"].shape[1:] == (3, 32, 32)
        got.update(zip(b["key"], b["caption"]))
    assert sorted(got.values()) == sorted(ref.values())
    with tarfile.open(shards / "000000.tar") as tf:
        names = tf.getnames()
        meta = json.loads(tf.extractfile("000000000.json").read())
    assert sorted(names[:3]) == ["000000000.json", "000000000.png", "000000000.txt"]
    assert meta["key"].startswith("shapes-val-") and meta["caption"] == ref[meta["key"]]


def test_wds_brace_pattern_and_json_caption(shards, tmp_path):
    ds = open_data(f"wds:{shards}/{{000000..000001}}.tar", split="val", resolution=32, train=False)
    assert len(_keys(ds)) == 32
    with tarfile.open(tmp_path / "j.tar", "w") as tf:
        for name, data in (("x1.jpg", _jpeg()), ("x1.json", json.dumps({"caption": "from json"}).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (b,) = list(make_loader(open_data(f"wds:{tmp_path / 'j.tar'}", train=False, resolution=8), 4))
    assert b["caption"] == ["from json"] and b["key"] == ["x1"]


def _jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (9, 99, 199)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("spec", ["shapes?n=50", "wds"])
def test_two_ranks_cover_each_sample_once(spec, shards):
    spec = f"wds:{shards}" if spec == "wds" else spec
    keys = []
    for rank in (0, 1):
        ds = open_data(spec, split="val", resolution=16, train=True, infinite=False, rank=rank,
                       world_size=2, seed=3)
        keys.append(_keys(ds))
    n = 50 if spec.startswith("shapes") else 60
    assert len(keys[0]) + len(keys[1]) == n and len(set(keys[0]) | set(keys[1])) == n
    assert abs(len(keys[0]) - len(keys[1])) <= 16  # wds splits by shard (4 shards of <= 16)


def test_workers_cover_each_sample_once():
    ds = open_data("shapes?n=40", split="val", resolution=16, train=False)
    keys = _keys(ds, bs=4, workers=2)
    assert sorted(keys) == sorted(_keys(open_data("shapes?n=40", split="val", resolution=16, train=False)))
    assert len(set(keys)) == 40


@pytest.mark.parametrize("spec,workers", [("shapes?n=30", 0), ("shapes?n=30", 2), ("wds", 0), ("wds", 2)])
def test_resume_gives_the_same_next_samples(spec, workers, shards):
    spec = f"wds:{shards}" if spec == "wds" else spec
    cfg = DataConfig(shuffle_buffer=10)

    def fresh():
        return open_data(spec, split="val", resolution=16, train=True, cfg=cfg, seed=5)

    ds = fresh()  # infinite: crosses epoch boundaries
    full, it = [], iter(make_loader(ds, 7, num_workers=workers))
    for i in range(14):
        b = next(it)
        full.append((b["key"], b["image"]))
        if i == 5:
            state = json.loads(json.dumps(ds.state_dict()))  # as the trainer would save it
    del it
    ds2 = fresh()
    ds2.load_state_dict(state)
    it2 = iter(make_loader(ds2, 7, num_workers=workers))
    for keys, images in full[6:]:
        b = next(it2)
        assert b["key"] == keys and torch.equal(b["image"], images)
    assert len({k for ks, _ in full for k in ks}) == (30 if "shapes" in spec else 60)  # reached epoch 2


def test_shuffle_differs_per_epoch_and_seed():
    def keys(seed, epoch=0, train=True):
        ds = open_data("shapes?n=30", split="val", resolution=8, seed=seed, train=train, infinite=False)
        ds.set_epoch(epoch)
        return _keys(ds)

    a = keys(1)
    assert a == keys(1) and a != keys(1, epoch=1) and a != keys(2)
    assert sorted(a) == sorted(keys(1, epoch=1)) == sorted(keys(2))
    ev = keys(0, train=False)
    assert ev == sorted(ev)


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Debian package dataset-fashion-mnist absent")
def test_fashion_mnist_splits_and_captions():
    sizes = {s: open_data("fashion-mnist", split=s, train=False, resolution=32).num_samples
             for s in ("train", "val", "test")}
    assert sizes == {"train": 55000, "val": 5000, "test": 10000}
    ds = open_data("fashion-mnist", split="test", train=False, resolution=32)
    assert len(ds.class_names) == 10 and "{}" in ds.templates[0]
    b = next(iter(make_loader(ds, 64)))
    assert b["image"].shape == (64, 3, 32, 32) and b["image"].min() >= -1
    assert torch.equal(b["image"][:, 0], b["image"][:, 1])  # grey -> RGB
    assert set(b["label"].tolist()) <= set(range(10)) and len(set(b["label"].tolist())) > 5
    for cap, lab in zip(b["caption"], b["label"].tolist()):
        assert ds.class_names[lab] in cap
    val = open_data("fashion-mnist", split="val", train=False, resolution=8)
    tr = open_data("fashion-mnist", split="train", train=False, resolution=8)
    assert not set(_keys(val, 256, limit=300)) & set(_keys(tr, 256, limit=300))
    assert next(iter(make_loader(val, 1)))["key"] == ["fashion-mnist-val-55000"]


def test_fashion_mnist_missing_path_names_the_package(tmp_path):
    with pytest.raises(DataSpecError, match="dataset-fashion-mnist"):
        open_data(f"fashion-mnist:{tmp_path}")
