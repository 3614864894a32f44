"""weights_fingerprint: the one hash that names a set of weights (latent cache, token cache)."""
import hashlib
import shutil

import pytest
import torch
from safetensors.torch import save_file

from openvision3.fingerprint import weights_fingerprint


def test_a_state_dict_hashes_as_latent_caches_made_before_recorded_it():
    """Latent caches on disk record the VAE's fingerprint: the helper keeps that exact value."""
    torch.manual_seed(0)
    state = {"b.weight": torch.randn(3, 2), "a.bias": torch.randn(4).bfloat16(), "n": torch.tensor(7)}
    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    assert weights_fingerprint(state) == h.hexdigest() and len(h.hexdigest()) == 16
    assert weights_fingerprint(dict(reversed(state.items()))) == h.hexdigest()  # order of the dict: no
    changed = {**state, "b.weight": state["b.weight"] + 1e-3}
    assert weights_fingerprint(changed) != h.hexdigest()


def test_a_directory_is_named_by_its_weights_not_its_path(tmp_path):
    model = tmp_path / "model"
    (model / "vae").mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(model / "model.safetensors"))
    save_file({"w": torch.zeros(2)}, str(model / "vae" / "diffusion_pytorch_model.safetensors"))
    first = weights_fingerprint(model)
    shutil.copytree(model, tmp_path / "elsewhere")
    assert weights_fingerprint(tmp_path / "elsewhere") == first
    save_file({"w": torch.full((2,), 2.0)}, str(model / "vae" / "diffusion_pytorch_model.safetensors"))
    assert weights_fingerprint(model) != first  # the VAE's weights count too
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        weights_fingerprint(tmp_path / "empty_dir_that_does_not_exist")
