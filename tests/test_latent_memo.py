"""train.latent_memo (the VAE latents of repeated images, kept in memory) and data.shapes.memo."""
from pathlib import Path

import pytest
import torch

from openvision3.config import ConfigError, DataConfig, ShapesConfig, get_config
from openvision3.data import make_loader, open_data
from openvision3.models.vae import FrozenVAE
from openvision3.train.latent_memo import LatentMemo
from openvision3.train.logging import read_metrics
from openvision3.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def _vae():
    cfg = get_config(None, ["model.vae.source=inline", "model.vae.latent_channels=4",
                            "model.vae.block_out_channels=[8,16]", "model.vae.norm_num_groups=4"])
    torch.manual_seed(0)
    return FrozenVAE(cfg.model.vae)


class CountingEncode:
    """The real VAE's encode, counting the images it is asked to encode."""

    def __init__(self, vae):
        self.vae, self.images = vae, 0

    def __call__(self, x):
        self.images += x.shape[0]
        return self.vae.encode(x)


def test_memo_returns_the_vae_latents_and_encodes_each_image_once():
    vae = _vae()
    enc = CountingEncode(vae)
    memo = LatentMemo(enc, max_entries=100)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(6, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    first = memo(a)
    torch.testing.assert_close(first, vae.encode(a), rtol=1e-5, atol=1e-5)
    assert enc.images == 6 and len(memo) == 6
    mixed = torch.cat([b[:3], a[:3], b[:3]])  # 3 new images (one of them twice each), 3 known ones
    out = memo(mixed)
    torch.testing.assert_close(out, vae.encode(mixed), rtol=1e-5, atol=1e-5)
    assert enc.images == 9, "an image already seen, or repeated within the batch, is encoded once"
    assert memo.hits == 6 and memo.misses == 9
    assert memo.stats() == {"latent_memo_hit_rate": 6 / 15, "latent_memo_size": 9}
    memo(a[:2])
    assert memo.stats()["latent_memo_hit_rate"] == 1.0, "the rate covers the calls since the last stats()"
    # a changed pixel is a new image
    c = a.clone()
    c[0, 0, 0, 0] += 0.5
    memo(c[:1])
    assert enc.images == 10


def test_a_full_memo_keeps_what_it_has_and_still_answers():
    vae = _vae()
    enc = CountingEncode(vae)
    memo = LatentMemo(enc, max_entries=2)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    memo(x)
    assert len(memo) == 2
    torch.testing.assert_close(memo(x), vae.encode(x), rtol=1e-5, atol=1e-5)
    assert enc.images == 6, "the two images that did not fit are encoded again"
    with pytest.raises(ValueError, match="max_entries"):
        LatentMemo(enc, 0)


def test_shapes_memo_gives_the_same_samples_rendered_once(monkeypatch):
    from openvision3.data import shapes
    calls = []
    real = shapes.render
    monkeypatch.setattr(shapes, "render", lambda *a, **k: calls.append(a) or real(*a, **k))
    def two_epochs(memo: bool):
        c = DataConfig(resolution=16, shapes=ShapesConfig(captions="compact", single_fraction=0.3,
                                                          single_fraction_start=0.9, single_switch=16, memo=memo))
        ds = open_data("shapes?n=8", split="train", resolution=16, train=True, cfg=c, seed=0)
        it = iter(make_loader(ds, 8))
        return [next(it) for _ in range(4)]  # 32 samples: 2 epochs per curriculum phase

    plain = two_epochs(False)
    assert len(calls) == 32
    calls.clear()
    memoized = two_epochs(True)
    assert len(calls) == 16, "8 samples x 2 phases, each rendered once"
    for p, m in zip(plain, memoized):
        assert p["caption"] == m["caption"] and p["key"] == m["key"]
        assert torch.equal(p["image"], m["image"])


def test_training_with_the_memo_matches_training_without(tmp_path):
    over = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.warmup_steps=2",
            "data.resolution=16", "model.image_size=16", "train.steps=6", "data.train=shapes?n=16",
            "data.shapes.memo=true"]

    def run(name, *extra):
        train(get_config(str(ROOT / "configs" / "tiny.yaml"), over + list(extra)), tmp_path / name)
        return [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]

    ref, memo = run("ref"), run("memo", "train.latent_memo=100")
    for a, b in zip(ref, memo):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
    assert "latent_memo_hit_rate" not in ref[0]
    assert memo[1]["latent_memo_hit_rate"] == 0.0 and memo[-1]["latent_memo_hit_rate"] == 1.0
    assert memo[-1]["latent_memo_size"] == 16
    with pytest.raises(ConfigError, match="latent_memo"):
        get_config(None, ["train.latent_memo=-1"])
