"""Transforms ([-1, 1] tensors, crops, resolution changes) and the two tokenizers."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.config import ConfigError, DataConfig, get_config
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


def test_per_sample_seeding_leaves_every_global_generator_alone(tmp_path, monkeypatch):
    """Loading in the training process must not move the model's random streams: the CPU one is
    restored, and a GPU's is never reseeded (torch.manual_seed would reseed it for good)."""
    for i in range(4):
        _img(64 + i, 64).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    ds = open_data(f"folder:{tmp_path}", resolution=32, train=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reseeded.clear()
    samples = list(itertools.islice(ds, 4))  # the dataset alone: a DataLoader draws its own seed
    assert len(samples) == 4 and torch.equal(torch.rand(3), expected) and reseeded == []


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


def test_word_tokenizer_keeps_the_bpe_layout_the_towers_rely_on():
    from openvision3.data.tokenizer import WordTokenizer
    tok = WordTokenizer(["red", "star", "and", "Blue", "circle", "red"], context_length=8)
    assert tok.words == ["red", "star", "and", "blue", "circle"] and tok.vocab_size == 5 + 4
    ids = tok(["Red star and blue circle", "green star"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    # pad 0; end-of-text is the largest id (the text encoder pools at the argmax id)
    assert tok.eot_id == tok.vocab_size - 1 and (ids.argmax(dim=1) == torch.tensor([6, 3])).all()
    assert ids[1, :4].tolist() == [tok.sot_id, tok.unk_id, tok._ids["star"], tok.eot_id]
    assert (ids[1, 4:] == 0).all()
    assert tok.decode(ids[0]) == "red star and blue circle"
    assert tok.decode(ids[1]) == "<unk> star"
    long = tok(["red star " * 10])
    assert long[0, -1] == tok.eot_id and (long[0] != 0).all()  # cut, still ends in eot
    with pytest.raises(ValueError, match="single words"):
        WordTokenizer(["red star"])
    assert tok.unknown_words(["green star", "Pink circle and green heart"]) == ["green", "heart", "pink"]
    assert tok.unknown_words("red star") == []


def test_the_demo_word_list_covers_every_word_of_its_captions():
    """configs/demo.yaml trains with a closed word list: no caption word may fall outside it."""
    from openvision3.data.shapes import render
    from openvision3.data.tokenizer import build_tokenizer
    cfg = get_config("demo")
    assert cfg.model.tokenizer == "words"
    tok = build_tokenizer(cfg.model)
    for kind in ("single", "multi", "mixed"):
        for i in range(40):
            caption = render(i, split="train", kind=kind, resolution=16, captions=cfg.data.shapes.captions)[1]
            ids = tok([caption])[0]
            assert tok.unk_id not in ids.tolist(), caption
            assert tok.decode(ids) == caption


def test_a_model_with_a_word_list_sizes_its_text_towers_to_it(tmp_path):
    from conftest import TINY_OVERRIDES
    from openvision3.models.openvision3 import OpenVision3
    words = "[red, blue, star, circle, and]"
    cfg = get_config(None, TINY_OVERRIDES + ["model.tokenizer=words", f"model.words={words}"])
    model = OpenVision3(cfg)
    assert model.caption_decoder.lm_head.weight.shape[0] == 9
    assert model.text_encoder.model.token_embedding.weight.shape[0] == 9
    out = model(torch.rand(2, 3, 32, 32) * 2 - 1, ["red star", "blue circle and red star"])
    assert torch.isfinite(out["loss"]) and out["loss_caption"] > 0
    model.save_pretrained(tmp_path / "m")
    loaded = OpenVision3.from_pretrained(tmp_path / "m")
    assert loaded.tokenizer.words == ["red", "blue", "star", "circle", "and"]
    with pytest.raises(ConfigError, match="model.words"):
        get_config(None, ["model.tokenizer=words"])
