"""kill -9 at random instants, also inside a checkpoint write: ``--resume auto`` always starts from
a complete checkpoint and every per-step loss equals the uninterrupted run's exactly (CPU).

One run directory takes several kills in a row (each relaunch resumes the previous one's
checkpoint), then finishes in this process; its metrics must equal a reference run's, step by
step. benchmarks/soak.py runs the same trials by the hundred. A polite stop (SIGTERM, SIGUSR1)
is tested here too: one checkpoint, exit code 3, and the same exact resume.
"""
import random
import signal
import time
import warnings

from . import faults
from .faults import FAST, TINY, VAE_FAST

from openvision3.config import get_config
from openvision3.train.trainer import train
from openvision3.train.vae_config import get_vae_config
from openvision3.train.vae_trainer import train_vae

TRAIN_OVER = ["train.steps=6", "train.checkpoint_every=2", "train.keep_last=2"]
VAE_OVER = ["steps=8", "checkpoint_every=2", "keep_last=2"]


def kill_chain(launcher, tmp_path, argv, kills: int, in_write: set, rng, span_s: float, total_steps: int):
    """Launch ``ov3 argv --resume auto`` ``kills`` times, killing each with SIGKILL: at a random
    instant of training (soon after a random step's metrics row, as benchmarks/soak.py does:
    a kill timed by the clock often came after a fast launch had already finished), or (trial
    index in ``in_write``) between two files of a checkpoint write. Returns one record per trial."""
    run = tmp_path / "run"
    records = []
    for trial in range(kills):
        hook = trial in in_write
        done = max((int(k.split("_")[1]) for k, v in faults.checkpoint_states(run).items() if v == "ok"),
                   default=0)
        marks = tmp_path / f"marks_{trial}"
        marks.mkdir()
        proc = launcher.start([*argv, "--out", str(run), "--resume", "auto"], tmp_path / f"log_{trial}.txt",
                              slow_write_s=0.25 if hook else 0.0, marker_dir=marks)
        if hook:  # wait for the first file of a checkpoint, then kill within the next few files
            reached = faults.wait_for(lambda: any(marks.iterdir()), proc)
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            target = rng.randint(done + 1, max(done + 1, total_steps - 2))  # steps left for later trials
            reached = faults.wait_for(lambda: max(faults.loss_rows(run), default=0) >= target, proc,
                                      timeout=3 * span_s + 60, interval=0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        partial = sorted(p.name for p in (run / "checkpoints").glob(".tmp_step_*")) if (run / "checkpoints").exists() else []
        code = proc.kill9()
        states = faults.checkpoint_states(run)
        records.append({"trial": trial, "in_write": hook, "reached_write": reached, "exit": code,
                        "partial_at_kill": partial, "checkpoints": states})
        # Whatever the instant, every step_N on disk is complete and loads.
        assert all(v == "ok" for v in states.values()), (records[-1], (tmp_path / f"log_{trial}.txt").read_text()[-2000:])
    return run, records


def test_train_kill9_at_random_instants_resumes_exactly(launcher, tmp_path):
    t0 = time.perf_counter()
    train(get_config(TINY, FAST + TRAIN_OVER), tmp_path / "ref")
    span = time.perf_counter() - t0
    argv = ["train", "--config", TINY, *FAST, *TRAIN_OVER]
    run, records = kill_chain(launcher, tmp_path, argv, kills=5, in_write={1, 3}, rng=random.Random(20), span_s=span,
                              total_steps=6)
    assert all(r["exit"] == -9 or r["exit"] == 0 for r in records), records
    assert any(r["in_write"] and r["partial_at_kill"] for r in records), records  # a kill inside a write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no checkpoint yet" when every kill came before the first one
        train(get_config(TINY, FAST + TRAIN_OVER), run, resume="auto")
    assert not list((run / "checkpoints").glob(".*")), "leftovers of killed writes are cleaned up"
    ref, got = faults.loss_rows(tmp_path / "ref"), faults.loss_rows(run)
    assert sorted(got) == list(range(1, 7)) and got == ref  # exactly, step by step, every term


def test_train_vae_kill9_at_random_instants_resumes_exactly(launcher, tmp_path):
    yaml = tmp_path / "vae_tiny.yaml"
    yaml.write_text("data: {train: shapes, val: shapes}\n")
    cfg = get_vae_config(str(yaml), VAE_FAST + VAE_OVER)
    t0 = time.perf_counter()
    train_vae(cfg, tmp_path / "ref", progress=False)
    span = time.perf_counter() - t0
    argv = ["train-vae", "--config", str(yaml), *VAE_FAST, *VAE_OVER]
    run, records = kill_chain(launcher, tmp_path, argv, kills=2, in_write={1}, rng=random.Random(21),
                              span_s=span, total_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_vae(get_vae_config(str(yaml), VAE_FAST + VAE_OVER), run, resume="auto", progress=False)
    ref, got = faults.loss_rows(tmp_path / "ref"), faults.loss_rows(run)
    assert sorted(got) == list(range(1, 9)) and got == ref


def signal_mid_run(launcher, tmp_path, argv, run, sig, steps: int) -> None:
    """Launch ``ov3 argv --out run``, send ``sig`` once a few metrics rows are written, and check
    the stop: exit 3, one 'stopped by SIG... --resume auto' line, no traceback, no model/, and
    exactly one checkpoint, strictly inside the run."""
    import os
    log_path = tmp_path / "log.txt"
    proc = launcher.start([*argv, "--out", str(run)], log_path)
    rows = run / "metrics.jsonl"
    assert faults.wait_for(lambda: rows.is_file() and len(rows.read_text().splitlines()) >= 3, proc)
    os.kill(proc.pid, sig)
    assert proc.wait(120) == 3, log_path.read_text()[-2000:]
    log = log_path.read_text()
    lines = [line for line in log.splitlines() if line.startswith(f"ov3 {argv[0]}:")]
    assert len(lines) == 1 and f"stopped by {sig.name}" in lines[0] and "--resume auto" in lines[0], log
    assert "Traceback" not in log and not (run / "model").exists()
    (stopped_at,) = [p.name for p in (run / "checkpoints").glob("step_*")]
    assert 0 < int(stopped_at.split("_")[1]) < steps


def test_train_vae_sigterm_checkpoints_says_so_and_resumes_exactly(launcher, tmp_path):
    """SIGTERM (pre-emption) is not a kill: the VAE run checkpoints at the end of its step, exits 3
    with one 'stopped' line and writes no model/; --resume auto then finishes with the reference's
    losses, step by step."""
    yaml = tmp_path / "vae_tiny.yaml"
    yaml.write_text("data: {train: shapes, val: shapes}\n")
    over = VAE_FAST + ["steps=40", "checkpoint_every=0"]  # only the signal writes a checkpoint
    train_vae(get_vae_config(str(yaml), over), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    signal_mid_run(launcher, tmp_path, ["train-vae", "--config", str(yaml), *over], run, signal.SIGTERM, 40)
    r = train_vae(get_vae_config(str(yaml), over), run, resume="auto", progress=False)
    assert r["status"] == "finished" and (run / "model" / "config.json").is_file()
    ref, got = faults.loss_rows(tmp_path / "ref"), faults.loss_rows(run)
    assert sorted(got) == list(range(1, 41)) and got == ref


def test_train_sigusr1_checkpoints_exits_3_and_resumes_exactly(launcher, tmp_path):
    """SLURM's warning before the time limit (SIGUSR1): `ov3 train` checkpoints at the end of the
    step and exits 3 (not 0: a requeue script must tell a stop from the end) with one line;
    --resume auto then finishes with the reference's losses, step by step."""
    over = FAST + ["train.steps=40", "train.checkpoint_every=1000"]  # only the signal writes one mid-run
    train(get_config(TINY, over), tmp_path / "ref")
    run = tmp_path / "run"
    signal_mid_run(launcher, tmp_path, ["train", "--config", TINY, *over], run, signal.SIGUSR1, 40)
    train(get_config(TINY, over), run, resume="auto")
    ref, got = faults.loss_rows(tmp_path / "ref"), faults.loss_rows(run)
    assert sorted(got) == list(range(1, 41)) and got == ref
