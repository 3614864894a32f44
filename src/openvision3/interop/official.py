"""Released OpenVision 3 vision towers <-> our UnifiedEncoder.

The released towers are open_clip VisionTransformers over 16-channel VAE latents [C]; our
encoder uses the same parameter names, so loading is: find the weights, strip a ``visual.``
prefix, infer the architecture from the shapes, check the fixed position table, load.

    enc = load_official_encoder("UCSC-VLAA/openvision3-vit-base-patch2-32")   # online
    enc = load_official_encoder("path/to/open_clip_model.safetensors")         # offline
    tokens = enc(latents); pooled = enc.pool(tokens)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import TowerConfig
from ..models.encoder import UnifiedEncoder
from ..models.vit import sincos_2d

WEIGHT_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                "pytorch_model.bin")
CONFIG_FILES = ("open_clip_config.json", "config.json")


class OfficialWeightsError(ValueError):
    """A weights file that is not a released OV3 vision tower (one clear line)."""


def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # weights_only: never run pickled code from a downloaded file
    import pickle
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise OfficialWeightsError(f"{path}: not a readable weights file ({str(e).splitlines()[0][:120]})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise OfficialWeightsError(f"{path}: refused: it pickles Python objects that are not tensors or plain data"
                              f"{f' ({found.group(1)})' if found else ''}, which could run code when loaded; "
                              f"nothing in it was run") from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as e:  # truncated / not a torch file
        raise OfficialWeightsError(f"{path}: not a readable weights file ({type(e).__name__})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def check_source(source: str) -> bool:
    """True if ``source`` is a local path; False if it can only be a hub id (owner/name). Raises
    FileNotFoundError, at once and before any download, for a path that is not there."""
    path = Path(source)
    if path.exists():
        return True
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) is None:
        raise FileNotFoundError(f"'{source}' is neither a file, a directory nor a hub id")
    if path.parent.is_dir():  # e.g. runs/model with a local runs/: a mistyped path, not a hub id
        raise FileNotFoundError(f"'{source}' does not exist (its parent '{path.parent}' is a local "
                                "directory, so it is not taken for a hub id)")
    return False


def _find_files(source: str) -> tuple[Path, dict]:
    """Resolve a hub id, a hub-layout directory, or a single weights file -> (weights, config)."""
    path = Path(source)
    if not check_source(source):
        from ..hub_access import snapshot  # from the cache offline
        path = snapshot(str(source), allow_patterns=["*.json", "*.safetensors", "*.bin"])
    if path.is_file():
        return path, {}
    weights = next((path / f for f in WEIGHT_FILES if (path / f).exists()), None)
    if weights is None:
        found = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        if not found:
            raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in '{path}'")
        weights = found[0]
    config = next((json.loads((path / f).read_text()) for f in CONFIG_FILES if (path / f).exists()), {})
    return weights, config


def infer_architecture(state: dict, config: dict | None = None) -> dict:
    """Architecture from tensor shapes; heads = width / head_width (64 unless the config says)."""
    for key in ("conv1.weight", "class_embedding", "proj", "ln_post.weight"):
        if key not in state:
            raise OfficialWeightsError(f"not an OV3 vision tower: key '{key}' is missing")
    width, in_channels, patch, _ = state["conv1.weight"].shape
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    if layers == 0:
        raise OfficialWeightsError("not an OV3 vision tower: no transformer.resblocks.* keys")
    vcfg = (config or {}).get("model_cfg", config or {}).get("vision_cfg", {})
    heads = vcfg.get("heads") or width // vcfg.get("head_width", 64)
    mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return {"in_channels": int(in_channels), "patch_size": int(patch), "embed_dim": int(state["proj"].shape[1]),
            "tower": TowerConfig(width=int(width), layers=layers, heads=int(heads), mlp_ratio=mlp / width)}


def encoder_from_state_dict(state: dict, config: dict | None = None) -> tuple[UnifiedEncoder, int | None]:
    """The encoder, and its native token grid side read from its saved position table (16 for the
    256 px towers, 14 for 224 px; None when the file has no table)."""
    state = dict(state)  # popped from below
    if any(k.startswith("visual.") for k in state):  # a whole CLIP checkpoint: its vision tower only
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    arch = infer_architecture(state, config)
    enc = UnifiedEncoder(arch["in_channels"], arch["tower"], arch["patch_size"], arch["embed_dim"])
    pos = state.pop("positional_embedding", None)
    grid = int(round((pos.shape[0] - 1) ** 0.5)) if pos is not None else None
    if pos is not None:  # the released table is the fixed 2-D sin-cos one with a class slot [C]
        expected = sincos_2d(arch["tower"].width, grid, grid, cls_token=True)
        if pos.shape != expected.shape or (pos.float() - expected).abs().max() > 1e-4:
            raise OfficialWeightsError("positional_embedding is not the fixed 2-D sin-cos table this encoder "
                                  "recomputes; a learned-position tower is not supported")
    expected_keys = set(enc.state_dict())
    missing, unexpected = sorted(expected_keys - set(state)), sorted(set(state) - expected_keys)
    if missing or unexpected:
        raise OfficialWeightsError(f"weights do not match an OV3 vision tower: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    enc.load_state_dict({k: v.float() for k, v in state.items()})
    return enc.eval(), grid


def load_official_encoder(source: str) -> UnifiedEncoder:
    """A released OV3 vision tower as our encoder: hub id (online), hub-layout dir, or weights file."""
    return load_official_tower(source)[0]


def load_official_tower(source: str) -> tuple[UnifiedEncoder, int | None]:
    """``load_official_encoder`` plus the tower's native token grid side (``encoder_from_state_dict``)."""
    weights, config = _find_files(str(source))
    return encoder_from_state_dict(_read_weights(weights), config)


def export_official_state_dict(encoder: UnifiedEncoder, grid: int, prefix: str = "") -> dict:
    """Our encoder in the released layout (with its ``positional_embedding`` for a ``grid`` x ``grid``
    token grid, e.g. 16 at 256 px), loadable by open_clip's VisionTransformer."""
    state = {prefix + k: v.detach().clone() for k, v in encoder.state_dict().items()}
    state[prefix + "positional_embedding"] = sincos_2d(encoder.width, grid, grid, cls_token=True)
    return state
