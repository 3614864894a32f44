"""FrozenVAE on tiny random inline VAEs: shapes, gradients, frozenness, conventions, round-trip."""
import pytest
import torch
from torch import nn

from openvision3.config import ConfigError, VAEConfig
from openvision3.models.vae import VAE_ALIASES, FrozenVAE


def tiny_cfg(**kw):
    base = dict(source="inline", block_out_channels=[8, 16], norm_num_groups=4, latent_channels=4,
                layers_per_block=1)
    return VAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return FrozenVAE(tiny_cfg())


def images(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, s, generator=g) * 2 - 1


def test_encode_shape_and_downsample(vae):
    assert vae.downsample == 2 and vae.latent_channels == 4
    z = vae.encode(images(2, 16))
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    assert vae.decode(z).shape == (2, 3, 16, 16)


def test_encode_has_no_graph_even_with_grad_input(vae):
    x = images().requires_grad_()
    z = vae.encode(x)
    assert not z.requires_grad and z.grad_fn is None


def test_decode_is_differentiable(vae):
    z = vae.encode(images()).clone().requires_grad_()
    vae.decode(z).abs().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_optimizer_step_leaves_vae_untouched_and_eval():
    torch.manual_seed(0)

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = FrozenVAE(tiny_cfg())
            self.head = nn.Conv2d(4, 4, 1)

    host = Host()
    before = {k: v.clone() for k, v in host.vae.state_dict().items()}
    host.train()
    assert host.training and host.head.training
    assert not host.vae.training and not any(m.training for m in host.vae.modules())
    opt = torch.optim.AdamW(host.parameters(), lr=1e-2, weight_decay=0.1)
    head_before = host.head.weight.clone()
    x = images()
    loss = (host.vae.decode(host.head(host.vae.encode(x))) - x).abs().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(head_before, host.head.weight)
    after = host.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in host.vae.parameters())


def test_conventions_differ_exactly_by_shift():
    torch.manual_seed(0)
    a = FrozenVAE(tiny_cfg(convention="scale", scaling_factor=0.5, shift_factor=0.25))
    b = FrozenVAE(tiny_cfg(convention="shift_scale", scaling_factor=0.5, shift_factor=0.25))
    b.load_state_dict(a.state_dict())
    x = images()
    za, zb = a.encode(x), b.encode(x)
    torch.testing.assert_close(za - zb, torch.full_like(za, 0.25 * 0.5))
    # both invert their own normalisation, so they decode to the same image
    torch.testing.assert_close(a.decode(za), b.decode(zb), atol=1e-5, rtol=1e-5)
    raw = a.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(za, raw * 0.5)
    torch.testing.assert_close(zb, (raw - 0.25) * 0.5)


def test_factor_resolution(vae):
    assert (vae.scaling_factor, vae.shift_factor) == (1.0, 0.0)  # inline default: identity
    d = vae.describe()
    assert d["convention"] == "scale" and d["downsample"] == 2 and d["latent_channels"] == 4


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    a = FrozenVAE(tiny_cfg(scaling_factor=0.7))
    a.save_pretrained(tmp_path / "vae")
    b = FrozenVAE(VAEConfig(source=str(tmp_path / "vae")))
    assert b.scaling_factor == pytest.approx(0.7) and b.downsample == 2
    x = images()
    za, zb = a.encode(x), b.encode(x)
    assert torch.equal(za, zb)
    assert torch.equal(a.decode(za), b.decode(zb))


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        vae.encode(images() * 127.5 + 127.5)  # 0..255
    vae.encode((images() + 1) / 2)  # 0..1 lies inside the range: accepted
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.zeros(1, 3, 15, 16))


def test_unknown_convention_raises():
    with pytest.raises(ValueError, match="scale, shift_scale"):
        FrozenVAE(tiny_cfg(convention="bogus"))


def test_unavailable_hub_source_fails_clearly(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never touch the network in tests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="offline and not in the local HF cache.*vae.source=inline"):
        FrozenVAE(VAEConfig(source="no-such-owner/no-such-vae-ov3test"))
    assert VAE_ALIASES["flux"] == ("black-forest-labs/FLUX.1-dev", "vae")


def test_bf16_compute_dtype_runs(vae):
    z = vae.encode(images(), autocast_dtype=torch.bfloat16)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, vae.encode(images()), atol=0.1, rtol=0.1)


def test_one_architecture_dataclass_for_the_inline_vae_and_train_vae():
    """model.vae (source inline) and `ov3 train-vae`'s arch are the same VAEArchConfig; one builder
    makes the autoencoder for both."""
    from openvision3.config import VAEArchConfig, get_config
    from openvision3.models.vae import build_autoencoder
    from openvision3.train.vae_config import get_vae_config
    arch = get_vae_config("vae_demo").arch
    assert type(arch) is VAEArchConfig and isinstance(get_config().model.vae, VAEArchConfig)
    assert (arch.block_out_channels, arch.mid_block_attention, arch.logvar_init) == ([32, 64], False, -8.0)
    ours = build_autoencoder(arch).state_dict()
    assert (ours["encoder.conv_out.bias"][arch.latent_channels:] == -8.0).all()
    # the inline frozen VAE keeps diffusers' own init and its mid-block attention by default
    inline = FrozenVAE(VAEConfig(source="inline", block_out_channels=[8, 16], norm_num_groups=4, latent_channels=4))
    assert inline.vae.config.mid_block_add_attention is True
    assert not (inline.vae.encoder.conv_out.bias[4:] == -8.0).all()
    with pytest.raises(ConfigError, match="norm_num_groups=3 must divide"):
        FrozenVAE(VAEConfig(source="inline", block_out_channels=[8, 16], norm_num_groups=3))
