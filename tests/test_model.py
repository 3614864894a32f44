import math

import pytest
import torch

from openvision3.config import get_config
from openvision3.models.openvision3 import OpenVision3

from conftest import TINY_OVERRIDES


def test_forward_returns_every_term_and_the_weighted_sum(tiny_cfg, batch):
    torch.manual_seed(0)
    model = OpenVision3(tiny_cfg)
    out = model(*batch)
    for k in ("loss", "loss_rec", "loss_pixel", "loss_latent", "loss_lpips", "loss_und", "loss_caption",
              "loss_contrastive", "logit_scale"):
        assert k in out and torch.isfinite(out[k]).all(), k
    c = tiny_cfg.loss
    assert torch.allclose(out["loss_rec"], out["loss_pixel"] + c.beta_latent * out["loss_latent"])
    assert torch.allclose(out["loss_und"], out["loss_caption"] + c.alpha_contrastive * out["loss_contrastive"])
    assert torch.allclose(out["loss"], c.w_rec * out["loss_rec"] + c.w_und * out["loss_und"])
    assert math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)
    assert model.encode_image(batch[0]).shape == (4, 16, 32)  # 32 px / (4x VAE * patch 2) = 4x4 tokens


def test_gradients_reach_every_trainable_part_and_never_the_vae(tiny_cfg, batch):
    torch.manual_seed(0)
    model = OpenVision3(tiny_cfg)
    model.train()
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(*batch)["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    assert all(not p.requires_grad and p.grad is None for p in model.vae.parameters())
    assert not model.vae.training  # .train() on the parent keeps the VAE in eval mode
    opt.step()
    for k, v in model.vae.state_dict().items():
        assert torch.equal(v, vae_before[k]), k


def _grad_parts(model):
    return {name for name, p in model.named_parameters() if p.grad is not None}


def test_zero_weight_branches_are_not_computed(tiny_cfg, batch, monkeypatch):
    torch.manual_seed(0)
    cfg = get_config(None, TINY_OVERRIDES + ["loss.w_rec=0"])
    model = OpenVision3(cfg)
    monkeypatch.setattr(model.vae, "decode", lambda *a, **k: pytest.fail("VAE decode ran with w_rec=0"))
    monkeypatch.setattr(model.decoder, "forward", lambda *a, **k: pytest.fail("decoder ran with w_rec=0"))
    out = model(*batch)
    out["loss"].backward()
    assert out["loss_rec"].item() == 0
    assert not any(n.startswith("decoder.") for n in _grad_parts(model))

    cfg = get_config(None, TINY_OVERRIDES + ["loss.w_und=0"])
    model = OpenVision3(cfg)
    monkeypatch.setattr(model.text_encoder, "forward", lambda *a, **k: pytest.fail("text encoder ran"))
    monkeypatch.setattr(model.caption_decoder, "forward", lambda *a, **k: pytest.fail("caption decoder ran"))
    model(batch[0])["loss"].backward()  # no tokens needed for reconstruction only
    grads = _grad_parts(model)
    assert not any(n.startswith(("text_encoder.", "caption_decoder.", "logit_scale")) for n in grads)
    assert any(n.startswith("decoder.") for n in grads)

    cfg = get_config(None, TINY_OVERRIDES + ["loss.alpha_contrastive=0"])
    model = OpenVision3(cfg)
    monkeypatch.setattr(model.text_encoder, "forward", lambda *a, **k: pytest.fail("text encoder ran"))
    out = model(*batch)
    assert out["loss_contrastive"].item() == 0 and out["loss_caption"].item() > 0


def test_save_load_round_trip_is_identical(tiny_cfg, batch, tmp_path):
    torch.manual_seed(0)
    model = OpenVision3(tiny_cfg).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "vae" / "config.json").exists()  # inline VAE travels with the model
    loaded = OpenVision3.from_pretrained(tmp_path / "m").eval()
    images = batch[0]
    assert torch.equal(model.encode_image(images), loaded.encode_image(images))
    assert torch.equal(model.reconstruct(images), loaded.reconstruct(images))
    assert torch.equal(model.encode_text(batch[1]), loaded.encode_text(batch[1]))
    assert loaded.cfg.model.encoder == model.cfg.model.encoder and loaded.cfg.loss == model.cfg.loss


def test_reconstruct_is_deterministic_and_in_range(tiny_cfg, batch):
    model = OpenVision3(tiny_cfg)
    model.train()
    a, b = model.reconstruct(batch[0]), model.reconstruct(batch[0])
    assert torch.equal(a, b) and a.shape == batch[0].shape
    assert a.min() >= -1 and a.max() <= 1
    assert model.decoder.training  # reconstruct() restores the mode it found


def test_bad_inputs_give_one_clear_error(tiny_cfg, batch, tmp_path):
    model = OpenVision3(tiny_cfg)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.encode_image(batch[0] * 127.5 + 127.5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode_image(torch.zeros(2, 1, 32, 32))
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing|config.yaml is missing"):
        (tmp_path / "empty").mkdir()
        OpenVision3.from_pretrained(tmp_path / "empty")
    state = model.trainable_state_dict()
    state.pop("encoder.proj")
    with pytest.raises(ValueError, match="1 missing keys"):
        model.load_weights(state)
    with pytest.raises(ValueError, match="need caption tokens"):
        model(batch[0])


def test_caption_subbatch_reads_the_first_n_images_only(batch):
    """loss.caption_subbatch=N: the caption loss depends on the first N captions alone, the
    contrastive loss still on all of them."""
    cfg = get_config(None, list(TINY_OVERRIDES) + ["loss.caption_subbatch=2"])
    torch.manual_seed(0)
    model = OpenVision3(cfg)
    images, tokens = batch
    other = tokens.clone()
    other[2:, 1:6] = torch.randint(1, 1000, (2, 5), generator=torch.Generator().manual_seed(1))
    outs = []
    for t in (tokens, other):
        torch.manual_seed(1)  # same token noise
        outs.append(model(images, t))
    assert torch.equal(outs[0]["loss_caption"], outs[1]["loss_caption"])
    assert not torch.equal(outs[0]["loss_contrastive"], outs[1]["loss_contrastive"])
    model.cfg.loss.caption_subbatch = 0
    torch.manual_seed(1)
    assert not torch.equal(model(images, other)["loss_caption"], outs[1]["loss_caption"])


def test_rec_subbatch_reconstructs_the_first_n_images_only(batch):
    """loss.rec_subbatch=N: the reconstruction losses depend on the first N images alone (the
    latent decoder runs on N), the understanding losses still on all of them."""
    cfg = get_config(None, list(TINY_OVERRIDES) + ["loss.rec_subbatch=2", "loss.pixel_subbatch=1"])
    torch.manual_seed(0)
    model = OpenVision3(cfg)
    images, tokens = batch
    other = images.clone()
    other[2:] = -images[2:]
    seen = []
    model.decoder.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    outs = []
    for x in (images, other):
        torch.manual_seed(1)  # same token noise
        outs.append(model(x, tokens))
    assert seen == [2, 2]
    for k in ("loss_latent", "loss_pixel"):
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(outs[0]["loss_contrastive"], outs[1]["loss_contrastive"])
    outs[0]["loss"].backward()
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
    model.cfg.loss.rec_subbatch = 0
    torch.manual_seed(1)
    assert not torch.allclose(model(other, tokens)["loss_latent"], outs[1]["loss_latent"])


def test_is_saved_model_needs_the_weights_and_the_config(tiny_cfg, tmp_path):
    from openvision3.models.openvision3 import CONFIG_NAME, WEIGHTS_NAME, is_saved_model
    OpenVision3(tiny_cfg).save_pretrained(tmp_path / "m")
    assert is_saved_model(tmp_path / "m") and is_saved_model(str(tmp_path / "m"))
    (tmp_path / "m" / CONFIG_NAME).rename(tmp_path / "config.yaml.bak")
    assert not is_saved_model(tmp_path / "m")  # weights alone: not a model one can load
    (tmp_path / "config.yaml.bak").rename(tmp_path / "m" / CONFIG_NAME)
    (tmp_path / "m" / WEIGHTS_NAME).unlink()
    assert not is_saved_model(tmp_path / "m") and not is_saved_model(tmp_path / "nothing")
