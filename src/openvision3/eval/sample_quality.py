"""Sample quality of generated images (`ov3 gen eval`), each under the name it deserves
(docs/generation.md): ``fd`` the FID formula in the judge's feature space (never call it FID),
``precision`` / ``recall`` on manifolds that are unions of k-NN balls (Kynkäänniemi et al. 2019,
k = 3), ``gfid`` torchmetrics' FrechetInceptionDistance (fid.py), only with Inception weights (the
ADM protocol: 50 samples per class), else None with the reason.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import to_unit
from .fid import fid_metric


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), in float64."""
    from scipy import linalg
    a, b = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the FID reference code does
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


CHUNK = 2048  # rows of a distance matrix held at once (50k x 50k would not fit)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest other point."""
    return torch.cat([torch.cdist(x[i:i + CHUNK], x).kthvalue(k + 1, dim=1).values  # 0th: the point itself
                      for i in range(0, len(x), CHUNK)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Share of ``points`` inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(points[i:i + CHUNK], centres) <= radii[None, :]).any(1)
              for i in range(0, len(points), CHUNK)]
    return torch.cat(inside).double().mean()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _knn_radii(real, k))
    recall = _covered(real, fake, _knn_radii(fake, k))
    return float(precision), float(recall)


def gfid(real_images: torch.Tensor, fake_images: torch.Tensor, inception: str | None) -> tuple[float | None, str]:
    """(gFID or None, status). Images in [-1, 1]."""
    fid, status = fid_metric(inception)
    if fid is None:
        return None, status
    for imgs, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(imgs), 64):
            fid.update(to_unit(imgs[i:i + 64]), real=real)
    return float(fid.compute()), "ok"


__all__ = ["frechet_distance", "precision_recall", "gfid"]
