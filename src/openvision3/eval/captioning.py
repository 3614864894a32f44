"""Captioning: greedy ``model.caption``; corpus BLEU-4 and ROUGE-L F (torchmetrics.text) and
CIDEr (pycocoevalcap's pure-Python scorer, the CIDEr-D variant COCO reports as "CIDEr", on text
lower-cased and stripped of punctuation here instead of by its Java PTB tokenizer)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .common import device_of, iterate, show_grid


def caption_scores(preds: list[str], refs: list[str]) -> dict:
    from torchmetrics.text import BLEUScore, ROUGEScore
    out = {"bleu4": float(BLEUScore(n_gram=4)(preds, [[r] for r in refs])),
           "rouge_l": float(ROUGEScore(rouge_keys="rougeL")(preds, [[r] for r in refs])["rougeL_fmeasure"])}
    from pycocoevalcap.cider.cider import Cider
    # one reference per image; the document frequencies come from these references (COCO's way)
    score, _ = Cider().compute_score({i: [coco_words(r)] for i, r in enumerate(refs)},
                                     {i: [coco_words(p)] for i, p in enumerate(preds)})
    out["cider"] = float(score)
    return out


def coco_words(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what COCO's PTB tokenizer hands CIDEr."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@torch.no_grad()
def eval_captioning(model, ds, num_samples: int, batch_size: int = 64, out_dir=None, progress: bool = True,
                    max_len: int = 32, num_examples: int = 8) -> dict:
    dev = device_of(model)
    preds, refs, keys, shown = [], [], [], []
    for batch in iterate(ds, num_samples, batch_size, "caption", progress):
        preds += model.caption(batch["image"].to(dev), max_len=max_len)
        refs += list(batch["caption"])
        keys += list(batch["key"])
        shown += list(batch["image"][: num_examples - len(shown)])  # empty once there are enough
    if not preds:
        return {"skipped": "no readable samples"}
    out = {**caption_scores(preds, refs), "n": len(preds), "decoding": f"greedy, max_len {max_len}",
           "examples": [{"key": k, "reference": r, "generated": p}
                        for k, r, p in list(zip(keys, refs, preds))[:num_examples]]}
    if out_dir is not None:
        show_grid(shown, [f"GT: {r}\nOURS: {p}" for r, p in zip(refs, preds)], Path(out_dir) / "captions.png")
        out["figure"] = "captions.png"
    return out
