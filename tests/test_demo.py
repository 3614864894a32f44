"""`ov3 demo` end to end at toy size: every phase runs, the report and metrics exist with the
eval.json structure, the floors table is there, a second call reuses the trained parts, a stopped
demo exits non-zero and resumes, and the shipped demo VAE loads and reconstructs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from openvision3.recipes.demo import FLOORS, SHIPPED_VAE, DemoRefused, default_out, run_demo

TOY = ["train.stages=[{name: low, resolution: 16, steps: 2}, {name: main, resolution: 32, steps: 2}]",
       "train.checkpoint_every=4", "train.log_every=1", "train.warmup_steps=1"]
TOY_VAE = ["steps=4", "eval_samples=16", "batch_size=4"]


def test_demo_runs_every_phase_and_reuses_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    results = run_demo(out, overrides=TOY, vae_overrides=TOY_VAE, num_samples=16, train_vae=True)
    for task, keys in {"recon": ("psnr", "ssim", "lpips_alex", "rfid_status"), "zeroshot": ("top1", "top5"),
                       "retrieval": ("i2t_r1", "t2i_r5", "t2i_r10"), "caption": ("bleu4", "rouge_l")}.items():
        assert all(k in results[task] for k in keys), (task, results[task])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["recon"]["psnr"] == results["recon"]["psnr"] and saved["recon"]["rfid"] is None
    assert saved["training"]["precision"] in ("fp32", "bf16") and saved["training"]["precision_reason"]
    assert saved["vae"]["shipped"] is False and saved["seed"] == 0
    assert [(st["resolution"], st["steps"]) for st in saved["training"]["stages"]] == [(16, 2), (32, 2)]
    report = (out / "report.md").read_text()
    assert "Demo floors" in report and all(f"{t} {k}" in report for t, k in FLOORS)
    assert saved["training"]["precision_reason"] in report
    for png in ("recon.png", "zeroshot_confusion.png", "retrieval.png", "captions.png", "losses.png"):
        assert (out / png).stat().st_size > 0, png
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "vae" / "config.json").exists()
    capsys.readouterr()

    again = run_demo(out, overrides=TOY, vae_overrides=TOY_VAE, num_samples=16, train_vae=True)
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 2  # neither the VAE nor the model is trained again
    assert f"ov3 serve --model {out / 'model'}" in printed  # the command that opens it in the page
    assert again["recon"]["psnr"] == results["recon"]["psnr"]  # same model, same held-out data

    with pytest.raises(DemoRefused, match="seed 0"):  # another seed never reuses this run's model
        run_demo(out, overrides=TOY, num_samples=16, seed=1, train_vae=True)
    # nor does another recipe (configs/demo.yaml changed since the model was trained)
    with pytest.raises(DemoRefused, match="another recipe .*train.lr"):
        run_demo(out, overrides=TOY + ["train.lr=0.002"], num_samples=16, train_vae=True)


def test_shipped_demo_vae_loads_and_reconstructs():
    """assets/demo_vae: the VAE `make demo` uses, trained once by configs/vae_demo.yaml."""
    from openvision3.config import VAEConfig
    from openvision3.data import make_loader, open_data
    from openvision3.models.vae import FrozenVAE
    from openvision3.eval.reconstruction import psnr_ssim
    summary = json.loads((SHIPPED_VAE / "results.json").read_text())
    assert summary["complete"] and summary["steps"] == 500 and summary["precision"] == "fp32"
    vae = FrozenVAE(VAEConfig(source=str(SHIPPED_VAE)))
    assert vae.latent_channels == 16 and vae.downsample == 2
    x = next(iter(make_loader(open_data("shapes", split="test", resolution=32, train=False), 32)))["image"]
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z).clamp(-1, 1)
    assert z.shape == (32, 16, 16, 16) and 0.5 < float(z.std()) < 2.0  # normalised latents
    assert float(psnr_ssim(x, y)[0].mean()) > 23.0  # held-out shapes images (summary: ~26 dB on 256 of them)


def test_default_out_dir_per_seed():
    assert default_out(0) == "runs/demo" and default_out(2) == "runs/demo_seed2"


def _ov3(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "openvision3.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_stopped_demo_says_so_exits_nonzero_and_resumes(tmp_path):
    """SIGTERM during training: one 'stopped' line, exit code 3, no evaluation; the same command
    again resumes from the checkpoint and finishes."""
    out = tmp_path / "demo"
    toy = ["train.stages=[{resolution: 32, steps: 400}]", "train.checkpoint_every=2", "train.log_every=1",
           "train.warmup_steps=1", "train.batch_size=8", "model.encoder.layers=1"]
    proc = _ov3("demo", "--out", str(out), "--num-samples", "8", *toy, cwd=tmp_path)
    ckpts = out / "train" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts.exists() and any(ckpts.glob("step_*"))) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 3, err
    lines = [line for line in err.splitlines() if line.startswith("ov3 demo:")]
    assert len(lines) == 1 and "stopped" in lines[0] and "run the same command again" in lines[0], err
    assert "Traceback" not in err and not (out / "report.md").exists()
    stopped_at = max(int(p.name.split("_")[1]) for p in ckpts.glob("step_*"))

    shorter = [f"train.stages=[{{resolution: 32, steps: {stopped_at + 2}}}]"] + toy[1:]  # two more steps show it
    again = _ov3("demo", "--out", str(out), "--num-samples", "8", *shorter, cwd=tmp_path)
    printed, err = again.communicate(timeout=400)
    assert again.returncode == 0, err
    assert f"resuming {out / 'train'} from step {stopped_at}" in printed and (out / "report.md").exists()


def test_a_stopped_run_of_another_recipe_is_not_resumed(tmp_path):
    """A checkpoint left by an older configs/demo.yaml: one clear line naming what differs, and
    nothing is resumed; a changed run length alone is still resumed (the test above)."""
    from openvision3.config import get_config
    from openvision3.train.trainer import train
    out = tmp_path / "demo"
    toy = ["train.stages=[{resolution: 32, steps: 2}]", "train.checkpoint_every=1", "train.batch_size=8",
           "model.encoder.layers=1"]
    cfg = get_config("demo", [f"model.vae.source={SHIPPED_VAE.resolve()}", "seed=0", "train.lr=0.002", *toy])
    train(cfg, out / "train")
    (out / "train" / "model").rename(out / "train" / "model_gone")  # as if stopped before the export
    with pytest.raises(DemoRefused, match="another recipe .*train.lr"):
        run_demo(out, overrides=toy, num_samples=8)


def test_a_run_saved_with_flat_shapes_keys_is_still_the_same_recipe(tmp_path):
    """A run directory written while the `shapes` options were flat `data.shapes_*` keys is the same
    recipe as today's nested `data.shapes`; a real difference is still named."""
    import yaml

    from openvision3.config import config_to_yaml, get_config
    from openvision3.recipes.demo import _check_same_recipe
    cfg = get_config("demo")
    values = yaml.safe_load(config_to_yaml(cfg))
    values["data"].update({f"shapes_{k}": v for k, v in values["data"].pop("shapes").items()})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    _check_same_recipe(tmp_path, cfg)
    with pytest.raises(DemoRefused, match=r"differs in data.shapes.single_switch\)"):
        _check_same_recipe(tmp_path, get_config("demo", ["data.shapes.single_switch=100"]))


def test_floor_table_counts_a_rate_on_its_floor_as_met():
    """475 of 500 is 0.95 exactly, though float32 stores it as 0.94999999; 474 of 500 misses."""
    import numpy as np

    from openvision3.recipes.demo import _floor_table
    base = {"recon": {"psnr": 25.0}, "zeroshot": {"top1": float(np.float32(0.4))},
            "retrieval": {"t2i_r5": float(np.float32(475 / 500)), "i2t_r1": 0.6}}
    assert _floor_table(base).startswith("This run meets all")
    base["retrieval"]["t2i_r5"] = float(np.float32(474 / 500))
    assert _floor_table(base).startswith("This run misses 1 of")


@pytest.mark.parametrize("error, code", [("stopped", 3), ("refused", 2)])
def test_a_stop_exits_3_and_a_refusal_exits_2_with_one_line(tmp_path, capsys, monkeypatch, error, code):
    """Stopped (the same command resumes it) and refused (another --out or a fix first) are
    different errors with different exit codes."""
    from openvision3.cli import main
    from openvision3.train.run import RunStopped
    from openvision3.recipes import demo

    def fail(*a, **k):
        raise (RunStopped("training stopped by SIGTERM at step 3; run the same command again")
               if error == "stopped" else DemoRefused("runs/x holds a run with seed 1; pass another --out"))
    monkeypatch.setattr(demo, "run_demo", fail)
    assert main(["demo", "--out", str(tmp_path / "out")]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("stopped:" in err) == (error == "stopped"), err
