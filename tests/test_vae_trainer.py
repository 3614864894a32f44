import json

import pytest
import torch

from openvision3.config import ConfigError, VAEConfig
from openvision3.data import DataSpecError
from openvision3.eval.reconstruction import psnr_ssim
from openvision3.train.vae_config import get_vae_config
from openvision3.train.vae_trainer import train_vae

TINY = ["data.resolution=32", "arch.block_out_channels=[8,16]", "arch.norm_num_groups=4",
        "arch.latent_channels=4", "batch_size=4", "eval_samples=8", "log_every=1", "warmup_steps=2",
        "lr=3e-3", "checkpoint_every=6"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_run")
    cfg = get_vae_config(None, TINY + ["steps=12"])
    return out, train_vae(cfg, out, progress=False)


def test_loss_falls_and_files_written(run):
    out, r = run
    assert r["status"] == "finished" and r["step"] == 12
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    l1 = [row["l1"] for row in rows if "l1" in row]
    assert sum(l1[-3:]) / 3 < sum(l1[:3]) / 3
    for name in ("config.yaml", "results.json", "recon.png", "model/config.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "step_12" / "optimizer.pt").exists()
    assert r["latent_shape"] == [4, 16, 16] and r["downsample"] == 2
    assert 0 < r["val_psnr"] < 100 and -1 <= r["val_ssim"] <= 1


def test_saved_dir_loads_in_diffusers_and_frozen_vae(run):
    from diffusers import AutoencoderKL

    from openvision3.models.vae import FrozenVAE
    out, r = run
    ae = AutoencoderKL.from_pretrained(str(out / "model"))
    assert ae.config.latent_channels == 4
    assert ae.config.scaling_factor == pytest.approx(r["scaling_factor"])
    vae = FrozenVAE(VAEConfig(source=str(out / "model")))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 16, 16)
    assert vae.decode(z).shape == x.shape


def test_resume_continues_from_checkpoint(run, tmp_path):
    cfg = get_vae_config(None, TINY + ["steps=6"])
    train_vae(cfg, tmp_path, progress=False)
    cfg.steps = 8
    r = train_vae(cfg, tmp_path, resume="auto", progress=False)
    assert r["step"] == 8
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 7 in steps and steps.count(1) == 1  # appended after the checkpoint, not restarted


def test_gan_and_fp32_path_runs(tmp_path):
    cfg = get_vae_config(None, TINY + ["steps=2", "gan_weight=0.1", "gan_start=0", "precision=fp32"])
    r = train_vae(cfg, tmp_path, progress=False)
    assert r["precision"] == "fp32" and r["step"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "d_loss" in rows[0]


def test_mse_term_is_logged_and_consistent_with_l1(tmp_path):
    cfg = get_vae_config(None, TINY + ["steps=2", "mse_weight=10", "precision=fp32"])
    train_vae(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    assert 0 < first["mse"] <= 4.0 and first["l1"] ** 2 <= first["mse"] + 1e-6  # Jensen: mean|e|^2 <= mean e^2


def test_bad_inputs(tmp_path):
    with pytest.raises(DataSpecError):
        train_vae(get_vae_config(None, TINY + ["data.train=nosuch:spec"]), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="arch.latent_chanels"):
        get_vae_config(None, ["arch.latent_chanels=4"])
    with pytest.raises(ConfigError, match="norm_num_groups"):
        train_vae(get_vae_config(None, TINY + ["arch.norm_num_groups=3"]), tmp_path, progress=False)


def test_cli_bad_spec_is_one_line(capsys, tmp_path):
    from openvision3.cli import main
    rc = main(["train-vae", "--config", "vae_shapes64", "--out", str(tmp_path), "--data", "folder:/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ov3 train-vae: error:")


def test_metrics_are_eval_s():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    p_same, s_same = psnr_ssim(x, x)
    assert (p_same > 90).all()  # identical images: infinite PSNR
    assert s_same.allclose(torch.ones(2), atol=1e-4)
    assert psnr_ssim(x, -x)[0].max() < psnr_ssim(x, x * 0.9)[0].min()


def test_second_run_into_a_finished_directory_is_refused(run):
    out, _ = run
    from openvision3.train.run import TrainError
    with pytest.raises(TrainError, match="not empty"):
        train_vae(get_vae_config(None, TINY + ["steps=12"]), out, progress=False)
