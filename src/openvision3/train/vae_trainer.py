"""``ov3 train-vae``: train a small diffusers ``AutoencoderKL`` to fill the frozen-VAE slot.

Where the FLUX VAE is unavailable (the offline CPU demo) or a domain VAE is wanted, this trains
one on any data spec with L1 + KL (+ MSE, + LPIPS, + an optional PatchGAN, off by default) and
saves it in diffusers format, so ``model.vae.source=<out>/model`` loads it through ``FrozenVAE``.
Its settings are ``VAETrainConfig`` (train/vae_config.py): a VAE run shares only the data section
with an OV3 run. ``AutoencoderTask`` is the step (with the GAN on, the discriminator's update
first); the rest is the run engine's (train/run.py), as for ``ov3 train``.

Run directory: the engine's files, ``model/`` (the final VAE, diffusers format, with a measured
``scaling_factor``), ``results.json``, ``recon.png``.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch

from ..config import ConfigError, DataConfig, config_to_yaml
from ..eval.reconstruction import psnr_ssim
from ..losses import autoencoder_losses, hinge_discriminator_loss, hinge_generator_loss
from ..models.autoencoder import Autoencode, PatchDiscriminator
from ..models.vae import build_autoencoder
from .optim import LRSchedule
from .run import Parts, Run, RunSettings, Task, forward_context, run_task
from .vae_config import VAETrainConfig


@torch.no_grad()
def evaluate(vae, images: torch.Tensor, dtype: torch.dtype | None, batch_size: int = 64) -> dict:
    """Held-out reconstruction through the posterior mean (what FrozenVAE.encode uses)."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    parts = []  # per batch: PSNR, SSIM, reconstructions, latents
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        with forward_context(device, dtype, None):
            z = vae.encode(x).latent_dist.mean
            y = vae.decode(z).sample
        y = y.float().clamp(-1, 1)
        parts.append([t.cpu() for t in (*psnr_ssim(x, y), y, z.float())])
    vae.train(was_training)
    ps, ss, recons, z = map(torch.cat, zip(*parts))
    return {"psnr": ps.mean().item(), "ssim": ss.mean().item(),
            "latent_std": z.std().item(), "latent_mean": z.mean().item(), "recons": recons}


def _save_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, n: int = 8) -> None:
    """Top row originals, bottom row reconstructions."""
    from PIL import Image

    n = min(n, len(originals))
    rows = torch.cat([torch.cat(list(originals[:n]), dim=2), torch.cat(list(recons[:n]), dim=2)], dim=1)
    arr = ((rows.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


def decoder_backward_seconds(vae, latents: torch.Tensor, dtype: torch.dtype | None, repeats: int = 2) -> float:
    """Wall seconds of decode forward + backward w.r.t. the latents with the VAE's weights frozen
    (what an OV3 step pays for its pixel loss), best of ``repeats``."""
    flags = [p.requires_grad for p in vae.parameters()]
    vae.requires_grad_(False)
    best = float("inf")
    device = next(vae.parameters()).device
    for _ in range(repeats):
        z = latents.detach().to(device).requires_grad_(True)
        t = time.perf_counter()
        with forward_context(device, dtype, None):
            y = vae.decode(z).sample
        y.float().abs().mean().backward()
        best = min(best, time.perf_counter() - t)
    for p, f in zip(vae.parameters(), flags):
        p.requires_grad_(f)
    return best


def _open_images(spec: str, split: str, n: int, resolution: int, data_cfg: DataConfig) -> torch.Tensor:
    from ..data import make_loader, open_data

    ds = open_data(spec, split=split, resolution=resolution, train=False, cfg=data_cfg)
    images = list(itertools.islice((x for b in make_loader(ds, batch_size=min(64, n)) for x in b["image"]), n))
    if not images:
        raise ConfigError(f"data spec '{spec}' split '{split}' yielded no images")
    return torch.stack(images)


# ------------------------------------------------------------------------------------ the trainer
class AutoencoderTask(Task):
    name = "train-vae"

    def __init__(self, cfg: VAETrainConfig, device=None):
        self.cfg, self.device = cfg, device
        res, self.downsample = cfg.data.resolution, 2 ** (len(cfg.arch.block_out_channels) - 1)
        if res % self.downsample:
            raise ConfigError(f"data.resolution {res} is not divisible by the VAE downsample factor {self.downsample}")
        self.lr = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)

    def settings(self) -> RunSettings:
        c = self.cfg
        return RunSettings(steps=c.steps, seed=c.seed, precision=c.precision, grad_clip=c.grad_clip,
                           max_bad_steps=c.max_bad_steps, log_every=c.log_every, eval_every=c.eval_every,
                           checkpoint_every=c.checkpoint_every,
                           keep_last=max(1, c.keep_last), device=self.device, find_unused=False)

    def build(self, run: Run) -> Parts:
        from ..data import make_loader, open_data
        cfg, device = self.cfg, run.device
        self.run = run
        # Data first: a bad spec fails before any model is built.
        res = cfg.data.resolution
        ds = open_data(cfg.data.train, split="train", resolution=res, train=True, cfg=cfg.data, seed=cfg.seed,
                       rank=run.info.rank, world_size=run.info.world_size)
        self.val_images = _open_images(cfg.data.val, cfg.val_split, cfg.eval_samples, res, cfg.data)
        self.loader = iter(make_loader(ds, cfg.batch_size, num_workers=cfg.data.num_workers))
        self.vae = build_autoencoder(cfg.arch).to(device).train()
        opt = lambda: torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),  # noqa: E731
                                        weight_decay=cfg.weight_decay)
        self.lpips_net = self.disc = None
        others = {}
        if cfg.lpips_weight > 0:
            from ..perceptual import build_lpips  # lazy: LPIPS weights only when asked for
            self.lpips_net = build_lpips(cfg.lpips_net).to(device)
        if cfg.gan_weight > 0:
            self.disc = PatchDiscriminator().to(device).train()
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
            others["discriminator"] = (self.disc, self.disc_opt)
        return Parts(Autoencode(self.vae), opt, ds, others=others)

    def batch(self, step: int) -> dict:
        return {"image": next(self.loader)["image"].to(self.run.device)}

    def losses(self, batch: dict, step: int) -> dict:
        cfg, x = self.cfg, batch["image"]
        y, post = self.run.model(x)
        lpips_on = self.lpips_net is not None and step >= cfg.lpips_start * cfg.steps
        out = autoencoder_losses(x, y, post, cfg, self.lpips_net if lpips_on else None)
        if self.disc is not None and step >= cfg.gan_start * cfg.steps:
            # The discriminator's hinge update first, on this step's reconstructions; then the
            # generator's hinge term against the updated discriminator (its weights frozen for it).
            d_loss = hinge_discriminator_loss(self.disc(x), self.disc(y.detach().float()))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            self.disc.requires_grad_(False)
            out["g_loss"] = hinge_generator_loss(self.disc(y.float()))
            self.disc.requires_grad_(True)
            out["d_loss"] = d_loss.detach()
            out["loss"] = out["loss"] + cfg.gan_weight * out["g_loss"]
        return out

    def evaluate(self, step: int) -> dict:
        if step == self.cfg.steps and not self.cfg.eval_every:
            return {}  # the final evaluation follows in finish()
        ev = evaluate(self.vae, self.val_images, self.run.precision.dtype)
        return {"val_psnr": ev["psnr"], "val_ssim": ev["ssim"]}

    def finish(self, run: Run) -> dict:
        cfg, out, vae, dtype = self.cfg, run.out, self.vae, run.precision.dtype
        ev = evaluate(vae, self.val_images, dtype)
        # diffusers convention: scaling_factor = 1 / std of the latents, so FrozenVAE's latents have unit
        # scale (the FLUX / SD factors were chosen the same way).
        scaling = 1.0 / max(ev["latent_std"], 1e-6)
        vae.register_to_config(scaling_factor=scaling)
        vae.save_pretrained(str(out / "model"), safe_serialization=True)
        _save_grid(self.val_images, ev["recons"], out / "recon.png")
        z64 = vae.encode(self.val_images[:64].to(run.device)).latent_dist.mean.detach()
        results = {
            "val_psnr": round(ev["psnr"], 3), "val_ssim": round(ev["ssim"], 4),
            "val_images": len(self.val_images), "val_spec": f"{cfg.data.val} ({cfg.val_split})",
            "resolution": cfg.data.resolution, "scaling_factor": scaling, "latent_shape": list(z64.shape[1:]),
            "downsample": self.downsample,
            "parameters": sum(p.numel() for p in vae.parameters()), **run.precision.as_row(),
            "decoder_backward_s_per_64": round(decoder_backward_seconds(vae, z64, dtype), 3),
            "model_dir": str(out / "model"),
        }
        (out / "results.json").write_text(json.dumps({"steps": cfg.steps, **results}, indent=2))
        return results


def train_vae(cfg: VAETrainConfig, out_dir: str | Path, resume: str | None = None, overwrite: bool = False,
              progress: bool = True, device: str | torch.device | None = None) -> dict:
    """Train, evaluate on the held-out split, save ``out_dir/model`` (diffusers); returns the
    engine's summary (``status``, ``step``, ...) and, once finished, the held-out results.
    ``resume``/``overwrite``: as for ``run_task``."""
    t0 = time.perf_counter()
    task = AutoencoderTask(cfg, str(device) if device is not None else None)
    summary = run_task(task, task.settings(), out_dir, config_yaml=config_to_yaml(cfg), resume=resume,
                       overwrite=overwrite, progress=progress)
    return {**summary, "train_seconds": round(time.perf_counter() - t0, 1)}


__all__ = ["AutoencoderTask", "train_vae", "evaluate"]
