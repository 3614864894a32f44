"""Linear probe: sklearn LogisticRegression on pooled image features (train vs test split)."""
from __future__ import annotations

import numpy as np
import torch

from .common import device_of, iterate


@torch.no_grad()
def features(model, ds, n: int, batch_size: int, desc: str, progress: bool = True):
    dev = device_of(model)
    xs, ys = [], []
    for batch in iterate(ds, n, batch_size, desc, progress):
        keep = batch["label"] >= 0
        if keep.any():
            x = batch["image"][keep].to(dev)
            xs.append(model.image_features(model.encode_image(x)).float().cpu())
            ys.append(batch["label"][keep])
    if not xs:
        return np.zeros((0, 1), np.float32), np.zeros((0,), np.int64)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


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
    """``test_ds=None``: one stream, the first ``n_train`` samples train, the next ``n_test`` test."""
    if not train_ds.class_names:
        return {"skipped": "data has no class labels (class_names is None)"}
    if test_ds is None:
        x, y = features(model, train_ds, n_train + n_test, batch_size, "probe", progress)
        split = min(n_train, max(len(y) - n_test, len(y) // 2))
        xtr, ytr, xte, yte = x[:split], y[:split], x[split:], y[split:]
    else:
        xtr, ytr = features(model, train_ds, n_train, batch_size, "probe train", progress)
        xte, yte = features(model, test_ds, n_test, batch_size, "probe test", progress)
    if len(yte) == 0:
        return {"skipped": "no labelled test samples"}
    return fit_probe(xtr, ytr, xte, yte)
