"""The Hugging Face Hub: push a saved model with its card (docs/llava.md, "The Hub").

    push_model("runs/demo/model", "me/ov3-nano-shapes", private=True)   # `ov3 push`

Either a saved OpenVision3 or an ``ov3 export hf`` tower goes up as it is, its model card
(``README.md``) rewritten first so that it lists the evaluation results found in the directory.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, config_to_dict, load_config_file
from ..models.openvision3 import is_saved_model

# never uploaded: training state and scratch files a run directory may hold
IGNORE_PATTERNS = ["checkpoints/*", "*.tmp", "*.lock", "tensorboard/*", "__pycache__/*"]


class HubError(ConfigError):
    """A push that cannot start (not a model directory, bad repo id). One line for the user."""


def model_kind(directory) -> str:
    """"openvision3" or "transformers" for a model directory; HubError otherwise."""
    d = Path(directory)
    if is_saved_model(d):
        return "openvision3"
    if (d / "model.safetensors").is_file() and is_vision_tower_dir(d):
        return "transformers"
    raise HubError(f"'{directory}' is not an OpenVision 3 model directory (config.yaml + model.safetensors "
                   "from save_pretrained, or config.json of type openvision3_vision from ov3 export hf)")


def is_vision_tower_dir(directory) -> bool:
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("model_type") == "openvision3_vision"
    except (OSError, ValueError):
        return False


def refresh_card(directory) -> Path:
    """Rewrite ``directory/README.md`` from the directory's config and evaluation files."""
    from ..models.card import write_card
    d, kind = Path(directory), model_kind(directory)
    config = (config_to_dict(load_config_file(d / "config.yaml")) if kind == "openvision3"
              else json.loads((d / "config.json").read_text()))
    return write_card(directory, kind, {"config": config})


def push_model(directory, repo_id: str, private: bool = False, token: str | None = None,
               commit_message: str | None = None) -> dict:
    """Create ``repo_id`` if needed and upload ``directory`` (huggingface_hub ``upload_folder``)."""
    from huggingface_hub import HfApi
    kind = model_kind(directory)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"--repo-id must look like owner/name, got '{repo_id}'")
    from ..hub_access import hub_unreachable_reason
    if unreachable := hub_unreachable_reason():  # at once, not after huggingface_hub's retries
        raise HubError(f"cannot push to the Hub: {unreachable}")
    card = refresh_card(directory)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                               commit_message=commit_message or f"Upload {kind} model with openvision3",
                               ignore_patterns=IGNORE_PATTERNS)
    return {"repo_id": repo_id, "kind": kind, "private": private, "card": str(card),
            "url": getattr(commit, "commit_url", None) or str(commit)}


__all__ = ["push_model", "refresh_card", "model_kind", "HubError", "IGNORE_PATTERNS"]
