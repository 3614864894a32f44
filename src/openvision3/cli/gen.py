"""`ov3 gen train | sample | eval | compare`."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import command_group, UserError, _positive_int, json_command, print_json


# --- ov3 gen (generation/ owner) -------------------------------------------------------------
def _add_gen(sub):
    gsub = command_group(sub, "gen", "class-conditional generation on unified tokens: train, sample, eval, compare")
    t = gsub.add_parser("train", help="train DiT-DH with flow matching on a frozen encoder's cached tokens")
    t.add_argument("--config", required=True, help="a config name (configs/NAME.yaml) or a YAML path")
    t.add_argument("--encoder", default=None, help="the frozen OpenVision 3 model directory (sets encoder=)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --out) or a checkpoint path")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 dit.preset=nano")
    json_command(t, _run_gen_train)
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
    json_command(s, _run_gen_sample)
    e = gsub.add_parser("eval", help="judge_top1, fd, precision/recall (judge features), gFID with Inception "
                        "weights; gen_eval.json/.md, samples.png, guidance_sweep.png in the run")
    e.add_argument("--run", required=True)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--steps", type=_positive_int, default=None)
    e.add_argument("--samples-per-class", type=_positive_int, default=None)
    e.add_argument("--no-sweep", action="store_true", help="skip the guidance sweep")
    e.add_argument("--inception", default=None, metavar="PATH", help="FID Inception weights for gFID")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, metavar="DIR",
                   help="write the report there instead of into the run (e.g. another --cfg-scale beside the "
                        "run's own gen_eval.json, which `gen compare` reads)")
    e.add_argument("--device", default=None)
    e.add_argument("--no-progress", action="store_true")
    json_command(e, _run_gen_eval)
    c = gsub.add_parser("compare", help="the paper's comparison at our scale: joint OV3 tokens, understanding-only "
                        "tokens, VAE latents; same generator budget and seeds")
    c.add_argument("--config", required=True)
    c.add_argument("--encoder", default=None, help="the joint OpenVision 3 model (sets encoder=)")
    c.add_argument("--out", required=True)
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("overrides", nargs="*")
    json_command(c, _run_gen_compare)


def _run_gen_train(args):
    from functools import partial

    from ..generation.config import get_gen_config
    from ..generation.trainer import train_generator
    from .train import _train
    overrides = list(args.overrides) + ([f"encoder={args.encoder}"] if args.encoder else [])
    # a stop exits 3 saying how to resume, as `ov3 train`
    r = _train(args, partial(train_generator, progress=not args.no_progress), get_gen_config(args.config, overrides))
    print(f"{r['status']} at step {r['step']}/{r['total_steps']} ({r['train_seconds']} s; cache of "
          f"{r['cache_samples']} samples); run in {r['out_dir']}", file=sys.stderr)


def _run_gen_sample(args):
    from ..generation.evaluate import save_grid
    from ..generation.generator import Generator
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes expects comma-separated integers, got '{args.classes}'") from None
    if not classes:
        raise UserError("--classes is empty")
    gen = Generator.load(args.run, args.device or "cpu")
    gen.check_classes(classes)
    labels = [c for c in classes for _ in range(args.n)]
    images = gen.sample_images(labels, cfg_scale=args.cfg_scale, steps=args.steps, seed=args.seed,
                               method=args.sampler)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, labels, gen.class_names, Path(args.out), per_row=args.n, max_rows=len(classes))
    print(f"{len(labels)} samples of classes {classes} -> {args.out}", file=sys.stderr)
    print_json(args, {"out": args.out, "classes": classes, "n": args.n, "seed": args.seed,
                      "cfg_scale": args.cfg_scale if args.cfg_scale is not None else gen.cfg.flow.cfg_scale,
                      "steps": args.steps or gen.cfg.flow.steps})


def _run_gen_eval(args):
    from ..generation.evaluate import evaluate_generator
    if args.inception and not Path(args.inception).is_file():
        raise UserError(f"--inception: no such file '{args.inception}'")
    r = evaluate_generator(args.run, cfg_scale=args.cfg_scale, steps=args.steps,
                           samples_per_class=args.samples_per_class, sweep=not args.no_sweep,
                           inception=args.inception, seed=args.seed, out_dir=args.out, device=args.device,
                           progress=not args.no_progress)
    print(f"judge_top1 {r['judge_top1']:.3f} (judge on real held-out: {r['judge_real_top1']:.3f}), fd {r['fd']:.3f}, "
          f"precision {r['precision']:.3f}, recall {r['recall']:.3f}, gFID "
          f"{'n/a' if r['gfid'] is None else format(r['gfid'], '.2f')} at w={r['cfg_scale']}, {r['steps']} steps; "
          f"report: {args.out or args.run}/gen_eval.md")
    print_json(args, r)


def _run_gen_compare(args):
    from ..recipes.gen_compare import run_compare
    overrides = list(args.overrides) + ([f"encoder={args.encoder}"] if args.encoder else [])
    r = run_compare(args.config, args.out, overrides=overrides, progress=not args.no_progress)
    print(r["table"])
    print_json(args, {k: v for k, v in r.items() if k != "table"})
