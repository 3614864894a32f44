"""`ov3` command line: thin wrappers that parse arguments and call library functions.

Every subcommand exits non-zero with one clear line on bad input (no stack trace);
with --json the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def print_json(obj) -> None:
    print(json.dumps(obj, default=str))


# --- ov3 info -------------------------------------------------------------------------------
def _add_info(sub):
    p = sub.add_parser("info", help="parameter counts per part and token grids")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="model size preset (nano, tiny, small, b2, l2)")
    g.add_argument("--model", default=None, help="a saved model directory")
    p.add_argument("--config", default=None, help="a config name or YAML")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_run_info)


def _run_info(args):
    from .models.info import model_info, format_info
    info = model_info(preset=args.preset, model_dir=args.model, config=args.config,
                      overrides=args.overrides)
    print(format_info(info))
    if args.json:
        print_json(info)


# --- ov3 data (data/ owner) ------------------------------------------------------------------
def _add_data(sub):
    p = sub.add_parser("data", help="inspect, pack and cache data sets")
    p.set_defaults(func=lambda a: p.print_help())
    dsub = p.add_subparsers(dest="data_command")
    i = dsub.add_parser("inspect", help="counts, skipped-by-reason, caption stats, sample grid")
    i.add_argument("spec", help="shapes | wds:PATTERN | folder:DIR | fashion-mnist[:DIR]")
    i.add_argument("--split", default="train")
    i.add_argument("--kind", default=None, help="shapes selection: mixed | single | multi")
    i.add_argument("--limit", type=int, default=None, help="stop after N readable samples")
    i.add_argument("--grid", default=None, metavar="PNG", help="write a grid of samples + captions")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_run_data_inspect)
    k = dsub.add_parser("pack", help="write any spec as webdataset shards")
    k.add_argument("spec")
    k.add_argument("--out", required=True)
    k.add_argument("--shard-size", type=int, default=1000)
    k.add_argument("--split", default="train")
    k.add_argument("--kind", default=None, help="shapes selection: mixed | single | multi")
    k.add_argument("--limit", type=int, default=None)
    k.add_argument("--resolution", type=int, default=None, help="render size for shapes (default 128)")
    k.add_argument("--format", default="jpg", choices=["jpg", "png"])
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_run_data_pack)


def _run_data_inspect(args):
    from .data.inspect import format_report, inspect_data
    report = inspect_data(args.spec, split=args.split, limit=args.limit, grid=args.grid, kind=args.kind)
    print(format_report(report))
    if args.json:
        print_json(report)


def _run_data_pack(args):
    from .data.pack import pack_data
    r = pack_data(args.spec, args.out, shard_size=args.shard_size, split=args.split,
                  resolution=args.resolution, image_format=args.format, limit=args.limit, kind=args.kind)
    print(f"wrote {r['samples']} samples in {r['shards']} shards to {r['out']}; "
          f"{r['skipped']} skipped {r['skipped_by_reason'] or ''}".rstrip())
    if args.json:
        print_json(r)


# --- ov3 train / train-vae (train/ owner) ----------------------------------------------------
def _add_train_vae(sub):
    p = sub.add_parser("train-vae", help="train a small diffusers AutoencoderKL for the frozen-VAE slot")
    p.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>); "
                   "the VAE lands in OUT/model, use it as model.vae.source=OUT/model")
    p.add_argument("--data", default=None, help="data spec for training and held-out eval "
                   "(sets data.train and data.val)")
    p.add_argument("--resume", default=None, help="'auto': continue from the newest checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 arch.latent_channels=4")
    p.set_defaults(func=_run_train_vae)


def _run_train_vae(args):
    from pathlib import Path

    from .data import DataSpecError
    from .train.vae_trainer import get_vae_config, train_vae
    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.train={args.data}", f"data.val={args.data}"]
    cfg = get_vae_config(args.config, overrides)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    try:
        r = train_vae(cfg, out, resume=args.resume)
    except DataSpecError as e:
        raise UserError(str(e)) from None
    print(f"VAE: {r['steps']} steps in {r['train_seconds']} s; held-out PSNR {r['val_psnr']:.2f} dB, "
          f"SSIM {r['val_ssim']:.3f}; saved to {r['model_dir']}", file=sys.stderr)
    if args.json:
        print_json(r)


def _add_train(sub):
    _add_train_main(sub)
    _add_train_vae(sub)


def _add_train_main(sub):
    p = sub.add_parser("train", help="train an OpenVision 3 model (torchrun for several processes)")
    p.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --out) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on the last line")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=100")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from pathlib import Path

    from .config import get_config
    from .data import DataSpecError
    from .train.checkpoint import CheckpointError
    from .train.trainer import TrainError, train
    cfg = get_config(args.config, args.overrides)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    try:
        summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    except (DataSpecError, CheckpointError, TrainError) as e:
        raise UserError(str(e)) from None
    print(f"{summary['status']} at step {summary['step']}/{summary['total_steps']}; run in {summary['out_dir']}",
          file=sys.stderr)
    if args.json:
        print_json(summary)


# --- ov3 eval / reconstruct / caption / encode / demo (eval/ owner) ---------------------------
def _add_eval(sub):
    pass


# --- ov3 demo --------------------------------------------------------------------------------
def _add_demo(sub):
    p = sub.add_parser("demo", help="train a VAE and a nano OpenVision 3 on embedded data, evaluate, report")
    p.add_argument("--out", default="runs/demo", help="run directory (phases already done there are reused)")
    p.add_argument("--num-samples", type=int, default=500, help="held-out images per evaluation task")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml")
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from .eval.demo import run_demo
    results = run_demo(args.out, overrides=args.overrides, num_samples=args.num_samples)
    if args.json:
        print_json(results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ov3", description="OpenVision 3: train, evaluate and use "
                                     "unified visual encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_data, _add_train, _add_eval, _add_demo):
        add(sub)
    return parser


def main(argv=None) -> int:
    from .config import ConfigError
    from .data.errors import DataSpecError
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ConfigError, DataSpecError, FileNotFoundError) as e:
        print(f"ov3 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ov3 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
