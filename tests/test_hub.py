"""Model card, `ov3 push` (only the Hub calls mocked) and loading a hub id from the offline cache."""
import json
import shutil
from unittest import mock

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants

from openvision3 import hub_access
from openvision3.cli import main
from openvision3.interop.hub import push_model
from openvision3.models.openvision3 import OpenVision3


@pytest.fixture
def saved(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = OpenVision3(tiny_cfg)
    return model, model.save_pretrained(tmp_path / "model")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_writes_a_model_card(saved):
    _, d = saved
    meta = _front_matter((d / "README.md").read_text())
    assert meta["library_name"] == "openvision3" and meta["license"] == "apache-2.0"
    assert "openvision3" in meta["tags"]
    assert meta["vae"]["convention"] == "scale" and meta["vae"]["source"] == "vae"  # saved beside the weights
    assert meta["vae"]["scaling_factor"] == 1.0  # as resolved by the saved VAE (inline: identity)
    assert "model-index" not in meta  # no evaluation yet
    assert "OpenVision3.from_pretrained" in (d / "README.md").read_text()


def test_push_uploads_the_folder_with_a_refreshed_card(saved, capsys, monkeypatch):
    _, d = saved
    monkeypatch.setattr(hub_access, "hub_unreachable_reason", lambda: None)  # the Hub calls are mocked
    (d / "eval").mkdir()
    (d / "eval" / "eval.json").write_text(json.dumps({"zeroshot": {"top1": 0.43}, "recon": {"psnr": 25.04},
                                                      "meta": {"data": "shapes"}}))
    (d / "eval" / "llava_probe.json").write_text(json.dumps({"accuracy": 0.71, "per_type": {"count": 0.9},
                                                             "baselines": {"count": 0.34}}))
    with mock.patch.object(HfApi, "create_repo") as create, \
            mock.patch.object(HfApi, "upload_folder", return_value=mock.Mock(commit_url="https://hf.co/x/y/commit/1")) as up:
        assert main(["push", "--model", str(d), "--repo-id", "me/ov3-tiny", "--private", "--json"]) == 0
    create.assert_called_once()
    assert create.call_args.kwargs["private"] is True
    kw = up.call_args.kwargs
    assert kw["folder_path"] == str(d) and kw["repo_id"] == "me/ov3-tiny" and "checkpoints/*" in kw["ignore_patterns"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["url"].endswith("/commit/1")
    meta = _front_matter((d / "README.md").read_text())
    metrics = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics["zero-shot top-1"] == 0.43 and metrics["LLaVA probe exact match"] == 0.71


def test_push_bad_input_is_one_line(tmp_path, saved, capsys):
    _, d = saved
    with mock.patch.object(HfApi, "upload_folder") as up, mock.patch.object(HfApi, "create_repo"):
        assert main(["push", "--model", str(tmp_path / "nothing"), "--repo-id", "me/x"]) == 2
        assert main(["push", "--model", str(d), "--repo-id", "not-a-repo-id"]) == 2
    up.assert_not_called()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an OpenVision 3 model directory" in err[0] and "owner/name" in err[1]


def test_from_pretrained_hub_id_from_the_offline_cache(saved, tmp_path, monkeypatch):
    model, d = saved
    # the Hub cache layout snapshot_download reads: models--owner--name/{refs/main, snapshots/<commit>/}
    repo = tmp_path / "cache" / "models--me--ov3-tiny"
    commit = "0" * 40
    shutil.copytree(d, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = OpenVision3.from_pretrained("me/ov3-tiny")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), model.eval().encode_image(x), atol=1e-5)
