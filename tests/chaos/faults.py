"""Fault makers shared by tests/chaos and benchmarks/soak.py: killable ``ov3`` processes, a slow
checkpoint write to kill inside, a file-size limit, fuzzed data, hostile files.

Processes: ``Launcher`` forks ``ov3`` commands from a fork server that imported the package once,
so a kill trial costs the run, not a fresh ``import torch`` (seconds on a 2-core machine). The
child is a separate process running ``openvision3.cli.main`` exactly as the ``ov3`` script does;
``benchmarks/soak.py --exec`` runs the real console script instead.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import signal
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
# configs/tiny.yaml made smaller still: 16 px, batch 8, a loss row every step, and the closed word
# list of `minimal` shapes captions instead of the 49,408-token BPE vocabulary, whose caption
# softmax and embeddings are most of a tiny step and of its checkpoint
WORDS = ("[and, red, orange, yellow, green, cyan, blue, purple, pink, circle, square, triangle, star, "
         "diamond, cross, heart, ring]")
# Towers one layer deep and 32 wide (tests/conftest.py's smallest model): a kill trial costs a
# fraction of a second of CPU per step, and what is tested (files, RNG, data position) is the same.
SMALL_MODEL = ["model.encoder.width=32", "model.encoder.layers=1", "model.encoder.heads=2",
               "model.decoder.width=32", "model.decoder.layers=1", "model.decoder.heads=2",
               "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.text.context_length=16",
               "model.caption.width=32", "model.caption.layers=1", "model.caption.heads=2",
               "model.caption.context_length=16", "model.embed_dim=16", "model.vae.block_out_channels=[8,16]",
               "model.vae.norm_num_groups=4"]
FAST = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.warmup_steps=2",
        "data.resolution=16", "model.image_size=16", "model.tokenizer=words", f"model.words={WORDS}",
        "data.shapes_captions=minimal", *SMALL_MODEL]
SMALL_RUN = ["train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"]
VAE_FAST = ["data.resolution=32", "arch.block_out_channels=[8,16]", "arch.norm_num_groups=4",
            "arch.latent_channels=4", "batch_size=4", "eval_samples=8", "log_every=1", "warmup_steps=2",
            "lr=3e-3"]


# ------------------------------------------------------------------------------------ processes
def _child(argv, log_path, slow_write_s, marker_dir, fsize_limit):
    """Body of a launched ``ov3`` process: optional faults, then the CLI, then exit with its code."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if slow_write_s:
        _slow_checkpoint_writes(slow_write_s, Path(marker_dir))
    if fsize_limit:
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    from openvision3 import cli
    try:
        rc = cli.main(list(argv))
    except BaseException:  # a traceback is a finding: keep it in the log, exit 99
        import traceback
        traceback.print_exc()
        rc = 99
    sys_flush()
    os._exit(rc)


def sys_flush():
    import sys
    sys.stdout.flush()
    sys.stderr.flush()


def _slow_checkpoint_writes(delay: float, marker_dir: Path) -> None:
    """Test-only hook: every file written into a ``.tmp_step_N`` directory is followed by a pause
    (and a marker file), so a kill can land between a checkpoint's files."""
    import safetensors.torch
    import torch

    from openvision3.train import checkpoint as ckpt_lib
    count = {"n": 0}

    def pause(path):
        if ".tmp_step_" in str(path):
            count["n"] += 1
            (marker_dir / f"wrote_{count['n']}").write_text(str(path))
            time.sleep(delay)

    def wrap(fn):
        def inner(obj, path, *a, **k):
            out = fn(obj, path, *a, **k)
            pause(path)
            return out
        return inner

    torch.save = wrap(torch.save)
    safetensors.torch.save_file = wrap(safetensors.torch.save_file)  # diffusers' save_pretrained
    ckpt_lib.save_file = wrap(ckpt_lib.save_file)
    ckpt_lib.torch.save = torch.save


PRELOAD = ["faults", "openvision3.cli", "openvision3.train.trainer", "openvision3.train.vae_trainer",
           "openvision3.data", "diffusers", "open_clip"]


class Launcher:
    """Starts ``ov3 ARGV`` processes that can be killed; ``exec_script=True`` runs the installed
    console script (a fresh interpreter each time) instead of forking from the server."""

    def __init__(self, exec_script: bool = False):
        self.exec_script = exec_script
        if not exec_script:
            self.ctx = multiprocessing.get_context("forkserver")
            # the server imports what a training run needs once; every child is forked from it
            self.ctx.set_forkserver_preload(PRELOAD)

    def start(self, argv, log_path, slow_write_s: float = 0.0, marker_dir=None, fsize_limit: int = 0):
        if self.exec_script:
            import subprocess
            import sys
            assert not slow_write_s and not fsize_limit, "hooks need the fork-server launcher"
            log = open(log_path, "wb")
            return _Popen(subprocess.Popen([str(Path(sys.executable).with_name("ov3")), *argv], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=ROOT))
        p = self.ctx.Process(target=_child, args=(list(argv), str(log_path), slow_write_s,
                                                   str(marker_dir) if marker_dir else None, fsize_limit))
        p.start()
        return _Proc(p)


class _Proc:
    def __init__(self, p):
        self.p, self.pid = p, p.pid

    def poll(self):
        return self.p.exitcode

    def wait(self, timeout=None):
        self.p.join(timeout)
        return self.p.exitcode

    def kill9(self):
        if self.p.exitcode is None:
            os.kill(self.pid, signal.SIGKILL)
        return self.wait()


class _Popen:
    def __init__(self, p):
        self.p, self.pid = p, p.pid

    def poll(self):
        return self.p.poll()

    def wait(self, timeout=None):
        try:
            return self.p.wait(timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running
            return None

    def kill9(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        return self.p.wait()


def wait_for(predicate, proc=None, timeout: float = 300.0, interval: float = 0.02) -> bool:
    """Poll until ``predicate()``; False if the process ended or the time ran out first."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(interval)
    return False


# ------------------------------------------------------------------------------------ run state
def loss_rows(run: Path, keys=("loss", "l1", "kl", "mse")) -> dict:
    """{step: {loss terms}} from a run's metrics.jsonl (training rows only)."""
    from openvision3.train.logging import read_metrics
    out = {}
    for r in read_metrics(Path(run) / "metrics.jsonl"):
        terms = {k: v for k, v in r.items() if (k in keys or k.startswith(("loss_", "val_loss")))}
        if terms and not r.get("final"):
            out.setdefault(r["step"], {}).update(terms)
    return out


def checkpoint_states(run: Path, vae: bool = False) -> dict:
    """{step_N: 'ok' | error line} for every checkpoint directory a run has."""
    from openvision3.train import checkpoint as ckpt_lib
    out = {}
    for p in ckpt_lib.list_checkpoints(Path(run) / "checkpoints"):
        try:
            if vae:
                for f in ("state.json", "optimizer.pt", "model/diffusion_pytorch_model.safetensors"):
                    if not (p / f).is_file():
                        raise ckpt_lib.CheckpointError(f"{f} missing")
                json.loads((p / "state.json").read_text())
                ckpt_lib.load_plain(p / "optimizer.pt")
                from safetensors.torch import load_file
                load_file(str(p / "model" / "diffusion_pytorch_model.safetensors"))
            else:
                ckpt_lib.load_checkpoint(p)
            out[p.name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, the caller asserts
            out[p.name] = str(e)
    return out


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


# ------------------------------------------------------------------------------------ hostile files
class CodeRunningPickle:
    """Unpickling this creates ``marker``: proof that a load ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def python_tag_yaml(marker) -> str:
    return f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('payload ran')\"]\n"
