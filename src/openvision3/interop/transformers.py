"""OpenVision 3 as a transformers model: a vision tower that LLaVA uses unchanged (docs/llava.md).

    import openvision3.interop.transformers as ov3hf          # registers the Auto classes
    tower = ov3hf.vision_model_from_openvision3(OpenVision3.from_pretrained("runs/demo/model"))
    tower.save_pretrained("ov3_hf"); tower = AutoModel.from_pretrained("ov3_hf")
    llava = LlavaForConditionalGeneration(llava_config(tower.config, LlamaConfig(...)))

The tower's config and model classes live in ``modeling_openvision3.py``, the self-contained file
that ``save_pretrained`` copies beside the weights, so an exported tower also loads where
openvision3 is not installed (``trust_remote_code=True``). This module builds towers from our
models and holds the LLaVA pieces: pixels in [-1, 1] (:func:`build_image_processor`), hidden
states with the class slot first, read by LLaVA-1.5 at ``vision_feature_layer=-2`` with the
``"default"`` strategy (drop the class slot) [P: LLaVA-1.5 reads CLIP's penultimate layer].
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, LlavaConfig

from ..config import ConfigError, TowerConfig, VAEConfig
from ..models.encoder import UnifiedEncoder
from ..models.vae import FrozenVAE
# the tower's classes live in the file that travels with exported weights; importing it registers them
from .modeling_openvision3 import MODEL_TYPE, OpenVision3VisionConfig, OpenVision3VisionModel

# LLaVA-1.5's reading of the tower [P: LLaVA-1.5 (Liu et al. 2023), transformers' LlavaConfig defaults]
LLAVA_FEATURE_LAYER, LLAVA_SELECT_STRATEGY = -2, "default"


def vision_model_from_parts(vae: FrozenVAE, encoder: UnifiedEncoder, image_size: int) -> OpenVision3VisionModel:
    """A tower holding copies of ``vae`` and ``encoder`` (outputs identical to theirs)."""
    if vae.latent_channels != encoder.in_channels:
        raise ConfigError(f"the VAE has {vae.latent_channels} latent channels, the encoder expects "
                          f"{encoder.in_channels}")
    tower = encoder.transformer
    model = OpenVision3VisionModel(OpenVision3VisionConfig(
        hidden_size=encoder.width, num_hidden_layers=tower.layers,
        num_attention_heads=tower.resblocks[0].attn.num_heads if tower.layers else 1,
        mlp_ratio=(tower.resblocks[0].mlp.c_fc.out_features / encoder.width) if tower.layers else 4.0,
        projection_dim=encoder.embed_dim, pool=encoder.pool_type, image_size=image_size,
        patch_size=vae.downsample * encoder.patch_size, latent_patch_size=encoder.patch_size,
        latent_channels=vae.latent_channels, vae_config=dict(vae.vae.config), vae_source=vae.source,
        vae_convention=vae.convention, vae_scaling_factor=vae.scaling_factor, vae_shift_factor=vae.shift_factor))
    model.vae.vae.load_state_dict(vae.vae.state_dict())
    model.encoder.load_state_dict(encoder.state_dict())
    return model.eval()


def vision_model_from_openvision3(model) -> OpenVision3VisionModel:
    return vision_model_from_parts(model.vae, model.encoder, model.image_size)


def vision_model_from_official(source: str, vae: str = "flux-ov3", image_size: int = 256,
                               convention: str = "scale") -> OpenVision3VisionModel:
    """A released OV3 tower (hub id, directory or weights file; ``interop/official.py``) with the
    VAE it was trained over: FLUX's, latents = posterior mean x 0.3611, no shift [C]."""
    from .official import load_official_encoder
    return vision_model_from_parts(FrozenVAE(VAEConfig(source=vae, convention=convention)),
                                   load_official_encoder(source), image_size)


def vae_latent_model(vae, image_size: int, latent_patch_size: int = 2) -> OpenVision3VisionModel:
    """The floor of the comparison: the VAE latents alone as tokens (``vae``: a FrozenVAE, or the
    ``.vae`` of a loaded tower). A tower with no blocks whose patch embedding is the identity
    space-to-depth (each token = one latent_patch x latent_patch patch of latents, C x p x p values)
    and whose class slot is zero; the fixed positions are added as for every tower. Its only hidden
    state is read with ``vision_feature_layer=-1``."""
    width = vae.latent_channels * latent_patch_size ** 2
    enc = UnifiedEncoder(vae.latent_channels, TowerConfig(width=width, layers=0, heads=1), latent_patch_size,
                         embed_dim=width)
    with torch.no_grad():
        enc.conv1.weight.copy_(torch.eye(width).reshape(width, vae.latent_channels, latent_patch_size,
                                                        latent_patch_size))
        enc.class_embedding.zero_()
        enc.proj.copy_(torch.eye(width))
    return vision_model_from_parts(vae, enc, image_size)


def build_image_processor(image_size: int) -> CLIPImageProcessor:
    """``pixel_values`` as our eval transform makes them: short side resized to ``image_size``
    (bilinear, antialiased), centre crop, [0, 255] -> [-1, 1] (mean = std = 0.5). A stock
    CLIPImageProcessor, so ``AutoImageProcessor`` and ``LlavaProcessor`` load it without our code."""
    from transformers.image_utils import PILImageResampling
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                              "width": image_size}, do_resize=True, do_center_crop=True, do_rescale=True,
                              rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3,
                              image_std=[0.5] * 3, resample=PILImageResampling.BILINEAR, do_convert_rgb=True)


def num_image_tokens(config: OpenVision3VisionConfig, select_strategy: str = LLAVA_SELECT_STRATEGY) -> int:
    """Image tokens LLaVA places in the prompt: the patch grid (+ the class slot with "full")."""
    side = config.image_size // config.patch_size
    return side * side + (1 if select_strategy == "full" else 0)


def check_feature_layer(config: OpenVision3VisionConfig, layer) -> None:
    """One clear line when ``vision_feature_layer`` (an int or a list) does not name a hidden state
    (there are num_hidden_layers + 1: the embedding output, then each block)."""
    n = config.num_hidden_layers + 1
    for i in ([layer] if isinstance(layer, int) else list(layer)):
        if not -n <= i < n:
            raise ConfigError(f"vision_feature_layer {i} is out of range: this tower has {n} hidden states "
                              f"(valid {-n}..{n - 1}; LLaVA-1.5 reads -2, the penultimate block)")


def llava_config(vision_config: OpenVision3VisionConfig, text_config, image_token_id: int,
                 vision_feature_layer=LLAVA_FEATURE_LAYER,
                 vision_feature_select_strategy: str = LLAVA_SELECT_STRATEGY, **kwargs) -> LlavaConfig:
    """``LlavaConfig`` for our tower under ``text_config`` (any causal LM's config), the feature layer
    checked first. The projector is LLaVA-1.5's MLP, Linear-GELU-Linear [P: LLaVA-1.5 mlp2x_gelu]."""
    check_feature_layer(vision_config, vision_feature_layer)
    return LlavaConfig(vision_config=copy.deepcopy(vision_config), text_config=text_config,
                       image_token_id=image_token_id, vision_feature_layer=vision_feature_layer,
                       vision_feature_select_strategy=vision_feature_select_strategy,
                       image_seq_length=num_image_tokens(vision_config, vision_feature_select_strategy),
                       projector_hidden_act="gelu", **kwargs)


def set_llava_trainable(model, stage: int) -> list[str]:
    """LLaVA-1.5's trainable parts [P: LLaVA-1.5]: stage 1 (feature alignment) the projector only;
    stage 2 (visual instruction tuning) projector + language model; the vision tower never.
    Returns the names of the trainable parameters."""
    if stage not in (1, 2):
        raise ValueError(f"LLaVA-1.5 has stages 1 and 2, not {stage}")
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if stage == 2:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def export_hf(source: str, out_dir, vae: str = "flux-ov3", image_size: int | None = None) -> dict:
    """Write ``source`` as a transformers vision tower: ``save_pretrained`` (weights, ``config.json``
    with ``auto_map``, ``modeling_openvision3.py``) + the image processor's ``preprocessor_config.json``
    + a model card. ``source``: a saved OpenVision3 directory, or a released OV3 tower (hub id,
    directory or weights file) together with ``vae``."""
    from ..models.card import write_card
    from ..models.openvision3 import OpenVision3, is_saved_model
    if is_saved_model(source):
        model = OpenVision3.from_pretrained(source)
        tower = vision_model_from_parts(model.vae, model.encoder, image_size or model.image_size)
        origin = "openvision3"
    else:
        tower = vision_model_from_official(source, vae=vae, image_size=image_size or 256)
        origin = "released"
    out = Path(out_dir)
    tower.save_pretrained(out)
    build_image_processor(tower.config.image_size).save_pretrained(out)
    write_card(out, kind="transformers", info={"source": str(source), "origin": origin,
                                                "config": tower.config.to_dict()})
    n = sum(p.numel() for p in tower.encoder.parameters())
    return {"out": str(out), "origin": origin, "image_size": tower.config.image_size,
            "hidden_size": tower.config.hidden_size, "layers": tower.config.num_hidden_layers,
            "image_tokens": num_image_tokens(tower.config), "encoder_parameters": n,
            "vae_parameters": sum(p.numel() for p in tower.vae.parameters())}


def llava_recipe(name_or_yaml: str) -> dict:
    """A LLaVA training recipe (``configs/llava*.yaml``, read by docs/llava.md) as a dict, with the
    keys a GPU run needs checked: the tower's feature layer and strategy, and each stage's schedule."""
    from ..config import load_values
    r = load_values(name_or_yaml)
    tower = r.get("vision_tower") or {}
    for key in ("source", "vision_feature_layer", "vision_feature_select_strategy"):
        if key not in tower:
            raise ConfigError(f"LLaVA recipe '{name_or_yaml}': vision_tower.{key} is missing")
    for i, stage in enumerate(r.get("stages") or []):
        missing = [k for k in ("data", "trainable", "epochs", "global_batch_size", "learning_rate") if k not in stage]
        if missing:
            raise ConfigError(f"LLaVA recipe '{name_or_yaml}': stage {i} lacks {', '.join(missing)}")
    if not r.get("stages"):
        raise ConfigError(f"LLaVA recipe '{name_or_yaml}': no stages")
    return r


def llava_processor(vision_config: OpenVision3VisionConfig, tokenizer,
                    select_strategy: str = LLAVA_SELECT_STRATEGY, image_token: str = "<image>"):
    """``LlavaProcessor`` for our tower: our image processor, and the image-token count LLaVA expects
    (pixels per token = ``patch_size``; +1 for the class slot, which "default" then drops)."""
    from transformers import LlavaProcessor
    return LlavaProcessor(image_processor=build_image_processor(vision_config.image_size), tokenizer=tokenizer,
                          patch_size=vision_config.patch_size, vision_feature_select_strategy=select_strategy,
                          image_token=image_token, num_additional_image_tokens=1)


__all__ = ["OpenVision3VisionConfig", "OpenVision3VisionModel", "MODEL_TYPE", "build_image_processor",
           "llava_config", "check_feature_layer", "set_llava_trainable", "vision_model_from_openvision3",
           "vision_model_from_official", "vision_model_from_parts", "vae_latent_model", "export_hf",
           "num_image_tokens", "llava_processor", "llava_recipe", "LLAVA_FEATURE_LAYER",
           "LLAVA_SELECT_STRATEGY"]
