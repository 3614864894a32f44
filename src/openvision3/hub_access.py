"""Hub ids -> local snapshot directories, failing in seconds with one line when there is no network.

Every download the package makes goes through here or asks :func:`network_unreachable_reason`
first: the frozen VAE (models/vae.py), saved OpenVision3 models and released towers by hub id
(models/openvision3.py, interop/official.py), ``ov3 push`` (interop/hub.py) and torchvision's
LPIPS backbones (perceptual.py). Without a network huggingface_hub retries every request
five times with back-off (30-40 s) before it gives up, so the network is only tried once a TCP
connection to the host has opened; that check runs once per host and process and takes at most
``CONNECT_TIMEOUT_S``. ``HF_HUB_OFFLINE=1`` skips it: the cache alone is used.
"""
from __future__ import annotations

import socket
import threading
import urllib.request
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0  # a reachable host answers a TCP connection well within this


class HubUnavailableError(FileNotFoundError):
    """A hub id that is neither in the local cache nor downloadable now (one line for the user)."""


@lru_cache(maxsize=None)
def _connect_failure(host: str, port: int) -> str | None:
    """None if a TCP connection to host:port opens within the timeout, else why it did not."""
    outcome = {"error": f"no answer in {CONNECT_TIMEOUT_S:g} s"}

    def connect():  # in a thread: the name lookup inside create_connection has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            outcome["error"] = None
        except OSError as e:
            outcome["error"] = e.strerror or str(e) or type(e).__name__

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    return None if outcome["error"] is None else f"{host}:{port} is unreachable: {outcome['error']}"


def network_unreachable_reason(url: str) -> str | None:
    """None if ``url``'s host accepts connections, else a short reason (checked once per process).
    With a proxy configured for the scheme (``HTTPS_PROXY`` ...) the proxy is the host that must answer,
    as it is for huggingface_hub and torchvision."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return _connect_failure(host, port)


def hub_unreachable_reason() -> str | None:
    """None if the Hub (``HF_ENDPOINT``) may be used now, else why not."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return network_unreachable_reason(constants.ENDPOINT)


def cached_snapshot(repo_id: str) -> Path | None:
    """The newest cached snapshot of ``repo_id`` (no network), or None."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or a damaged cache entry: not usable either way
        return None


def snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    """A local directory holding ``repo_id``: downloaded (or refreshed) when the Hub is reachable,
    else the cached snapshot, else :class:`HubUnavailableError` at once."""
    reason = hub_unreachable_reason()
    if reason is None:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    cached = cached_snapshot(repo_id)
    if cached is None:
        raise HubUnavailableError(f"'{repo_id}' is not in the local HF cache and cannot be downloaded ({reason}); "
                                  "download it once online or pass a local path")
    return cached


__all__ = ["HubUnavailableError", "cached_snapshot", "snapshot", "hub_unreachable_reason",
           "network_unreachable_reason", "CONNECT_TIMEOUT_S"]
