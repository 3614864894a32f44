"""The bench's constants (problem sizes, components), its error type and its options."""
from __future__ import annotations

from dataclasses import dataclass, field

# The FLUX.1 VAE's shape [P]: 16 latent channels, 8x down, (128, 256, 512, 512), 2 layers per block.
FLUX_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[128,256,512,512]",
            "model.vae.layers_per_block=2", "model.vae.latent_channels=16", "model.vae.norm_num_groups=32"]
# The smallest complete model (tests, --tiny): nano-sized towers over a 2x, 4-channel inline VAE.
TINY = ["model.preset=nano", "model.encoder.width=32", "model.encoder.layers=1", "model.encoder.heads=2",
        "model.decoder.width=32", "model.decoder.layers=1", "model.decoder.heads=2",
        "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.text.context_length=16",
        "model.caption.width=32", "model.caption.layers=1", "model.caption.heads=2",
        "model.caption.context_length=16", "model.embed_dim=16", "model.vae.source=inline",
        "model.vae.latent_channels=4", "model.vae.block_out_channels=[8,16]", "model.vae.norm_num_groups=4"]
# Default problem per device: the paper's B/2 at 256 px on a GPU; on a CPU what fits in ~3 minutes
# with the FLUX-sized VAE (nano towers, 32 px, batch 8; docs/performance.md).
DEFAULTS = {"cuda": {"preset": "b2", "resolution": 256, "batch": 32, "repeats": 5},
            "cpu": {"preset": "nano", "resolution": 32, "batch": 8, "repeats": 3}}
COMPONENTS = ("vae_encode", "encoder", "latent_decoder", "vae_decode_pixel", "text_encoder",
              "caption_decoder", "contrastive", "optimizer")
SUBCOMPONENTS = {"caption_vocab_head": "caption_decoder"}  # timed on its own, already inside its parent


class BenchError(ValueError):
    """Bad bench input; one line for the user."""


@dataclass
class BenchOptions:
    config: str | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    resolution: int | None = None
    batch: int | None = None
    device: str | None = None
    precision: str = "auto"
    repeats: int | None = None
    tiny: bool = False
    ratios: bool = True
    memory: bool = True  # CPU: count a B/2 step's activation memory (bench/memory.py)
    out: str | None = None
    progress: bool = True
