"""The embedded `shapes` set: determinism, splits, selections, caption modes.

Generation speed is measured in benchmarks/data_throughput.py, not here."""
import numpy as np
import pytest

from openvision3.config import DataConfig, ShapesConfig
from openvision3.data import DataSpecError, make_loader, open_data
from openvision3.data.shapes import COLOR_NAMES, SHAPES, render


def _take(ds, n, bs=16):
    out = {"image": [], "caption": [], "label": [], "key": []}
    for b in make_loader(ds, bs):
        for k in out:
            out[k] += list(b[k]) if k != "label" else b[k].tolist()
        if len(out["key"]) >= n:
            break
    return {k: v[:n] for k, v in out.items()}


def test_render_is_deterministic_and_any_resolution():
    a, ca, la, _ = render(7, resolution=64)
    b, cb, lb, _ = render(7, resolution=64)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and ca == cb and la == lb
    c, cc, _, _ = render(7, resolution=64, gen_seed=1)
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    for r in (32, 100, 200):
        assert render(3, resolution=r)[0].size == (r, r)


def test_dataset_tensors_range_and_determinism():
    x = _take(open_data("shapes", split="val", resolution=48, train=False), 20)
    y = _take(open_data("shapes", split="val", resolution=48, train=False), 20)
    img = np.stack([t.numpy() for t in x["image"]])
    assert img.shape == (20, 3, 48, 48) and img.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0 and img.min() < -0.5 and img.max() > 0.5
    assert x["caption"] == y["caption"] and x["key"] == y["key"]
    assert np.array_equal(img, np.stack([t.numpy() for t in y["image"]]))


def test_splits_are_disjoint():
    seen = {}
    for split in ("train", "val", "test"):
        data = _take(open_data("shapes", split=split, resolution=32, train=False), 150)
        seen[split] = ({k.split("-", 2)[2] for k in data["key"]},
                       {t.numpy().tobytes() for t in data["image"]}, set(data["caption"]))
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not seen[a][1] & seen[b][1], f"{a}/{b} share images"
    assert len(seen["train"][1]) == 150  # no duplicates inside a split either


def test_single_kind_is_labelled_and_balanced():
    ds = open_data("shapes", split="test", resolution=32, train=False, kind="single")
    assert len(ds.class_names) == 64 and ds.templates
    data = _take(ds, 128)
    assert sorted(data["label"]) == sorted(list(range(64)) * 2)
    for cap, lab in zip(data["caption"], data["label"]):
        colour, shape = ds.class_names[lab].split()
        assert colour in cap and shape in cap, (cap, ds.class_names[lab])
    assert {COLOR_NAMES[i] + " " + SHAPES[j] for j in range(8) for i in range(8)} == set(ds.class_names)


def test_multi_kind_has_relations_and_no_labels():
    data = _take(open_data("shapes", split="test", resolution=32, train=False, kind="multi"), 60)
    assert all(lab == -1 for lab in data["label"])
    rel = ("left of", "right of", "above", "below", "over", "under")
    assert sum(any(r in c for r in rel) for c in data["caption"]) == 60


def test_single_fraction_and_caption_modes_from_spec():
    only = _take(open_data("shapes?single=1&captions=minimal", resolution=32), 40)
    ds = open_data("shapes?single=1&captions=minimal", resolution=32)
    assert all(lab >= 0 for lab in only["label"])
    assert all(c == ds.class_names[lab] for c, lab in zip(only["caption"], only["label"]))
    assert ds.templates == ["{}"]
    none = _take(open_data("shapes?single=0", resolution=32), 40)
    assert all(lab == -1 for lab in none["label"])
    half = _take(open_data("shapes", resolution=32), 200)
    assert 60 < sum(lab >= 0 for lab in half["label"]) < 140
    simple = _take(open_data("shapes?kind=single&captions=simple", resolution=32), 10)["caption"]
    assert all(c.startswith("a ") and len(c.split()) <= 7 for c in simple)


def test_compact_captions_name_sizes_and_the_true_relation():
    for i in range(60):
        _, cap, _, objs = render(i, split="test", kind="multi", resolution=32, captions="compact")
        words = cap.split()
        assert len(words) <= 13, cap  # fits a 16-token context with sot/eot
        assert words[:3] == [objs[0]["size"], objs[0]["color"], objs[0]["shape"]], cap
        a, b = objs[0], objs[1]  # the relation agrees with the geometry (image y grows downward)
        dx, dy = a["x"] - b["x"], a["y"] - b["y"]
        rel = ("left of" if dx < 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy < 0 else "below")
        assert cap.startswith(" ".join(words[:3]) + f" {rel} {b['size']} {b['color']} {b['shape']}"), cap
        if len(objs) == 3:
            assert words[-1] == objs[2]["pos"] and words[-5] == "and", cap
    singles = open_data("shapes?kind=single&captions=compact", split="test", resolution=32, train=False)
    data = _take(singles, 16)
    assert all(c == singles.class_names[lab] for c, lab in zip(data["caption"], data["label"]))
    assert singles.templates == ["{}"]


def test_single_size_names_the_size_of_some_single_objects_and_leaves_pixels_alone():
    sized = 0
    for i in range(100):
        img0, bare, lab, objs = render(i, split="test", kind="single", resolution=32, captions="compact")
        img1, cap, lab1, _ = render(i, split="test", kind="single", resolution=32, captions="compact",
                                    single_size=0.5)
        assert np.array_equal(np.asarray(img0), np.asarray(img1)) and lab == lab1
        o = objs[0]
        assert bare == f"{o['color']} {o['shape']}"
        assert cap in (bare, f"{o['size']} {bare}"), cap
        sized += cap != bare
        always = render(i, split="test", kind="single", resolution=32, captions="compact", single_size=1)[1]
        assert always == f"{o['size']} {bare}"
    assert 30 < sized < 70
    # multi-object captions are unchanged by the option; the spec query reaches the source
    multi = [render(i, split="test", kind="multi", resolution=32, captions="compact", single_size=1)[1]
             for i in range(20)]
    assert multi == [render(i, split="test", kind="multi", resolution=32, captions="compact")[1]
                     for i in range(20)]
    caps = _take(open_data("shapes?single=1&captions=compact&single_size=1", resolution=32), 16)["caption"]
    assert all(c.split()[0] in ("small", "medium", "large") and len(c.split()) == 3 for c in caps)
    cfg = DataConfig(shapes=ShapesConfig(captions="compact", single_size=1.0, single_fraction=1.0))
    assert all(len(c.split()) == 3 for c in _take(open_data("shapes", resolution=32, cfg=cfg), 8)["caption"])
    # another caption style in the spec drops the config's single_size instead of failing
    assert _take(open_data("shapes?captions=minimal", resolution=32, cfg=cfg), 8)["caption"][0].count(" ") == 1


def test_rich_captions_vary_in_word_order():
    caps = _take(open_data("shapes", resolution=32), 200)["caption"]
    assert len({c.split()[0] for c in caps}) >= 5
    assert len(set(caps)) > 190


def test_bad_options_raise():
    for spec in ("shapes?kind=bogus", "shapes?captions=long", "shapes?single=2", "shapes?foo=1",
                 "shapes?n=abc", "shapes?captions=compact&single_size=1.5",
                 "shapes?captions=rich&single_size=0.5"):
        with pytest.raises(DataSpecError):
            open_data(spec)


def test_single_share_curriculum_switches_at_its_sample_and_resumes_identically():
    """All singles for the first 24 training samples, then only scenes; val keeps the final share;
    a stream restored mid-run draws exactly what the uninterrupted one drew."""
    cfg = DataConfig(resolution=16, shapes=ShapesConfig(single_fraction=0.0, single_fraction_start=1.0,
                                                       single_switch=24))
    ds = open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3)
    labels = _take(ds, 48, bs=8)["label"]
    assert all(lab >= 0 for lab in labels[:24]) and all(lab == -1 for lab in labels[24:])
    val = open_data("shapes", split="val", resolution=16, train=False, cfg=cfg)
    assert all(lab == -1 for lab in _take(val, 16, bs=8)["label"])

    whole = _take(open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3), 40, bs=8)
    first = open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3)
    loader = make_loader(first, 8)
    it = iter(loader)
    for _ in range(2):  # 16 samples, then "checkpoint" the stream position
        next(it)
    state = first.state_dict()
    resumed = open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3)
    resumed.load_state_dict(state)
    rest = _take(resumed, 24, bs=8)
    assert rest["key"] == whole["key"][16:40] and rest["label"] == whole["label"][16:40]


def test_single_share_curriculum_bad_values_are_one_config_error():
    from openvision3.config import ConfigError, get_config
    with pytest.raises(ConfigError, match="data.shapes.single_fraction_start"):
        get_config("demo", ["data.shapes.single_fraction_start=1.5"])
    with pytest.raises(ConfigError, match="data.shapes.single_switch"):
        get_config("demo", ["data.shapes.single_switch=-1"])


def test_first_phase_sizes_limit_single_objects_until_the_switch_and_resume_identically():
    """Singles of the first 32 training samples are medium or large only; after the switch small
    ones come back; val draws every size; a stream restored mid-run draws what the whole run drew."""
    cfg = DataConfig(resolution=16, shapes=ShapesConfig(single_fraction=1.0, single_sizes_start=["medium", "large"],
                                                       single_switch=32))
    # every single-object caption names its size here (single_size=1)
    caps = _take(open_data("shapes?captions=compact&single_size=1", split="train", resolution=16, train=True,
                           cfg=cfg, seed=3), 96, bs=8)["caption"]
    assert {c.split()[0] for c in caps[:32]} == {"medium", "large"}
    assert "small" in {c.split()[0] for c in caps[32:]}
    val = _take(open_data("shapes?captions=compact&single_size=1", split="val", resolution=16, train=False,
                          cfg=cfg), 64, bs=8)["caption"]
    assert any(c.startswith("small") for c in val[:32])

    whole = _take(open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3), 48, bs=8)
    first = open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3)
    it = iter(make_loader(first, 8))
    for _ in range(3):  # 24 samples, then "checkpoint" inside the first phase
        next(it)
    resumed = open_data("shapes", split="train", resolution=16, train=True, cfg=cfg, seed=3)
    resumed.load_state_dict(first.state_dict())
    rest = _take(resumed, 24, bs=8)
    assert rest["key"] == whole["key"][24:48] and rest["caption"] == whole["caption"][24:48]


def test_first_phase_sizes_bad_values_are_one_clear_error():
    for bad in (["huge"], []):
        cfg = DataConfig(resolution=16, shapes=ShapesConfig(single_sizes_start=bad, single_switch=8))
        with pytest.raises(DataSpecError, match="single_sizes_start"):
            open_data("shapes", split="train", resolution=16, train=True, cfg=cfg)
