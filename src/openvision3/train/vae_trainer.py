"""``ov3 train-vae``: train a small diffusers ``AutoencoderKL`` to fill the frozen-VAE slot.

Where the FLUX VAE is unavailable (the offline CPU demo) or a domain VAE is wanted, this trains
one on any data spec with L1 + KL (+ LPIPS, + an optional PatchGAN, off by default) and saves it in
diffusers format, so ``model.vae.source=<out>/model`` loads it through ``FrozenVAE``.

Its hyper-parameters live in ``VAETrainConfig`` (train/vae_config.py), not in the OV3 ``Config``
tree: a VAE run shares nothing with an OV3 run but the data section, and keeping it apart keeps
``ov3 train``'s config free of keys it never reads. YAML presets and ``key=value`` overrides use
the same typed helpers as the main config (``config._build`` / ``config.load_values``), so errors
read the same.

Run directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/step_N/`` (diffusers weights +
optimizer + position; the newest one is resumed with ``resume="auto"``), ``model/`` (the final
VAE, diffusers format, with a measured ``scaling_factor``), ``results.json``, ``recon.png``.
SIGTERM/SIGUSR1 (train/stop.py) checkpoint at the end of the current step and return
``complete=False, resumable=True`` without writing ``model/``; ``resume="auto"`` continues.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ..config import ConfigError, DataConfig
from . import checkpoint as ckpt_lib
from .precision import choose_precision, resolve_precision
from .run_lock import run_lock
from .stop import StopRequest
# the config half lives in vae_config.py; its names stay importable from here
from .vae_config import VAEArchConfig, VAETrainConfig, get_vae_config, vae_config_from_dict  # noqa: F401


# ----------------------------------------------------------------------------------------------
# model pieces


def build_autoencoder(arch: VAEArchConfig):
    from diffusers import AutoencoderKL

    n = len(arch.block_out_channels)
    if any(c % arch.norm_num_groups for c in arch.block_out_channels):
        raise ConfigError(f"arch.norm_num_groups={arch.norm_num_groups} must divide every "
                          f"arch.block_out_channels {arch.block_out_channels}")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch.block_out_channels), layers_per_block=arch.layers_per_block,
        latent_channels=arch.latent_channels, norm_num_groups=arch.norm_num_groups,
        mid_block_add_attention=arch.mid_block_attention, scaling_factor=1.0)
    with torch.no_grad():  # conv_out emits [mean; logvar]: start the log-variance at logvar_init
        conv = vae.encoder.conv_out
        conv.weight[arch.latent_channels:] = 0.0
        conv.bias[arch.latent_channels:] = arch.logvar_init
    return vae


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN (pix2pix / taming style) for the optional adversarial term."""

    def __init__(self, ch: int = 32):
        super().__init__()
        act = torch.nn.LeakyReLU(0.2)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, ch, 4, 2, 1), act,
            torch.nn.Conv2d(ch, ch * 2, 4, 2, 1), torch.nn.GroupNorm(8, ch * 2), act,
            torch.nn.Conv2d(ch * 2, ch * 4, 4, 1, 1), torch.nn.GroupNorm(8, ch * 4), act,
            torch.nn.Conv2d(ch * 4, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)


def _lr_at(step: int, cfg: VAETrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------
# metrics


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2, so MAX^2 = 4)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) on
    images mapped to [0, 1], averaged over channels and valid positions."""
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    g = torch.exp(-((torch.arange(11, dtype=torch.float32) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(x.shape[1], 1, 11, 11).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


@torch.no_grad()
def evaluate(vae, images: torch.Tensor, dtype: torch.dtype | None, batch_size: int = 64) -> dict:
    """Held-out reconstruction through the posterior mean (what FrozenVAE.encode uses)."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    ps, ss, recons, latents = [], [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z = vae.encode(x).latent_dist.mean
            y = vae.decode(z).sample
        y = y.float().clamp(-1, 1)
        ps.append(psnr(x, y).cpu())
        ss.append(ssim(x, y).cpu())
        recons.append(y.cpu())
        latents.append(z.float().cpu())
    vae.train(was_training)
    z = torch.cat(latents)
    return {"psnr": torch.cat(ps).mean().item(), "ssim": torch.cat(ss).mean().item(),
            "latent_std": z.std().item(), "latent_mean": z.mean().item(), "recons": torch.cat(recons)}


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
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = vae.decode(z).sample
        y.float().abs().mean().backward()
        best = min(best, time.perf_counter() - t)
    for p, f in zip(vae.parameters(), flags):
        p.requires_grad_(f)
    return best


# ----------------------------------------------------------------------------------------------
# checkpoints (diffusers weights + optimizer + position; only tensors and plain types are pickled)


def _list_checkpoints(root: Path) -> list[Path]:
    return ckpt_lib.list_checkpoints(root)


def _save_checkpoint(root: Path, step: int, vae, opt, state: dict, keep_last: int, disc=None,
                     disc_opt=None) -> None:
    """Atomic like the main trainer's (checkpoint.checkpoint_writer): complete or absent, and a
    disk that fills stops the run with one line while the previous checkpoint stays intact."""
    from safetensors.torch import save_file
    states = [vae.state_dict(), opt.state_dict()] + ([disc.state_dict(), disc_opt.state_dict()] if disc else [])
    with ckpt_lib.checkpoint_writer(root, step, sum(ckpt_lib.nbytes(s) for s in states)) as tmp:
        vae.save_pretrained(str(tmp / "model"), safe_serialization=True)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        if disc is not None:
            save_file(disc.state_dict(), str(tmp / "discriminator.safetensors"))
            torch.save(disc_opt.state_dict(), tmp / "discriminator_optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
    ckpt_lib.prune(root, max(1, keep_last))


def _load_checkpoint(path: Path, vae, opt, disc, disc_opt, device) -> dict:
    """Load one VAE checkpoint into the live objects; CheckpointError (one line) if it is damaged
    or holds pickled objects that are more than tensors and plain data."""
    from safetensors.torch import load_file
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "model" / "diffusion_pytorch_model.safetensors"))
        opt_state = ckpt_lib.load_plain(path / "optimizer.pt", map_location=device)
        extra = None
        if disc is not None:
            if not (path / "discriminator.safetensors").is_file():
                raise ckpt_lib.CheckpointError(f"{path}: has no discriminator but gan_weight > 0")
            extra = (load_file(str(path / "discriminator.safetensors")),
                     ckpt_lib.load_plain(path / "discriminator_optimizer.pt", map_location=device))
        vae.load_state_dict(weights)
        opt.load_state_dict(opt_state)
        if extra is not None:
            disc.load_state_dict(extra[0])
            disc_opt.load_state_dict(extra[1])
        return state
    except ckpt_lib.CheckpointError:
        raise
    except Exception as e:  # missing or truncated files surface as many exception types
        raise ckpt_lib.CheckpointError(f"{path}: damaged ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def _resume(ckpt_root: Path, resume: str, vae, opt, disc, disc_opt, device) -> dict | None:
    """``auto``: the newest loadable checkpoint (falling back past damaged or refused ones, with
    a warning), None when there is none yet; a path: that checkpoint, or an error line."""
    import warnings
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise ckpt_lib.CheckpointError(f"resume path '{path}' does not exist")
        return _load_checkpoint(path, vae, opt, disc, disc_opt, device)
    found = _list_checkpoints(ckpt_root)
    if not found:
        warnings.warn(f"--resume auto: no checkpoint in '{ckpt_root}' yet; starting from step 0")
    errors = []
    for cand in reversed(found):
        try:
            return _load_checkpoint(cand, vae, opt, disc, disc_opt, device)
        except ckpt_lib.CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"checkpoint {cand.name} is damaged or refused, falling back to the previous one ({e})")
    if errors:
        raise ckpt_lib.CheckpointError(f"every checkpoint in '{ckpt_root}' is damaged: {'; '.join(errors)}")
    return None


def _open_images(spec: str, split: str, n: int, resolution: int, data_cfg: DataConfig) -> torch.Tensor:
    from ..data import make_loader, open_data

    ds = open_data(spec, split=split, resolution=resolution, train=False, cfg=data_cfg)
    out, got = [], 0
    for batch in make_loader(ds, batch_size=min(64, n)):
        out.append(batch["image"])
        got += len(batch["image"])
        if got >= n:
            break
    if not out:
        raise ConfigError(f"data spec '{spec}' split '{split}' yielded no images")
    return torch.cat(out)[:n]


# ----------------------------------------------------------------------------------------------
# the loop


def train_vae(cfg: VAETrainConfig, out_dir: str | Path, resume: str | None = None,
              progress: bool = True, device: str | torch.device | None = None) -> dict:
    """Train, evaluate on the held-out split, save ``out_dir/model`` (diffusers). Returns results.

    ``resume``: ``"auto"`` continues from the newest ``out_dir/checkpoints/step_N`` if there is one.
    The run holds ``out_dir/.lock`` throughout: a second run into the same directory is refused.
    """
    with run_lock(out_dir):
        return _train_vae(cfg, out_dir, resume, progress, device)


def _train_vae(cfg: VAETrainConfig, out_dir: str | Path, resume: str | None = None,
               progress: bool = True, device: str | torch.device | None = None) -> dict:
    """Train, evaluate on the held-out split, save ``out_dir/model`` (diffusers). Returns results.

    ``resume``: ``"auto"`` continues from the newest ``out_dir/checkpoints/step_N`` if there is one.
    """
    from tqdm.auto import tqdm

    from ..data import make_loader, open_data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals in tiny-VAE activations cost an 8x slowdown
    precision = choose_precision(cfg.precision, device)
    dtype = precision.dtype
    print(precision.describe(), flush=True)
    torch.manual_seed(cfg.seed)
    res = cfg.data.resolution
    down = 2 ** (len(cfg.arch.block_out_channels) - 1)
    if res % down:
        raise ConfigError(f"data.resolution {res} is not divisible by the VAE downsample factor {down}")

    # Data first: a bad spec fails before any model is built.
    train_ds = open_data(cfg.data.train, split="train", resolution=res, train=True, cfg=cfg.data, seed=cfg.seed)
    val_images = _open_images(cfg.data.val, cfg.val_split, cfg.eval_samples, res, cfg.data)

    vae = build_autoencoder(cfg.arch).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    lpips_net = disc = disc_opt = None
    if cfg.lpips_weight > 0:
        from ..models.perceptual import build_lpips  # lazy: LPIPS weights only when asked for
        lpips_net = build_lpips(cfg.lpips_net).to(device)
    if cfg.gan_weight > 0:
        disc = PatchDiscriminator().to(device).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))

    step, spent, rng = 0, 0.0, None
    ckpt_root = out / "checkpoints"
    state = _resume(ckpt_root, resume, vae, opt, disc, disc_opt, device) if resume else None
    if state is not None:
        step, spent, rng = state["step"], state.get("seconds", 0.0), state.get("rng")
        train_ds.load_state_dict(state["data"])
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    if resume:  # rows a killed run wrote after its checkpoint (and a final row) are written again
        from .logging import read_metrics
        kept = [r for r in read_metrics(out / "metrics.jsonl") if r.get("step", 0) <= step and not r.get("final")]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    metrics = (out / "metrics.jsonl").open("a" if resume else "w")

    def log(row):
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    loader = make_loader(train_ds, cfg.batch_size, num_workers=cfg.data.num_workers)
    bar = tqdm(total=cfg.steps, initial=step, desc="train-vae", disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter() - spent
    ac = dict(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    first_l1 = last_l1 = None
    logged_reason = False
    stopped = None  # why the run ended before cfg.steps, if it did
    signalled = None  # SIGTERM/SIGUSR1: checkpoint at the end of the step and return, resumable
    stop = StopRequest()

    def checkpoint(at_step: int, seconds: float) -> None:
        _save_checkpoint(ckpt_root, at_step, vae, opt, {"seconds": seconds, "data": train_ds.state_dict(),
                                                        "rng": ckpt_lib.rng_state()}, cfg.keep_last, disc, disc_opt)
    for batch in loader:
        if rng is not None:  # restored after the loader's first draw, as where the saving run was
            ckpt_lib.set_rng_state(rng)
            rng = None
        if step >= cfg.steps:
            break
        if cfg.max_seconds > 0 and time.perf_counter() - t_start >= cfg.max_seconds:
            # A safety net, never a silent recipe change: the result depends on the machine's speed.
            stopped = f"max_seconds={cfg.max_seconds:g} reached at step {step} of {cfg.steps}"
            print(f"train-vae: INCOMPLETE: {stopped}; this VAE is weaker than the config's and "
                  "differs between machines", flush=True)
            break
        x = batch["image"].to(device)
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(**ac):
            post = vae.encode(x).latent_dist
            y = vae.decode(post.sample()).sample
        y = y.float()
        l1 = (y - x).abs().mean()
        kl = post.kl().float().mean()  # summed over latent elements, averaged over the batch
        loss = cfg.l1_weight * l1 + cfg.kl_weight * kl
        row = {"step": step + 1, "lr": lr, "l1": l1.item(), "kl": kl.item()}
        if cfg.mse_weight > 0:
            mse = F.mse_loss(y, x)
            loss = loss + cfg.mse_weight * mse
            row["mse"] = mse.item()
        if lpips_net is not None and step >= cfg.lpips_start * cfg.steps:
            with torch.autocast(**ac):
                lp = lpips_net(y, x).float().mean()
            loss = loss + cfg.lpips_weight * lp
            row["lpips"] = lp.item()
        gan_on = disc is not None and step >= cfg.gan_start * cfg.steps
        if gan_on:
            disc.requires_grad_(False)
            g_loss = -disc(y).mean()  # hinge generator loss
            loss = loss + cfg.gan_weight * g_loss
            row["g_loss"] = g_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        if gan_on:
            disc.requires_grad_(True)
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            row["d_loss"] = d_loss.item()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"train-vae: non-finite loss at step {step + 1}; lower lr (now {cfg.lr})")
        step += 1
        first_l1 = row["l1"] if first_l1 is None else first_l1
        last_l1 = row["l1"]
        row["seconds"] = round(time.perf_counter() - t_start, 2)
        if cfg.eval_every and step % cfg.eval_every == 0:
            ev = evaluate(vae, val_images, dtype)
            row.update(val_psnr=ev["psnr"], val_ssim=ev["ssim"])
        if step % cfg.log_every == 0 or "val_psnr" in row or step == 1:
            if not logged_reason:  # the first row after every start (and resume) says what it ran in
                row.update(precision.as_row())
                logged_reason = True
            log(row)
        bar.update(1)
        bar.set_postfix(l1=f"{row['l1']:.4f}", **({"psnr": f"{row['val_psnr']:.2f}"} if "val_psnr" in row else {}))
        if step < cfg.steps:  # the last step's checkpoint follows the final evaluation below
            signalled = stop.end_of_step(device, bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0,
                                         lambda: checkpoint(step, time.perf_counter() - t_start))
            if signalled:
                break
    bar.close()
    train_seconds = time.perf_counter() - t_start
    if signalled is not None:  # no evaluation and no model/: a half-trained VAE must not be mistaken for the config's
        metrics.close()
        return {"steps": step, "total_steps": cfg.steps, "complete": False, "stopped": signalled,
                "resumable": True, "train_seconds": round(train_seconds, 1),
                "checkpoint": str(ckpt_root / f"step_{step}")}

    ev = evaluate(vae, val_images, dtype)
    # diffusers convention: scaling_factor = 1 / std of the latents, so FrozenVAE's latents have unit
    # scale (the FLUX / SD factors were chosen the same way).
    scaling = 1.0 / max(ev["latent_std"], 1e-6)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(str(out / "model"), safe_serialization=True)
    checkpoint(step, train_seconds)
    _save_grid(val_images, ev["recons"], out / "recon.png")
    z64 = vae.encode(val_images[:64].to(device)).latent_dist.mean.detach()
    results = {
        "steps": step, "complete": stopped is None, "stopped": stopped, "train_seconds": round(train_seconds, 1),
        "val_psnr": round(ev["psnr"], 3), "val_ssim": round(ev["ssim"], 4),
        "val_images": len(val_images), "val_spec": f"{cfg.data.val} ({cfg.val_split})", "resolution": res,
        "first_l1": first_l1, "last_l1": last_l1, "scaling_factor": scaling,
        "latent_shape": list(z64.shape[1:]), "downsample": down,
        "parameters": sum(p.numel() for p in vae.parameters()),
        **precision.as_row(),
        "decoder_backward_s_per_64": round(decoder_backward_seconds(vae, z64, dtype), 3),
        "model_dir": str(out / "model"),
    }
    log({"step": step, "final": True, **{k: v for k, v in results.items() if k != "model_dir"}})
    metrics.close()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


__all__ = ["VAEArchConfig", "VAETrainConfig", "get_vae_config", "vae_config_from_dict", "train_vae",
           "build_autoencoder", "evaluate", "psnr", "ssim", "resolve_precision"]
