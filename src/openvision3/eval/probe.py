"""Linear probe: sklearn LogisticRegression on pooled image features (train vs test split).

Beside the unified tokens' pooled features, the same classifier is fitted on two baselines under
the identical protocol (same images, same split, same classifier): the raw input pixels and the
frozen VAE latents, flattened. They show what the unified tokens add over their own input."""
from __future__ import annotations

import numpy as np
import torch

from .common import device_of, iterate


FEATURES = ("tokens", "pixels", "vae_latents")  # what the probe is fitted on, in that order


@torch.no_grad()
def features(model, ds, n: int, batch_size: int, desc: str, progress: bool = True,
             kinds: tuple[str, ...] = ("tokens",)):
    """Features of the first ``n`` labelled images: ``tokens`` the pooled unified tokens (the
    model's image embedding), ``pixels`` the flattened input images, ``vae_latents`` the flattened
    frozen-VAE latents. Returns ({kind: x (n, dim)}, labels (n,))."""
    dev = device_of(model)
    xs, ys = {k: [] for k in kinds}, []
    for batch in iterate(ds, n, batch_size, desc, progress):
        keep = batch["label"] >= 0
        if keep.any():
            x = batch["image"][keep].to(dev)
            latents = model.vae.encode(x) if {"tokens", "vae_latents"} & set(kinds) else None
            for k in kinds:
                f = (model.image_features(model.encoder(latents)) if k == "tokens" else
                     x if k == "pixels" else latents)
                xs[k].append(f.flatten(1).float().cpu())
            ys.append(batch["label"][keep])
    if not ys:
        return {k: np.zeros((0, 1), np.float32) for k in kinds}, np.zeros((0,), np.int64)
    return {k: torch.cat(v).numpy() for k, v in xs.items()}, torch.cat(ys).numpy()


def fit_probe(x_train, y_train, x_test, y_test, max_iter: int = 1000) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if len(np.unique(y_train)) < 2:
        return {"skipped": "fewer than two classes in the probe training set"}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(x_train, y_train)
    return {"top1": float(accuracy_score(y_test, clf.predict(x_test))),
            "n_train": int(len(y_train)), "n_test": int(len(y_test)),
            "classifier": "StandardScaler + LogisticRegression (L2, C=1)"}


def eval_probe(model, train_ds, test_ds, n_train: int, n_test: int, batch_size: int = 64,
               progress: bool = True) -> dict:
    """``test_ds=None``: one stream, the first ``n_train`` samples train, the next ``n_test`` test.
    ``result["baselines"]`` holds the same probe on raw pixels and on the frozen VAE latents
    ({"pixels": {"top1", "dim"}, "vae_latents": {...}})."""
    if not train_ds.class_names:
        return {"skipped": "data has no class labels (class_names is None)"}
    if test_ds is None:
        x, y = features(model, train_ds, n_train + n_test, batch_size, "probe", progress, FEATURES)
        split = min(n_train, max(len(y) - n_test, len(y) // 2))
        xtr, ytr = {k: v[:split] for k, v in x.items()}, y[:split]
        xte, yte = {k: v[split:] for k, v in x.items()}, y[split:]
    else:
        xtr, ytr = features(model, train_ds, n_train, batch_size, "probe train", progress, FEATURES)
        xte, yte = features(model, test_ds, n_test, batch_size, "probe test", progress, FEATURES)
    if len(yte) == 0:
        return {"skipped": "no labelled test samples"}
    out = fit_probe(xtr["tokens"], ytr, xte["tokens"], yte)
    out["dim"] = int(xtr["tokens"].shape[1])
    if "top1" in out:
        out["baselines"] = {k: {"top1": fit_probe(xtr[k], ytr, xte[k], yte).get("top1"), "dim": int(xtr[k].shape[1])}
                            for k in FEATURES[1:]}
    return out
