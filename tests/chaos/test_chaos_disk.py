"""A disk that fills while a checkpoint is written: the run stops with one line naming the directory
and the space needed, no partial checkpoint is left, and the previous checkpoint still loads."""
import errno
from collections import namedtuple

import pytest
import torch
from .faults import FAST, TINY

from openvision3.train import checkpoint as ck


def test_file_size_limit_during_a_checkpoint_write(launcher, tiny_run, tmp_path):
    """A real process under RLIMIT_FSIZE (what a quota or a full disk looks like to a writer): it
    resumes step_4, trains to step 6 and cannot write step_6."""
    log = tmp_path / "log.txt"
    proc = launcher.start(["train", "--config", TINY, "--out", str(tiny_run), "--resume", "auto", *FAST,
                           "train.steps=6", "train.checkpoint_every=2", "train.keep_last=2"], log,
                          fsize_limit=256 * 1024)  # metrics and plots fit; a checkpoint's files do not
    assert proc.wait(timeout=600) == 2, log.read_text()[-3000:]
    text = log.read_text()
    errors = [ln for ln in text.splitlines() if ": error: " in ln]
    assert "Traceback" not in text and len(errors) == 1, text[-3000:]
    line = errors[0]
    assert f"cannot write the checkpoint in {tiny_run / 'checkpoints'}" in line and "needs about" in line
    assert "File too large" in line or "cut short" in line
    ckpts = tiny_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_4"]  # nothing partial left
    assert ck.load_checkpoint(ckpts / "step_4")["trainer_state"]["step"] == 4
    assert not (tiny_run / ".lock").exists()  # the lock went with the run


def _save(root, step):
    return ck.save_checkpoint(root, step, model_state={"w": torch.zeros(256, 256)},
                              optimizer_state={"state": {0: {"exp_avg": torch.zeros(256, 256)}}, "param_groups": []},
                              trainer_state={"step": step}, config_yaml="seed: 0\n")


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    _save(tmp_path, 2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100_000, 100_000))
    with pytest.raises(ck.CheckpointError) as e:
        _save(tmp_path, 4)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "needs about 0.6 MB" in msg and "0.1 MB free" in msg
    assert [p.name for p in tmp_path.iterdir()] == ["step_2"] and ck.load_checkpoint(tmp_path / "step_2")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")])
def test_disk_full_midway_removes_the_partial_checkpoint(tmp_path, monkeypatch, error):
    _save(tmp_path, 2)
    real = torch.save

    def fails_on_the_trainer_state(obj, path, *a, **k):
        if str(path).endswith("trainer_state.pt"):
            raise error
        return real(obj, path, *a, **k)
    monkeypatch.setattr(ck.torch, "save", fails_on_the_trainer_state)
    with pytest.raises(ck.CheckpointError, match=r"cannot write the checkpoint in .*needs about") as e:
        _save(tmp_path, 4)
    assert "\n" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["step_2"]
    monkeypatch.setattr(ck.torch, "save", real)
    assert _save(tmp_path, 4).name == "step_4"  # space freed: the next write works


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(ck.torch, "save", lambda *a, **k: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        _save(tmp_path, 2)
    assert not any(tmp_path.iterdir())


def test_a_kill_while_replacing_or_pruning_never_leaves_a_partial_step(tmp_path, monkeypatch):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    calls = []
    monkeypatch.setattr(ck.shutil, "rmtree", lambda p, **k: calls.append(p.name))  # "killed" before deleting
    ck.prune(tmp_path, keep_last=1)
    assert calls and all(c.startswith(".old_step_2") for c in calls)
    monkeypatch.undo()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_4"]  # step_2 was renamed away first
    _save(tmp_path, 6)  # the next save removes the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4", "step_6"]
