"""Hostile files: pickles that would run code and YAML Python tags are refused with one line, and
the payload (it creates a marker file) provably never ran."""
import warnings

import pytest
import torch
from .faults import FAST, SMALL_RUN, TINY, VAE_FAST, CodeRunningPickle, loss_rows, python_tag_yaml

from openvision3 import cli


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "a hostile file ran its payload"


def one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]
    errors = [ln for ln in err if ": error: " in ln]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize("name", ["optimizer.pt", "trainer_state.pt"])
def test_checkpoint_pickle_that_runs_code_is_refused(tiny_run, marker, capsys, name):
    torch.save({"state": CodeRunningPickle(marker)}, tiny_run / "checkpoints" / "step_4" / name)
    # the damaged checkpoint named explicitly: refused, one line
    rc = cli.main(["train", "--config", TINY, "--out", str(tiny_run), "--resume",
                   str(tiny_run / "checkpoints" / "step_4"), *FAST, *SMALL_RUN])
    line = one_line(capsys)
    assert rc == 2 and "refused" in line and name in line and "nothing in it was run" in line
    assert not marker.exists()


def test_resume_auto_falls_back_past_a_hostile_checkpoint_and_reproduces(tiny_run, marker):
    reference = loss_rows(tiny_run)
    torch.save({"state": CodeRunningPickle(marker)}, tiny_run / "checkpoints" / "step_4" / "trainer_state.pt")
    from openvision3.config import get_config
    from openvision3.train.trainer import train
    with pytest.warns(UserWarning, match="step_4 is damaged or refused.*refused"):
        s = train(get_config(TINY, FAST + SMALL_RUN), tiny_run, resume="auto")
    assert s["status"] == "finished" and loss_rows(tiny_run) == reference  # steps 3-4 again, identical
    assert not marker.exists()


def test_vae_checkpoint_pickle_that_runs_code_is_refused(tmp_path, marker, capsys):
    yaml = tmp_path / "vae.yaml"
    yaml.write_text("data: {train: shapes, val: shapes}\n")
    argv = ["train-vae", "--config", str(yaml), "--out", str(tmp_path / "vae"), *VAE_FAST, "checkpoint_every=0"]
    assert cli.main([*argv, "steps=2"]) == 0  # its only checkpoint: the final one, step_2
    capsys.readouterr()
    torch.save({"state": CodeRunningPickle(marker)}, tmp_path / "vae" / "checkpoints" / "step_2" / "optimizer.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main([*argv, "steps=4", "--resume", "auto"])
    line = one_line(capsys)
    assert rc == 2 and "refused" in line and "optimizer.pt" in line


def test_official_pt_checkpoint_that_runs_code_is_refused(tmp_path, marker):
    from openvision3.interop.official import OfficialWeightsError, load_official_encoder
    for name in ("tower.pt", "pytorch_model.bin"):
        path = tmp_path / name
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1), "x": CodeRunningPickle(marker)}}, path)
        with pytest.raises(OfficialWeightsError, match="refused: .*nothing in it was run") as e:
            load_official_encoder(str(path))
        assert "\n" not in str(e.value)
    (tmp_path / "hub").mkdir()  # a hub-layout directory holding the same file
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "hub" / "pytorch_model.bin")
    with pytest.raises(OfficialWeightsError, match="refused"):
        load_official_encoder(str(tmp_path / "hub"))


def test_yaml_python_tag_is_refused_everywhere(tiny_run, tmp_path, marker, capsys):
    evil = tmp_path / "evil.yaml"
    evil.write_text(python_tag_yaml(marker))
    for argv in (["train", "--config", str(evil), "--out", str(tmp_path / "a")],
                 ["train-vae", "--config", str(evil), "--out", str(tmp_path / "b")],
                 ["info", "--config", str(evil)]):
        assert cli.main(argv) == 2, argv
        line = one_line(capsys)
        assert "refused" in line and "python/object/apply" in line, line
    # a saved model (what `ov3 eval` / `info --model` load) whose config.yaml carries the tag
    (tiny_run / "model" / "config.yaml").write_text(python_tag_yaml(marker))
    for argv in (["eval", "--model", str(tiny_run / "model"), "--data", "shapes", "--device", "cpu"],
                 ["info", "--model", str(tiny_run / "model")]):
        assert cli.main(argv) == 2, argv
        assert "refused" in one_line(capsys)
