import pytest
import torch

from openvision3.config import get_config

# The smallest complete model: nano towers over a tiny random-init VAE (4x, 4 channels).
TINY_OVERRIDES = [
    "model.preset=nano", "model.image_size=32",
    "model.encoder.width=32", "model.encoder.layers=1", "model.encoder.heads=2",
    "model.decoder.width=32", "model.decoder.layers=1", "model.decoder.heads=2",
    "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.text.context_length=16",
    "model.caption.width=32", "model.caption.layers=1", "model.caption.heads=2",
    "model.caption.context_length=16", "model.embed_dim=16",
    "model.vae.source=inline", "model.vae.latent_channels=4", "model.vae.block_out_channels=[8,16,16]",
    "model.vae.norm_num_groups=4",
]


@pytest.fixture
def tiny_cfg():
    return get_config(None, list(TINY_OVERRIDES))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    tokens = torch.zeros(4, 16, dtype=torch.long)
    tokens[:, 0] = 49406  # start of text
    tokens[:, 1:6] = torch.randint(1, 1000, (4, 5), generator=g)
    tokens[:, 6] = 49407  # end of text
    return images, tokens


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A saved tiny OpenVision 3 model (seed 0): the frozen encoder of the generation and judge tests."""
    from openvision3.models.openvision3 import OpenVision3
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("enc") / "model"
    OpenVision3(get_config(None, list(TINY_OVERRIDES))).save_pretrained(d)
    return d
