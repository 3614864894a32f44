"""OpenVision3: frozen VAE -> unified encoder -> {latent decoder, text encoder, caption decoder}.

    image x [-1,1] -> FrozenVAE.encode -> z_vae -> UnifiedEncoder -> z_u (B, N, D)
      reconstruction: z_u (+noise) -> LatentDecoder -> z^_vae -> FrozenVAE.decode -> x^
      understanding:  pool(z_u) <-contrastive-> TextEncoder(caption);  z_u -> CaptionDecoder
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import Config, config_to_dict, config_to_yaml, load_config_file
from ..data.tokenizer import build_tokenizer
from ..data.tokenizer import vocab_size as text_vocab_size
from ..losses import OpenVision3Loss
from .decoder import LatentDecoder
from .encoder import UnifiedEncoder
from .text import CaptionDecoder, TextEncoder
from .vae import FrozenVAE

WEIGHTS_NAME, CONFIG_NAME, VAE_DIRNAME = "model.safetensors", "config.yaml", "vae"


def is_saved_model(directory) -> bool:
    """Whether ``directory`` holds a model written by ``OpenVision3.save_pretrained`` (its weights
    and its config; the VAE may be a hub id, so ``vae/`` is not required)."""
    d = Path(directory)
    return (d / WEIGHTS_NAME).is_file() and (d / CONFIG_NAME).is_file()


def build_towers(m, latent_channels: int) -> dict:
    """The four towers of ``m`` (a ModelConfig) over a VAE with ``latent_channels``, built in the
    order their initialisation draws from the RNG (a seed gives the same weights)."""
    vocab = text_vocab_size(m)
    return {"encoder": UnifiedEncoder(latent_channels, m.encoder, m.patch_size, m.embed_dim, m.pool),
            "decoder": LatentDecoder(m.encoder.width, m.decoder, latent_channels, m.patch_size, m.noise_tau),
            "text_encoder": TextEncoder(m.text, vocab, m.embed_dim),
            "caption_decoder": CaptionDecoder(m.encoder.width, m.caption, vocab, m.caption_keep_ratio)}


# Submodules that are not trained and not part of the saved weights.
_NOT_SAVED = ("vae.", "loss_fn.")


class OpenVision3(nn.Module):
    def __init__(self, cfg: Config | None = None):
        super().__init__()
        self.cfg = cfg = copy.deepcopy(cfg) if cfg is not None else Config()
        m = cfg.model
        self.vae = FrozenVAE(m.vae)
        for name, tower in build_towers(m, self.vae.latent_channels).items():
            setattr(self, name, tower)  # encoder, decoder, text_encoder, caption_decoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(m.logit_scale_init)))  # [P] init 1/0.07
        self.loss_fn = OpenVision3Loss(cfg.loss)

    @property
    def image_size(self) -> int:
        return self.cfg.model.image_size

    @property
    def downsample(self) -> int:
        """Pixels per unified token along one side (VAE factor x patch size; 16 for FLUX + patch 2)."""
        return self.vae.downsample * self.cfg.model.patch_size

    def token_grid(self, resolution: int | None = None) -> tuple[int, int]:
        side = (resolution or self.image_size) // self.downsample
        return side, side

    @functools.cached_property
    def tokenizer(self):
        """``model.tokenizer(list_of_str) -> LongTensor`` (``model.tokenizer``: open_clip BPE or a
        closed word list), long enough for both text towers."""
        return build_tokenizer(self.cfg.model)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def _as_tokens(self, tokens):
        if isinstance(tokens, (list, tuple)):
            tokens = self.tokenizer(list(tokens))
        return tokens.to(self.logit_scale.device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> unified tokens (B, N, D)."""
        return self.encoder(self.vae.encode(images))

    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder.pool(tokens)

    def encode_text(self, tokens) -> torch.Tensor:
        """Token ids (B, T) or a list of strings -> text features (B, embed_dim)."""
        return self.text_encoder(self._as_tokens(tokens))

    def forward(self, images: torch.Tensor, tokens=None, lpips_weight: float | None = None,
                latents: torch.Tensor | None = None, unified: torch.Tensor | None = None) -> dict:
        """Every loss term and the total ``loss``. ``tokens``: ids (B, T) or captions (list of str).
        A branch whose weight is 0 is not computed at all, unless ``loss.probe_detached``: then it
        runs on detached unified tokens, so it trains its own parameters and never the encoder."""
        lf, lc = self.loss_fn, self.cfg.loss
        # ``latents``: the VAE latents of ``images`` when already known (a latent cache, MAR's
        # idea: data/latent_cache.py); the VAE encoder is then skipped.
        latents = self.vae.encode(images) if latents is None else latents.float()
        # ``unified``: the tokens of a frozen encoder, computed once (a token cache, recipes/complete.py);
        # the encoder is then skipped, so it must be the one that made them, and frozen.
        z_u = self.encoder(latents) if unified is None else unified.float()
        terms: dict = {}
        if lf.rec_enabled or lf.rec_probed:
            m = lc.rec_subbatch if 0 < lc.rec_subbatch < images.shape[0] else images.shape[0]
            z_rec = (z_u.detach() if lf.rec_probed else z_u)[:m]  # latent decoder sub-batch: CPU option [?]
            pred_latents = self.decoder(z_rec)
            n = lc.pixel_subbatch if 0 < lc.pixel_subbatch < m else m
            recon = self.vae.decode(pred_latents[:n])  # pixel/LPIPS sub-batch: our CPU option [?]
            terms.update(lf.reconstruction(images[:n], recon, latents[:m], pred_latents, lpips_weight=lpips_weight))
        if lf.und_enabled or lf.und_probed:
            if tokens is None:
                raise ValueError("the understanding losses need caption tokens; pass tokens= or set loss.w_und=0"
                                 + (" and loss.probe_detached=false" if lf.und_probed else ""))
            tokens = self._as_tokens(tokens)
            z_und = z_u.detach() if lf.und_probed else z_u
            image_feats = text_feats = logits = targets = None
            if lc.alpha_contrastive > 0:
                image_feats, text_feats = self.encoder.pool(z_und), self.text_encoder(tokens)
            if lc.caption_weight > 0:
                n = lc.caption_subbatch if 0 < lc.caption_subbatch < images.shape[0] else images.shape[0]
                logits, targets = self.caption_decoder(z_und[:n], tokens[:n])  # sub-batch: CPU option [?]
            terms.update(lf.understanding(image_feats, text_feats, self.logit_scale.exp(), logits, targets))
        out = lf.combine(terms)
        out["logit_scale"] = self.logit_scale.detach().exp()
        return out

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Full path, no noise (sigma = 0): images -> tokens -> latents -> images in [-1, 1]."""
        z_u = self.encode_image(images)
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            return self.vae.decode(self.decoder(z_u)).clamp(-1, 1)
        finally:
            self.decoder.train(was_training)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int = 32) -> list[str]:
        """Greedy, batched captions."""
        tok = self.tokenizer
        was_training = self.caption_decoder.training
        self.caption_decoder.eval()
        try:
            ids = self.caption_decoder.generate(self.encode_image(images), tok.sot_id, tok.eot_id, max_len)
        finally:
            self.caption_decoder.train(was_training)
        return [tok.decode(row) for row in ids.tolist()]

    def trainable_state_dict(self) -> dict:
        """Weights to save: no frozen VAE, no loss modules, and each tied tensor once
        (safetensors refuses shared storage; the tie is rebuilt by the constructor)."""
        out, seen_ids, seen_ptrs = {}, set(), set()
        for k, v in self.state_dict(keep_vars=True).items():
            # a tie is the same Parameter object; data_ptr also catches shared storage, but an
            # FSDP2 DTensor reports data_ptr 0, so it is only used when non-zero
            ptr = v.data_ptr()
            if k.startswith(_NOT_SAVED) or id(v) in seen_ids or (ptr and ptr in seen_ptrs):
                continue
            seen_ids.add(id(v))
            seen_ptrs.add(ptr)  # a 0 (FSDP2) is added but never looked up
            out[k] = v.detach()
        return out

    def save_pretrained(self, directory) -> Path:
        """``model.safetensors`` + ``config.yaml`` + a model card (``README.md``, models/card.py); a VAE
        that is not a hub id is saved under ``vae/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(self.cfg)
        if self.vae.source == "inline" or Path(self.vae.source).expanduser().exists():  # not a hub id
            self.vae.save_pretrained(directory / VAE_DIRNAME)
            cfg.model.vae.source = VAE_DIRNAME  # resolved relative to the model directory on load
        state = {k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "openvision3"})
        (directory / CONFIG_NAME).write_text(config_to_yaml(cfg))
        from .card import write_card  # README.md: Hub metadata, the VAE it needs, how to load
        write_card(directory, "openvision3", {"config": config_to_dict(cfg)})
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_hub_id, map_location="cpu") -> "OpenVision3":
        directory = Path(dir_or_hub_id)
        if not directory.exists():
            if str(dir_or_hub_id).count("/") != 1:
                raise FileNotFoundError(f"model directory '{dir_or_hub_id}' does not exist")
            from ..hub_access import snapshot  # local paths always work; hub ids from the cache offline
            directory = snapshot(str(dir_or_hub_id))
        weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        for f in (config, weights):
            if not f.exists():
                raise FileNotFoundError(f"'{directory}' is not a saved OpenVision3 model: {f.name} is missing")
        cfg = load_config_file(config)
        if cfg.model.vae.source == VAE_DIRNAME:
            cfg.model.vae.source = str(directory / VAE_DIRNAME)
        model = cls(cfg)
        model.load_weights(load_file(str(weights), device=str(map_location)))
        return model

    def load_weights(self, state: dict) -> None:
        """Load trainable weights; missing or unexpected keys give one clear error."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: {len(missing)} missing keys "
                             f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
        self.load_state_dict(state, strict=False)

