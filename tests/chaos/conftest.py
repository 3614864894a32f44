"""Shared fixtures of the fault suite (tests/chaos): a launcher for killable `ov3` processes and
one small finished run (two checkpoints and an exported model) that tests copy before damaging."""
import shutil

import pytest

from . import faults


@pytest.fixture(scope="session")
def launcher():
    return faults.Launcher()


@pytest.fixture(scope="session")
def tiny_run_master(tmp_path_factory):
    from openvision3.config import get_config
    from openvision3.train.trainer import train
    run = tmp_path_factory.mktemp("chaos") / "tiny_run"
    train(get_config(faults.TINY, faults.FAST + faults.SMALL_RUN), run)
    return run


@pytest.fixture
def tiny_run(tiny_run_master, tmp_path):
    """A private copy of a 4-step tiny run: checkpoints step_2 and step_4, model/, metrics."""
    return shutil.copytree(tiny_run_master, tmp_path / "run")
