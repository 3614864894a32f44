"""Zero-shot classification: per-class text embeddings (templates averaged, normalised) vs
normalised pooled image features; top-1 / top-5 via torchmetrics."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .common import device_of, iterate, plt


@torch.no_grad()
def class_embeddings(model, class_names, templates) -> torch.Tensor:
    """(C, E): for each class, the mean of its normalised template embeddings, re-normalised."""
    rows = []
    for name in class_names:
        t = F.normalize(model.encode_text([tpl.format(name) for tpl in templates]).float(), dim=-1)
        rows.append(F.normalize(t.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(model, x) -> torch.Tensor:
    return F.normalize(model.image_features(model.encode_image(x)).float(), dim=-1)


def attribute_accuracy(confusion: torch.Tensor, attributes: dict) -> dict:
    """From a (true, predicted) count matrix: for each attribute (name -> its value per class),
    the share of predictions whose class has the true class's value, e.g. the right shape
    whatever the colour."""
    m = confusion.double()
    out = {}
    for name, values in attributes.items():
        v = torch.as_tensor(values, device=m.device)
        same = (v[:, None] == v[None, :]).double()
        out[f"top1_{name}"] = float((m * same).sum() / m.sum().clamp(min=1))
    return out


@torch.no_grad()
def eval_zeroshot(model, ds, num_samples: int, batch_size: int = 64, out_dir=None, progress: bool = True) -> dict:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
    if not ds.class_names:
        return {"skipped": "data has no class labels (class_names is None)"}
    dev = device_of(model)
    c = len(ds.class_names)
    text = class_embeddings(model, ds.class_names, ds.templates).to(dev)
    top1 = MulticlassAccuracy(num_classes=c, top_k=1, average="micro").to(dev)
    top5 = MulticlassAccuracy(num_classes=c, top_k=min(5, c), average="micro").to(dev)
    conf = MulticlassConfusionMatrix(num_classes=c).to(dev)
    n = 0
    for batch in iterate(ds, num_samples, batch_size, "zeroshot", progress):
        keep = batch["label"] >= 0
        if not keep.any():
            continue
        x, y = batch["image"][keep].to(dev), batch["label"][keep].to(dev)
        logits = image_embeddings(model, x) @ text.T
        top1.update(logits, y)
        top5.update(logits, y)
        conf.update(logits, y)
        n += int(y.numel())
    if n == 0:
        return {"skipped": "no labelled samples"}
    out = {"top1": float(top1.compute()), "top5": float(top5.compute()), "num_classes": c, "n": n,
           "templates": list(ds.templates)}
    counts = conf.compute().cpu()
    if getattr(ds, "class_attributes", None):
        out.update(attribute_accuracy(counts, ds.class_attributes))
    if out_dir is not None:
        m = counts.float()
        m = m / m.sum(1, keepdim=True).clamp(min=1)
        p = plt()
        fig, ax = p.subplots(figsize=(7, 6))
        im = ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if c <= 20:
            ax.set_xticks(range(c), ds.class_names, rotation=90, fontsize=6)
            ax.set_yticks(range(c), ds.class_names, fontsize=6)
        ax.set_title(f"zero-shot confusion (row-normalised), top-1 {out['top1']:.3f}")
        fig.colorbar(im)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / "zeroshot_confusion.png", dpi=100)
        p.close(fig)
        out["figure"] = "zeroshot_confusion.png"
    return out
