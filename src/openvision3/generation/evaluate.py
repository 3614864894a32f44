"""`ov3 gen eval`: how good and how class-faithful a generator's samples are.

For a guidance scale w, ``samples_per_class`` images of every class are generated (seeded) and
decoded to pixels, then measured against held-out real images of the same classes (``val_split``):
``judge_top1`` (the judge's top-1 against the requested class), ``fd`` and ``precision`` /
``recall`` in the judge's feature space (metrics.py), ``gfid`` with Inception weights only. The
judge's own held-out accuracy ``judge_real_top1`` is reported beside them. A guidance sweep
(``eval.cfg_scales``) gives fd and judge_top1 against w. Written into the run directory (or
``out_dir``): gen_eval.json, gen_eval.md, samples.png (a row per class), guidance_sweep.png.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .generator import Generator
from .judge import get_judge, load_labelled
from ..eval.sample_quality import frechet_distance, gfid, precision_recall

MAX_GRID_CLASSES, GRID_PER_CLASS = 16, 8


def measure(images: torch.Tensor, labels: torch.Tensor, judge, real_feats: torch.Tensor, k: int) -> dict:
    feats, logits = judge.embed(images)
    precision, recall = precision_recall(real_feats, feats, k)
    return {"judge_top1": float((logits.argmax(1) == labels).float().mean()),
            "fd": frechet_distance(real_feats, feats), "precision": precision, "recall": recall}


def save_grid(images: torch.Tensor, labels: list[int], class_names: list, path: Path, per_row: int = GRID_PER_CLASS,
              max_rows: int = MAX_GRID_CLASSES) -> None:
    """One row per class (the first ``per_row`` samples of each of the first ``max_rows`` classes)."""
    from PIL import Image, ImageDraw
    rows = []
    for c in sorted(set(labels))[:max_rows]:
        idx = [i for i, lab in enumerate(labels) if lab == c][:per_row]
        rows.append((c, torch.cat([images[i] for i in idx], dim=2)))
    scale = max(1, 64 // images.shape[-1])
    cell, label_w = images.shape[-1] * scale, 110  # a sample's side on the canvas, the label column
    canvas = Image.new("RGB", (label_w + per_row * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (c, row) in enumerate(rows):
        arr = ((row.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(arr).resize((row.shape[2] * scale, cell), Image.NEAREST)
        canvas.paste(img, (label_w, r * cell))
        name = class_names[c] if c < len(class_names) else str(c)
        draw.text((4, r * cell + cell // 2 - 6), f"{c}: {name}"[:18], fill="black")
    canvas.save(path)


def save_sweep_plot(sweep: list[dict], path: Path, title: str) -> None:
    from ..eval.common import plt
    p = plt()
    fig, ax1 = p.subplots(figsize=(5.5, 3.6))
    ws = [r["cfg_scale"] for r in sweep]
    ax1.plot(ws, [r["fd"] for r in sweep], "o-", color="tab:red", label="fd (judge features)")
    ax1.set_xlabel("guidance scale w")
    ax1.set_ylabel("fd (lower is better)", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(ws, [r["judge_top1"] for r in sweep], "s--", color="tab:blue", label="judge_top1")
    ax2.set_ylabel("judge_top1 (higher is better)", color="tab:blue")
    ax2.set_ylim(0, 1)
    ax1.grid(True, alpha=0.3)
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    p.close(fig)


def evaluate_generator(run_dir, *, cfg_scale: float | None = None, steps: int | None = None,
                       samples_per_class: int | None = None, sweep: bool = True, inception: str | None = None,
                       seed: int = 0, out_dir=None, device=None, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = Generator.load(run_dir, device)
    cfg, e = gen.cfg, gen.cfg.eval
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge, jinfo = get_judge(cfg, device, progress)
    if jinfo["num_classes"] != gen.num_classes:
        raise ValueError(f"the judge knows {jinfo['num_classes']} classes, the generator {gen.num_classes}")
    real, _, _ = load_labelled(cfg.data.val, cfg.val_split, cfg.data.resolution, e.real_samples, cfg.data,
                                         progress, "real held-out")
    real_feats, _ = judge.embed(real)
    scale = cfg.flow.cfg_scale if cfg_scale is None else cfg_scale
    steps = steps or cfg.flow.steps
    per_class = samples_per_class or e.samples_per_class

    def run(w: float, n_per_class: int):
        labels = [c for c in range(gen.num_classes) for _ in range(n_per_class)]
        t = time.perf_counter()
        images = gen.sample_images(labels, batch_size=e.batch_size, cfg_scale=w, steps=steps, seed=seed)
        seconds = time.perf_counter() - t
        return labels, images, {**measure(images, torch.tensor(labels), judge, real_feats, e.pr_k),
                                "cfg_scale": w, "samples": len(labels), "sample_seconds": round(seconds, 1)}

    labels, images, main = run(scale, per_class)
    g, g_status = gfid(real, images, inception)
    save_grid(images, labels, gen.class_names, out / "samples.png")
    sweep_rows = []
    if sweep and e.cfg_scales:
        n_sweep = e.sweep_samples_per_class or per_class
        sweep_rows = [main if w == scale and n_sweep == per_class else run(w, n_sweep)[2] for w in e.cfg_scales]
        save_sweep_plot(sweep_rows, out / "guidance_sweep.png", f"{Path(run_dir).name}: {cfg.space}")
    results = {"judge_top1": main["judge_top1"], "judge_real_top1": jinfo["judge_real_top1"],
               "fd": main["fd"], "precision": main["precision"], "recall": main["recall"],
               "gfid": g, "gfid_status": g_status, "cfg_scale": scale, "steps": steps,
               "sampler": cfg.flow.sampler, "samples_per_class": per_class, "num_classes": gen.num_classes,
               "real_samples": len(real), "space": cfg.space, "encoder": cfg.encoder, "seed": seed,
               "judge_ok": jinfo["judge_real_top1"] >= jinfo.get("min_accuracy", 0.9),
               "sweep": sweep_rows, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "gen_eval.json").write_text(json.dumps(results, indent=1))
    (out / "gen_eval.md").write_text(format_markdown(results))
    return results


def format_markdown(r: dict) -> str:
    judge_note = "" if r["judge_ok"] else (" **below 0.9: this judge cannot vouch for this class set; "
                                           "judge_top1 and fd are indicative only**")
    lines = [f"# Generation: {r['space']} space, {r['num_classes']} classes", "",
             f"Encoder `{r['encoder']}`; {r['samples_per_class']} samples per class, guidance w = {r['cfg_scale']}, "
             f"{r['steps']} {r['sampler']} steps, seed {r['seed']}; {r['real_samples']} held-out real images.", "",
             "| judge_top1 | fd (judge features) | precision | recall | gFID |", "|---:|---:|---:|---:|---:|",
             f"| {r['judge_top1']:.3f} | {r['fd']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
             f"{'n/a (' + r['gfid_status'] + ')' if r['gfid'] is None else format(r['gfid'], '.2f')} |", "",
             f"The judge's own held-out accuracy on real images: {r['judge_real_top1']:.3f}{judge_note}.", ""]
    if r["sweep"]:
        lines += ["## Guidance sweep", "", "| w | judge_top1 | fd | precision | recall |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['cfg_scale']} | {s['judge_top1']:.3f} | {s['fd']:.3f} | {s['precision']:.3f} | "
                  f"{s['recall']:.3f} |" for s in r["sweep"]]
        lines += ["", "![guidance sweep](guidance_sweep.png)", ""]
    lines += ["![samples, a row per class](samples.png)", ""]
    return "\n".join(lines)


__all__ = ["evaluate_generator", "measure", "save_grid", "save_sweep_plot", "format_markdown"]
