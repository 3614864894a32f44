"""Captioning: greedy ``model.caption``; corpus BLEU-4 and ROUGE-L F (torchmetrics.text),
CIDEr only when pycocoevalcap is importable."""
from __future__ import annotations

from pathlib import Path

import torch

from .common import device_of, iterate, show_grid


def caption_scores(preds: list[str], refs: list[str]) -> dict:
    from torchmetrics.text import BLEUScore, ROUGEScore
    out = {"bleu4": float(BLEUScore(n_gram=4)(preds, [[r] for r in refs])),
           "rouge_l": float(ROUGEScore(rouge_keys="rougeL")(preds, [[r] for r in refs])["rougeL_fmeasure"])}
    try:
        from pycocoevalcap.cider.cider import Cider
        score, _ = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
        out["cider"] = float(score)
    except ImportError:
        out["cider"] = None
        out["cider_status"] = "skipped: pycocoevalcap not installed"
    return out


@torch.no_grad()
def eval_captioning(model, ds, num_samples: int, batch_size: int = 64, out_dir=None, progress: bool = True,
                    max_len: int = 32, num_examples: int = 8) -> dict:
    dev = device_of(model)
    preds, refs, keys, shown = [], [], [], []
    for batch in iterate(ds, num_samples, batch_size, "caption", progress):
        preds += model.caption(batch["image"].to(dev), max_len=max_len)
        refs += list(batch["caption"])
        keys += list(batch["key"])
        if len(shown) < num_examples:
            shown += list(batch["image"][: num_examples - len(shown)])
    if not preds:
        return {"skipped": "no readable samples"}
    out = {**caption_scores(preds, refs), "n": len(preds), "decoding": f"greedy, max_len {max_len}",
           "examples": [{"key": k, "reference": r, "generated": p}
                        for k, r, p in list(zip(keys, refs, preds))[:num_examples]]}
    if out_dir is not None:
        show_grid(shown, [f"GT: {r}\nOURS: {p}" for r, p in zip(refs, preds)], Path(out_dir) / "captions.png")
        out["figure"] = "captions.png"
    return out
