"""Fault makers shared by tests/chaos and benchmarks/soak.py: killable ``ov3`` processes, a slow
checkpoint write to kill inside, a file-size limit, hostile files (fuzzed data: bad_data.py).

Processes: ``Launcher`` forks ``ov3`` commands from a fork server that imported the package once,
so a kill trial costs the run, not a fresh ``import torch`` (seconds on a 2-core machine). The
child is a separate process running ``openvision3.cli.main`` exactly as the ``ov3`` script does;
``benchmarks/soak.py --exec`` runs the real console script instead.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

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
        "data.shapes.captions=minimal", *SMALL_MODEL]
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


def checkpoint_states(run: Path) -> dict:
    """{step_N: 'ok' | error line} for every checkpoint directory a run has (every trainer writes
    the same checkpoint format, train/checkpoint.py)."""
    from openvision3.train import checkpoint as ckpt_lib
    out = {}
    for p in ckpt_lib.list_checkpoints(Path(run) / "checkpoints"):
        try:
            ckpt_lib.load_checkpoint(p)
            out[p.name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, the caller asserts
            out[p.name] = str(e)
    return out


# ------------------------------------------------------------------------------------ hostile files
class CodeRunningPickle:
    """Unpickling this creates ``marker``: proof that a load ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def python_tag_yaml(marker) -> str:
    return f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('payload ran')\"]\n"
