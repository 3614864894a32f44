"""Checkpoint files: atomic save, pruning, RNG round trip, damaged-newest fallback."""
import random
import warnings

import numpy as np
import pytest
import torch

from openvision3.train import checkpoint as ck


def _save(root, step, keep_last=0):
    return ck.save_checkpoint(root, step, model_state={"w": torch.full((2, 2), float(step))},
                              optimizer_state={"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]},
                              trainer_state={"step": step, "rng": [ck.rng_state()]}, config_yaml="seed: 0\n",
                              keep_last=keep_last)


def test_save_load_prune(tmp_path):
    for s in (2, 4, 6):
        _save(tmp_path, s, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_4", "step_6"]
    assert not list(tmp_path.glob(".tmp_*"))  # written to a temp dir, then renamed
    c = ck.load_checkpoint(tmp_path / "step_6")
    assert c["model"]["w"][0, 0] == 6 and c["trainer_state"]["step"] == 6
    assert c["meta"]["step"] == 6 and "git_commit" in c["meta"] and "version" in c["meta"]


def test_rng_round_trip(tmp_path):
    _save(tmp_path, 1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = ck.load_checkpoint(tmp_path / "step_1")["trainer_state"]["rng"][0]  # loaded weights_only
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_damaged_newest_falls_back(tmp_path):
    _save(tmp_path / "checkpoints", 3)
    newest = _save(tmp_path / "checkpoints", 6)
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.warns(UserWarning, match="step_6 is damaged"):
        c = ck.resolve_resume("auto", tmp_path)
    assert c["trainer_state"]["step"] == 3
    (newest / "optimizer.pt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ck.resolve_resume(str(tmp_path), tmp_path)["trainer_state"]["step"] == 3


def test_no_checkpoints_yet_starts_over_but_a_missing_path_is_one_clear_error(tmp_path):
    # a requeued job always passes --resume auto, also when it was killed before its first checkpoint
    with pytest.warns(UserWarning, match="no checkpoint .* yet; starting from step 0"):
        assert ck.resolve_resume("auto", tmp_path) is None
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.resolve_resume(str(tmp_path / "nope"), tmp_path)
