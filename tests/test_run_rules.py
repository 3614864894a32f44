"""The run engine's rules, the same for every training loop (train/run.py), each checked on every loop:
`ov3 train` (also with train.init_encoder: heads on a frozen tower's cached tokens, recipes/complete.py),
`ov3 train-vae`, `ov3 gen train`, the LLaVA probe's stages and the judge.

- a non-empty run directory is refused (without --resume / --overwrite);
- SIGTERM and a first Ctrl-C (SIGINT) finish the step, checkpoint it and stop (exit 3 on the
  command line, one line saying how to resume); --resume auto then reproduces the uninterrupted
  run's losses exactly, step by step;
- a non-finite loss is skipped and counted; K in a row stop the run with one line (exit != 0);
- a second writer into a live run directory is refused.

Each loop runs a tiny config for a few steps (seconds). Signals and non-finite losses are injected
by wrapping the loop's own ``Task.losses``, so what is tested is the real loop.
"""
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from openvision3 import cli
from openvision3.train.logging import read_metrics
from openvision3.train.run import RunStopped, TrainError
from openvision3.train.run_lock import RunLock

STEPS = 4  # every loop trains this many steps (the probe: in its last stage)


@dataclass
class Loop:
    name: str
    task: type  # the Task class whose losses() is wrapped
    train: Callable  # (out, resume=None, overwrite=False) -> summary dict (raises RunStopped for the probe)
    argv: Callable | None  # out -> `ov3` argv for the same run, or None (the judge has no command of its own)
    runs: Callable  # out -> the run directories whose metrics.jsonl hold the losses
    max_bad: str  # the override that sets max_bad_steps to 2, in the loop's own config


def _ov3(tmp_path):
    from chaos.faults import FAST, TINY

    from openvision3.config import get_config
    from openvision3.train.trainer import OpenVision3Task, train
    over = [*FAST, f"train.steps={STEPS}", "train.checkpoint_every=0"]

    def run(out, resume=None, overwrite=False, extra=()):
        return train(get_config(TINY, over + list(extra)), out, resume=resume, overwrite=overwrite, progress=False)
    return Loop("train", OpenVision3Task, run, lambda out: ["train", "--config", TINY, "--out", str(out), *over],
                lambda out: [out], "train.max_bad_steps=2")


def _heads(tmp_path, tower):
    """`ov3 train` with train.init_encoder: fresh heads on the cached tokens of a frozen tower."""
    from test_complete import RUN

    from openvision3.config import get_config
    from openvision3.recipes.complete import CompleteTask, train_heads
    over = [*RUN, f"train.steps={STEPS}", "train.checkpoint_every=0", f"train.init_encoder={tower}",
            "train.freeze=[encoder.]", f"train.token_cache={tmp_path / 'cache'}"]
    TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")

    def run(out, resume=None, overwrite=False, extra=()):
        return train_heads(get_config(TINY, over + list(extra)), out, resume=resume, overwrite=overwrite,
                           progress=False)
    return Loop("train heads", CompleteTask, run, lambda out: ["train", "--config", TINY, "--out", str(out), *over],
                lambda out: [out], "train.max_bad_steps=2")


VAE_TINY = ["data.resolution=16", "arch.block_out_channels=[8,16]", "arch.norm_num_groups=4",
            "arch.latent_channels=4", "batch_size=4", "eval_samples=4", "log_every=1", "warmup_steps=1",
            f"steps={STEPS}", "checkpoint_every=0"]


def _vae(tmp_path):
    from openvision3.train.vae_config import get_vae_config
    from openvision3.train.vae_trainer import AutoencoderTask, train_vae
    yaml = tmp_path / "vae.yaml"
    yaml.write_text("data: {train: shapes, val: shapes}\n")

    def run(out, resume=None, overwrite=False, extra=()):
        return train_vae(get_vae_config(str(yaml), VAE_TINY + list(extra)), out, resume=resume, overwrite=overwrite,
                         progress=False)
    return Loop("train-vae", AutoencoderTask, run,
                lambda out: ["train-vae", "--config", str(yaml), "--out", str(out), *VAE_TINY],
                lambda out: [out], "max_bad_steps=2")


def _gen_overrides(tmp_path, encoder):
    spec = "shapes?kind=single&label=color&n=48"
    return [f"encoder={encoder}", f"data.train={spec}", f"data.val={spec}", "data.resolution=32",
            f"cache.dir={tmp_path / 'cache'}", "cache.max_samples=24", "cache.batch_size=16", "dit.preset=nano",
            "dit.width=32", "dit.depth=1", "dit.heads=2", "dit.head_width=32", "dit.head_depth=1", "dit.head_heads=2",
            "train.batch_size=8", f"train.steps={STEPS}", "train.lr=1e-3", "train.ema_decay=0.9",
            "train.checkpoint_every=0", "train.log_every=1", "train.precision=fp32", "judge.steps=4",
            "judge.width=4", "judge.max_train=32", "judge.batch_size=8", "eval.real_samples=16"]


def _gen(tmp_path, encoder):
    from openvision3.generation.config import get_gen_config
    from openvision3.generation.trainer import GeneratorTask, train_generator
    over = _gen_overrides(tmp_path, encoder)

    def run(out, resume=None, overwrite=False, extra=()):
        return train_generator(get_gen_config(None, over + list(extra)), out, resume=resume, overwrite=overwrite,
                               progress=False)
    yaml = tmp_path / "gen.yaml"
    yaml.write_text("{}\n")
    return Loop("gen train", GeneratorTask, run,
                lambda out: ["gen", "train", "--config", str(yaml), "--out", str(out), "--no-progress", *over],
                lambda out: [out], "train.max_bad_steps=2")


def _judge(tmp_path, encoder):
    from openvision3.generation.config import get_gen_config
    from openvision3.generation.judge import JudgeTask, train_judge
    over = _gen_overrides(tmp_path, encoder)

    def run(out, resume=None, overwrite=False, extra=()):
        with _engine_settings(JudgeTask, extra):
            return train_judge(get_gen_config(None, over), out, resume=resume, overwrite=overwrite, progress=False)
    return Loop("judge", JudgeTask, run, None, lambda out: [out], "max_bad=2")


@contextlib.contextmanager
def _engine_settings(task_cls, extra):
    """The judge and the probe fix their engine settings in code (no config key): a row per step,
    and max_bad_steps=2 when asked."""
    real = task_cls.settings
    task_cls.settings = lambda self: _with(real(self), log_every=1,
                                           **({"max_bad_steps": 2} if "max_bad=2" in extra else {}))
    try:
        yield
    finally:
        task_cls.settings = real


def _with(settings, **changes):
    import dataclasses
    return dataclasses.replace(settings, **changes)


def _probe(tmp_path, model_dir):
    from openvision3.recipes.llava_probe import ProbeStageTask, probe_config, run_llava_probe
    base = ["train_images=8", "test_images=4", "batch_size=4", "lm_width=16", "lm_layers=1", "lm_heads=2",
            "lm_mlp=32", "stage0_steps=1", "stage1_steps=1", f"stage2_steps={STEPS}", "max_new_tokens=1"]

    def run(out, resume=None, overwrite=False, extra=()):
        with _engine_settings(ProbeStageTask, extra):
            return run_llava_probe(str(model_dir), out_dir=out, pcfg=probe_config(base), progress=False,
                                   resume=resume, overwrite=overwrite)
    argv = ["probe", "llava", "--model", str(model_dir), "--no-progress", *base]
    return Loop("probe", ProbeStageTask, run, lambda out: [*argv, "--out", str(out)],
                lambda out: [Path(out) / "llava_probe_runs" / f"stage{k}" for k in range(3)], "max_bad=2")


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    from test_complete import write_hub_tower
    d = tmp_path_factory.mktemp("hub") / "tower"
    write_hub_tower(d)
    return d


LOOPS = ["train", "train heads", "train-vae", "gen train", "probe", "judge"]


@pytest.fixture
def loop(request, tmp_path, encoder_dir, tower_dir):
    name = request.param
    if name == "train":
        return _ov3(tmp_path)
    if name == "train heads":
        return _heads(tmp_path, tower_dir)
    if name == "train-vae":
        return _vae(tmp_path)
    if name == "gen train":
        return _gen(tmp_path, encoder_dir)
    if name == "judge":
        return _judge(tmp_path, encoder_dir)
    return _probe(tmp_path, encoder_dir)


def _losses(loop, out) -> dict:
    return {(str(run), r["step"]): r["loss"] for run in loop.runs(out)
            for r in read_metrics(Path(run) / "metrics.jsonl")
            if "loss" in r}


def _inject(monkeypatch, loop, at_call: int, action):
    """Wrap the loop's losses(): on its ``at_call``-th call (1-based, counted over the whole run,
    all stages), ``action(out)`` changes the returned losses (or sends a signal)."""
    real, calls = loop.task.losses, {"n": 0}

    def wrapped(self, batch, step):
        out = real(self, batch, step)
        calls["n"] += 1
        if calls["n"] == at_call or (at_call < 0 and calls["n"] >= -at_call):
            out = action(out)
        return out
    monkeypatch.setattr(loop.task, "losses", wrapped)


def _signal(sig):
    def send(out):
        os.kill(os.getpid(), sig)
        return out
    return send


def _nan(out):
    return {**out, "loss": out["loss"] * float("nan")}


# ------------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("loop", LOOPS, indirect=True)
def test_non_empty_directory_is_refused(loop, tmp_path):
    out = tmp_path / "run"
    run_dir = loop.runs(out)[0]
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("someone else's run\n")
    with pytest.raises(TrainError, match="is not empty; pass --resume auto"):
        loop.train(out)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]  # nothing written into it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("loop", LOOPS, indirect=True)
def test_signal_checkpoints_the_step_and_resume_reproduces_the_losses(loop, tmp_path, monkeypatch, sig):
    ref = tmp_path / "ref"
    loop.train(ref)
    expected = {(k[0].replace(str(ref), ""), k[1]): v for k, v in _losses(loop, ref).items()}
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _inject(m, loop, 4 if loop.name == "probe" else 2, _signal(sig))  # probe: in its last stage
        try:
            summary = loop.train(out)
            assert summary["status"] == f"stopped by {sig.name}" and summary["step"] == 2
            assert summary["last_checkpoint"].endswith("step_2")
        except RunStopped as e:  # the probe: a stage it needs stopped
            assert f"stopped by {sig.name}" in str(e) and "--resume auto" in str(e)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    loop.train(out, resume="auto")
    got = {(k[0].replace(str(out), ""), k[1]): v for k, v in _losses(loop, out).items()}
    assert got == expected  # exactly, step by step


def test_a_stop_between_two_metrics_rows_logs_the_same_rows_after_resume(tmp_path, monkeypatch):
    """A row averages the losses since the previous one; a stop between two rows keeps the steps
    already taken in the checkpoint, so the resumed run's next row is the uninterrupted one's."""
    loop = _ov3(tmp_path)
    every = ["train.log_every=3"]
    loop.train(tmp_path / "ref", extra=every)
    with monkeypatch.context() as m:
        _inject(m, loop, 2, _signal(signal.SIGTERM))  # step 2: between the rows of steps 0 and 3
        assert loop.train(tmp_path / "run", extra=every)["step"] == 2
    loop.train(tmp_path / "run", resume="auto", extra=every)
    assert _losses(loop, tmp_path / "run") == {(str(tmp_path / "run"), k[1]): v
                                               for k, v in _losses(loop, tmp_path / "ref").items()}


@pytest.mark.parametrize("loop", ["train", "train heads", "train-vae", "gen train", "probe"], indirect=True)
def test_signal_on_the_command_line_exits_3_with_one_line(loop, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _inject(monkeypatch, loop, 4 if loop.name == "probe" else 2, _signal(signal.SIGINT))
    assert cli.main(loop.argv(out)) == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ov3 ")]
    assert len(lines) == 1 and "stopped by SIGINT" in lines[0] and "--resume auto" in lines[0], lines


@pytest.mark.parametrize("loop", LOOPS, indirect=True)
def test_a_non_finite_loss_is_skipped_and_counted_then_k_in_a_row_stop_the_run(loop, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _inject(m, loop, -1 if loop.name == "probe" else 2, _nan)  # probe: its single-step stages skip it
        if loop.name == "probe":
            with pytest.raises(TrainError, match="2 non-finite steps in a row"):
                loop.train(tmp_path / "one", extra=["max_bad=2"])
            return
        summary = loop.train(tmp_path / "one")
    assert summary["status"] == "finished" and summary["bad_steps"] == 1
    rows = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
    assert rows[1]["bad_steps"] == 1 and rows[-1]["loss"] == rows[-1]["loss"]  # counted, then finite again
    _inject(monkeypatch, loop, -1, _nan)
    with pytest.raises(TrainError, match=r"2 non-finite steps in a row \(last at step 2\)"):
        loop.train(tmp_path / "two", extra=[loop.max_bad])
    assert not (tmp_path / "two" / "model").exists()


@pytest.mark.parametrize("loop", LOOPS, indirect=True)
def test_a_second_writer_is_refused(loop, tmp_path):
    out = tmp_path / "run"
    lock = RunLock(loop.runs(out)[0]).acquire()  # a live run holds the directory
    try:
        with pytest.raises(TrainError, match="in use|held by"):
            loop.train(out, resume="auto")
    finally:
        lock.release()
    assert not (loop.runs(out)[0] / "checkpoints").exists()


def test_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    """The first Ctrl-C asks for a checkpoint; a second one, before the step ends, stops now."""
    loop = _ov3(tmp_path)

    def twice(out):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return out
    _inject(monkeypatch, loop, 2, twice)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    lock = RunLock(tmp_path / "run").acquire()  # the run's lock was let go
    lock.release()
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
