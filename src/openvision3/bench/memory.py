"""Activation memory of one training step, counted rather than measured (docs/performance.md):
the distinct storages autograd saves for backward, parameters excluded, seen by a saved-tensor hook.
It does not depend on the allocator, so a CPU can count it for a GPU user. Counted in fp32: a bf16
step needs between half of this and all of it (autocast stores matmul and conv outputs in 2 bytes).
"""
from __future__ import annotations

import torch

from .options import FLUX_VAE, TINY


def saved_activation_bytes(model, images, tokens, latents) -> dict:
    """Bytes autograd keeps from one training forward, split into the frozen VAE's decoder (the
    pixel losses need its backward) and the rest (the four towers and every loss)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict = {}
    where = {"part": "towers_and_losses"}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), (where["part"], storage.nbytes()))
        return t

    decoder = model.vae.vae.decoder  # the VAE encoder is skipped: latents are given
    hooks = [decoder.register_forward_pre_hook(lambda *_: where.update(part="vae_decoder")),
             decoder.register_forward_hook(lambda *_: where.update(part="towers_and_losses"))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(images, tokens, latents=latents)
    finally:
        for h in hooks:
            h.remove()
    parts = {"towers_and_losses": 0, "vae_decoder": 0}
    for part, nbytes in seen.values():
        parts[part] += nbytes
    return {**parts, "total": sum(parts.values())}


def activation_memory(tiny: bool = False) -> dict:
    """GiB of saved activations per image of a B/2 training step (FLUX-shaped VAE, the B/2
    stage-1 losses) at 128 and 256 px, with and without gradient checkpointing. ``tiny``: the
    smallest model at 16 and 32 px instead (tests)."""
    from ..config import get_config
    from ..models.openvision3 import OpenVision3
    from ..train.distributed import enable_grad_checkpointing
    base, resolutions = (TINY, (16, 32)) if tiny else (["model.preset=b2", *FLUX_VAE], (128, 256))
    out = {"model": "tiny" if tiny else "b2, FLUX-shaped VAE", "precision": "fp32", "images": 1,
           "method": "saved-tensor hooks: distinct storages autograd keeps for backward, parameters excluded",
           "per_image_gib": {}}
    for res in resolutions:
        cfg = get_config(None, base + [f"data.resolution={res}", f"model.image_size={res}", "train.precision=fp32"])
        row = {}
        for checkpointing in (False, True):
            torch.manual_seed(0)
            model = OpenVision3(cfg).train()
            if checkpointing:
                enable_grad_checkpointing(model)
            images = torch.rand(1, 3, res, res) * 2 - 1
            tokens = model.tokenizer(["a red circle left of a blue square"])
            latents = model.vae.encode(images)  # no grad: the VAE is frozen
            counted = saved_activation_bytes(model, images, tokens, latents)
            row["grad_checkpointing" if checkpointing else "plain"] = {k: v / 2**30 for k, v in counted.items()}
        out["per_image_gib"][str(res)] = row
    return out
