"""Image<->text retrieval Recall@K over n image-caption pairs.

Tie rule: a retrieved caption (image) counts as a hit when its caption is *identical* to the
query's ground-truth caption, so exact duplicate captions in the gallery are not counted as misses.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .common import device_of, iterate, show_grid
from .zeroshot import image_embeddings

KS = (1, 5, 10)


def recall_at_k(sim: torch.Tensor, relevant: torch.Tensor, ks=KS) -> dict:
    """sim (Q, G), relevant (Q, G) bool -> {k: fraction of queries with a relevant item in the top k}."""
    order = sim.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    first = torch.where(hits.any(1), hits.float().argmax(1), torch.full((sim.shape[0],), sim.shape[1]))
    return {k: float((first < k).float().mean()) for k in ks}


@torch.no_grad()
def eval_retrieval(model, ds, num_samples: int, batch_size: int = 64, out_dir=None, progress: bool = True) -> dict:
    dev = device_of(model)
    imgs, txts, caps, shown = [], [], [], []
    for batch in iterate(ds, num_samples, batch_size, "retrieval", progress):
        x = batch["image"].to(dev)
        imgs.append(image_embeddings(model, x).cpu())
        txts.append(F.normalize(model.encode_text(list(batch["caption"])).float(), dim=-1).cpu())
        caps += list(batch["caption"])
        shown += list(batch["image"][: 4 - len(shown)])  # empty once there are enough
    if not caps:
        return {"skipped": "no readable samples"}
    im, tx = torch.cat(imgs), torch.cat(txts)
    sim = im @ tx.T
    ids = {c: i for i, c in enumerate(dict.fromkeys(caps))}
    cid = torch.tensor([ids[c] for c in caps])
    same = cid[:, None] == cid[None, :]  # same caption text -> equally correct
    i2t, t2i = recall_at_k(sim, same), recall_at_k(sim.T, same)
    out = {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()},
           "n": len(caps), "unique_captions": len(ids),
           "tie_rule": "a hit is any retrieved item whose caption is identical to the ground-truth caption"}
    if out_dir is not None and shown:
        best = sim[: len(shown)].argmax(1)
        titles = [f"GT: {caps[i]}\nTOP-1: {caps[int(best[i])]}" for i in range(len(shown))]
        show_grid(shown, titles, Path(out_dir) / "retrieval.png")
        out["figure"] = "retrieval.png"
    return out
