"""``ov3 data inspect``: read a spec once and report counts, skips, caption stats and a grid."""
from __future__ import annotations

import itertools
import textwrap
from collections import Counter

import numpy as np


def inspect_data(spec: str, split: str = "train", limit: int | None = None, grid: str | None = None,
                 grid_size: int = 16, cfg=None, kind: str | None = None) -> dict:
    """Decode every sample (or ``limit``) of a split; returns a JSON-ready report."""
    from . import make_loader, open_data
    ds = open_data(spec, split=split, resolution=None, train=False, cfg=cfg, infinite=False, kind=kind)
    loader = make_loader(ds, batch_size=64)
    words, chars, labels, sizes, shown = [], [], Counter(), Counter(), []
    samples = (s for b in loader for s in zip(b["image"], b["caption"], b["label"].tolist()))
    for img, cap, lab in itertools.islice(samples, limit):  # no batch is read past the limit
        words.append(len(cap.split()))
        chars.append(len(cap))
        labels[lab] += 1
        sizes[img.size] += 1
        if len(shown) < grid_size:
            shown.append((img, cap))
    w = np.array(words or [0])
    report = {
        "spec": spec, "split": split, "samples": len(words),
        "skipped": sum(loader.skipped_total.values()),
        "skipped_by_reason": dict(sorted(loader.skipped_total.items())),
        "declared_samples": ds.num_samples, "limited": limit is not None and len(words) >= limit,
        "caption_words": {"min": int(w.min()), "mean": round(float(w.mean()), 2),
                          "median": float(np.median(w)), "max": int(w.max())},
        "caption_chars_mean": round(float(np.mean(chars)), 1) if chars else 0.0,
        "num_classes": len(ds.class_names) if ds.class_names else 0,
        "labelled_samples": sum(v for k, v in labels.items() if k >= 0),
        "image_sizes": {f"{a}x{b}": n for (a, b), n in sizes.most_common(5)},
    }
    jsonl_bad = getattr(ds.source, "jsonl_skipped", 0)
    if jsonl_bad:
        report["captions_jsonl_bad_lines"] = jsonl_bad
    if grid and shown:
        save_grid(shown, grid)
        report["grid"] = grid
    return report


def save_grid(items, path: str, cols: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 3.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, cap) in zip(axes.flat, items):
        ax.imshow(img)
        ax.set_title("\n".join(textwrap.wrap(cap, 28)[:4]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(r: dict) -> str:
    lines = [f"{r['spec']} [{r['split']}]: {r['samples']} samples"
             + (" (limit reached)" if r["limited"] else "")
             + f", {r['skipped']} skipped" + (f" {r['skipped_by_reason']}" if r["skipped"] else ""),
             f"  declared size: {r['declared_samples']}, classes: {r['num_classes']}, "
             f"labelled samples: {r['labelled_samples']}",
             f"  caption words min/mean/median/max: {r['caption_words']['min']} / "
             f"{r['caption_words']['mean']} / {r['caption_words']['median']} / {r['caption_words']['max']}",
             f"  image sizes: {r['image_sizes']}"]
    if r.get("grid"):
        lines.append(f"  grid: {r['grid']}")
    return "\n".join(lines)
