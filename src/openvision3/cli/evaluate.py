"""`ov3 eval`, `ov3 reconstruct`, `ov3 caption` and `ov3 encode`."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import UserError, _add_model_args, _load_model, _positive_int, json_command, print_json


# --- ov3 eval / reconstruct / caption / encode (eval/ owner) ----------------------------------
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
    json_command(p, _run_eval)

    r = sub.add_parser("reconstruct", help="reconstruct images through the unified tokens; PNGs + PSNR")
    _add_model_args(r, images=True)
    r.add_argument("--out", default="reconstructions", help="output directory (default: ./reconstructions)")
    json_command(r, _run_reconstruct)

    c = sub.add_parser("caption", help="caption images (greedy); prints path<TAB>caption")
    _add_model_args(c, images=True)
    c.add_argument("--max-len", type=_positive_int, default=32,
                   help="most tokens per caption, start token included (capped by the decoder context)")
    json_command(c, _run_caption)

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
    json_command(e, _run_encode)


def _run_eval(args):
    from ..eval import TASKS, evaluate, parse_tasks
    from ..eval.report import format_summary, jsonable
    from ..perceptual import LPIPS_NETS
    tasks = parse_tasks(args.tasks) if args.tasks is not None else None
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
    except RuntimeError as e:
        if "LPIPS" not in str(e):
            raise
        raise UserError(str(e)) from None
    print(format_summary(results))
    print(f"report: {Path(out) / 'eval.md'} (numbers: {Path(out) / 'eval.json'})")
    print_json(args, jsonable(results))


def _on_images(args, run, done: str, **kw) -> dict:
    """``run(model, IMAGE...)``; each unreadable image is one line on stderr, none readable is bad input."""
    r = run(_load_model(args.model, args.device), args.images, resolution=args.resolution,
            batch_size=args.batch_size, **kw)
    for s in r["skipped"]:
        print(f"ov3 {args.command}: skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if not r[done]:
        raise UserError(f"none of the {len(args.images)} image(s) could be read")
    return r


def _run_reconstruct(args):
    from ..eval.inference import reconstruct_files
    from ..eval.report import jsonable
    r = _on_images(args, reconstruct_files, "images", out_dir=args.out)
    for im in r["images"]:
        print(f"{im['path']}\tPSNR {im['psnr']:.2f} dB\t{im['pair']}")
    print(f"{len(r['images'])} reconstructed ({r['resolution']} px), mean PSNR {r['psnr_mean']:.2f} dB, "
          f"{len(r['skipped'])} skipped; PNGs in {args.out}")
    print_json(args, jsonable(r))


def _run_caption(args):
    from ..eval.inference import caption_files
    r = _on_images(args, caption_files, "captions", max_len=args.max_len)
    for c in r["captions"]:
        print(f"{c['path']}\t{c['caption']}")
    print_json(args, r)


def _run_encode(args):
    from ..eval.inference import encode_data
    model = _load_model(args.model, args.device)
    r = encode_data(model, args.data, args.out, num_samples=args.num_samples, batch_size=args.batch_size,
                    split=args.split, resolution=args.resolution, dtype=args.dtype, progress=not args.no_progress)
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in r["shapes"].items())
    print(f"encoded {r['n']} samples ({r['resolution']} px): {shapes} -> {r['out']} (+ {r['sidecar']})")
    print_json(args, r)
