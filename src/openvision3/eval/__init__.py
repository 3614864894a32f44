"""Evaluation of a saved / in-memory OpenVision3: reconstruction, zero-shot, retrieval,
captioning and a linear probe, with JSON + Markdown + PNG reports.

    from openvision3.eval import evaluate
    results = evaluate(model, "shapes", tasks=("recon", "zeroshot"), num_samples=500, out_dir="eval/")

Protocol: docs/evaluation.md.
"""
from __future__ import annotations

import time
from pathlib import Path

from .common import EvalError, has_splits, open_for
from .report import write_report

__all__ = ["evaluate", "EvalError", "TASKS", "write_report"]

TASKS = ("recon", "zeroshot", "retrieval", "caption", "probe")
NEEDS_LABELS = ("zeroshot", "probe")


def parse_tasks(tasks) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise EvalError(f"unknown task(s) {', '.join(bad) or '(none)'}; valid: {', '.join(TASKS)}")
    return tuple(dict.fromkeys(tasks))


def evaluate(model, data_spec: str, tasks=TASKS, resolution: int | None = None, num_samples: int = 500,
             batch_size: int = 64, out_dir=None, inception=None, progress: bool = True,
             require_labels: bool = False, lpips_nets=("alex",), probe_train: int | None = None,
             split: str = "test", title: str | None = None, write_files: bool = True) -> dict:
    """Run ``tasks`` on ``data_spec``; returns the nested result dict (see docs/evaluation.md).

    A task whose data has no class labels is ``{"skipped": reason}``; with ``require_labels`` it
    raises EvalError before anything runs. With ``out_dir``: PNGs, and ``eval.json`` + ``eval.md``
    unless ``write_files`` is False (the demo writes its own report).
    ``probe_train`` defaults to 2 x num_samples (train split; the test split gives num_samples).
    """
    from . import captioning, probe, reconstruction, retrieval, zeroshot
    plain = {"zeroshot": zeroshot.eval_zeroshot, "retrieval": retrieval.eval_retrieval,  # the same arguments
             "caption": captioning.eval_captioning}
    tasks = parse_tasks(tasks)
    res = int(resolution or model.image_size)
    data = {t: open_for(t, data_spec, split, res) for t in tasks}
    for t in tasks:
        if t in NEEDS_LABELS and not data[t].class_names and require_labels:
            raise EvalError(f"task '{t}' needs class labels, but data '{data_spec}' has none "
                            "(folder: add classes.txt; shapes: use the default selection)")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    results: dict = {}
    t_start = time.time()
    try:  # every task runs without gradients itself
        for t in tasks:
            t0 = time.time()
            ds = data[t]
            if t == "recon":
                r = reconstruction.eval_reconstruction(model, ds, num_samples, batch_size, out_dir, inception,
                                                       lpips_nets, progress)
            elif t == "probe":
                pair = (open_for(t, data_spec, "train", res), ds) if has_splits(data_spec) else (ds, None)
                r = probe.eval_probe(model, *pair, probe_train or 2 * num_samples, num_samples, batch_size, progress)
            else:
                r = plain[t](model, ds, num_samples, batch_size, out_dir, progress)
            r["seconds"] = round(time.time() - t0, 2)
            results[t] = r
    finally:
        model.train(was_training)
    results["meta"] = {"data": data_spec, "split": split, "resolution": res, "num_samples": num_samples,
                       "tasks": list(tasks), "seconds": round(time.time() - t_start, 2),
                       "device": str(next(model.parameters()).device)}
    if out_dir is not None and write_files:
        write_report(results, out_dir, title=title or f"OpenVision 3 evaluation on {data_spec}")
    return results
