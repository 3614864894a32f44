"""Heads trained on a frozen encoder against the jointly trained model, at the demo's scale.

    .venv/bin/python benchmarks/complete_demo.py --out runs/complete_demo [--seeds 0,1,2] [--steps 376]
        [--num-samples 500] [--json]

For each seed S:
  joint  the demo's recipe (configs/demo.yaml: every loss on, the encoder trained), `train.steps` steps
         -> OUT/seed_S/joint (reused when its model/ exists)
  heads  that run's encoder, frozen, with fresh heads trained from scratch for the same steps on its
         cached tokens (recipes/complete.py: train.init_encoder=OUT/seed_S/joint/model,
         train.freeze=[encoder.]) -> OUT/seed_S/heads
and both are evaluated on the held-out `test` split as `ov3 demo` evaluates (PSNR, zero-shot,
retrieval, captioning). The heads' data: as many distinct samples as the joint run draws (the demo:
its two curriculum phases of 10,240 each), half of each phase, in one cached set shuffled together,
since a cache has no curriculum order.

Step cost: one fixed batch of the demo, the joint step (latents given, as the demo's latent memo
gives them) against the heads' step on cached tokens, forward + backward + AdamW, median over
alternating rounds. Writes OUT/complete_demo.json and .md (mean ± std over the seeds run).
Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_step_seconds  # noqa: E402

from openvision3.config import get_config  # noqa: E402
from openvision3.eval import evaluate  # noqa: E402
from openvision3.models.openvision3 import OpenVision3  # noqa: E402
from openvision3.recipes.complete import train_heads  # noqa: E402
from openvision3.train.trainer import train  # noqa: E402

METRICS = (("recon", "psnr", "PSNR (dB)"), ("zeroshot", "top1", "zero-shot top-1"),
           ("retrieval", "t2i_r5", "t2i R@5"), ("retrieval", "i2t_r1", "i2t R@1"),
           ("caption", "bleu4", "caption BLEU-4"), ("caption", "cider", "caption CIDEr"))
BATCH = 128  # configs/demo.yaml's train.batch_size


def joint_overrides(seed: int, steps: int | None) -> list[str]:
    over = [f"seed={seed}"]
    if steps:  # the curriculum switches at half the run's samples (configs/demo.yaml)
        over += [f"train.steps={steps}", f"data.shapes.single_switch={steps * BATCH // 2}"]
    return over


def heads_overrides(seed: int, steps: int | None, joint_model: Path, cache: Path) -> list[str]:
    """As many distinct samples as the joint run draws (at most its 2 x 10,240), half of each phase."""
    n = min(2 * 10240, (steps or 376) * BATCH)
    return [f"seed={seed}", f"train.init_encoder={joint_model}", "train.freeze=[encoder.]",
            f"train.token_cache={cache}", f"data.train=shapes?n={n}", f"data.shapes.single_switch={n // 2}",
            "train.latent_memo=0", "data.shapes.memo=false", *([f"train.steps={steps}"] if steps else [])]


def _model(run_dir: Path, cfg, fn) -> Path:
    if not (run_dir / "model" / "model.safetensors").is_file():
        resume = "auto" if (run_dir / "checkpoints").is_dir() else None
        summary = fn(cfg, run_dir, resume=resume, overwrite=resume is None)
        if summary["status"] != "finished":
            raise SystemExit(f"{run_dir}: {summary['status']}; run again to resume")
    return run_dir / "model"


def _evaluate(model_dir: Path, num_samples: int) -> dict:
    model = OpenVision3.from_pretrained(model_dir).eval()
    spec = f"shapes?captions={model.cfg.data.shapes.captions}"
    r = evaluate(model, spec, tasks=("recon", "zeroshot", "retrieval", "caption"), num_samples=num_samples,
                 out_dir=model_dir.parent / "eval", progress=False)
    return {f"{task}.{key}": r[task][key] for task, key, _ in METRICS}


def step_cost(joint_model: Path, rounds: int = 5, steps_per_round: int = 2) -> dict:
    """Median s/step: the joint step and the heads' step on cached tokens, one fixed demo batch."""
    from openvision3.data import make_loader, open_data
    from openvision3.train.optim import build_optimizer
    torch.manual_seed(0)
    cfg = get_config("demo")
    joint = OpenVision3.from_pretrained(joint_model).train()
    heads = OpenVision3.from_pretrained(joint_model).train()
    heads.encoder.requires_grad_(False)
    batch = next(iter(make_loader(open_data(cfg.data.train, resolution=cfg.data.resolution, cfg=cfg.data), BATCH)))
    images, tokens = batch["image"], joint.tokenizer(batch["caption"])
    with torch.no_grad():
        latents = joint.vae.encode(images)
        unified = heads.encoder(latents)

    def stepper(model, **kw):
        opt = build_optimizer(model, cfg.train, 1e-4, torch.device("cpu"))

        def step():
            model(images, tokens, latents=latents, **kw)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    med, times = median_step_seconds({"joint": stepper(joint), "heads": stepper(heads, unified=unified)}, rounds,
                                     steps_per_round, torch.device("cpu"))
    return {"s_per_step": med, "rounds": times, "ratio_heads_over_joint": med["heads"] / med["joint"]}


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/complete_demo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="steps of both runs (default: the demo's 376)")
    ap.add_argument("--num-samples", type=int, default=500, help="held-out images per task (the demo's 500)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for seed in seeds:
        base = out / f"seed_{seed}"
        joint_model = _model(base / "joint", get_config("demo", joint_overrides(seed, args.steps)), train)
        heads_model = _model(base / "heads", get_config("demo", heads_overrides(seed, args.steps, joint_model.resolve(),
                                                                                out / "token_cache")), train_heads)
        rows[seed] = {arm: _evaluate(m, args.num_samples)
                      for arm, m in (("joint", joint_model), ("heads", heads_model))}
        print(f"seed {seed}: {json.dumps(rows[seed])}", flush=True)
    cost = step_cost(out / f"seed_{seeds[0]}" / "joint" / "model")
    summary = {"seeds": seeds, "steps": args.steps or get_config("demo").train.steps, "num_samples": args.num_samples,
               "per_seed": rows, "step_cost": cost,
               "mean_std": {arm: {k: _mean_std([rows[s][arm][k] for s in seeds]) for k in rows[seeds[0]][arm]}
                            for arm in ("joint", "heads")}}
    lines = [f"Seeds {', '.join(map(str, seeds))}; {summary['steps']} steps each; {args.num_samples} held-out "
             "images per task (mean ± std over the seeds)", "", "| metric | joint | heads on the frozen encoder |",
             "|---|---:|---:|"]
    for task, key, name in METRICS:
        j, h = summary["mean_std"]["joint"][f"{task}.{key}"], summary["mean_std"]["heads"][f"{task}.{key}"]
        lines.append(f"| {name} | {j[0]:.3f} ± {j[1]:.3f} | {h[0]:.3f} ± {h[1]:.3f} |")
    med = cost["s_per_step"]
    lines += ["", f"Step (batch {BATCH}, forward + backward + AdamW): joint {med['joint']:.3f} s, heads on cached "
              f"tokens {med['heads']:.3f} s, ratio {cost['ratio_heads_over_joint']:.2f}"]
    (out / "complete_demo.json").write_text(json.dumps(summary, indent=1))
    (out / "complete_demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
