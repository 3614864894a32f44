"""eval.json (the nested results) + eval.md (tables, a plain sentence per figure, PNGs)."""
from __future__ import annotations

import json
import math
from pathlib import Path

EXPLAIN = {
    "recon": ("Reconstruction", "Top row: the original images; bottom row: the same images after "
              "encoding to unified tokens and decoding back, so the closer the rows, the better."),
    "zeroshot": ("Zero-shot classification", "Each row is a true class and each column the class the model "
                 "picked by matching the image against text descriptions; a bright diagonal means mostly right."),
    "retrieval": ("Image-text retrieval", "Each image shows its true caption (GT) and the caption the model "
                  "ranked first among all captions in the gallery (TOP-1)."),
    "caption": ("Captioning", "Each image shows its reference caption (GT) and the caption the model wrote "
                "itself (OURS)."),
    "probe": ("Linear probe", None),
}
METRIC_DOC = {
    "psnr": "PSNR (dB, higher is better)", "ssim": "SSIM (higher is better)",
    "lpips_alex": "LPIPS AlexNet (lower is better)", "lpips_vgg": "LPIPS VGG (lower is better)",
    "rfid": "rFID (lower is better)", "top1": "top-1 accuracy", "top5": "top-5 accuracy",
    "top1_shape": "top-1, the shape alone (colour ignored)", "top1_colour": "top-1, the colour alone (shape ignored)",
    "bleu4": "BLEU-4", "rouge_l": "ROUGE-L F", "cider": "CIDEr",
}


def jsonable(obj):
    """Non-finite floats become strings ("inf", "nan") so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return "-" if v is None else str(v)


def _md_task(name: str, r: dict) -> list[str]:
    head, sentence = EXPLAIN.get(name, (name, None))
    lines = [f"## {head}", ""]
    if "skipped" in r:
        return lines + [f"Skipped: {r['skipped']}.", ""]
    rows = [(k, v) for k, v in r.items() if not isinstance(v, (list, dict)) and k != "figure"]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {METRIC_DOC.get(k, k)} | {_fmt(v)} |" for k, v in rows]
    # the probe's baselines: the same classifier on the raw pixels and on the frozen VAE latents
    lines += [f"| top-1 accuracy on {k.replace('_', ' ')} ({b.get('dim')} dims, same protocol) | "
              f"{_fmt(b.get('top1'))} |" for k, b in (r.get("baselines") or {}).items()]
    lines.append("")
    if r.get("examples"):
        lines += ["| reference | generated |", "|---|---|"]
        lines += [f"| {e['reference']} | {e['generated']} |" for e in r["examples"]]
        lines.append("")
    if r.get("figure"):
        lines += [f"![{head}]({r['figure']})", "", sentence or "", ""]
    return lines


def write_report(results: dict, out_dir, title: str = "OpenVision 3 evaluation", extra_md: str = "",
                 json_name: str = "eval.json", md_name: str = "eval.md"):
    """Write the results as JSON and Markdown into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / json_name, out / md_name
    jpath.write_text(json.dumps(jsonable(results), indent=2, default=str) + "\n")
    meta = results.get("meta", {})
    lines = [f"# {title}", ""]
    if meta:
        lines += [f"Data `{meta.get('data')}` ({meta.get('split')} split), {meta.get('resolution')} px "
                  f"(resize short side + centre crop), up to {meta.get('num_samples')} images per task, "
                  f"{meta.get('seconds')} s on {meta.get('device')}. Protocol: docs/evaluation.md.", ""]
    for name, r in results.items():
        if name != "meta" and isinstance(r, dict):
            lines += _md_task(name, r)
    if extra_md:
        lines += [extra_md, ""]
    mpath.write_text("\n".join(lines))
    return jpath, mpath


# What `ov3 eval` prints per task (the full numbers are in eval.json / eval.md).
SUMMARY_KEYS = {
    "recon": ("psnr", "ssim", "lpips_alex", "lpips_vgg", "rfid"),
    "zeroshot": ("top1", "top5"),
    "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"),
    "caption": ("bleu4", "rouge_l", "cider"),
    "probe": ("top1",),
}


def format_summary(results: dict) -> str:
    """One line per task: its headline metrics, or why it was skipped."""
    lines = []
    for name, r in results.items():
        if name == "meta" or not isinstance(r, dict):
            continue
        if "skipped" in r:
            lines.append(f"{name}: skipped ({r['skipped']})")
            continue
        parts = [f"{k} {_fmt(r[k])}" for k in SUMMARY_KEYS.get(name, ()) if k in r and r[k] is not None]
        if name == "recon" and r.get("rfid") is None and r.get("rfid_status"):
            parts.append(f"rfid {r['rfid_status']}")
        parts += [f"{k} {_fmt(b.get('top1'))}" for k, b in (r.get("baselines") or {}).items()]
        n = r.get("n", r.get("n_test"))
        lines.append(f"{name}: " + ", ".join(parts) + (f" (n={n})" if n is not None else ""))
    return "\n".join(lines)
