"""`ov3 info`: parameter counts per part and token grids, without loading any weights.

Towers are built on the meta device (no memory, instant) so even L/2 is described in a blink;
the VAE is described from its config (a hub VAE that is not cached offline is reported as such).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config import Config, get_config, load_config_file

RESOLUTIONS = (128, 224, 256)  # [P] the paper's token grids: 64 / 196 / 256 tokens


def _vae_info(cfg: Config) -> dict:
    """Describe the VAE. Hub VAEs are not fetched here (info must be instant and offline)."""
    from .vae import FrozenVAE
    source = cfg.model.vae.source
    if source != "inline" and not Path(source).expanduser().exists():
        return {"source": source, "available": False, "params": None, "downsample": 8,
                "latent_channels": cfg.model.vae.latent_channels,
                "error": "hub VAE, not loaded by `ov3 info`"}
    vae = FrozenVAE(cfg.model.vae)
    return {**vae.describe(), "available": True, "params": vae.describe()["parameters"]}


def model_info(preset: str | None = None, model_dir: str | None = None, config: str | None = None,
               overrides: list[str] | None = None) -> dict:
    if model_dir:
        cfg = load_config_file(Path(model_dir) / "config.yaml")
        if cfg.model.vae.source == "vae":
            cfg.model.vae.source = str(Path(model_dir) / "vae")
    else:
        extra = [f"model.preset={preset}"] if preset else []
        cfg = get_config(config, extra + list(overrides or []))
    vae = _vae_info(cfg)
    from .openvision3 import build_towers
    with torch.device("meta"):
        towers = build_towers(copy.deepcopy(cfg).model, vae["latent_channels"])
    parts = {name: sum(p.numel() for p in mod.parameters() if p.requires_grad) for name, mod in towers.items()}
    parts["logit_scale"] = 1
    trainable = sum(parts.values())
    down = vae["downsample"] * cfg.model.patch_size
    grids = {str(r): {"grid": r // down, "tokens": (r // down) ** 2} for r in RESOLUTIONS + (cfg.model.image_size,)
             if r % down == 0}
    return {"preset": cfg.model.preset, "params": {**parts, "trainable_total": trainable, "vae_frozen": vae["params"]},
            "token_dim": cfg.model.encoder.width, "embed_dim": cfg.model.embed_dim, "patch_size": cfg.model.patch_size,
            "downsample": down, "token_grids": grids, "vae": vae}


def _m(n) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.2f} M"


def format_info(info: dict) -> str:
    p = info["params"]
    lines = [f"OpenVision 3 model, preset '{info['preset']}' (token dim {info['token_dim']}, "
             f"embed dim {info['embed_dim']}, {info['downsample']}x downsampling)", "",
             "| part | parameters |", "|---|---:|"]
    lines += [f"| {name} | {_m(p[name])} |" for name in ("encoder", "decoder", "text_encoder", "caption_decoder")]
    lines += [f"| trainable total | {_m(p['trainable_total'])} |", f"| VAE (frozen) | {_m(p['vae_frozen'])} |", "",
              "| resolution | token grid | tokens |", "|---:|---:|---:|"]
    lines += [f"| {r} px | {g['grid']}x{g['grid']} | {g['tokens']} |" for r, g in info["token_grids"].items()]
    v = info["vae"]
    status = "" if v.get("available") else f" (not loaded: {v.get('error')})"
    lines += ["", f"VAE: {v['source']}, {v['latent_channels']} latent channels, {v['downsample']}x{status}"]
    return "\n".join(lines)
