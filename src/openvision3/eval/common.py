"""Shared helpers for the evaluation tasks: data selection, batched collection, figures."""
from __future__ import annotations

import torch

from ..data import make_loader, open_data, parse_spec


class EvalError(ValueError):
    """An evaluation that cannot run as asked (e.g. zero-shot on unlabelled data)."""


# Which shapes selection each task reads (other specs are used as they are).
SHAPES_KIND = {"zeroshot": "single", "probe": "single", "retrieval": "multi", "recon": None, "caption": None}


def open_for(task: str, spec: str, split: str, resolution: int):
    """The evaluation dataset for ``task`` (centre crop, no augmentation, finite)."""
    scheme, _, query = parse_spec(spec)
    kind = SHAPES_KIND.get(task) if scheme == "shapes" and "kind" not in query else None
    return open_data(spec, split=split, resolution=resolution, train=False, infinite=False, kind=kind)


def has_splits(spec: str) -> bool:
    return parse_spec(spec)[0] in ("shapes", "fashion-mnist")


def iterate(ds, n: int | None, batch_size: int, desc: str, progress: bool = True, total: int | None = None):
    """Batches from ``ds`` until ``n`` readable samples were yielded (the last batch trimmed; None: all).
    ``total``: the progress bar's length when it is not ``n``."""
    from tqdm.auto import tqdm
    seen = 0
    with tqdm(total=total or n, desc=desc, disable=not progress, leave=False) as bar:
        for batch in make_loader(ds, batch_size=batch_size):
            take = len(batch["caption"]) if n is None else min(len(batch["caption"]), n - seen)
            if take <= 0:
                break
            if take < len(batch["caption"]):
                batch = {k: (v[:take] if k != "skipped" else v) for k, v in batch.items()}
            seen += take
            bar.update(take)
            yield batch
            if n is not None and seen >= n:
                break


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def wrap_title(text: str, width: int = 40, max_lines: int = 8) -> str:
    """Wrap each line of ``text`` on its own (textwrap alone would merge "GT: ..." and "OURS: ...")."""
    import textwrap
    lines = [w for line in text.split("\n") for w in (textwrap.wrap(line, width) or [""])]
    return "\n".join(lines[:max_lines])


def show_grid(images, titles, path, cols: int = 4, title_width: int = 40, max_title_lines: int = 8):
    """A grid of images (tensors in [-1, 1]) with titles wrapped line by line (``wrap_title``), its rows tall
    enough for the longest title so that long captions never run into the row above; saved to ``path``."""
    p = plt()
    wrapped = [wrap_title(t, title_width, max_title_lines) for t in titles]
    lines = max([w.count("\n") + 1 for w in wrapped] or [1])
    rows = (len(images) + cols - 1) // cols
    fig, axes = p.subplots(rows, cols, figsize=(3 * cols, (3.3 + 0.15 * lines) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, wrapped):
        ax.imshow(to_unit(img).permute(1, 2, 0).cpu().numpy())
        ax.set_title(t, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    p.close(fig)
