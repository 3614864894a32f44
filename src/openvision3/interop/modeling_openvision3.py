"""OpenVision 3 vision tower for transformers, in one file that needs only torch, transformers and diffusers.

``save_pretrained`` (and so ``ov3 export hf``) copies this very file beside the weights and names
its two classes in ``config.json``'s ``auto_map``, so a program that has never installed openvision3
loads the tower with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)``. The openvision3
package imports the same classes (``openvision3.interop.transformers``); nothing here may import
openvision3. Importing the file registers ``openvision3_vision`` with ``AutoConfig`` / ``AutoModel``,
which is what lets ``LlavaConfig`` read a saved ``vision_config`` of this type.

Pixels in [-1, 1] -> frozen VAE (diffusers ``AutoencoderKL``, fp32, posterior mean x scaling factor)
-> unified encoder (open_clip's ViT layout over 16-channel latents, no ln_pre, fixed 2-D sin-cos
positions with a class slot) -> CLIPVisionModel-shaped outputs. It mirrors openvision3's
``FrozenVAE.encode`` and ``UnifiedEncoder`` (models/vae.py, models/encoder.py, models/vit.py) with the
same parameter names; tests/test_interop_transformers.py checks that the two give the same tokens.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "openvision3_vision"
_RANGE_LIMIT = 1.5  # inputs must be in [-1, 1]; [0, 1] passes, 0..255 fails


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
        if self.pool not in ("mean", "max"):
            raise ValueError(f"pool must be mean or max, got {self.pool!r}")


# ---------------------------------------------------------------------------------------------
# the frozen VAE


class TowerVAE(nn.Module):
    """A frozen ``AutoencoderKL`` that maps pixels to normalised posterior-mean latents, in fp32."""

    def __init__(self, config: OpenVision3VisionConfig):
        super().__init__()
        from diffusers import AutoencoderKL
        vae_config = {k: v for k, v in (config.vae_config or {}).items() if not k.startswith("_")}
        self.vae = AutoencoderKL.from_config(vae_config)
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.source, self.convention = config.vae_source, config.vae_convention
        self.scaling_factor, self.shift_factor = float(config.vae_scaling_factor), float(config.vae_shift_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: eval mode whatever the parent asks

    def _check_images(self, images: torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the VAE expects pixel_values of shape (B, 3, H, W), got {tuple(images.shape)}")
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if hi > _RANGE_LIMIT or lo < -_RANGE_LIMIT:
            raise ValueError(f"the VAE expects pixel_values in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(0..255 input? use the image processor saved with the tower)")
        h, w = images.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w} is not divisible by the VAE downsample factor {self.downsample}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f), fp32 even inside autocast."""
        self._check_images(images)
        with torch.autocast(images.device.type, enabled=False):
            mean = self.vae.encode(images.float()).latent_dist.mean.float()
        if self.convention == "shift_scale":
            return ((mean - self.shift_factor) * self.scaling_factor).contiguous()
        return (mean * self.scaling_factor).contiguous()


# ---------------------------------------------------------------------------------------------
# the unified encoder (open_clip's parameter names, those of the released towers)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that returns its input's dtype (open_clip's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm attention + GELU MLP (open_clip's block, batch first)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])


def sincos_2d(width: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions with a zero class row first, (1 + grid_h * grid_w, width); MAE's
    formula in float64 with the w grid first, as open_clip and the released towers [C]."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    gy, gx = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def one_axis(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([one_axis(gx), one_axis(gy)], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), emb], dim=0).float()


class LatentViT(nn.Module):
    """ViT over VAE latents: patch embedding, class slot, fixed positions, blocks; pooling read-out."""

    def __init__(self, config: OpenVision3VisionConfig):
        super().__init__()
        width, p = config.hidden_size, config.latent_patch_size
        self.in_channels, self.patch_size, self.width = config.latent_channels, p, width
        self.embed_dim, self.pool_type = config.projection_dim, config.pool
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(config.latent_channels, width, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.transformer = Transformer(width, config.num_hidden_layers, config.num_attention_heads, config.mlp_ratio)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.projection_dim))

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> (B, 1 + N, width): class slot first, then the patches, positions added."""
        if latents.ndim != 4 or latents.shape[1] != self.in_channels:
            raise ValueError(f"encoder expects latents (B, {self.in_channels}, h, w), got {tuple(latents.shape)}")
        h, w = latents.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {self.patch_size}")
        x = self.conv1(latents).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        pos = sincos_2d(self.width, h // self.patch_size, w // self.patch_size)
        return x + pos.to(device=x.device, dtype=x.dtype)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, width) -> contrastive embedding: mean (or max), ln_post, proj [C]."""
        pooled = tokens.amax(dim=1) if self.pool_type == "max" else tokens.mean(dim=1)
        return self.ln_post(pooled) @ self.proj


# ---------------------------------------------------------------------------------------------
# the transformers model


class OpenVision3VisionModel(PreTrainedModel):
    """Pixels in [-1, 1] -> frozen VAE -> unified encoder; CLIPVisionModel-shaped outputs.

    ``last_hidden_state`` (B, 1 + N, D); with ``output_hidden_states`` the embedding output and every
    block's output, each with the class slot first (LLaVA-1.5's ``vision_feature_layer=-2`` with the
    "default" strategy reads the penultimate block's N patch tokens). ``hidden_states[-1][:, 1:]`` are
    the unified tokens z_u; ``pooler_output`` is the contrastive image embedding."""

    config_class = OpenVision3VisionConfig
    config: OpenVision3VisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "openvision3"
    input_modalities = ("image",)
    _no_split_modules = ["ResidualAttentionBlock"]
    _supports_sdpa = True  # torch SDPA inside nn.MultiheadAttention, whatever LLaVA asks for
    _keep_in_fp32_modules = ["vae"]  # the VAE runs in fp32

    def __init__(self, config: OpenVision3VisionConfig):
        super().__init__(config)
        self.vae = TowerVAE(config)
        self.encoder = LatentViT(config)
        self.post_init()

    def _init_weights(self, module):
        # The constructors initialise every part; a checkpoint then replaces all of it, the frozen
        # VAE included. transformers' generic init would only undo that.
        pass

    def get_input_embeddings(self):
        return self.encoder.conv1

    def forward(self, pixel_values: torch.Tensor, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs) -> BaseModelOutputWithPooling:
        """``output_hidden_states``: a bool, or (as LLaVA passes it) the index or indices of the layers
        it will read; any index asks for all of them. ``output_attentions`` is not supported
        (nn.MultiheadAttention through SDPA does not return weights) and gives None."""
        # None: the config's; an int or a list of layer indices (transformers' select_hidden_states): all
        want_hidden = (self.config.output_hidden_states if output_hidden_states is None
                       else output_hidden_states is not False)
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


# save_pretrained copies this file and writes auto_map; importing it registers the model type
OpenVision3VisionConfig.register_for_auto_class()
OpenVision3VisionModel.register_for_auto_class("AutoModel")
AutoConfig.register(MODEL_TYPE, OpenVision3VisionConfig, exist_ok=True)
AutoModel.register(OpenVision3VisionConfig, OpenVision3VisionModel, exist_ok=True)

__all__ = ["OpenVision3VisionConfig", "OpenVision3VisionModel", "MODEL_TYPE"]
