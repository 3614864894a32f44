"""The one FID set-up: torchmetrics' FrechetInceptionDistance (2048-d pool features), built only
when the user has the Inception weights (a file path; nothing is downloaded). Used by rFID
(reconstruction.py) and gFID (sample_quality.py)."""
from __future__ import annotations

from pathlib import Path

FID_SKIPPED = "skipped: no Inception weights (pass inception=PATH / --inception PATH)"


def fid_metric(inception: str | None):
    """(FrechetInceptionDistance or None, status string: "ok" or why it was skipped)."""
    if not inception:
        return None, FID_SKIPPED
    if not Path(inception).is_file():
        return None, f"skipped: Inception weights '{inception}' not found"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(inception))
    except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as e:
        return None, f"skipped: FID unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return fid, "ok"
