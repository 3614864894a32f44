"""What the `ov3 serve` tests share: a tiny model, a tiny generator on its tokens, a held-out picture."""
import socket

import numpy as np
import torch
from PIL import Image

from conftest import TINY_OVERRIDES

RES, GRID = 32, 4  # the tiny model: 32 px, a 4x VAE and patch 2 -> 4 x 4 tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(root):
    from openvision3.config import get_config
    from openvision3.models.openvision3 import OpenVision3
    torch.manual_seed(0)
    d = root / "model"
    OpenVision3(get_config(None, list(TINY_OVERRIDES))).save_pretrained(d)
    return d


def make_generator(model_dir, root):
    """A 2-step `ov3 gen train` run on the tiny model's tokens (8 colour classes)."""
    from openvision3.generation.config import get_gen_config
    from openvision3.generation.trainer import train_generator
    spec = "shapes?kind=single&label=color&n=24"
    cfg = get_gen_config("gen_tiny", [
        f"encoder={model_dir}", f"data.train={spec}", f"data.val={spec}", f"cache.dir={root / 'cache'}",
        "cache.max_samples=16", "cache.batch_size=16", "dit.preset=nano", "dit.width=32", "dit.depth=1",
        "dit.heads=2", "dit.head_width=32", "dit.head_depth=1", "dit.head_heads=2", "train.batch_size=8",
        "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.precision=fp32", "flow.steps=2"])
    train_generator(cfg, root / "run", progress=False)
    return root / "run"


def make_example(root) -> str:
    """A held-out shapes picture (one object on a plain background) as a PNG file."""
    from openvision3.data import make_loader, open_data
    ds = open_data("shapes", split="test", resolution=RES, train=False, infinite=False, kind="single")
    x = next(iter(make_loader(ds, batch_size=1)))["image"][0]
    p = root / "example.png"
    Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(p)
    return str(p)


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def not_blank(a: np.ndarray) -> bool:
    return a.std() > 1.0
