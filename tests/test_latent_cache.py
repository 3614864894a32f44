"""The latent cache (data/latent_cache.py): what it stores equals fresh encoding, a cache made
for another VAE/convention/resolution is refused, and training on it resumes exactly."""
from pathlib import Path

import pytest
import torch

from openvision3 import cli
from openvision3.config import VAEConfig, get_config
from openvision3.data import make_loader
from openvision3.data.latent_cache import LatentCacheMismatch, cache_latents, open_latent_cache
from openvision3.models.vae import FrozenVAE
from openvision3.train.logging import read_metrics
from openvision3.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = dict(source="inline", latent_channels=4, block_out_channels=[16, 32], norm_num_groups=8)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A saved tiny VAE and a 12-sample cache of `shapes` at 16 px made with it (3 shards)."""
    root = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    FrozenVAE(VAEConfig(**TINY_VAE)).save_pretrained(root / "vae")
    r = cache_latents("shapes?n=12", str(root / "vae"), 16, root / "cache", shard_size=5, batch_size=8,
                      progress=False)
    assert r["samples"] == 12 and r["shards"] == 3 and r["latent_shape"] == [4, 8, 8]
    return root


def test_cached_latents_equal_fresh_encoding_and_the_flip_equals_encoding_the_flipped_image(cached):
    import io
    import tarfile

    import numpy as np
    from PIL import Image
    vae = FrozenVAE(VAEConfig(source=str(cached / "vae")))
    with tarfile.open(cached / "cache" / "000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({n.split(".")[0] for n in members})
    assert len(keys) == 5
    for key in keys[:3]:
        pixels = np.array(Image.open(io.BytesIO(members[f"{key}.png"])).convert("RGB"))
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]
        latent = torch.from_numpy(np.load(io.BytesIO(members[f"{key}.latent.npy"])))
        flipped = torch.from_numpy(np.load(io.BytesIO(members[f"{key}.latent_flip.npy"])))
        torch.testing.assert_close(latent, vae.encode(image)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flipped, vae.encode(image.flip(-1))[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(latent, flipped)  # the flip is a different latent, not a copy


def test_training_batches_pair_each_image_with_its_latent_and_pick_flips_at_random(cached):
    vae = FrozenVAE(VAEConfig(source=str(cached / "vae")))
    ds = open_latent_cache(cached / "cache", vae, [16], seed=0)
    src = ds.source
    batch = next(iter(make_loader(ds, 12)))
    assert batch["image"].shape == (12, 3, 16, 16) and batch["latent"].shape == (12, 4, 8, 8)
    # whichever latent was picked, it is the encoding of the image the batch carries (flipped or not)
    torch.testing.assert_close(batch["latent"], vae.encode(batch["image"]), atol=1e-5, rtol=1e-5)
    picks = [src.flip_picked({"__flip_seed__": f"0/{e}", "__key__": f"{k:09d}"}) for e in range(2) for k in range(12)]
    assert 0 < sum(picks) < len(picks)  # some flipped, some not, and the pick changes with the epoch
    assert picks[:12] != picks[12:]
    src.hflip = False  # data.hflip=false (left/right captions): never flipped
    assert not any(src.flip_picked({"__flip_seed__": "0/0", "__key__": f"{k:09d}"}) for k in range(12))


def test_a_cache_made_with_another_vae_convention_or_resolution_is_refused(cached, capsys):
    same = FrozenVAE(VAEConfig(source=str(cached / "vae")))
    open_latent_cache(cached / "cache", same, [16])  # fits
    torch.manual_seed(1)
    other = FrozenVAE(VAEConfig(**TINY_VAE))  # same shape, other weights
    shifted = FrozenVAE(VAEConfig(source=str(cached / "vae"), convention="shift_scale", shift_factor=0.1))
    for vae, res, word in ((other, [16], "weights"), (shifted, [16], "shift_scale"), (same, [16, 32], "32 px")):
        with pytest.raises(LatentCacheMismatch, match=r"was made with VAE .* 16 px.*; this run needs") as e:
            open_latent_cache(cached / "cache", vae, res)
        assert word in str(e.value).split("this run needs")[1] and "\n" not in str(e.value)
    # through the command line: one line, exit code 2
    rc = cli.main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--out", str(cached / "bad"),
                   f"data.latent_cache={cached / 'cache'}", "data.resolution=32", "model.image_size=32",
                   f"model.vae.source={cached / 'vae'}", "train.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "this run needs" in err[-1] and "32 px" in err[-1]


def test_training_on_a_cache_resumes_exactly(cached, tmp_path):
    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(Path(run) / "metrics.jsonl") if "loss" in r}

    cfg = get_config(str(ROOT / "configs" / "tiny.yaml"), [
        "train.batch_size=4", "train.log_every=1", "train.eval_every=0", "train.warmup_steps=1",
        "data.resolution=16", "model.image_size=16", "data.val=shapes?n=8", f"model.vae.source={cached / 'vae'}",
        f"data.latent_cache={cached / 'cache'}", "data.hflip=true", "data.shuffle_buffer=4",
        "train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"])
    ref = train(cfg, tmp_path / "ref")  # 4 steps of 4 from 12 samples: step 4 starts a new epoch
    assert ref["status"] == "finished"
    train(cfg, tmp_path / "resumed", resume=str(tmp_path / "ref" / "checkpoints" / "step_2"))
    want, got = losses(tmp_path / "ref"), losses(tmp_path / "resumed")
    assert sorted(got) == [3, 4] and all(got[s] == want[s] for s in got), (want, got)
