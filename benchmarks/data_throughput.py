"""Data throughput (samples/s): shapes generation, folder decoding, wds decoding.

    .venv/bin/python benchmarks/data_throughput.py [--samples 512] [--json]

Folder and wds inputs are made once from `shapes` (PNG, 256 px) in a temporary directory.
Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from openvision3.data import make_loader, open_data
from openvision3.data.pack import pack_data


def _rate(spec: str, resolution: int, workers: int, samples: int, batch: int = 32) -> float:
    ds = open_data(spec, split="val", resolution=resolution, train=True, seed=0)
    it = iter(make_loader(ds, batch, num_workers=workers))
    next(it)  # worker start-up excluded
    t, n = time.perf_counter(), 0
    while n < samples:
        n += len(next(it)["caption"])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wds_dir, folder = Path(tmp) / "wds", Path(tmp) / "folder"
        pack_data("shapes?n=1024", str(wds_dir), shard_size=128, split="val", resolution=256,
                  image_format="png")
        folder.mkdir()
        for b in make_loader(open_data("shapes?n=1024", split="val", resolution=None, train=False), 64):
            for img, cap, key in zip(b["image"], b["caption"], b["key"]):
                img.save(folder / f"{key}.png")
                (folder / f"{key}.txt").write_text(cap)
        rows = []
        for name, spec in (("shapes (generate)", "shapes"), ("folder (PNG decode)", f"folder:{folder}"),
                           ("wds (PNG decode)", f"wds:{wds_dir}")):
            for res in (128, 256):
                for w in (0, 2):
                    rows.append({"source": name, "resolution": res, "workers": w,
                                 "samples_per_s": round(_rate(spec, res, w, args.samples), 1)})
    print("| source | px | workers | samples/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['resolution']} | {r['workers']} | {r['samples_per_s']} |")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
