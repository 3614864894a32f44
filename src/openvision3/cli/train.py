"""`ov3 train` and `ov3 train-vae`."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import json_command, print_json


# --- ov3 train / train-vae (train/ owner) ----------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="train an OpenVision 3 model (torchrun for several processes)")
    p.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --out) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=100")
    json_command(p, _run_train)

    v = sub.add_parser("train-vae", help="train a small diffusers AutoencoderKL for the frozen-VAE slot")
    v.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    v.add_argument("--out", default=None, help="run directory (default: runs/<config name>); "
                   "the VAE lands in OUT/model, use it as model.vae.source=OUT/model")
    v.add_argument("--data", default=None, help="data spec for training and held-out eval "
                   "(sets data.train and data.val)")
    v.add_argument("--resume", default=None, help="'auto': continue from the newest checkpoint in --out")
    v.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    v.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 arch.latent_channels=4")
    json_command(v, _run_train_vae)


def _train(args, train, cfg) -> dict:
    """``train(cfg, --out)``, its summary as --json; a run that stopped before its end exits 3 (a requeue
    script can tell a stop from the end) saying where and how to resume."""
    from ..train.run import RunStopped
    summary = train(cfg, args.out or str(Path("runs") / Path(args.config).stem), resume=args.resume,
                    overwrite=args.overwrite)
    print_json(args, summary)
    if summary["status"] != "finished":
        raise RunStopped(f"{summary['status']} at step {summary['step']}/{summary['total_steps']} (checkpoint "
                         f"{summary['last_checkpoint']}); run the same command with --resume auto to continue")
    return summary


def _run_train_vae(args):
    from ..train.vae_config import get_vae_config
    from ..train.vae_trainer import train_vae
    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.train={args.data}", f"data.val={args.data}"]
    r = _train(args, train_vae, get_vae_config(args.config, overrides))
    print(f"VAE: {r['step']} steps in {r['train_seconds']} s; held-out PSNR {r['val_psnr']:.2f} dB, "
          f"SSIM {r['val_ssim']:.3f}; saved to {r['model_dir']}", file=sys.stderr)


def _run_train(args):
    from ..config import get_config
    cfg = get_config(args.config, args.overrides)
    if cfg.train.init_encoder:  # heads for a given tower (recipes/complete.py)
        from ..recipes.complete import train_heads as train
    else:
        from ..train.trainer import train
    summary = _train(args, train, cfg)
    if summary.get("token_cache"):
        print(f"trained on the tokens of {summary['token_cache_samples']} samples cached in {summary['token_cache']}",
              file=sys.stderr)
    print(f"{summary['status']} at step {summary['step']}/{summary['total_steps']}; run in {summary['out_dir']}",
          file=sys.stderr)
