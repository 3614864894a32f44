"""Every OpenVision 3 training loss in one place (modelled on open_clip's loss.py).

    L_rec = L1(x, x_hat) + beta * L1(z_vae, z_hat_vae) + lambda * LPIPS(x, x_hat)   [S]
    L_und = caption_weight * L_caption + alpha * L_contrastive                      [S]
    L     = w_rec * L_rec + w_und * L_und                                            [S] (2:1 is [P])

beta 0.4, lambda 0 (stage 1) / 0.5 (stage 2), alpha 1, w_rec 0.5, w_und 1.0 -- all [S], from
LossConfig. All terms are computed in fp32, outside any autocast region. A branch whose weight
is 0 is never computed; ``combine`` reports its terms as 0 so logs keep their columns. With
``probe_detached`` (the synergy ablation's option) such a branch is computed on detached unified
tokens instead, and ``combine`` adds its loss with weight 1: it trains only its own parameters.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from .config import LossConfig

REC_TERMS = ("loss_pixel", "loss_latent", "loss_lpips", "loss_rec")
UND_TERMS = ("loss_contrastive", "loss_caption", "loss_und")


def _fp32(device: torch.device):
    return torch.autocast(device.type, enabled=False)


class OpenVision3Loss(nn.Module):
    def __init__(self, cfg: LossConfig | None = None):
        super().__init__()
        self.cfg = cfg or LossConfig()
        # One open_clip ClipLoss per (rank, world size), made on first use; kept out of the module
        # tree like LPIPS (it has no weights). LPIPS is built on first use with a weight > 0
        # (stage 2): checkpoints do not carry it, and a parent's .train() cannot switch on its dropout.
        object.__setattr__(self, "_clip_losses", {})
        object.__setattr__(self, "lpips", None)

    @property
    def clip_loss(self) -> ClipLoss:
        """Softmax CLIP loss over the global batch: with world size > 1 the features are gathered
        from every rank, with gradients (open_clip's own gather), and each rank scores its images
        against every rank's captions. Rank and world size are read at each call, so the model's own
        loss is right under DDP/FSDP."""
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if (rank, world) not in self._clip_losses:
            self._clip_losses[(rank, world)] = ClipLoss(local_loss=False, gather_with_grad=True,
                                                        cache_labels=True, rank=rank, world_size=world)
        return self._clip_losses[(rank, world)]

    @property
    def rec_enabled(self) -> bool:
        return self.cfg.w_rec > 0

    @property
    def und_enabled(self) -> bool:
        return self.cfg.w_und > 0

    @property
    def rec_probed(self) -> bool:
        """The reconstruction branch is off (w_rec = 0) but trained on detached tokens."""
        return self.cfg.probe_detached and not self.rec_enabled

    @property
    def und_probed(self) -> bool:
        """The understanding branch is off (w_und = 0) but trained on detached tokens."""
        return self.cfg.probe_detached and not self.und_enabled

    def _lpips(self, device: torch.device):
        if self.lpips is None:
            from .perceptual import build_lpips

            object.__setattr__(self, "lpips", build_lpips(self.cfg.lpips_net))
        if next(self.lpips.parameters()).device != device:
            self.lpips.to(device)
        return self.lpips

    def reconstruction(self, images, recon, latents, pred_latents, lpips_weight: float | None = None) -> dict:
        """images, recon: (B,3,H,W) in [-1,1]; latents (VAE target), pred_latents: (B,C,h,w).

        With ``cfg.pixel_subbatch`` N > 0 (our CPU option [?]) the pixel and LPIPS terms use the
        first N images only; ``recon`` may then be the decode of just those N (the costly part).
        ``lpips_weight`` overrides ``cfg.lpips_weight`` (training stages change lambda).
        """
        cfg = self.cfg
        lam = cfg.lpips_weight if lpips_weight is None else float(lpips_weight)
        n = cfg.pixel_subbatch
        if n > 0:
            images, recon = images[:n], recon[:n]
        if recon.shape != images.shape:
            raise ValueError(f"recon {tuple(recon.shape)} does not match images {tuple(images.shape)}")
        with _fp32(images.device):
            images, recon = images.float(), recon.float()
            loss_pixel = F.l1_loss(recon, images)
            loss_latent = F.l1_loss(pred_latents.float(), latents.float())
            if lam > 0:
                loss_lpips = self._lpips(images.device)(recon, images, normalize=False).mean()
            else:  # stage 1: skipped entirely, reported as 0
                loss_lpips = images.new_zeros(())
            loss_rec = loss_pixel + cfg.beta_latent * loss_latent + lam * loss_lpips
        return {"loss_pixel": loss_pixel, "loss_latent": loss_latent,
                "loss_lpips": loss_lpips, "loss_rec": loss_rec}

    def understanding(self, image_features, text_features, logit_scale, caption_logits,
                      caption_targets, pad_id: int = 0) -> dict:
        """image/text features (B,E), L2-normalised here; ``logit_scale`` is the multiplier, i.e.
        exp of the learnable log-scale (init 1/0.07 [P]); caption_logits (B,T,V) or (M,V) are aligned with
        caption_targets (B,T) or (M,) (already shifted), and ``pad_id`` targets are ignored.
        A term whose weight is 0 may be given None inputs and is then reported as 0."""
        cfg = self.cfg
        device = (image_features if image_features is not None else caption_logits).device
        zero = torch.zeros((), device=device)
        with _fp32(device):
            loss_con = zero
            if cfg.alpha_contrastive > 0:
                if image_features is None or text_features is None:
                    raise ValueError("alpha_contrastive > 0 but no image/text features were given")
                img = F.normalize(image_features.float(), dim=-1)
                txt = F.normalize(text_features.float(), dim=-1)
                scale = torch.as_tensor(logit_scale, device=device).float()
                loss_con = self.clip_loss(img, txt, scale)
            loss_cap = zero
            if cfg.caption_weight > 0:
                if caption_logits is None or caption_targets is None:
                    raise ValueError("caption_weight > 0 but no caption logits/targets were given")
                logits = caption_logits.float().reshape(-1, caption_logits.shape[-1])
                targets = caption_targets.reshape(-1).long()
                if (targets != pad_id).any():
                    loss_cap = F.cross_entropy(logits, targets, ignore_index=pad_id)
                else:  # all padding: 0, but still connected to the graph
                    loss_cap = logits.sum() * 0.0
            loss_und = cfg.caption_weight * loss_cap + cfg.alpha_contrastive * loss_con
        return {"loss_contrastive": loss_con, "loss_caption": loss_cap, "loss_und": loss_und}

    def combine(self, terms: dict) -> dict:
        """Add ``loss`` = w_rec * loss_rec + w_und * loss_und over the enabled branches, plus the
        loss of a probed branch (weight 0, ``probe_detached``) with weight 1, and fill the columns
        of a skipped branch with 0."""
        if not (self.rec_enabled or self.und_enabled):
            raise ValueError("loss.w_rec and loss.w_und are both 0: there is nothing to train")
        out = dict(terms)
        device = next((v.device for v in terms.values() if torch.is_tensor(v)), torch.device("cpu"))
        for name in REC_TERMS + UND_TERMS:
            out.setdefault(name, torch.zeros((), device=device))
        loss = torch.zeros((), device=device)
        # A probed branch saw detached tokens, so its loss trains its own parameters only; weight 1 [?]
        # (Adam makes the scale nearly irrelevant; it only enters the shared grad-norm clip).
        branches = (("loss_rec", self.cfg.w_rec, self.rec_probed, "reconstruction is enabled (w_rec > 0)"),
                    ("loss_und", self.cfg.w_und, self.und_probed, "understanding is enabled (w_und > 0)"))
        for name, weight, probed, enabled in branches:
            if weight > 0 or probed:
                if name not in terms:
                    why = enabled if weight > 0 else "loss.probe_detached is set"
                    raise ValueError(f"{why} but no {name} was computed")
                loss = loss + (weight * terms[name] if weight > 0 else terms[name])
        out["loss"] = loss
        return out


# ------------------------------------------------------------------------------------ the VAE slot
def autoencoder_losses(x: torch.Tensor, y: torch.Tensor, posterior, cfg, lpips_net=None) -> dict:
    """``ov3 train-vae``'s terms for images ``x`` and reconstructions ``y`` (fp32): L1, KL (summed
    over latent elements, averaged over the batch), and, when their weights are > 0, MSE and LPIPS;
    ``loss`` weighs them by ``cfg`` (VAETrainConfig). MSE weighs the large errors of small objects
    more than L1 does (PSNR is an MSE metric); the KL is a regulariser, not a bottleneck."""
    y = y.float()
    out = {"l1": (y - x).abs().mean(), "kl": posterior.kl().float().mean()}
    loss = cfg.l1_weight * out["l1"] + cfg.kl_weight * out["kl"]
    if cfg.mse_weight > 0:
        out["mse"] = F.mse_loss(y, x)
        loss = loss + cfg.mse_weight * out["mse"]
    if lpips_net is not None:
        out["lpips"] = lpips_net(y, x).float().mean()
        loss = loss + cfg.lpips_weight * out["lpips"]
    return {"loss": loss, **out}


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """PatchGAN hinge loss of the discriminator (taming / VQGAN)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


__all__ = ["OpenVision3Loss", "REC_TERMS", "UND_TERMS", "autoencoder_losses", "hinge_discriminator_loss",
           "hinge_generator_loss"]
