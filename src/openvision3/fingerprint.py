"""One short hash of a set of weights, for the caches that must know which model made them: the
latent cache (the frozen VAE, data/latent_cache.py) and the generator's token cache (a saved
encoder, generation/token_cache.py). It is over tensor names and fp32 values in name order, so it
depends on the weights alone, not on a path or hub id, nor on how a file lays them out.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch


def weights_fingerprint(weights: Mapping[str, torch.Tensor] | str | Path) -> str:
    """16 hex digits (blake2b) over the names and fp32 bytes of ``weights``: a state dict, or a
    directory whose every ``*.safetensors`` file (sub-folders included, e.g. a saved model's ``vae/``)
    is read, each tensor named by its file's relative path. A directory without one is an error."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(weights.items()) if isinstance(weights, Mapping) else _file_tensors(Path(weights)):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_tensors(root: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"'{root}' holds no .safetensors weights to identify the model by")
    for f in files:  # one file's tensors in memory at a time
        rel = f.relative_to(root).as_posix()
        with safe_open(str(f), framework="pt") as fh:
            for key in sorted(fh.keys()):
                yield f"{rel}/{key}", fh.get_tensor(key)


__all__ = ["weights_fingerprint"]
