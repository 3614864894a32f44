"""The GPU check's CPU rehearsal (benchmarks/gpu_check.py --cpu-smoke): the same sequence of
checks as on a GPU (bench, optimized vs naive, largest batches with and without gradient
checkpointing, train, kill -9 and resume, FSDP2 under torchrun, eval and reconstruct) passes."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.timeout(900)
def test_cpu_rehearsal_of_the_gpu_check_passes(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rc = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["failures"] == [], report["failures"]
    checks = report["checks"]
    shares = next(iter(checks["bench"].values()))["summary"]["shares"]
    assert abs(sum(shares.values()) - 1) < 0.01  # rounded to 3 digits each
    for key in ("nano_16px", "nano_16px_ckpt"):  # checkpointing trains at every batch tried
        assert checks["batch"][key]["largest"]["batch"] == 4, checks["batch"][key]
    assert checks["train"]["train"]["loss_falls"] is not None and checks["train"]["resume"]["exact"]
    assert checks["train"]["fsdp"]["model_exported"]
