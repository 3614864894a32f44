"""The latent cache: frozen-VAE latents computed once and reused (MAR's ``main_cache.py`` idea).

    ov3 data cache-latents SPEC --vae V --resolution R --out DIR      # write it
    ov3 train --config C data.latent_cache=DIR                         # train on it

The frozen VAE encoder is a fixed function of the pixels, so every epoch recomputes the same
latents; with a FLUX-sized VAE that encoder is a large share of a training step (``ov3 bench``:
``cache_speedup`` and ``cache_bound``). The cache stores, per sample, in webdataset shards:

  ``NNNNNNNNN.png``              the R x R image exactly as encoded (lossless: the pixel loss needs it)
  ``NNNNNNNNN.latent.npy``       its normalised latent (the FrozenVAE convention), float32
  ``NNNNNNNNN.latent_flip.npy``  the latent of its horizontal flip
  ``NNNNNNNNN.txt`` / ``.json``  caption; source key and label

and ``info.json`` keyed by the VAE (id and a fingerprint of its weights), the latent convention
and factors, the resolution and the crop. Training refuses a cache made with another VAE,
convention or resolution (one line naming both). A cache directory is also an ordinary
``wds:DIR`` data set (images + captions), e.g. for ``ov3 eval``.

What a cache gives up: the crop is fixed (resize the short side, centre crop, as in evaluation)
and there is no colour jitter, since a latent belongs to one exact image [?] (MAR does the same
[C]). The flip survives: training picks the flipped latent and flips the image at random, per
sample and epoch, seeded like every other augmentation, so a resumed run sees the same picks.
``data.hflip=false`` (captions with left/right words) never picks it.
"""
from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from ..fingerprint import weights_fingerprint
from .errors import DataSpecError, SkipSample

CACHE_FORMAT = 1
CROP = "resize_short_side+center_crop"  # the only crop a cache is made with (the eval transform)
LATENT, LATENT_FLIP = "latent.npy", "latent_flip.npy"


class LatentCacheMismatch(DataSpecError):
    """The cache was made with another VAE, convention, resolution or crop. One line."""


def cache_key(vae, resolution: int, fingerprint: str | None = None) -> dict:
    """What a cache is valid for: the VAE (id + weights), convention and factors, resolution, crop."""
    # the weights themselves: a path or hub id can change while they stay (or the reverse), and an
    # ``inline`` VAE is only defined by its random weights
    return {"vae": vae.source, "vae_fingerprint": fingerprint or weights_fingerprint(vae.vae.state_dict()),
            "convention": vae.convention, "scaling_factor": vae.scaling_factor,
            "shift_factor": vae.shift_factor, "resolution": int(resolution), "crop": CROP}


def _describe(key: dict) -> str:
    return (f"VAE '{key.get('vae')}' (weights {key.get('vae_fingerprint')}), convention "
            f"{key.get('convention')} (scale {key.get('scaling_factor')}, shift {key.get('shift_factor')}), "
            f"{key.get('resolution')} px, crop {key.get('crop')}")


def check_cache(directory, vae, resolutions) -> dict:
    """Read ``DIR/info.json`` and refuse a cache this run cannot use; returns the info."""
    directory = Path(directory)
    info_path = directory / "info.json"
    if not info_path.is_file():
        raise DataSpecError(f"latent cache '{directory}': no info.json (make one with ov3 data cache-latents)")
    info = json.loads(info_path.read_text())
    if info.get("latent_cache") != CACHE_FORMAT:
        raise DataSpecError(f"latent cache '{directory}': info.json is not a latent cache's "
                            f"(format {info.get('latent_cache')!r}, expected {CACHE_FORMAT})")
    made = info["key"]
    fields = ("vae_fingerprint", "convention", "scaling_factor", "shift_factor", "resolution", "crop")
    fingerprint = weights_fingerprint(vae.vae.state_dict())
    for res in sorted(set(int(r) for r in resolutions)):
        want = cache_key(vae, res, fingerprint)
        if any(made.get(f) != want[f] for f in fields):
            raise LatentCacheMismatch(f"latent cache '{directory}' was made with {_describe(made)}; "
                                      f"this run needs {_describe(want)}")
    return info


# ------------------------------------------------------------------------------------ writing
def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensors made by the eval transform from uint8 -> the exact uint8 pixels (B,H,W,3)."""
    return ((images.clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def cache_latents(spec: str, vae_source: str, resolution: int, out, convention: str = "scale",
                  shard_size: int = 1000, split: str = "train", batch_size: int = 16,
                  limit: int | None = None, device: str | None = None, cfg=None, kind: str | None = None,
                  vae=None, progress: bool = True) -> dict:
    """Encode ``spec`` once with the VAE ``vae_source`` (or a given FrozenVAE ``vae``) at
    ``resolution`` and write the cache to ``out``; returns a summary."""
    import webdataset
    from PIL import Image

    from ..config import VAEConfig
    from ..models.vae import FrozenVAE
    from . import make_loader, open_data
    if shard_size < 1:
        raise DataSpecError("--shard-size must be >= 1")
    if vae is None:
        vae = FrozenVAE(VAEConfig(source=vae_source, convention=convention))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = vae.to(dev).eval()
    if resolution % vae.downsample:
        raise DataSpecError(f"--resolution {resolution} is not divisible by the VAE's downsample factor "
                            f"{vae.downsample}")
    # the eval transform (short side to R, centre crop) with no augmentation: one latent per image
    ds = open_data(spec, split=split, resolution=resolution, train=False, cfg=cfg, infinite=False, kind=kind)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    loader = make_loader(ds, batch_size)
    sizes: dict[str, int] = {}
    writer, n = None, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=limit or ds.num_samples, desc="cache-latents", unit="img", dynamic_ncols=True)
    try:
        for batch in loader:
            images = batch["image"]
            if limit is not None:
                images = images[: max(0, limit - n)]
            if not len(images):
                break
            x = images.to(dev)
            lat = vae.encode(x).cpu().numpy()
            lat_flip = vae.encode(x.flip(-1)).cpu().numpy()
            pixels = _to_uint8(images)
            for i in range(len(images)):
                if n % shard_size == 0:
                    if writer is not None:
                        writer.close()
                    name = f"{n // shard_size:06d}.tar"
                    writer, sizes[name] = webdataset.TarWriter(str(outdir / name)), 0
                png = io.BytesIO()
                Image.fromarray(pixels[i]).save(png, format="PNG")
                writer.write({"__key__": f"{n:09d}", "png": png.getvalue(), "txt": batch["caption"][i],
                              "json": {"key": batch["key"][i], "caption": batch["caption"][i],
                                       "label": int(batch["label"][i])},
                              LATENT: _npy(lat[i]), LATENT_FLIP: _npy(lat_flip[i])})
                sizes[name] += 1
                n += 1
            if bar is not None:
                bar.update(len(images))
            if limit is not None and n >= limit:
                break
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    if n == 0:
        raise DataSpecError(f"{spec}: no readable samples to cache")
    key = cache_key(vae, resolution)
    info = {"latent_cache": CACHE_FORMAT, "key": key, "source_spec": spec, "split": split,
            "num_samples": n, "sizes": sizes, "latent_shape": list(lat.shape[1:]), "latent_dtype": "float32",
            "class_names": ds.class_names, "templates": ds.templates,
            "skipped_by_reason": dict(loader.skipped_total)}
    (outdir / "info.json").write_text(json.dumps(info, indent=1))
    return {"out": str(outdir), "samples": n, "shards": len(sizes), "key": key,
            "latent_shape": info["latent_shape"], "skipped_by_reason": info["skipped_by_reason"]}


# ------------------------------------------------------------------------------------ reading
class LatentCacheSource:
    """A StreamDataset source over a cache: the wds shards, plus the per-sample flip pick.

    ``load`` returns a dict payload ``{"image", "latent"}`` in place of a PIL image; the loader's
    collate stacks both (``batch["latent"]``)."""

    augment = False

    def __init__(self, directory, shuffle_buffer: int = 1000, hflip: bool = True):
        from .webdataset import WdsSource
        self.directory, self.hflip = Path(directory), hflip
        self._wds = WdsSource(str(self.directory), shuffle_buffer=shuffle_buffer)
        self.num_samples, self.class_names, self.templates = (
            self._wds.num_samples, self._wds.class_names, self._wds.templates)

    def raw_stream(self, epoch, shuffle, seed, rank, world_size, part, num_parts):
        for item in self._wds.raw_stream(epoch, shuffle, seed, rank, world_size, part, num_parts):
            if isinstance(item, dict):  # the flip pick depends on (seed, epoch, key), as augmentation does
                item["__flip_seed__"] = f"{seed}/{epoch}"
            yield item

    def flip_picked(self, raw: dict) -> bool:
        if not self.hflip:
            return False
        return zlib.crc32(f"{raw.get('__flip_seed__', '0/0')}/{raw['__key__']}/flip".encode()) % 2 == 1

    def load(self, raw: dict, resolution):
        from .imageio import decode_caption
        from . import errors as E
        if "png" not in raw or LATENT not in raw or LATENT_FLIP not in raw:
            raise SkipSample(E.NO_IMAGE)
        flip = self.flip_picked(raw)
        pixels = np.array(_decode_png(raw["png"]))
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)  # as ToDtype+Normalize
        latent = torch.from_numpy(np.load(io.BytesIO(raw[LATENT_FLIP if flip else LATENT]), allow_pickle=False))
        if flip:
            image = image.flip(-1)
        meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else {}
        caption = decode_caption(raw["txt"]) if "txt" in raw else meta.get("caption", "")
        label = meta.get("label", -1)
        return {"image": image.contiguous(), "latent": latent}, caption, label, raw["__key__"]


def _decode_png(data: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(data)).convert("RGB")


def open_latent_cache(directory, vae, resolutions, cfg=None, seed: int = 0, rank: int = 0,
                      world_size: int = 1, train: bool = True):
    """A resumable StreamDataset over a latent cache, after checking that it fits ``vae`` and every
    resolution the run trains at. Batches carry ``image`` and ``latent``."""
    from ..config import DataConfig
    from .stream import StreamDataset
    cfg = cfg or DataConfig()
    info = check_cache(directory, vae, resolutions)
    src = LatentCacheSource(directory, shuffle_buffer=cfg.shuffle_buffer, hflip=cfg.hflip)
    return StreamDataset(src, spec=f"latent_cache:{directory}", split=info.get("split", "train"),
                         resolution=info["key"]["resolution"], train=train,
                         transform_factory=lambda r: _identity, seed=seed, rank=rank,
                         world_size=world_size, infinite=train)


def _identity(x):
    return x


__all__ = ["cache_latents", "open_latent_cache", "check_cache", "cache_key",
           "LatentCacheMismatch", "LatentCacheSource"]
