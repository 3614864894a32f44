"""The judge: a small classifier the project trains on the real training images of the classes it
generates, used to score samples where no standard feature network fits (32 px shapes, CPU).

Its penultimate features are the space of ``fd`` (a Fréchet distance, *not* FID: no Inception)
and of precision / recall; its top-1 on generated images (against the class each was asked for)
is ``judge_top1``. Its own held-out accuracy on real images, ``judge_real_top1``, is always
reported beside them: a judge below ``judge.min_accuracy`` (0.9) cannot vouch for a class set,
and `ov3 gen eval` says so instead of printing numbers as if it could.

A trained judge is kept in ``CACHE_DIR/judge_<hash of data spec, resolution, judge settings>/``
and reused by every run on the same data, so the three token spaces of a comparison are judged
by the very same network. That directory is the judge's run directory (train/run.py): a stopped
training is resumed by the next command that needs the judge.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..train.optim import LRSchedule
from ..train.run import Parts, Run, RunSettings, RunStopped, Task, run_task

JUDGE_WEIGHTS, JUDGE_INFO = "judge.safetensors", "judge.json"


class JudgeNet(nn.Module):
    """Three conv stages (w, 2w, 4w channels) with BatchNorm, global average pool, linear."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                      nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        w = width
        self.features = nn.Sequential(*stage(3, w, True), *stage(w, 2 * w, True), *stage(2 * w, 4 * w, False),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (features (B, 4w), logits (B, classes)), in eval mode, on CPU."""
        self.eval()
        dev = next(self.parameters()).device
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            f = self.features(images[i:i + batch_size].to(dev).float())
            feats.append(f.cpu())
            logits.append(self.classifier(f).cpu())
        return torch.cat(feats), torch.cat(logits)


def load_labelled(spec: str, split: str, resolution: int, n: int, data_cfg, progress: bool = False,
                  desc: str = "real images") -> tuple[torch.Tensor, torch.Tensor, list]:
    """Up to ``n`` labelled images of a split (centre crops, no augmentation) and the class names."""
    from tqdm.auto import tqdm

    from ..data import make_loader, open_data
    ds = open_data(spec, split=split, resolution=resolution, train=False, cfg=data_cfg, infinite=False)
    labelled = ((x, y) for b in make_loader(ds, 256) for x, y in zip(b["image"], b["label"]) if y >= 0)
    pairs = list(tqdm(itertools.islice(labelled, n), total=n, desc=desc, disable=not progress, leave=False))
    if not pairs:
        raise ValueError(f"data spec '{spec}' split '{split}' has no labelled images")
    images, labels = zip(*pairs)
    return torch.stack(images), torch.stack(labels), list(ds.class_names or [])


def _judge_key(cfg) -> dict:
    # v2: held-out accuracy measured in eval mode (v1 measured it with BatchNorm on the held-out batch)
    return {"judge_version": 2, "spec": cfg.data.train, "val": cfg.data.val, "split": cfg.val_split,
            "res": cfg.data.resolution, "judge": dataclasses.asdict(cfg.judge)}


def judge_dir(cfg) -> Path:
    """Where the judge for this data, size and judge setting lives (shared by every run)."""
    key = json.dumps(_judge_key(cfg), sort_keys=True)
    return Path(cfg.cache.dir) / f"judge_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class _LabelledBatches:
    """Random batches of in-memory labelled images with random flips (labels survive a flip; the
    generator's cache has flips too), drawn from one seeded generator: its state is the position."""

    def __init__(self, x, y, batch_size: int, seed: int, device):
        self.x, self.y, self.batch_size, self.device = x, y, batch_size, device
        self.g = torch.Generator().manual_seed(seed)

    def next(self) -> dict:
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.g)
        xb = self.x[idx]
        flip = torch.rand(len(idx), generator=self.g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        return {"image": xb.to(self.device), "label": self.y[idx].to(self.device)}

    def state_dict(self) -> dict:
        return {"generator": self.g.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class JudgeTask(Task):
    """The judge's training: cross-entropy on real training images, cosine LR to zero, AdamW."""
    name = "train judge"

    def __init__(self, cfg, device, progress: bool = True):
        self.cfg, self.device, self.progress = cfg, str(device), progress
        self.lr = LRSchedule(cfg.judge.lr, cfg.judge.steps)

    def settings(self) -> RunSettings:
        # fp32 and no clipping, as the judge was measured; single process (it trains inside gen eval)
        return RunSettings(steps=self.cfg.judge.steps, seed=self.cfg.seed, precision="fp32", grad_clip=0.0,
                           log_every=50, keep_last=1, checkpoint_every=200, device=self.device, distributed=False)

    def build(self, run: Run) -> Parts:
        cfg, j = self.cfg, self.cfg.judge
        res = cfg.data.resolution
        x, y, self.names = load_labelled(cfg.data.train, "train", res, j.max_train, cfg.data, self.progress,
                                         "judge data")
        self.xv, self.yv, _ = load_labelled(cfg.data.val, cfg.val_split, res, cfg.eval.real_samples, cfg.data,
                                            self.progress, "judge held-out")
        self.train_images = len(y)
        self.batches = _LabelledBatches(x, y, j.batch_size, cfg.seed + 12345, run.device)
        self.net = JudgeNet(len(self.names), j.width).to(run.device).train()
        self.run = run
        opt = lambda: torch.optim.AdamW(self.net.parameters(), lr=j.lr, weight_decay=5e-4)  # noqa: E731
        return Parts(self.net, opt, self.batches)

    def batch(self, step: int) -> dict:
        return self.batches.next()

    def losses(self, batch: dict, step: int) -> dict:
        return {"loss": F.cross_entropy(self.run.model(batch["image"]), batch["label"])}

    def finish(self, run: Run) -> dict:
        """Held-out accuracy measured as it judges (BatchNorm on its running statistics, eval mode);
        the judge and its record written into the run directory, where ``get_judge`` finds them."""
        net, cfg = self.net, self.cfg
        _, logits = net.embed(self.xv)  # eval mode, no gradients
        info = {"judge_real_top1": float((logits.argmax(1) == self.yv).float().mean()), "held_out": len(self.yv),
                "held_out_split": cfg.val_split, "train_images": self.train_images, "steps": cfg.judge.steps,
                "num_classes": len(self.names), "class_names": self.names, "min_accuracy": cfg.judge.min_accuracy}
        save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, str(run.out / JUDGE_WEIGHTS))
        (run.out / JUDGE_INFO).write_text(json.dumps(info, indent=1))
        return {"judge": info}


def train_judge(cfg, out_dir, device="cpu", resume: str | None = None, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Train the judge in ``out_dir`` (the run engine's rules: a non-empty directory needs
    ``resume`` or ``overwrite``); returns the engine's summary, with ``judge`` once finished."""
    task = JudgeTask(cfg, device, progress)
    return run_task(task, task.settings(), out_dir, config_yaml=json.dumps(_judge_key(cfg), indent=1) + "\n",
                    resume=resume, overwrite=overwrite, progress=progress)


def get_judge(cfg, device="cpu", progress: bool = True) -> tuple[JudgeNet, dict]:
    """The cached judge for ``cfg``'s data, trained first (or its stopped training resumed) when
    there is none; RunStopped when a signal stops that training."""
    d = judge_dir(cfg)
    if not ((d / JUDGE_WEIGHTS).is_file() and (d / JUDGE_INFO).is_file()):
        started = (d / "checkpoints").is_dir()  # a stopped training continues; leftovers of none are cleared
        summary = train_judge(cfg, d, device, resume="auto" if started else None, overwrite=not started,
                              progress=progress)
        if summary["status"] != "finished":
            raise RunStopped(f"training the judge {summary['status']} at step {summary['step']}/"
                             f"{summary['total_steps']}; run the same command again to resume it ({d})")
    info = json.loads((d / JUDGE_INFO).read_text())
    net = JudgeNet(info["num_classes"], cfg.judge.width)
    net.load_state_dict(load_file(str(d / JUDGE_WEIGHTS)))
    return net.to(device).eval(), info


__all__ = ["JudgeNet", "JudgeTask", "get_judge", "train_judge", "judge_dir", "load_labelled"]
