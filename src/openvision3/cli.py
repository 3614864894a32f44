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


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other bad input (exit code 2); the
    usage text is one ``--help`` away. Subcommand parsers inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


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
    c = dsub.add_parser("cache-latents", help="encode a spec once with the frozen VAE: webdataset shards of "
                        "image + latent + flipped latent, for training with data.latent_cache=DIR")
    c.add_argument("spec")
    c.add_argument("--vae", required=True, help="VAE: alias (flux-ov3, flux, sd), hub id, local diffusers "
                   "directory (e.g. a saved model's MODEL/vae)")
    c.add_argument("--convention", default="scale", choices=["scale", "shift_scale"],
                   help="latent normalisation (default scale, the released OV3 code's [C])")
    c.add_argument("--resolution", type=_positive_int, required=True, help="pixels (short side resized, centre crop)")
    c.add_argument("--out", required=True)
    c.add_argument("--shard-size", type=_positive_int, default=1000)
    c.add_argument("--split", default="train")
    c.add_argument("--kind", default=None, help="shapes selection: mixed | single | multi")
    c.add_argument("--limit", type=_positive_int, default=None)
    c.add_argument("--batch-size", type=_positive_int, default=16)
    c.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_run_data_cache_latents)


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


def _run_data_cache_latents(args):
    from .data.latent_cache import cache_latents
    r = cache_latents(args.spec, args.vae, args.resolution, args.out, convention=args.convention,
                      shard_size=args.shard_size, split=args.split, batch_size=args.batch_size,
                      limit=args.limit, device=args.device, kind=args.kind)
    print(f"cached {r['samples']} samples (latent {tuple(r['latent_shape'])} + flip) in {r['shards']} shards "
          f"to {r['out']}; train with data.latent_cache={r['out']}")
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
    from .train.checkpoint import CheckpointError
    from .train.vae_trainer import get_vae_config, train_vae
    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.train={args.data}", f"data.val={args.data}"]
    cfg = get_vae_config(args.config, overrides)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    try:
        r = train_vae(cfg, out, resume=args.resume)
    except (DataSpecError, CheckpointError) as e:
        raise UserError(str(e)) from None
    if r.get("resumable"):
        raise Stopped(f"{r['stopped']} at step {r['steps']}/{r['total_steps']}, checkpoint {r['checkpoint']}; "
                      f"continue it with --resume auto")
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
    if args.json:
        print_json(summary)
    if summary["status"] != "finished":  # exit 3, so a requeue script can tell a stop from the end
        raise Stopped(f"{summary['status']} at step {summary['step']}/{summary['total_steps']}; "
                      f"continue it with --resume auto (run in {summary['out_dir']})")
    print(f"{summary['status']} at step {summary['step']}/{summary['total_steps']}; run in {summary['out_dir']}",
          file=sys.stderr)


# --- ov3 eval / reconstruct / caption / encode / demo (eval/ owner) ---------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _add_model_args(p, images: bool = False):
    p.add_argument("--model", required=True, help="a saved model directory (OUT/model) or a hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="pixels (short side resized, then centre crop; default: the model's image size)")
    p.add_argument("--batch-size", type=_positive_int, default=16 if images else 64)
    if images:
        p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a saved model: reconstruction, zero-shot, retrieval, "
                       "captioning, linear probe (eval.json, eval.md, PNGs)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="data spec: shapes | wds:PATTERN | folder:DIR | fashion-mnist")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--tasks", default=None, help="comma list of recon,zeroshot,retrieval,caption,probe "
                   "(default: all; tasks needing labels are skipped on unlabelled data unless named here)")
    p.add_argument("--out", default=None, help="report directory (default: MODEL/eval for a local model "
                   "directory, runs/eval/<hub id> otherwise)")
    p.add_argument("--num-samples", type=_positive_int, default=500, help="images per task (default 500)")
    p.add_argument("--probe-train", type=_positive_int, default=None,
                   help="probe training images (default 2 x --num-samples)")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="FID Inception-v3 weights file for torchmetrics/torch-fidelity (needs torch-fidelity "
                   "installed); without it rFID is reported as skipped")
    p.add_argument("--lpips", default="alex", help="LPIPS backbones: alex, vgg, alex,vgg or none (default alex)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.set_defaults(func=_run_eval)

    r = sub.add_parser("reconstruct", help="reconstruct images through the unified tokens; PNGs + PSNR")
    _add_model_args(r, images=True)
    r.add_argument("--out", default="reconstructions", help="output directory (default: ./reconstructions)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_run_reconstruct)

    c = sub.add_parser("caption", help="caption images (greedy); prints path<TAB>caption")
    _add_model_args(c, images=True)
    c.add_argument("--max-len", type=_positive_int, default=32,
                   help="most tokens per caption, start token included (capped by the decoder context)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_run_caption)

    e = sub.add_parser("encode", help="encode a data set: unified tokens, pooled features, labels (safetensors)")
    _add_model_args(e)
    e.add_argument("--data", required=True, help="data spec: shapes | wds:PATTERN | folder:DIR | fashion-mnist")
    e.add_argument("--split", default="test")
    e.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="output file; keys and captions go to the sidecar FILE.json")
    e.add_argument("--num-samples", type=_positive_int, default=None, help="default: the whole split")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="storage dtype of tokens and pooled (default float32)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_run_encode)


def _load_model(path: str, device: str | None):
    """OpenVision3.from_pretrained + .to(device).eval(); any failure is one line for the user."""
    import torch
    from safetensors import SafetensorError

    from .models.openvision3 import OpenVision3
    try:
        model = OpenVision3.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as e:  # missing files, shape/key mismatch, bad file
        raise UserError(str(e) if isinstance(e, FileNotFoundError) else f"cannot load model '{path}': {e}") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(dev)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"cannot use device '{dev}': {str(e).splitlines()[0]}") from None
    return model.eval()


def _report_skipped(command: str, skipped) -> None:
    for s in skipped:
        print(f"ov3 {command}: skipped {s['path']}: {s['reason']}", file=sys.stderr)


def _run_eval(args):
    from pathlib import Path

    from .eval import TASKS, EvalError, evaluate, parse_tasks
    from .eval.report import format_summary, jsonable
    from .models.perceptual import LPIPS_NETS
    try:
        tasks = parse_tasks(args.tasks) if args.tasks is not None else None
    except EvalError as e:
        raise UserError(str(e)) from None
    nets = tuple(n.strip() for n in args.lpips.split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in nets if n not in LPIPS_NETS]
    if bad:
        raise UserError(f"--lpips: unknown net(s) {', '.join(bad)}; valid: {', '.join(LPIPS_NETS)}, none")
    if args.inception and not Path(args.inception).is_file():
        raise UserError(f"--inception: no such file '{args.inception}'")
    model = _load_model(args.model, args.device)
    out = args.out
    if out is None:
        out = Path(args.model) / "eval" if Path(args.model).is_dir() else Path("runs/eval") / Path(args.model).name
    try:
        results = evaluate(model, args.data, tasks=tasks or TASKS, resolution=args.resolution,
                           num_samples=args.num_samples, batch_size=args.batch_size, out_dir=out,
                           inception=args.inception, progress=not args.no_progress,
                           require_labels=tasks is not None, lpips_nets=nets, probe_train=args.probe_train,
                           split=args.split)
    except EvalError as e:
        raise UserError(str(e)) from None
    except RuntimeError as e:
        if "LPIPS" not in str(e):
            raise
        raise UserError(str(e)) from None
    print(format_summary(results))
    print(f"report: {Path(out) / 'eval.md'} (numbers: {Path(out) / 'eval.json'})")
    if args.json:
        print_json(jsonable(results))


def _run_reconstruct(args):
    from .eval.inference import reconstruct_files
    from .eval.report import jsonable
    model = _load_model(args.model, args.device)
    r = reconstruct_files(model, args.images, args.out, resolution=args.resolution, batch_size=args.batch_size)
    _report_skipped(args.command, r["skipped"])
    if not r["images"]:
        raise UserError(f"none of the {len(args.images)} image(s) could be read")
    for im in r["images"]:
        print(f"{im['path']}\tPSNR {im['psnr']:.2f} dB\t{im['pair']}")
    print(f"{len(r['images'])} reconstructed ({r['resolution']} px), mean PSNR {r['psnr_mean']:.2f} dB, "
          f"{len(r['skipped'])} skipped; PNGs in {args.out}")
    if args.json:
        print_json(jsonable(r))


def _run_caption(args):
    from .eval.inference import caption_files
    model = _load_model(args.model, args.device)
    r = caption_files(model, args.images, resolution=args.resolution, batch_size=args.batch_size,
                      max_len=args.max_len)
    _report_skipped(args.command, r["skipped"])
    if not r["captions"]:
        raise UserError(f"none of the {len(args.images)} image(s) could be read")
    for c in r["captions"]:
        print(f"{c['path']}\t{c['caption']}")
    if args.json:
        print_json(r)


def _run_encode(args):
    from .eval import EvalError
    from .eval.inference import encode_data
    model = _load_model(args.model, args.device)
    try:
        r = encode_data(model, args.data, args.out, num_samples=args.num_samples, batch_size=args.batch_size,
                        split=args.split, resolution=args.resolution, dtype=args.dtype,
                        progress=not args.no_progress)
    except EvalError as e:
        raise UserError(str(e)) from None
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in r["shapes"].items())
    print(f"encoded {r['n']} samples ({r['resolution']} px): {shapes} -> {r['out']} (+ {r['sidecar']})")
    if args.json:
        print_json(r)


# --- ov3 gen (generation/ owner) -------------------------------------------------------------
def _add_gen(sub):
    p = sub.add_parser("gen", help="class-conditional generation on unified tokens: train, sample, eval, compare")
    p.set_defaults(func=lambda a: p.print_help())
    gsub = p.add_subparsers(dest="gen_command")
    t = gsub.add_parser("train", help="train DiT-DH with flow matching on a frozen encoder's cached tokens")
    t.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    t.add_argument("--encoder", default=None, help="the frozen OpenVision 3 model directory (sets encoder=)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --out) or a checkpoint path")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--json", action="store_true")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 dit.preset=nano")
    t.set_defaults(func=_run_gen_train)
    s = gsub.add_parser("sample", help="generate images of chosen classes into one PNG (a row per class)")
    s.add_argument("--run", required=True, help="a `gen train` run directory")
    s.add_argument("--classes", required=True, help="comma-separated class ids, e.g. 0,5,7")
    s.add_argument("--n", type=_positive_int, default=8, help="samples per class (default 8)")
    s.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the run's flow.cfg_scale)")
    s.add_argument("--steps", type=_positive_int, default=None, help="ODE steps (default: the run's flow.steps)")
    s.add_argument("--sampler", default=None, choices=["euler", "heun"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, metavar="PNG")
    s.add_argument("--device", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_run_gen_sample)
    e = gsub.add_parser("eval", help="judge_top1, fd, precision/recall (judge features), gFID with Inception "
                        "weights; gen_eval.json/.md, samples.png, guidance_sweep.png in the run")
    e.add_argument("--run", required=True)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--steps", type=_positive_int, default=None)
    e.add_argument("--samples-per-class", type=_positive_int, default=None)
    e.add_argument("--no-sweep", action="store_true", help="skip the guidance sweep")
    e.add_argument("--inception", default=None, metavar="PATH", help="FID Inception weights for gFID")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_run_gen_eval)
    c = gsub.add_parser("compare", help="the paper's comparison at our scale: joint OV3 tokens, understanding-only "
                        "tokens, VAE latents; same generator budget and seeds")
    c.add_argument("--config", required=True)
    c.add_argument("--encoder", default=None, help="the joint OpenVision 3 model (sets encoder=)")
    c.add_argument("--out", required=True)
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--json", action="store_true")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=_run_gen_compare)


def _gen_errors():
    from .generation.generator import GeneratorError
    from .generation.token_cache import CacheError
    from .train.checkpoint import CheckpointError
    from .train.trainer import TrainError
    return GeneratorError, CacheError, CheckpointError, TrainError


def _run_gen_train(args):
    from .generation.config import get_gen_config
    from .generation.trainer import train_generator
    overrides = list(args.overrides) + ([f"encoder={args.encoder}"] if args.encoder else [])
    cfg = get_gen_config(args.config, overrides)
    try:
        r = train_generator(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.no_progress)
    except _gen_errors() as e:
        raise UserError(str(e)) from None
    if args.json:
        print_json(r)
    if r["status"] != "finished":  # exit 3, as `ov3 train`
        raise Stopped(f"{r['status']} at step {r['step']}/{r['total_steps']}; continue it with --resume auto "
                      f"(run in {r['out_dir']})")
    print(f"{r['status']} at step {r['step']}/{r['total_steps']} ({r['train_seconds']} s; cache of "
          f"{r['cache_samples']} samples); run in {r['out_dir']}", file=sys.stderr)


def _run_gen_sample(args):
    from .generation.evaluate import save_grid
    from .generation.generator import Generator
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes expects comma-separated integers, got '{args.classes}'") from None
    if not classes:
        raise UserError("--classes is empty")
    try:
        gen = Generator.load(args.run, args.device or "cpu")
        gen.check_classes(classes)
        labels = [c for c in classes for _ in range(args.n)]
        images = gen.sample_images(labels, cfg_scale=args.cfg_scale, steps=args.steps, seed=args.seed,
                                   method=args.sampler)
    except _gen_errors() as e:
        raise UserError(str(e)) from None
    from pathlib import Path
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, labels, gen.class_names, Path(args.out), per_row=args.n, max_rows=len(classes))
    print(f"{len(labels)} samples of classes {classes} -> {args.out}", file=sys.stderr)
    if args.json:
        print_json({"out": args.out, "classes": classes, "n": args.n, "seed": args.seed,
                    "cfg_scale": args.cfg_scale if args.cfg_scale is not None else gen.cfg.flow.cfg_scale,
                    "steps": args.steps or gen.cfg.flow.steps})


def _run_gen_eval(args):
    from .generation.evaluate import evaluate_generator
    if args.inception and not __import__("pathlib").Path(args.inception).is_file():
        raise UserError(f"--inception: no such file '{args.inception}'")
    try:
        r = evaluate_generator(args.run, cfg_scale=args.cfg_scale, steps=args.steps,
                               samples_per_class=args.samples_per_class, sweep=not args.no_sweep,
                               inception=args.inception, seed=args.seed, device=args.device,
                               progress=not args.no_progress)
    except _gen_errors() as e:
        raise UserError(str(e)) from None
    print(f"judge_top1 {r['judge_top1']:.3f} (judge on real held-out: {r['judge_real_top1']:.3f}), fd {r['fd']:.3f}, "
          f"precision {r['precision']:.3f}, recall {r['recall']:.3f}, gFID "
          f"{'n/a' if r['gfid'] is None else format(r['gfid'], '.2f')} at w={r['cfg_scale']}, {r['steps']} steps; "
          f"report: {args.run}/gen_eval.md")
    if args.json:
        print_json(r)


def _run_gen_compare(args):
    from .recipes.gen_compare import CompareStopped, run_compare
    overrides = list(args.overrides) + ([f"encoder={args.encoder}"] if args.encoder else [])
    try:
        r = run_compare(args.config, args.out, overrides=overrides, progress=not args.no_progress)
    except _gen_errors() as e:
        raise UserError(str(e)) from None
    except CompareStopped as e:  # a signal stopped a run: exit 3, the same command resumes it
        raise Stopped(str(e)) from None
    print(r["table"])
    if args.json:
        print_json({k: v for k, v in r.items() if k != "table"})


# --- ov3 demo --------------------------------------------------------------------------------
def _add_demo(sub):
    p = sub.add_parser("demo", help="train a nano OpenVision 3 on embedded data with the shipped demo VAE, "
                       "evaluate, report")
    p.add_argument("--out", default=None, help="run directory (default runs/demo, runs/demo_seedN for "
                   "--seed N); phases already done there are reused, a stopped run is resumed")
    p.add_argument("--seed", type=int, default=0, help="training seed (model init and data order)")
    p.add_argument("--train-vae", action="store_true", help="train the demo VAE again (configs/vae_demo.yaml) "
                   "instead of using the shipped one")
    p.add_argument("--num-samples", type=int, default=500, help="held-out images per evaluation task")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml")
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from .recipes.demo import DemoStopped, run_demo
    try:
        results = run_demo(args.out, overrides=args.overrides, num_samples=args.num_samples, seed=args.seed,
                           train_vae=args.train_vae)
    except DemoStopped as e:
        raise Stopped(str(e)) from None
    if args.json:
        print_json(results)


# --- ov3 bench ---------------------------------------------------------------------------------
def _add_bench(sub):
    p = sub.add_parser("bench", help="where a training step's time goes: per-component time and share, "
                       "images/s, FLOPs, MFU, peak memory, same-run ratios (timm, latent cache, pixel sub-batch)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", default=None, help="a config name or YAML (its own VAE; default: the size "
                   "preset with an inline VAE of the FLUX VAE's shape)")
    g.add_argument("--preset", default=None, help="model size preset (nano, tiny, small, b2, l2)")
    p.add_argument("--resolution", type=_positive_int, default=None, help="pixels (default 256 on CUDA, 32 on CPU)")
    p.add_argument("--batch", type=_positive_int, default=None, help="images per step (default 32 on CUDA, 8 on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="autocast (default auto: bf16 where the device runs it natively)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timing rounds (median; default 3 CPU, 5 CUDA)")
    p.add_argument("--no-ratios", action="store_true", help="skip encoder_vs_timm and the cache/pixel ratios")
    p.add_argument("--compare", action="append", default=None, metavar="NAME:key=value,...",
                   help="instead: whole-step time of config variants in alternating rounds (give it 2+ times)")
    p.add_argument("--cached", action="store_true", help="with --compare: steps on cached latents")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run on the smallest model (tests)")
    p.add_argument("--out", default=None, help="write bench.json, bench.md and bench.png here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_run_bench)


def _run_bench(args):
    from .bench import BenchError, BenchOptions, compare_steps, format_bench, format_compare, run_bench
    opts = BenchOptions(config=args.config, preset=args.preset, overrides=args.overrides,
                        resolution=args.resolution, batch=args.batch, device=args.device, precision=args.precision,
                        repeats=args.repeats, tiny=args.tiny, ratios=not args.no_ratios, out=args.out,
                        progress=not args.no_progress)
    try:
        if args.compare:
            r = compare_steps(opts, args.compare, cached=args.cached)
            print(format_compare(r))
        else:
            r = run_bench(opts)
            print(format_bench(r))
    except BenchError as e:
        raise UserError(str(e)) from None
    if args.json:
        print_json(r)


# --- ov3 ablate synergy (recipes/synergy.py) ------------------------------------------------
def _add_ablate(sub):
    p = sub.add_parser("ablate", help="ablations that train and compare several models")
    p.set_defaults(func=lambda a: p.print_help())
    asub = p.add_subparsers(dest="ablate_command")
    s = asub.add_parser("synergy", help="the paper's synergy ablation: joint vs rec_only vs und_only "
                        "(curves, held-out evaluation, verdicts; docs/synergy.md)")
    s.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    s.add_argument("--out", default=None, help="output directory (default: runs/synergy/<config name>); "
                   "each arm's run and model in OUT/seed_S/ARM/, finished arms are reused")
    s.add_argument("--steps", type=_positive_int, default=None, help="training steps per arm (default: the config's)")
    s.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    s.add_argument("--arms", default="joint,rec_only,und_only", help="comma list of arms (default: all three)")
    s.add_argument("--tasks", default="recon,zeroshot,retrieval,caption,probe",
                   help="held-out evaluation tasks per arm (default: all five)")
    s.add_argument("--num-samples", type=_positive_int, default=500, help="held-out images per task (default 500)")
    s.add_argument("--no-progress", action="store_true", help="no evaluation progress bars")
    s.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the config, applied to every arm")
    s.set_defaults(func=_run_ablate_synergy)


def _run_ablate_synergy(args):
    from .eval import EvalError
    from .eval.report import jsonable
    from .recipes.synergy import SynergyStopped, run_synergy
    from .train.checkpoint import CheckpointError
    from .train.trainer import TrainError
    try:
        summary = run_synergy(args.config, args.out, steps=args.steps, seeds=args.seeds, arms=args.arms,
                              overrides=args.overrides, tasks=args.tasks, num_samples=args.num_samples,
                              progress=not args.no_progress)
    except (EvalError, CheckpointError, TrainError) as e:
        raise UserError(str(e)) from None
    except SynergyStopped as e:  # a signal stopped an arm: exit 3, the same command resumes it
        raise Stopped(str(e)) from None
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()), file=sys.stderr)
    if args.json:
        print_json(jsonable(summary))


# --- ov3 export hf / push / probe llava (interop/ and recipes/llava_probe.py) -----------------
def _add_export(sub):
    p = sub.add_parser("export", help="write a model in another library's format")
    p.set_defaults(func=lambda a: p.print_help())
    esub = p.add_subparsers(dest="export_command")
    h = esub.add_parser("hf", help="a transformers vision tower (AutoModel, LLaVA's vision_config) + image processor")
    h.add_argument("--model", required=True, help="a saved OpenVision3 directory, or a released OV3 tower "
                   "(hub id, directory or weights file; then --vae names its VAE)")
    h.add_argument("--out", required=True, help="output directory (save_pretrained format)")
    h.add_argument("--vae", default="flux-ov3", help="for a released tower: the VAE it reads (default flux-ov3)")
    h.add_argument("--image-size", type=_positive_int, default=None,
                   help="input pixels (default: the model's image size; 256 for a released tower)")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=_run_export_hf)


def _run_export_hf(args):
    from pathlib import Path

    from .interop.official import CheckpointError, check_source
    from .interop.transformers import export_hf, is_openvision3_dir
    src = Path(args.model)
    try:
        check_source(args.model)  # a mistyped path fails here, not after a VAE or hub lookup
    except FileNotFoundError as e:
        raise UserError(f"cannot export: {e}") from None
    if src.is_dir() and not is_openvision3_dir(src) and not any(src.glob("*.safetensors")) \
            and not any(src.glob("*.bin")):
        raise UserError(f"'{args.model}' is not an OpenVision 3 model: no config.yaml + model.safetensors "
                        "(save_pretrained) and no released-tower weights")
    try:
        r = export_hf(args.model, args.out, vae=args.vae, image_size=args.image_size)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise UserError(f"cannot export '{args.model}': {str(e).splitlines()[0]}") from None
    print(f"wrote a transformers vision tower ({r['hidden_size']} wide, {r['layers']} layers, {r['image_size']} px, "
          f"{r['image_tokens']} image tokens) to {r['out']}; load it with AutoModel.from_pretrained after "
          "`import openvision3.interop.transformers`")
    if args.json:
        print_json(r)


def _add_push(sub):
    p = sub.add_parser("push", help="upload a model directory (with its model card) to the Hugging Face Hub")
    p.add_argument("--model", required=True, help="a saved OpenVision3 directory or an `ov3 export hf` directory")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_push)


def _run_push(args):
    from .interop.hub import push_model
    r = push_model(args.model, args.repo_id, private=args.private, commit_message=args.message)
    print(f"pushed {r['kind']} model {args.model} to {r['repo_id']}{' (private)' if r['private'] else ''}: {r['url']}")
    if args.json:
        print_json(r)


def _add_probe(sub):
    p = sub.add_parser("probe", help="probe a frozen encoder under a downstream model")
    p.set_defaults(func=lambda a: p.print_help())
    psub = p.add_subparsers(dest="probe_command")
    ll = psub.add_parser("llava", help="LLaVA-1.5 in miniature on `shapes`: frozen tower, MLP projector, a small "
                         "Llama from scratch; held-out VQA exact match per question type")
    ll.add_argument("--model", required=True, help="a saved OpenVision3 directory or an `ov3 export hf` directory")
    ll.add_argument("--out", default=None, help="report directory (default: MODEL/eval, where the model card "
                    "finds it)")
    ll.add_argument("--steps", type=_positive_int, default=None,
                    help="stage-2 steps (default 800; stages 0 and 1 keep their share)")
    ll.add_argument("--seed", type=int, default=0, help="language model init and data order (the test set is fixed)")
    ll.add_argument("--train-images", type=_positive_int, default=None, help="rendered training images (default 4000)")
    ll.add_argument("--test-images", type=_positive_int, default=None, help="held-out test images (default 500)")
    ll.add_argument("--features", default="tokens", choices=["tokens", "vae"],
                    help="tokens: the encoder (default); vae: the model's VAE latents alone, as a floor")
    ll.add_argument("--vision-feature-layer", type=int, default=None,
                    help="hidden state LLaVA reads (default -2, LLaVA-1.5's; -1 for --features vae)")
    ll.add_argument("--no-progress", action="store_true")
    ll.add_argument("--json", action="store_true")
    ll.set_defaults(func=_run_probe_llava)


def _run_probe_llava(args):
    from pathlib import Path

    from .recipes.llava_probe import QUESTION_TYPES, ProbeError, run_llava_probe
    from .recipes.llava_probe import ProbeConfig
    out = args.out or (Path(args.model) / "eval" if Path(args.model).is_dir() else None)
    pcfg = ProbeConfig()
    pcfg.train_images = args.train_images or pcfg.train_images
    pcfg.test_images = args.test_images or pcfg.test_images
    try:
        r = run_llava_probe(args.model, out_dir=out, steps=args.steps, seed=args.seed, features=args.features,
                            vision_feature_layer=args.vision_feature_layer, pcfg=pcfg,
                            progress=not args.no_progress)
    except ProbeError as e:
        raise UserError(str(e)) from None
    for t in QUESTION_TYPES:
        if t in r["per_type"]:
            print(f"{t:9s} {r['per_type'][t]:.3f}  (majority baseline {r['baselines'][t]:.3f}, "
                  f"{r['n_per_type'][t]} questions)")
    print(f"overall   {r['accuracy']:.3f}  (majority baseline {r['baselines']['overall']:.3f}); "
          f"{r['seconds']} s; report {Path(out) / 'llava_probe.md' if out else '(not written)'}")
    if args.json:
        print_json({k: r[k] for k in ("accuracy", "per_type", "baselines", "steps", "seconds", "seed", "features",
                                      "vision_feature_layer", "n_per_type", "model")})


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ov3", description="OpenVision 3: train, evaluate and use "
                           "unified visual encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_data, _add_train, _add_eval, _add_gen, _add_demo, _add_bench, _add_ablate,
                _add_export, _add_push, _add_probe):
        add(sub)
    return parser


class Stopped(Exception):
    """A run that ended before its last step (a signal, non-finite losses): one line, exit code 3;
    running the same command again resumes it."""


def _user_error_types() -> tuple[type, ...]:
    """The exception types that mean bad input. Looked up in sys.modules, not imported: a module
    that was never imported cannot have raised its error, and importing ``openvision3.data`` would
    pull torch and open_clip into ``ov3 --help`` (seconds instead of milliseconds)."""
    found = [UserError, FileNotFoundError]
    for module, name in (("openvision3.config", "ConfigError"), ("openvision3.data.errors", "DataSpecError"),
                         ("openvision3.train.run_lock", "RunLockError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line, code 2) or --help (code 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except Stopped as e:
        print(f"ov3 {args.command}: stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except Exception as e:
        if isinstance(e, _user_error_types()):
            what = str(e)
        elif isinstance(e, OSError):  # the machine said no (permissions, a path through a file, a full disk)
            what = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else (str(e) or type(e).__name__)
        else:
            raise
        print(f"ov3 {args.command}: error: {' '.join(what.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ov3 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
