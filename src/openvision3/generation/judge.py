"""The judge: a small classifier the project trains on the real training images of the classes it
generates, used to score samples where no standard feature network fits (32 px shapes, CPU).

Its penultimate features are the space of ``fd`` (a Fréchet distance, *not* FID: no Inception)
and of precision / recall; its top-1 on generated images (against the class each was asked for)
is ``judge_top1``. Its own held-out accuracy on real images, ``judge_real_top1``, is always
reported beside them: a judge below ``judge.min_accuracy`` (0.9) cannot vouch for a class set,
and `ov3 gen eval` says so instead of printing numbers as if it could.

A trained judge is kept in ``CACHE_DIR/judge_<hash of data spec, resolution, judge settings>/``
and reused by every run on the same data, so the three token spaces of a comparison are judged
by the very same network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


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
        self.num_classes, self.width = num_classes, width

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
    images, labels, got = [], [], 0
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    for batch in make_loader(ds, 256):
        keep = batch["label"] >= 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
        got += int(keep.sum())
        bar.update(int(keep.sum()))
        if got >= n:
            break
    bar.close()
    if got == 0:
        raise ValueError(f"data spec '{spec}' split '{split}' has no labelled images")
    return torch.cat(images)[:n], torch.cat(labels)[:n], list(ds.class_names or [])


def judge_dir(cfg) -> Path:
    """Where the judge for this data, size and judge setting lives (shared by every run)."""
    # v2: held-out accuracy measured in eval mode (v1 measured it with BatchNorm on the held-out batch)
    key = json.dumps({"judge_version": 2, "spec": cfg.data.train, "val": cfg.data.val, "split": cfg.val_split,
                      "res": cfg.data.resolution, "judge": dataclasses.asdict(cfg.judge)}, sort_keys=True)
    return Path(cfg.cache.dir) / f"judge_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def train_judge(cfg, device, progress: bool = True) -> tuple[JudgeNet, dict]:
    """Train on the real training images, report held-out accuracy on ``cfg.val_split``."""
    from tqdm.auto import tqdm
    j = cfg.judge
    res = cfg.data.resolution
    x, y, names = load_labelled(cfg.data.train, "train", res, j.max_train, cfg.data, progress, "judge data")
    xv, yv, _ = load_labelled(cfg.data.val, cfg.val_split, res, cfg.eval.real_samples, cfg.data, progress,
                              "judge held-out")
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    net = JudgeNet(len(names), j.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=j.lr, weight_decay=5e-4)
    net.train()
    for step in tqdm(range(j.steps), desc="train judge", disable=not progress, leave=False):
        for group in opt.param_groups:  # cosine to zero
            group["lr"] = j.lr * 0.5 * (1 + math.cos(math.pi * step / j.steps))
        idx = torch.randint(len(x), (j.batch_size,), generator=g)
        xb = x[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5  # labels survive a flip; the generator's cache has them too
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(net(xb.to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()  # measured as it judges: BatchNorm on its running statistics, not the held-out batch's
    with torch.no_grad():
        _, logits = net.embed(xv)
    acc = float((logits.argmax(1) == yv).float().mean())
    info = {"judge_real_top1": acc, "held_out": len(yv), "held_out_split": cfg.val_split,
            "train_images": len(y), "steps": j.steps, "num_classes": len(names), "class_names": names,
            "final_loss": float(loss.detach()), "min_accuracy": j.min_accuracy}
    return net, info


def get_judge(cfg, device="cpu", progress: bool = True) -> tuple[JudgeNet, dict]:
    """The cached judge for ``cfg``'s data, trained first when there is none."""
    d = judge_dir(cfg)
    if (d / "judge.safetensors").is_file() and (d / "judge.json").is_file():
        info = json.loads((d / "judge.json").read_text())
        net = JudgeNet(info["num_classes"], cfg.judge.width)
        net.load_state_dict(load_file(str(d / "judge.safetensors")))
        return net.to(device).eval(), info
    net, info = train_judge(cfg, device, progress)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, str(d / "judge.safetensors"))
    (d / "judge.json").write_text(json.dumps(info, indent=1))
    return net, info


__all__ = ["JudgeNet", "get_judge", "train_judge", "judge_dir", "load_labelled"]
