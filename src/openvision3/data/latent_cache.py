"""The latent cache: frozen-VAE latents computed once and reused (MAR's ``main_cache.py`` idea).

    ov3 data cache-latents SPEC --vae V --resolution R --out DIR      # write it
    ov3 train --config C data.latent_cache=DIR                         # train on it

The frozen VAE encoder is a fixed function of the pixels, so every epoch recomputes the same
latents; with a FLUX-sized VAE that encoder is a large share of a training step (``ov3 bench``:
``cache_speedup`` and ``cache_bound``). Its webdataset shards hold per sample the R x R image
exactly as encoded (PNG: the pixel loss needs it), its normalised latent (float32), its flip's
latent, caption, source key and label (docs/performance.md), so a cache directory is also an
ordinary ``wds:DIR`` data set. ``info.json`` keys it by ``cache_key``: training refuses a cache
made with another VAE, convention or resolution (one line naming both).

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
from . import errors as E
from .errors import DataSpecError, SkipSample
from .webdataset import WdsSource

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
    made, fingerprint = info["key"], weights_fingerprint(vae.vae.state_dict())
    for res in sorted(set(int(r) for r in resolutions)):
        want = cache_key(vae, res, fingerprint)
        if any(made.get(f) != want[f] for f in want if f != "vae"):  # the VAE may have moved (path, hub id)
            raise LatentCacheMismatch(f"latent cache '{directory}' was made with {_describe(made)}; "
                                      f"this run needs {_describe(want)}")
    return info


# ------------------------------------------------------------------------------------ writing
def cache_latents(spec: str, vae_source: str, resolution: int, out, convention: str = "scale",
                  shard_size: int = 1000, split: str = "train", batch_size: int = 16,
                  limit: int | None = None, device: str | None = None, kind: str | None = None,
                  progress: bool = True) -> dict:
    """Encode ``spec`` once with the VAE ``vae_source`` at ``resolution`` and write the cache to
    ``out``; returns a summary."""
    from tqdm.auto import tqdm

    from ..config import VAEConfig
    from ..models.vae import FrozenVAE
    from . import make_loader, open_data
    from .pack import write_shards
    from .transforms import to_uint8
    if shard_size < 1:
        raise DataSpecError("--shard-size must be >= 1")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = FrozenVAE(VAEConfig(source=vae_source, convention=convention)).to(dev).eval()
    if resolution % vae.downsample:
        raise DataSpecError(f"--resolution {resolution} is not divisible by the VAE's downsample factor "
                            f"{vae.downsample}")
    # the eval transform (short side to R, centre crop) with no augmentation: one latent per image
    ds = open_data(spec, split=split, resolution=resolution, train=False, infinite=False, kind=kind)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    loader = make_loader(ds, batch_size)

    def samples():
        n = 0
        for batch in loader:
            images = batch["image"] if limit is None else batch["image"][: max(0, limit - n)]
            if not len(images):
                return
            x = images.to(dev)
            lat, lat_flip = vae.encode(x).cpu().numpy(), vae.encode(x.flip(-1)).cpu().numpy()
            # the shard writer encodes by extension: PIL's PNG, numpy's .npy format, JSON
            for i, pixels in enumerate(to_uint8(images).permute(0, 2, 3, 1).numpy()):
                yield {"png": pixels, "txt": batch["caption"][i],
                       "json": {"key": batch["key"][i], "caption": batch["caption"][i],
                                "label": int(batch["label"][i])},
                       LATENT: lat[i], LATENT_FLIP: lat_flip[i]}
            n += len(images)
            bar.update(len(images))
            if limit is not None and n >= limit:
                return

    bar = tqdm(total=limit or ds.num_samples, desc="cache-latents", unit="img", dynamic_ncols=True,
               disable=not progress)
    with bar:
        sizes = write_shards(samples(), outdir, shard_size)
    n = sum(sizes.values())
    if n == 0:
        raise DataSpecError(f"{spec}: no readable samples to cache")
    key, side = cache_key(vae, resolution), resolution // vae.downsample
    latent_shape = [vae.latent_channels, side, side]
    info = {"latent_cache": CACHE_FORMAT, "key": key, "source_spec": spec, "split": split,
            "num_samples": n, "sizes": sizes, "latent_shape": latent_shape, "latent_dtype": "float32",
            "class_names": ds.class_names, "templates": ds.templates,
            "skipped_by_reason": dict(loader.skipped_total)}
    (outdir / "info.json").write_text(json.dumps(info, indent=1))
    return {"out": str(outdir), "samples": n, "shards": len(sizes), "key": key,
            "latent_shape": latent_shape, "skipped_by_reason": info["skipped_by_reason"]}


# ------------------------------------------------------------------------------------ reading
class LatentCacheSource(WdsSource):
    """The cache's shards as a StreamDataset source, plus the per-sample flip pick.

    ``load`` returns a dict payload ``{"image", "latent"}`` in place of a PIL image; the loader's
    collate stacks both (``batch["latent"]``)."""

    augment = False

    def __init__(self, directory, shuffle_buffer: int = 1000, hflip: bool = True):
        super().__init__(str(directory), shuffle_buffer=shuffle_buffer)
        self.hflip = hflip

    def raw_stream(self, epoch, shuffle, seed, rank, world_size, part, num_parts):
        for item in super().raw_stream(epoch, shuffle, seed, rank, world_size, part, num_parts):
            if isinstance(item, dict):  # the flip pick depends on (seed, epoch, key), as augmentation does
                item["__flip_seed__"] = f"{seed}/{epoch}"
            yield item

    def flip_picked(self, raw: dict) -> bool:
        pick = f"{raw.get('__flip_seed__', '0/0')}/{raw['__key__']}/flip"
        return self.hflip and zlib.crc32(pick.encode()) % 2 == 1

    def load(self, raw: dict, resolution):
        if LATENT not in raw or LATENT_FLIP not in raw:
            raise SkipSample(E.NO_IMAGE)
        pil, caption, label, key = super().load(raw, resolution)
        flip = self.flip_picked(raw)
        # [-1, 1] as ToDtype + Normalize compute it
        image = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
        latent = torch.from_numpy(np.load(io.BytesIO(raw[LATENT_FLIP if flip else LATENT]), allow_pickle=False))
        if flip:
            image = image.flip(-1)
        return {"image": image.contiguous(), "latent": latent}, caption, label, key


def open_latent_cache(directory, vae, resolutions, cfg=None, seed: int = 0, rank: int = 0,
                      world_size: int = 1, train: bool = True):
    """A resumable StreamDataset over a latent cache, after checking that it fits ``vae`` and every
    resolution the run trains at. Batches carry ``image`` and ``latent``."""
    from ..config import DataConfig
    from .stream import StreamDataset
    cfg = cfg or DataConfig()
    info = check_cache(directory, vae, resolutions)
    src = LatentCacheSource(directory, shuffle_buffer=cfg.shuffle_buffer, hflip=cfg.hflip)
    # no transform: the payload is already the cached image and latent
    return StreamDataset(src, spec=f"latent_cache:{directory}", split=info.get("split", "train"),
                         resolution=info["key"]["resolution"], train=train, transform_factory=lambda r: None,
                         seed=seed, rank=rank, world_size=world_size, infinite=train)


__all__ = ["cache_latents", "open_latent_cache", "check_cache", "cache_key",
           "LatentCacheMismatch", "LatentCacheSource"]
