"""OpenVision 3 as a transformers model: a vision tower that LLaVA uses unchanged.

    import openvision3.interop.transformers as ov3hf          # registers the Auto classes
    tower = ov3hf.vision_model_from_openvision3(OpenVision3.from_pretrained("runs/demo/model"))
    tower.save_pretrained("ov3_hf"); tower = AutoModel.from_pretrained("ov3_hf")
    llava = LlavaForConditionalGeneration(llava_config(tower.config, LlamaConfig(...)))

Pixels go in (``pixel_values`` in [-1, 1], made by :func:`build_image_processor`); the frozen VAE
sits inside the model, as in ``OpenVision3.encode_image``, and its weights travel in the same
``model.safetensors``. The output is CLIPVisionModel's: ``last_hidden_state`` (B, 1 + N, D) and,
with ``output_hidden_states``, the embedding output and every block's output, each with the
**class slot first**, so LLaVA-1.5's ``vision_feature_layer=-2`` + ``"default"`` strategy (drop
the first token) hands the language model the N patch tokens of the penultimate block [P: LLaVA
-1.5 reads CLIP's penultimate layer]. ``hidden_states[-1][:, 1:]`` are our unified tokens z_u.

``pooler_output`` is the contrastive embedding (mean or max over patch tokens, ln_post, proj), as
``OpenVision3.image_features``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModel, CLIPImageProcessor, LlavaConfig, PreTrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..config import ConfigError, TowerConfig, VAEConfig
from ..models.encoder import UnifiedEncoder
from ..models.vae import FrozenVAE

MODEL_TYPE = "openvision3_vision"
# LLaVA-1.5's reading of the tower [P: LLaVA-1.5 (Liu et al. 2023), transformers' LlavaConfig defaults]
LLAVA_FEATURE_LAYER, LLAVA_SELECT_STRATEGY = -2, "default"


class OpenVision3VisionConfig(PreTrainedConfig):
    """Architecture of the tower and of its frozen VAE (the diffusers ``AutoencoderKL`` config)."""

    model_type = MODEL_TYPE
    base_config_key = "vision_config"

    hidden_size: int = 768  # [P] B/2 width
    num_hidden_layers: int = 12  # [P]
    num_attention_heads: int = 12  # [P]
    mlp_ratio: float = 4.0  # [P] MLP 3072
    projection_dim: int = 512  # contrastive embedding (pooler_output)
    pool: str = "mean"  # [C] released towers average; "max" is the CPU demo's option
    image_size: int = 256  # [P] stage-2 resolution
    # pixels per token along a side (VAE factor x latent patch): 16 for FLUX + patch 2 [P].
    # LlavaProcessor counts image tokens with it, so it is called patch_size as in CLIP's config.
    patch_size: int = 16
    latent_patch_size: int = 2  # [P] ViT patch over VAE latents
    num_channels: int = 3
    latent_channels: int = 16  # [P] FLUX VAE
    vae_config: dict | None = None  # diffusers AutoencoderKL config (None: diffusers' defaults)
    vae_source: str = "flux-ov3"  # where the VAE came from (recorded, not loaded: weights travel here)
    vae_convention: str = "scale"  # [C] posterior mean x scaling_factor, no shift
    vae_scaling_factor: float = 0.3611  # [C] FLUX
    vae_shift_factor: float = 0.1159  # [C] FLUX (used by the "shift_scale" convention only)

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.vae_convention not in ("scale", "shift_scale"):
            raise ValueError(f"vae_convention must be scale or shift_scale, got {self.vae_convention!r}")


def _autoencoder_from_config(vae_config: dict | None):
    from diffusers import AutoencoderKL
    cfg = {k: v for k, v in (vae_config or {}).items() if not k.startswith("_")}
    return AutoencoderKL.from_config(cfg)


class OpenVision3VisionModel(PreTrainedModel):
    """Pixels in [-1, 1] -> frozen VAE -> unified encoder; CLIPVisionModel-shaped outputs."""

    config_class = OpenVision3VisionConfig
    config: OpenVision3VisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "openvision3"
    input_modalities = ("image",)
    _no_split_modules = ["ResidualAttentionBlock"]
    _supports_sdpa = True  # torch SDPA inside the blocks (models/transformer.py), whatever LLaVA asks for
    _keep_in_fp32_modules = ["vae"]  # DESIGN: the VAE runs in fp32

    def __init__(self, config: OpenVision3VisionConfig):
        super().__init__(config)
        vae_cfg = VAEConfig(source=config.vae_source, convention=config.vae_convention,
                            scaling_factor=config.vae_scaling_factor, shift_factor=config.vae_shift_factor)
        self.vae = FrozenVAE(vae_cfg, autoencoder=_autoencoder_from_config(config.vae_config))
        tower = TowerConfig(width=config.hidden_size, layers=config.num_hidden_layers,
                            heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio)
        self.encoder = UnifiedEncoder(config.latent_channels, tower, config.latent_patch_size,
                                      config.projection_dim, config.pool)
        self.post_init()

    def _init_weights(self, module):
        # The constructors initialise every part (CLIP init for the tower [C]); a checkpoint then
        # replaces all of it, the frozen VAE included. transformers' generic init would only undo that.
        pass

    def get_input_embeddings(self):
        return self.encoder.conv1

    def forward(self, pixel_values: torch.Tensor, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs) -> BaseModelOutputWithPooling:
        """``output_hidden_states``: a bool, or (as LLaVA passes it) the index or indices of the
        layers it will read; any index asks for all of them. ``output_attentions`` is not supported
        (the blocks call SDPA, which does not return weights) and gives None."""
        if isinstance(output_hidden_states, bool) or output_hidden_states is None:
            want_hidden = bool(output_hidden_states if output_hidden_states is not None
                               else self.config.output_hidden_states)
        else:  # an int or a list of layer indices (transformers' select_hidden_states)
            want_hidden = True
        if self.vae.vae.dtype != torch.float32:  # e.g. after model.to(bfloat16): the VAE stays fp32
            self.vae.float()
        latents = self.vae.encode(pixel_values.float())
        x = self.encoder.embed(latents.to(self.encoder.conv1.weight.dtype))
        hidden = [x]
        for block in self.encoder.transformer.resblocks:
            x = block(x)
            hidden.append(x)
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=self.encoder.pool(x[:, 1:]),
                                         hidden_states=tuple(hidden) if want_hidden else None)
        return out if return_dict is not False else out.to_tuple()


AutoConfig.register(MODEL_TYPE, OpenVision3VisionConfig, exist_ok=True)
AutoModel.register(OpenVision3VisionConfig, OpenVision3VisionModel, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# building the tower from our models


def _config_for(vae: FrozenVAE, encoder: UnifiedEncoder, image_size: int) -> OpenVision3VisionConfig:
    tower = encoder.transformer
    return OpenVision3VisionConfig(
        hidden_size=encoder.width, num_hidden_layers=tower.layers,
        num_attention_heads=tower.resblocks[0].attn.num_heads if tower.layers else 1,
        mlp_ratio=(tower.resblocks[0].mlp.c_fc.out_features / encoder.width) if tower.layers else 4.0,
        projection_dim=encoder.embed_dim, pool=encoder.pool_type, image_size=image_size,
        patch_size=vae.downsample * encoder.patch_size, latent_patch_size=encoder.patch_size,
        latent_channels=vae.latent_channels, vae_config=dict(vae.vae.config), vae_source=vae.source,
        vae_convention=vae.convention, vae_scaling_factor=vae.scaling_factor, vae_shift_factor=vae.shift_factor)


def vision_model_from_parts(vae: FrozenVAE, encoder: UnifiedEncoder, image_size: int) -> OpenVision3VisionModel:
    """A tower holding copies of ``vae`` and ``encoder`` (outputs identical to theirs)."""
    if vae.latent_channels != encoder.in_channels:
        raise ConfigError(f"the VAE has {vae.latent_channels} latent channels, the encoder expects "
                          f"{encoder.in_channels}")
    model = OpenVision3VisionModel(_config_for(vae, encoder, image_size))
    model.vae.vae.load_state_dict(vae.vae.state_dict())
    model.encoder.load_state_dict(encoder.state_dict())
    return model.eval()


def vision_model_from_openvision3(model) -> OpenVision3VisionModel:
    """The vision half of an ``OpenVision3`` (its VAE and unified encoder)."""
    return vision_model_from_parts(model.vae, model.encoder, model.image_size)


def vision_model_from_official(source: str, vae: str = "flux-ov3", image_size: int = 256,
                               convention: str = "scale") -> OpenVision3VisionModel:
    """A released OV3 tower (hub id, directory or weights file; ``interop/official.py``) with the
    VAE it was trained over: FLUX's, latents = posterior mean x 0.3611, no shift [C]."""
    from .official import load_official_encoder
    return vision_model_from_parts(FrozenVAE(VAEConfig(source=vae, convention=convention)),
                                   load_official_encoder(source), image_size)


def vae_latent_model(vae: FrozenVAE, image_size: int, latent_patch_size: int = 2) -> OpenVision3VisionModel:
    """The floor of the comparison: the VAE latents alone as tokens. A tower with no blocks whose
    patch embedding is the identity space-to-depth (each token = one latent_patch x latent_patch
    patch of latents, C x p x p values) and whose class slot is zero; the fixed positions are added
    as for every tower. Its only hidden state is read with ``vision_feature_layer=-1``."""
    width = vae.latent_channels * latent_patch_size ** 2
    enc = UnifiedEncoder(vae.latent_channels, TowerConfig(width=width, layers=0, heads=1), latent_patch_size,
                         embed_dim=width)
    with torch.no_grad():
        enc.conv1.weight.copy_(torch.eye(width).reshape(width, vae.latent_channels, latent_patch_size,
                                                        latent_patch_size))
        enc.class_embedding.zero_()
        enc.proj.copy_(torch.eye(width))
    return vision_model_from_parts(vae, enc, image_size)


# ---------------------------------------------------------------------------------------------
# the image processor and the LLaVA config


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


# ---------------------------------------------------------------------------------------------
# export


def is_openvision3_dir(path) -> bool:
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / "model.safetensors").is_file()


def export_hf(source: str, out_dir, vae: str = "flux-ov3", image_size: int | None = None) -> dict:
    """Write ``source`` as a transformers vision tower (``save_pretrained`` + the image processor's
    ``preprocessor_config.json`` + a model card). ``source``: a saved OpenVision3 directory, or a
    released OV3 tower (hub id, directory or weights file) together with ``vae``."""
    from ..models.card import write_card
    if is_openvision3_dir(source):
        from ..models.openvision3 import OpenVision3
        tower = vision_model_from_openvision3(OpenVision3.from_pretrained(source))
        origin = "openvision3"
        if image_size:
            tower.config.image_size = image_size
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


__all__ = ["OpenVision3VisionConfig", "OpenVision3VisionModel", "build_image_processor", "llava_config",
           "check_feature_layer", "set_llava_trainable", "vision_model_from_openvision3",
           "vision_model_from_official", "vision_model_from_parts", "vae_latent_model", "export_hf",
           "num_image_tokens", "is_openvision3_dir", "llava_processor", "llava_recipe", "LLAVA_FEATURE_LAYER",
           "LLAVA_SELECT_STRATEGY"]
