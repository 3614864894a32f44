"""`ov3 demo`, `ov3 bench`, `ov3 ablate synergy`, `ov3 export hf`, `ov3 push` and `ov3 probe llava`."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import command_group, UserError, _positive_int, json_command, print_json


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
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml")
    json_command(p, _run_demo)


def _run_demo(args):
    from ..recipes.demo import run_demo
    # RunStopped: exit 3, the same command resumes it; DemoRefused: exit 2, another --out or a fix first
    results = run_demo(args.out, overrides=args.overrides, num_samples=args.num_samples, seed=args.seed,
                       train_vae=args.train_vae)
    print_json(args, results)


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
    p.add_argument("--no-memory", action="store_true", help="on CPU: skip counting a B/2 step's activation memory")
    p.add_argument("--compare", action="append", default=None, metavar="NAME:key=value,...",
                   help="instead: whole-step time of config variants in alternating rounds (give it 2+ times)")
    p.add_argument("--cached", action="store_true", help="with --compare: steps on cached latents")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run on the smallest model (tests)")
    p.add_argument("--out", default=None, help="write bench.json, bench.md and bench.png here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    json_command(p, _run_bench)


def _run_bench(args):
    from ..bench import BenchOptions, compare_steps, format_bench, format_compare, run_bench
    opts = BenchOptions(config=args.config, preset=args.preset, overrides=args.overrides,
                        resolution=args.resolution, batch=args.batch, device=args.device, precision=args.precision,
                        repeats=args.repeats, tiny=args.tiny, ratios=not args.no_ratios,
                        memory=not args.no_memory, out=args.out, progress=not args.no_progress)
    if args.compare:
        r = compare_steps(opts, args.compare, cached=args.cached)
        print(format_compare(r))
    else:
        r = run_bench(opts)
        print(format_bench(r))
    print_json(args, r)


# --- ov3 ablate synergy (recipes/synergy.py) ------------------------------------------------
def _add_ablate(sub):
    asub = command_group(sub, "ablate", "ablations that train and compare several models")
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
    s.add_argument("overrides", nargs="*", help="key=value overrides of the config, applied to every arm")
    json_command(s, _run_ablate_synergy)


def _run_ablate_synergy(args):
    from ..eval.report import jsonable
    from ..recipes.synergy import run_synergy
    summary = run_synergy(args.config, args.out, steps=args.steps, seeds=args.seeds, arms=args.arms,
                          overrides=args.overrides, tasks=args.tasks, num_samples=args.num_samples,
                          progress=not args.no_progress)
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()), file=sys.stderr)
    print_json(args, jsonable(summary))


# --- ov3 export hf / push / probe llava (interop/ and recipes/llava_probe.py) -----------------
def _add_export(sub):
    esub = command_group(sub, "export", "write a model in another library's format")
    h = esub.add_parser("hf", help="a transformers vision tower (AutoModel, LLaVA's vision_config) + image processor")
    h.add_argument("--model", required=True, help="a saved OpenVision3 directory, or a released OV3 tower "
                   "(hub id, directory or weights file; then --vae names its VAE)")
    h.add_argument("--out", required=True, help="output directory (save_pretrained format)")
    h.add_argument("--vae", default="flux-ov3", help="for a released tower: the VAE it reads (default flux-ov3)")
    h.add_argument("--image-size", type=_positive_int, default=None,
                   help="input pixels (default: the model's image size; 256 for a released tower)")
    json_command(h, _run_export_hf)


def _run_export_hf(args):
    from ..interop.official import OfficialWeightsError, check_source
    from ..interop.transformers import export_hf
    from ..models.openvision3 import is_saved_model
    src = Path(args.model)
    try:
        check_source(args.model)  # a mistyped path fails here, not after a VAE or hub lookup
    except FileNotFoundError as e:
        raise UserError(f"cannot export: {e}") from None
    if src.is_dir() and not is_saved_model(src) and not any(src.glob("*.safetensors")) \
            and not any(src.glob("*.bin")):
        raise UserError(f"'{args.model}' is not an OpenVision 3 model: no config.yaml + model.safetensors "
                        "(save_pretrained) and no released-tower weights")
    try:
        r = export_hf(args.model, args.out, vae=args.vae, image_size=args.image_size)
    except (OfficialWeightsError, ValueError, FileNotFoundError) as e:
        raise UserError(f"cannot export '{args.model}': {str(e).splitlines()[0]}") from None
    print(f"wrote a transformers vision tower ({r['hidden_size']} wide, {r['layers']} layers, {r['image_size']} px, "
          f"{r['image_tokens']} image tokens) to {r['out']}; load it with AutoModel.from_pretrained("
          "..., trust_remote_code=True), or without it after `import openvision3.interop.transformers`")
    print_json(args, r)


def _add_push(sub):
    p = sub.add_parser("push", help="upload a model directory (with its model card) to the Hugging Face Hub")
    p.add_argument("--model", required=True, help="a saved OpenVision3 directory or an `ov3 export hf` directory")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", default=None, help="commit message")
    json_command(p, _run_push)


def _run_push(args):
    from ..interop.hub import push_model
    r = push_model(args.model, args.repo_id, private=args.private, commit_message=args.message)
    print(f"pushed {r['kind']} model {args.model} to {r['repo_id']}{' (private)' if r['private'] else ''}: {r['url']}")
    print_json(args, r)


def _add_probe(sub):
    psub = command_group(sub, "probe", "probe a frozen encoder under a downstream model")
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
    ll.add_argument("--resume", default=None, help="'auto': continue a stopped probe (its stages' run directories "
                    "under OUT/llava_probe_runs)")
    ll.add_argument("--overwrite", action="store_true", help="train the stages again over a previous probe's")
    ll.add_argument("--no-progress", action="store_true")
    ll.add_argument("overrides", nargs="*", help="key=value overrides of the probe's config, e.g. lm_layers=2 "
                    "batch_size=16 (recipes/llava_probe.py ProbeConfig)")
    json_command(ll, _run_probe_llava)


def _run_probe_llava(args):
    from ..recipes.llava_probe import probe_config, run_llava_probe
    from ..recipes.llava_probe_data import QUESTION_TYPES
    out = args.out or (Path(args.model) / "eval" if Path(args.model).is_dir() else None)
    overrides = list(args.overrides) + [f"{k}={getattr(args, k)}" for k in ("train_images", "test_images")
                                        if getattr(args, k)]
    r = run_llava_probe(args.model, out_dir=out, steps=args.steps, seed=args.seed, features=args.features,
                        vision_feature_layer=args.vision_feature_layer, pcfg=probe_config(overrides),
                        progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite)
    for t in QUESTION_TYPES:
        if t in r["per_type"]:
            print(f"{t:9s} {r['per_type'][t]:.3f}  (majority baseline {r['baselines'][t]:.3f}, "
                  f"{r['n_per_type'][t]} questions)")
    print(f"overall   {r['accuracy']:.3f}  (majority baseline {r['baselines']['overall']:.3f}); "
          f"{r['seconds']} s; report {Path(out) / 'llava_probe.md' if out else '(not written)'}")
    print_json(args, {k: r[k] for k in ("accuracy", "per_type", "baselines", "steps", "seconds", "seed", "features",
                                "vision_feature_layer", "n_per_type", "model")})
