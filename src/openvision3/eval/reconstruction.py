"""Reconstruction: PSNR, SSIM (torchmetrics, images in [0, 1], data_range=1), LPIPS (inputs in
[-1, 1], real backbone weights) and rFID (torchmetrics, only with Inception weights)."""
from __future__ import annotations

from pathlib import Path

import torch

from .common import device_of, iterate, to_unit
from .fid import fid_metric

def psnr_ssim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of reconstructions ``y`` against images ``x``, both in [-1, 1]
    (torchmetrics on [0, 1], data_range 1; SSIM: 11x11 Gaussian window, sigma 1.5)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    xu, yu = to_unit(x.float()), to_unit(y.float())
    psnr = peak_signal_noise_ratio(yu, xu, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(yu, xu, data_range=1.0, reduction="none")
    return psnr, ssim


@torch.no_grad()
def eval_reconstruction(model, ds, num_samples: int, batch_size: int = 64, out_dir=None,
                        inception=None, lpips_nets=("alex",), progress: bool = True,
                        grid_size: int = 8) -> dict:
    from torchmetrics.functional.image import peak_signal_noise_ratio
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    from ..perceptual import build_lpips
    dev = device_of(model)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(dev)
    lpips_models = {net: build_lpips(net).to(dev) for net in lpips_nets}
    fid, fid_status = fid_metric(inception)
    fid = fid.to(dev) if fid is not None else None
    psnrs, lp = [], {net: [] for net in lpips_nets}
    shown_x, shown_r = [], []
    for batch in iterate(ds, num_samples, batch_size, "recon", progress):
        x = batch["image"].to(dev)
        r = model.reconstruct(x).float()
        xu, ru = to_unit(x), to_unit(r)
        psnrs.append(peak_signal_noise_ratio(ru, xu, data_range=1.0, reduction="none", dim=(1, 2, 3)).cpu())
        ssim.update(ru, xu)
        for net, m in lpips_models.items():
            lp[net].append(m(r, x.float()).flatten().cpu())
        if fid is not None:
            fid.update(xu, real=True)
            fid.update(ru, real=False)
        if sum(len(s) for s in shown_x) < grid_size:
            shown_x.append(x.cpu())
            shown_r.append(r.cpu())
    if not psnrs:
        return {"skipped": "no readable images"}
    psnr = torch.cat(psnrs)
    out = {"psnr": float(psnr.mean()), "ssim": float(ssim.compute()), "n": int(psnr.numel()),
           "psnr_note": "per-image PSNR (data_range 1.0), averaged"}
    for net, vals in lp.items():
        out[f"lpips_{net}"] = float(torch.cat(vals).mean())
    out["rfid"] = float(fid.compute()) if fid is not None else None
    out["rfid_status"] = fid_status
    if out_dir is not None:
        from torchvision.utils import save_image
        xs, rs = torch.cat(shown_x)[:grid_size], torch.cat(shown_r)[:grid_size]
        save_image(torch.cat([to_unit(xs), to_unit(rs)]), Path(out_dir) / "recon.png", nrow=len(xs), padding=2)
        out["figure"] = "recon.png"
    return out

