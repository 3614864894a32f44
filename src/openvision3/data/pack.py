"""``ov3 data pack``: write any spec as DataComp-style webdataset shards.

Each sample becomes ``{n:09d}.jpg`` (or ``.png``) + ``.txt`` (caption) + ``.json``
(``{"key": source key, "caption": ..., "label": ...}``); shard keys are fresh numbers because
webdataset keys may not contain dots. ``info.json`` records per-shard sizes, class names and
templates so ``wds:DIR`` keeps them.
"""
from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import webdataset


def write_shards(samples, outdir: Path, shard_size: int) -> dict[str, int]:
    """Write sample dicts into ``NNNNNN.tar`` shards of ``shard_size``, the n-th keyed ``{n:09d}``;
    returns the samples per shard (also the latent cache's writer, data/latent_cache.py)."""
    sizes: dict[str, int] = {}
    writer = None
    try:
        for n, sample in enumerate(samples):
            if n % shard_size == 0:
                if writer is not None:
                    writer.close()
                name = f"{n // shard_size:06d}.tar"
                writer, sizes[name] = webdataset.TarWriter(str(outdir / name)), 0
            writer.write({"__key__": f"{n:09d}", **sample})
            sizes[name] += 1
    finally:
        if writer is not None:
            writer.close()
    return sizes


def pack_data(spec: str, out: str, shard_size: int = 1000, split: str = "train",
              resolution: int | None = None, image_format: str = "jpg", limit: int | None = None,
              cfg=None, kind: str | None = None) -> dict:
    from . import make_loader, open_data
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be jpg or png, got {image_format}")
    if shard_size < 1:
        raise ValueError("--shard-size must be >= 1")
    ds = open_data(spec, split=split, resolution=None, train=False, cfg=cfg, infinite=False, kind=kind)
    ds.raw_resolution = resolution  # size for generated sets (shapes); files are stored as they are
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    loader = make_loader(ds, batch_size=64)

    def samples():
        for batch in loader:
            for img, cap, lab, key in zip(batch["image"], batch["caption"], batch["label"].tolist(),
                                          batch["key"]):
                buf = io.BytesIO()
                img.save(buf, format="JPEG" if image_format == "jpg" else "PNG", quality=95)
                yield {image_format: buf.getvalue(), "txt": cap, "json": {"key": key, "caption": cap, "label": lab}}

    sizes = write_shards(itertools.islice(samples(), limit), outdir, shard_size)
    info = {"source_spec": spec, "split": split, "num_samples": sum(sizes.values()), "sizes": sizes,
            "class_names": ds.class_names, "templates": ds.templates,
            "skipped": sum(loader.skipped_total.values()),
            "skipped_by_reason": dict(loader.skipped_total)}
    (outdir / "info.json").write_text(json.dumps(info, indent=1))
    return {"out": str(outdir), "samples": info["num_samples"], "shards": len(sizes), "skipped": info["skipped"],
            "skipped_by_reason": info["skipped_by_reason"]}
