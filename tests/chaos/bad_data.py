"""Fuzzed data for tests/chaos and benchmarks/soak.py: images in every awkward format or broken,
bad captions, and image folders / webdataset shards made of them, each sample with the outcome
the loaders must give it (kept, or skipped and counted).
"""
from __future__ import annotations

import io
import random
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


# ------------------------------------------------------------------------------------ images
def _img(rng, size=None, mode="RGB"):
    w, h = size or (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[: h // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # a flat top half: a visible orientation
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _save(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A ~90-byte PNG whose header declares width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _cut(data: bytes, rng) -> bytes:
    return data[: int(len(data) * rng.uniform(0.3, 0.7))]


# Each kind: (extension, make(rng) -> (image bytes, expected RGB array or None), outcome).
# outcome "ok": decoded and equal to the expected array (within JPEG tolerance); else the skip reason.
def _k_wrong_ext(rng):
    img = _img(rng)
    return _save(img, "PNG"), np.asarray(img)


def _k_cmyk(rng):
    img = _img(rng).convert("CMYK")
    data = _save(img, "JPEG", quality=95)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _k_png16(rng):
    hi = rng.integers(0, 256, (16, 20), dtype=np.uint16)
    arr = (hi << 8) | rng.integers(0, 256, (16, 20), dtype=np.uint16)
    data = _save(Image.fromarray(arr), "PNG")
    return data, np.repeat((arr >> 8).astype(np.uint8)[..., None], 3, axis=2)


def _k_grey(rng):
    img = _img(rng, mode="L")
    return _save(img, "PNG"), np.asarray(img.convert("RGB"))


def _k_bilevel(rng):
    img = _img(rng, mode="1")
    return _save(img, "PNG"), np.asarray(img.convert("RGB"))


def _k_palette_alpha(rng):
    img = _img(rng).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    data = _save(img, "PNG", transparency=0)
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.float64)
    a = rgba[..., 3:] / 255.0
    return data, np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)  # on white


def _k_rgba(rng):
    img = _img(rng).convert("RGBA")
    arr = np.asarray(img).copy()
    arr[..., 3] = rng.integers(0, 256, arr.shape[:2], dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    a = arr[..., 3:].astype(np.float64) / 255.0
    return _save(img, "PNG"), np.round(arr[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def _k_exif_rotated(rng):
    img = _img(rng, size=(int(rng.integers(16, 40)), 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _save(img, "JPEG", quality=95, exif=exif)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270))


def _k_animated_gif(rng):
    frames = [_img(rng, size=(20, 20)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16) for _ in range(3)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _k_webp(rng):
    img = _img(rng)
    return _save(img, "WEBP", lossless=True), np.asarray(img)


def _k_zero(rng):
    return b"", None


def _k_trunc_png(rng):
    return _cut(_save(_img(rng, size=(48, 48)), "PNG"), rng), None


def _k_trunc_jpeg(rng):
    return _cut(_save(_img(rng, size=(48, 48)), "JPEG", quality=90), rng), None


def _k_trunc_webp(rng):
    return _cut(_save(_img(rng, size=(48, 48)), "WEBP", quality=90), rng), None


def _k_bomb(rng):
    side = int(rng.integers(20000, 65000))
    return png_bomb(side, side), None


def _k_not_image(rng):
    return f"<html>not an image {rng.integers(1e9)}</html>\n".encode(), None


IMAGE_KINDS = {  # name: (extension, maker, outcome)
    "wrong_extension": ("jpg", _k_wrong_ext, "ok"),
    "cmyk_jpeg": ("jpg", _k_cmyk, "ok"),
    "png_16bit_grey": ("png", _k_png16, "ok"),
    "greyscale": ("png", _k_grey, "ok"),
    "bilevel": ("png", _k_bilevel, "ok"),
    "palette_transparency": ("png", _k_palette_alpha, "ok"),
    "rgba_alpha": ("png", _k_rgba, "ok"),
    "exif_rotated": ("jpg", _k_exif_rotated, "ok"),
    "animated_gif": ("gif", _k_animated_gif, "ok"),
    "webp": ("webp", _k_webp, "ok"),
    "zero_byte": ("png", _k_zero, "empty_file"),
    "truncated_png": ("png", _k_trunc_png, "truncated_image"),
    "truncated_jpeg": ("jpg", _k_trunc_jpeg, "truncated_image"),
    "truncated_webp": ("webp", _k_trunc_webp, "truncated_image"),
    "decompression_bomb": ("png", _k_bomb, "decompression_bomb"),
    "not_an_image": ("png", _k_not_image, "not_an_image"),
}
# caption kinds: (bytes maker, outcome, expected caption maker)
CAPTION_KINDS = {
    "caption_10kB": (lambda rng, key: ("word " * 2048).strip().encode(), "ok"),
    "caption_bom_crlf": (lambda rng, key: f"\ufeff\r\n  caption of {key}\r\nsecond line".encode(), "ok"),
    "caption_not_utf8": (lambda rng, key: "caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"), "caption_not_utf8"),
    "caption_empty": (lambda rng, key: b"", "empty_caption"),
    "caption_blank_lines": (lambda rng, key: b"\n  \n\t\n", "empty_caption"),
    "caption_missing": (None, "no_caption"),
}


def expected_caption(kind: str, key: str) -> str:
    return ("word " * 2048).strip() if kind == "caption_10kB" else f"caption of {key}"


def make_samples(n_per_kind: int = 12, seed: int = 0) -> list[dict]:
    """Fuzzed samples: every image kind with a plain caption, every caption kind with a plain PNG.
    Each: {key, kind, ext, image, caption (bytes or None), outcome, expected (array or None)}."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, (ext, make, outcome) in IMAGE_KINDS.items():
        for i in range(n_per_kind):
            key = f"{kind}_{i:03d}"
            data, expected = make(rng)
            out.append({"key": key, "kind": kind, "ext": ext, "image": data, "caption": f"caption of {key}".encode(),
                        "outcome": outcome, "expected": expected})
    for kind, (make, outcome) in CAPTION_KINDS.items():
        for i in range(n_per_kind):
            key = f"{kind}_{i:03d}"
            img = _img(rng)
            out.append({"key": key, "kind": kind, "ext": "png", "image": _save(img, "PNG"),
                        "caption": make(rng, key) if make else None, "outcome": outcome,
                        "expected": np.asarray(img)})
    return out


def write_folder(root: Path, samples) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in samples:
        (root / f"{s['key']}.{s['ext']}").write_bytes(s["image"])
        if s["caption"] is not None:
            (root / f"{s['key']}.txt").write_bytes(s["caption"])
    return root


def _tar_bytes(members, gzip: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 0
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _members(s) -> list:
    m = [(f"{s['key']}.{s['ext'] if s['ext'] != 'gif' else 'png'}", s["image"])]  # wds reads jpg/png/webp
    if s["caption"] is not None:
        m.append((f"{s['key']}.txt", s["caption"]))
    return m


WDS_KINDS = {  # tar-level faults (besides the image/caption kinds inside members)
    "member_missing_image": "no_image",
    "duplicate_key": "duplicate_key",
    "tar_truncated_mid_member": "tar_error",
    "gzip_compressed_tar": "ok",
}


def write_shards(root: Path, samples, per_shard: int = 40, seed: int = 0) -> tuple[Path, list[dict]]:
    """The samples as webdataset shards, plus tar-level faults. Returns (dir, extra expectations):
    extra rows {key, kind, outcome} for samples that exist only in the tar faults."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = [s for s in samples if s["kind"] != "animated_gif"]  # wds has no gif key
    extra = []
    for i in range(0, len(samples), per_shard):
        members = [m for s in samples[i:i + per_shard] for m in _members(s)]
        (root / f"shard_{i // per_shard:04d}.tar").write_bytes(_tar_bytes(members))
    good = _img(np.random.default_rng(seed))
    png = _save(good, "PNG")
    # captions without images
    (root / "fault_missing_image.tar").write_bytes(_tar_bytes(
        [(f"noimg_{j:03d}.txt", b"a caption with no image") for j in range(12)]))
    extra += [{"key": f"noimg_{j:03d}", "kind": "member_missing_image", "outcome": "no_image"} for j in range(12)]
    # duplicate keys: each key again right after itself, and later as a lone image and a lone caption
    dup = []
    for j in range(6):
        dup += [(f"dup_{j:03d}.png", png), (f"dup_{j:03d}.txt", b"first copy")] * 2
    dup += [(f"dup_{j:03d}.png", png) for j in range(6)] + [(f"dup_{j:03d}.txt", b"late copy") for j in range(6)]
    (root / "fault_duplicates.tar").write_bytes(_tar_bytes(dup))
    extra += [{"key": f"dup_{j:03d}", "kind": "duplicate_key", "outcome": "ok", "caption": "first copy"}
              for j in range(6)]
    extra += [{"key": f"dup_{j:03d}#{c}", "kind": "duplicate_key", "outcome": "duplicate_key"}
              for j in range(6) for c in (2, 3, 4)]  # the repeat right after it, the late image, the late caption
    # a tar cut in the middle of a member: the samples before it are read, the shard counts one tar_error
    members = [m for j in range(10) for m in [(f"cut_{j:03d}.png", png), (f"cut_{j:03d}.txt", b"before the cut")]]
    raw, cut_at = _tar_bytes(members), rng.randint(5, 8)
    (root / "fault_truncated.tar").write_bytes(raw[:_offset_inside_member(raw, f"cut_{cut_at:03d}.png")])
    extra += [{"key": f"cut_{j:03d}", "kind": "tar_truncated_mid_member", "outcome": "ok", "caption": "before the cut"}
              for j in range(cut_at)]
    extra.append({"key": "fault_truncated.tar", "kind": "tar_truncated_mid_member", "outcome": "tar_error"})
    # gzip-compressed tar: read like any other shard
    (root / "fault_gzip.tar.gz").write_bytes(_tar_bytes(
        [m for j in range(10) for m in [(f"gz_{j:03d}.png", png), (f"gz_{j:03d}.txt", b"gzipped")]], gzip=True))
    extra += [{"key": f"gz_{j:03d}", "kind": "gzip_compressed_tar", "outcome": "ok", "caption": "gzipped"}
              for j in range(10)]
    return root, extra


def _offset_inside_member(raw: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        ti = tf.getmember(name)
    return ti.offset_data + ti.size // 2
