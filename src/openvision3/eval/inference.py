"""Use a trained model on files: ``ov3 reconstruct``, ``ov3 caption`` and ``ov3 encode``
(docs/evaluation.md). Images are read as the evaluation reads them (short side resized to the
resolution, the model's own by default, centre crop, [-1, 1]); an unreadable file is returned with
its reason and never stops the others.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .common import EvalError, device_of, iterate, to_unit


def _readable_batches(paths, resolution: int, batch_size: int, skipped: list):
    """Yield ``(images (B, 3, R, R) in [-1, 1], good_paths)`` per batch of readable files; unreadable
    ones are appended to ``skipped`` as ``{"path", "reason"}`` and never stop the others."""
    from ..data.errors import SkipSample
    from ..data.imageio import decode_image
    from ..data.transforms import eval_transform
    tf = eval_transform(resolution)
    paths = [str(p) for p in paths]
    for i in range(0, len(paths), batch_size):
        images, good = [], []
        for p in paths[i:i + batch_size]:
            try:
                images.append(tf(decode_image(Path(p).read_bytes())))
                good.append(p)
            except SkipSample as e:
                skipped.append({"path": p, "reason": (str(e) or "unreadable image").replace("_", " ")})
            except OSError as e:
                skipped.append({"path": p, "reason": (e.strerror or type(e).__name__).replace("_", " ")})
        if images:
            yield torch.stack(images), good


def _unique_stem(path: str, used: set) -> str:
    stem, k = Path(path).stem or "image", 2
    name = stem
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name


@torch.no_grad()
def reconstruct_files(model, paths, out_dir, resolution: int | None = None, batch_size: int = 16) -> dict:
    """For each readable image: ``OUT/<stem>.png`` (the reconstruction), ``OUT/<stem>_pair.png`` (original |
    reconstruction, side by side) and its PSNR (dB, [0, 1] images, data_range 1). Returns ``{"images":
    [{"path", "psnr", "recon", "pair"}], "skipped": [{"path", "reason"}], "psnr_mean", "resolution"}``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    from torchvision.utils import save_image
    res = int(resolution or model.image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev, used = device_of(model), set()
    images, skipped = [], []
    for x, good in _readable_batches(paths, res, batch_size, skipped):
        x = x.to(dev)
        r = model.reconstruct(x).float()
        xu, ru = to_unit(x), to_unit(r)
        psnr = peak_signal_noise_ratio(ru, xu, data_range=1.0, reduction="none", dim=(1, 2, 3)).cpu()
        for i, p in enumerate(good):
            stem = _unique_stem(p, used)
            recon, pair = out / f"{stem}.png", out / f"{stem}_pair.png"
            save_image(ru[i], recon)
            save_image(torch.stack([xu[i], ru[i]]), pair, nrow=2, padding=2, pad_value=1.0)
            images.append({"path": p, "psnr": float(psnr[i]), "recon": str(recon), "pair": str(pair)})
    mean = sum(im["psnr"] for im in images) / len(images) if images else None
    return {"images": images, "skipped": skipped, "psnr_mean": mean, "resolution": res}


@torch.no_grad()
def caption_files(model, paths, resolution: int | None = None, batch_size: int = 16, max_len: int = 32) -> dict:
    """Greedy captions: ``{"captions": [{"path", "caption"}], "skipped": [{"path", "reason"}]}``."""
    res = int(resolution or model.image_size)
    dev = device_of(model)
    captions, skipped = [], []
    for x, good in _readable_batches(paths, res, batch_size, skipped):
        for p, c in zip(good, model.caption(x.to(dev), max_len=max_len)):
            captions.append({"path": p, "caption": c})
    return {"captions": captions, "skipped": skipped, "resolution": res,
            "decoding": f"greedy, max_len {max_len}"}


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def encode_data(model, data_spec: str, out_file, num_samples: int | None = None, batch_size: int = 64,
                split: str = "test", resolution: int | None = None, dtype: str = "float32",
                progress: bool = True) -> dict:
    """Encode a data set to ``out_file`` (safetensors) with a sidecar ``<out_file stem>.json``.

    Tensors: ``tokens`` (N, T, D) unified tokens, ``pooled`` (N, E) = ``model.image_features(tokens)``
    (not normalised), and ``labels`` (N,) int64 when the data has class names (-1: no label).
    The sidecar holds ``keys``, ``captions``, ``class_names`` and the settings. ``num_samples=None``
    encodes the whole split. Returns a summary dict.
    """
    from safetensors.torch import save_file

    from ..data import open_data
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise EvalError(f"--out '{out_file}' must end in .safetensors")
    if dtype not in DTYPES:
        raise EvalError(f"unknown dtype '{dtype}'; valid: {', '.join(DTYPES)}")
    res = int(resolution or model.image_size)
    ds = open_data(data_spec, split=split, resolution=res, train=False, infinite=False)
    total = min((n for n in (num_samples, ds.num_samples) if n is not None), default=None)  # the progress bar's length
    dev = device_of(model)
    tokens, pooled, labels, keys, caps = [], [], [], [], []
    skipped: dict = {}
    for batch in iterate(ds, num_samples, batch_size, "encode", progress, total=total):
        for k, v in (batch.get("skipped") or {}).items():
            skipped[k] = skipped.get(k, 0) + v
        z = model.encode_image(batch["image"].to(dev))
        tokens.append(z.to(DTYPES[dtype]).cpu())
        pooled.append(model.image_features(z).float().to(DTYPES[dtype]).cpu())
        labels.append(batch["label"].long().cpu())
        keys += list(batch["key"])
        caps += list(batch["caption"])
    seen = len(keys)
    if not seen:
        raise EvalError(f"no readable samples in '{data_spec}' (split {split})"
                        + (f"; skipped {skipped}" if skipped else ""))
    class_names = list(ds.class_names) if ds.class_names else None
    tensors = {"tokens": torch.cat(tokens).contiguous(), "pooled": torch.cat(pooled).contiguous()}
    if class_names:
        tensors["labels"] = torch.cat(labels).contiguous()
    sidecar = out_file.with_suffix(".json")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"data": data_spec, "split": split, "resolution": res, "n": seen,
            "token_grid": list(model.token_grid(res)), "dtype": dtype, "skipped": skipped}
    save_file(tensors, str(out_file), metadata={"format": "pt", "library": "openvision3",
                                                "sidecar": sidecar.name,
                                                **{k: v if isinstance(v, str) else json.dumps(v)
                                                   for k, v in meta.items()}})
    sidecar.write_text(json.dumps({**meta, "tensors": {k: list(v.shape) for k, v in tensors.items()},
                                   "class_names": class_names, "keys": keys, "captions": caps}) + "\n")
    return {**meta, "out": str(out_file), "sidecar": str(sidecar),
            "shapes": {k: list(v.shape) for k, v in tensors.items()}}
