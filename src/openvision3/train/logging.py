"""Run logs on rank 0: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events,
and ``losses.png`` (redrawn at each checkpoint)."""
from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # A resumed run rewrites the steps after its checkpoint; drop the old lines for them.
            keep = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in keep))
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)

    def log(self, step: int, values: dict) -> None:
        if self.writer is None:  # not rank 0
            return
        row = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
            elif isinstance(v, dict):  # e.g. skipped-sample counts by reason
                for sub, n in v.items():
                    self.writer.add_scalar(f"{k}/{sub}", n, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _parse(line: str) -> dict | None:
    """One metrics row; None for a blank line or one cut short (a disk that filled mid-write)."""
    try:
        row = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [row for line in path.read_text().splitlines() if (row := _parse(line)) is not None]


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Total loss and each term against step (log scale), validation losses dashed."""
    rows = read_metrics(metrics_path)
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r if k == "loss" or k.startswith(("loss_", "val_loss"))})
    fig, ax = plt.subplots(figsize=(8, 5))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and r[k] > 0
               and math.isfinite(r[k])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "--" if k.startswith("val_") else "-", marker="o" if len(xs) < 3 else None,
                    label=k, linewidth=2 if k == "loss" else 1)
    ax.set(xlabel="step", ylabel="loss", yscale="log")
    ax.grid(True, alpha=0.3)
    if ax.lines:  # a run whose every loss was non-finite has nothing to label
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
