"""Two runs writing one run directory: the second is refused with one line naming the holder's host
and pid; a lock left by a dead process is taken over with a warning."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
from .faults import FAST, TINY, wait_for

from openvision3 import cli
from openvision3.train import run_lock as rl


def test_second_run_into_a_live_run_is_refused_then_the_stale_lock_is_taken_over(launcher, tmp_path, capsys):
    run = tmp_path / "run"
    over = [*FAST, "train.steps=2", "train.checkpoint_every=0"]
    first = launcher.start(["train", "--config", TINY, "--out", str(run), *over], tmp_path / "first.txt",
                           slow_write_s=30.0, marker_dir=tmp_path)  # parks in its checkpoint write
    assert wait_for(lambda: (run / ".lock").exists() and str(first.pid) in (run / ".lock").read_text(), first)
    holder = json.loads((run / ".lock").read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == first.pid
    vae_yaml = tmp_path / "vae.yaml"
    vae_yaml.write_text("data: {train: shapes, val: shapes}\n")
    for argv in (["train", "--config", TINY, "--out", str(run), "--resume", "auto", *over],
                 ["train-vae", "--config", str(vae_yaml), "--out", str(run), "--resume", "auto"]):
        assert cli.main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
        assert len(err) == 1 and "is in use by" in err[0] and f"pid {first.pid}" in err[0], err
    assert not (run / "checkpoints" / "step_2").exists()  # the refused runs wrote nothing
    assert first.kill9() == -9  # now the lock is stale: its file names a dead process
    with pytest.warns(UserWarning, match=f"taking over the stale lock of host .* pid {first.pid}"):
        s = cli.main(["train", "--config", TINY, "--out", str(run), "--resume", "auto", *over])
    assert s == 0 and (run / "model").is_dir() and not (run / ".lock").exists()  # released at the end


def test_lock_within_one_process_and_release(tmp_path):
    lock = rl.RunLock(tmp_path).acquire()
    with pytest.raises(rl.RunLockError, match=f"pid {os.getpid()}"):
        rl.RunLock(tmp_path).acquire()  # flock is per open file: a second open conflicts too
    lock.release()
    assert not (tmp_path / ".lock").exists()
    with rl.run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(rl.fcntl, "flock", no_flock)
    lock_file = tmp_path / ".lock"
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "time": 0}))
    with pytest.warns(UserWarning, match="taking over the stale lock"):
        rl.RunLock(tmp_path).acquire().release()
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "time": 0}))  # alive
    with pytest.raises(rl.RunLockError, match="is in use by"):
        rl.RunLock(tmp_path).acquire()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    with pytest.raises(rl.RunLockError, match="on another host .* delete"):
        rl.RunLock(tmp_path).acquire()
