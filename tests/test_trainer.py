"""The training loop on configs/tiny.yaml (nano model, inline VAE, 16-32 px, a few steps)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openvision3 import cli
from openvision3.config import ConfigError, get_config
from openvision3.train.logging import read_metrics
from openvision3.train.run import TrainError
from openvision3.train.trainer import build_stages, train

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FAST = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.warmup_steps=2",
        "data.resolution=16", "model.image_size=16"]


def tiny(*overrides):
    return get_config(TINY, FAST + list(overrides))


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(Path(run) / "metrics.jsonl") if "loss" in r}


def test_loss_falls_and_run_dir_is_complete(tmp_path):
    s = train(tiny("train.steps=8", "train.checkpoint_every=4", "train.keep_last=1"), tmp_path / "run")
    run = tmp_path / "run"
    loss = losses(run)
    assert s["status"] == "finished" and s["step"] == 8 and sorted(loss) == list(range(1, 9))
    assert loss[8] < loss[1] - 0.5, loss
    rows = read_metrics(run / "metrics.jsonl")
    for key in ("lr", "grad_norm", "samples_per_s", "data_wait_frac", "skipped", "loss_caption", "loss_rec"):
        assert key in rows[0]
    assert "val_loss" in rows[-1] and s["val"]["val_loss"] > 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_8"]  # keep_last=1
    for f in ("config.yaml", "losses.png", "model/model.safetensors", "model/config.yaml"):
        assert (run / f).exists(), f
    assert list((run / "tensorboard").iterdir())
    from openvision3.models.openvision3 import OpenVision3
    OpenVision3.from_pretrained(run / "model")  # the export loads


def test_a_word_list_missing_caption_words_warns_once(tmp_path):
    words = "[red, orange, yellow, green, cyan, blue, purple, pink, circle, square, triangle, star]"
    cfg = tiny("train.steps=2", "model.tokenizer=words", f"model.words={words}",
               "data.shapes.captions=minimal", "train.checkpoint_every=0")
    with pytest.warns(UserWarning, match=r"model.words lacks .*'heart'") as caught:
        train(cfg, tmp_path / "run")
    assert sum("model.words lacks" in str(w.message) for w in caught) == 1
    # checkpoint_every=0: no periodic checkpoints, only the final one
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_2"]


def test_kill9_then_resume_reproduces_every_loss(tmp_path):
    over = ["train.steps=4", "train.checkpoint_every=2"]
    train(tiny(*over), tmp_path / "ref")
    # The same run in a subprocess, killed with SIGKILL once its step-2 checkpoint exists.
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "openvision3.cli", "train", "--config", TINY, "--out", str(run),
                             *FAST, *over, "train.precision=auto"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "step_2").exists()
    assert not (run / "model").exists()  # it really died before the end
    train(tiny(*over), run, resume="auto")
    assert losses(run) == losses(tmp_path / "ref")  # exactly, step by step


def test_stage_switch_changes_resolution_tokens_and_schedule(tmp_path):
    cfg = tiny("train.warmup_steps=1", "train.stages=[{name: a, resolution: 16, steps: 2}, "
               "{name: b, resolution: 32, steps: 2, batch_size: 4, lr: 5.0e-4}]")
    s = train(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [(r["stage"], r["resolution"], r["tokens"]) for r in rows] == [
        ("a", 16, 16), ("a", 16, 16), ("b", 32, 64), ("b", 32, 64)]
    assert rows[2]["lr"] == pytest.approx(5e-4)  # stage b restarts its schedule (warmup 1 -> peak)
    assert s["step"] == 4
    stages = build_stages(cfg)
    assert [(x.start, x.steps, x.batch_size) for x in stages] == [(0, 2, 8), (2, 2, 4)]


def test_nan_step_is_skipped_and_counted(tmp_path, monkeypatch):
    from openvision3.losses import OpenVision3Loss
    combine, calls = OpenVision3Loss.combine, {"n": 0}

    def flaky(self, terms):
        out = combine(self, terms)
        calls["n"] += 1
        if calls["n"] == 2:  # the second training step
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(OpenVision3Loss, "combine", flaky)
    s = train(tiny("train.steps=3", "train.checkpoint_every=100"), tmp_path / "run")
    assert s["status"] == "finished" and s["bad_steps"] == 1
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[1]["bad_steps"] == 1 and rows[2]["loss"] == rows[2]["loss"]  # finite again


def test_consecutive_nan_steps_stop_the_run(tmp_path, monkeypatch):
    from openvision3.losses import OpenVision3Loss
    combine = OpenVision3Loss.combine
    monkeypatch.setattr(OpenVision3Loss, "combine",
                        lambda self, t: {**combine(self, t), "loss": combine(self, t)["loss"] * float("nan")})
    with pytest.raises(TrainError, match=r"2 non-finite steps in a row \(last at step 2\); lower the learning rate; "
                                         r"last good checkpoint: none"):
        train(tiny("train.steps=5", "train.max_bad_steps=2"), tmp_path / "run")


# --- bad input: one clear line, exit != 0, nothing overwritten -----------------------------------
def _cli(capsys, *argv):
    rc = cli.main(["train", "--config", TINY, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_bad_inputs(tmp_path, capsys):
    rc, err = _cli(capsys, "--out", str(tmp_path / "a"), "train.stpes=3")
    assert rc == 2 and "unknown config key 'train.stpes'" in err and "train.steps" in err
    rc, err = _cli(capsys, "--out", str(tmp_path / "b"), "data.train=folder:/does/not/exist")
    assert rc == 2 and "/does/not/exist" in err
    rc, err = _cli(capsys, "--out", str(tmp_path / "c"), "--resume", str(tmp_path / "no_such_run"))
    assert rc == 2 and "does not exist" in err
    rc, err = _cli(capsys, "--out", str(tmp_path / "d"), "train.batch_size=8", "train.grad_accum_steps=3")
    assert rc == 2 and "not divisible" in err
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        build_stages(tiny(), world_size=3)
    existing = tmp_path / "e"
    existing.mkdir()
    (existing / "metrics.jsonl").write_text("precious\n")
    rc, err = _cli(capsys, "--out", str(existing), *FAST, "train.steps=1")
    assert rc == 2 and "--resume auto" in err and "--overwrite" in err
    assert (existing / "metrics.jsonl").read_text() == "precious\n" and len(list(existing.iterdir())) == 1


def test_paper_configs_still_load():
    for name in ("ov3_b2", "ov3_l2", "ov3_b2_stage1_128", "ov3_b2_stage2_256"):
        stages = build_stages(get_config(name))
        assert stages and all(s.steps > 0 for s in stages)
    b2 = build_stages(get_config("ov3_b2"))
    assert [(s.resolution, s.batch_size, s.lpips_weight) for s in b2] == [(128, 8192, 0.0), (256, 4096, 0.5)]
    assert b2[0].lr == pytest.approx(8e-6 * 8192 / 256)
