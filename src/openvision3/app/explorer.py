"""Each view's computation, independent of the page: images and numbers in, pictures and
numbers out. A view whose part the model lacks, or whose input cannot be used, raises ViewError
with the line the page shows."""
from __future__ import annotations

import functools
import threading

import numpy as np
import torch
import torch.nn.functional as F

from ..eval.common import to_unit
from ..eval.zeroshot import class_embeddings, image_embeddings
from .gallery import Gallery, GalleryError
from .parts import Parts
from .pictures import blocks, difference, grid_picture, heat_map, pca_rgb, picture
from .uploads import InputError, read_upload

MAX_LABELS = 64
MAX_SAMPLES = 16
# Token pictures are drawn at least this many pixels wide: gradio maps a click on a picture shown
# larger than its own size to the wrong pixel, so the picture is never smaller than its display.
TOKEN_PICTURE_PX = 256


class ViewError(ValueError):
    """What a view says instead of a result (one line)."""


def parse_labels(text: str) -> list[str]:
    """"red circle, blue square,, red circle" -> ["red circle", "blue square"] (order kept)."""
    labels = list(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    if not labels:
        raise ViewError("type at least one label, comma separated (e.g. red circle, blue square)")
    if len(labels) > MAX_LABELS:
        raise ViewError(f"{len(labels)} labels: the page compares at most {MAX_LABELS}")
    return labels


class Explorer:
    def __init__(self, parts: Parts, generator=None, gallery_spec: str | None = None, gallery_size: int = 500):
        self.parts, self.generator, self.gallery_size = parts, generator, gallery_size
        m = parts.model
        self.default_gallery = gallery_spec or (f"shapes?captions={m.cfg.data.shapes.captions}" if m else "shapes")
        self._galleries: dict[str, Gallery] = {}
        self._lock = threading.Lock()  # one encoding per gallery, even when two queries arrive at once
        self.gallery_status = ""

    def warm_up(self) -> str:
        """Encode the default gallery now, so the first query is quick; the line says how it went
        (a gallery that cannot be opened is said in the page, and the page still starts)."""
        if self.missing("retrieve") is None:
            try:
                self.gallery_status = self.gallery().summary()
            except ViewError as e:
                self.gallery_status = f"**{e}**"
        return self.gallery_status

    @property
    def resolution(self) -> int:
        return self.parts.image_size

    def missing(self, view: str) -> str | None:
        """Why ``view`` cannot run with what was loaded, or None."""
        if view == "generate" and self.generator is None:
            return ("no generator: start the page with --generator RUN, a run of `ov3 gen train` "
                    "(docs/generation.md)")
        if view in ("reconstruct", "understand", "retrieve") and self.parts.model is None:
            need = {"reconstruct": "a latent decoder", "understand": "a text encoder and a caption decoder",
                    "retrieve": "a text encoder"}[view]
            return (f"{view} needs {need}; this model is a vision tower only (VAE + unified encoder), as "
                    "released towers are. A model trained here (ov3 train, ov3 demo) has every part")
        return None

    def _need(self, view: str):
        why = self.missing(view)
        if why:
            raise ViewError(why)

    def image(self, path) -> tuple[torch.Tensor, str]:
        try:
            x, note = read_upload(str(path or ""), self.resolution)
        except InputError as e:
            raise ViewError(str(e)) from None
        return x.to(self.parts.device), note

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sigma: float = 0.0, seed: int = 0) -> dict:
        """Original, reconstruction through the whole path with token noise ``sigma`` (per-token
        normalised units, as in training; seeded), their difference, PSNR (dB) and LPIPS (AlexNet)."""
        self._need("reconstruct")
        from torchmetrics.functional.image import peak_signal_noise_ratio
        m = self.parts.model
        z = m.encode_image(x)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            latents = m.decoder(z, self.parts.grid, sigma=float(sigma) if sigma > 0 else None)
        r = m.vae.decode(latents).clamp(-1, 1).float()
        psnr = float(peak_signal_noise_ratio(to_unit(r), to_unit(x), data_range=1.0))
        return {"original": picture(x[0]), "reconstruction": picture(r[0]), "difference": difference(x[0], r[0]),
                "psnr": psnr, "lpips": float(self._lpips(r, x.float()).flatten()[0])}

    @functools.cached_property
    def _lpips(self):
        from ..perceptual import build_lpips
        return build_lpips("alex").to(self.parts.device)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts.encode(x)[0]

    @property
    def token_block(self) -> int:
        """Pixels per token along a side in the token pictures."""
        return -(-TOKEN_PICTURE_PX // self.parts.grid[1])

    def token_picture(self, z: torch.Tensor) -> np.ndarray:
        """The first three principal components of the tokens as RGB, each token a square block."""
        return blocks(pca_rgb(z, self.parts.grid), self.token_block)

    def similarity(self, z: torch.Tensor, row: int, col: int) -> tuple[np.ndarray, dict]:
        """Cosine similarity of token (row, col) to every token, as a heat map (-1 dark, 1 yellow)."""
        gh, gw = self.parts.grid
        if not (0 <= row < gh and 0 <= col < gw):
            raise ViewError(f"token ({row}, {col}) is outside the {gh} x {gw} grid (rows and columns from 0)")
        zn = F.normalize(z.float(), dim=-1)
        sim = (zn @ zn[row * gw + col]).reshape(gh, gw).cpu().numpy()
        others = np.delete(sim.ravel(), row * gw + col)
        stats = {"row": row, "col": col, "self": float(sim[row, col]),
                 "mean_other": float(others.mean()) if others.size else float("nan"),
                 "max_other": float(others.max()) if others.size else float("nan")}
        return blocks(heat_map(sim), self.token_block), stats

    def token_at(self, x_px: int, y_px: int) -> tuple[int, int]:
        """A click on a token picture (pixel x, y) -> (row, col)."""
        gh, gw = self.parts.grid
        d = self.token_block
        return min(max(int(y_px) // d, 0), gh - 1), min(max(int(x_px) // d, 0), gw - 1)

    @torch.no_grad()
    def zero_shot(self, x: torch.Tensor, labels_text: str) -> tuple[dict, list[str]]:
        """Probabilities over the typed labels (softmax of the model's logit scale x cosine; each
        label is the prompt as typed) and the words the tokenizer does not know."""
        self._need("understand")
        labels = parse_labels(labels_text)
        m = self.parts.model
        text = class_embeddings(m, labels, ["{}"])
        logits = m.logit_scale.exp().float() * (image_embeddings(m, x) @ text.T)[0]
        probs = logits.softmax(-1).cpu().tolist()
        return dict(zip(labels, probs)), m.tokenizer.unknown_words(labels)

    def caption(self, x: torch.Tensor) -> str:
        self._need("understand")
        return self.parts.model.caption(x)[0]

    def gallery(self, spec: str | None = None) -> Gallery:
        self._need("retrieve")
        spec = (spec or "").strip() or self.default_gallery
        with self._lock:
            if spec not in self._galleries:
                try:
                    self._galleries[spec] = Gallery.encode(self.parts.model, spec, self.gallery_size,
                                                           self.resolution)
                except GalleryError as e:
                    raise ViewError(str(e)) from None
            return self._galleries[spec]

    def search_text(self, query: str, k: int = 8, spec: str | None = None):
        if not (query or "").strip():
            raise ViewError("type a text query (e.g. red star left of blue circle)")
        g = self.gallery(spec)
        return g, g.search_text(self.parts.model, query.strip(), k)

    def search_image(self, x: torch.Tensor, k: int = 8, spec: str | None = None):
        g = self.gallery(spec)
        return g, g.search_image(image_embeddings(self.parts.model, x)[0], k)

    def class_names(self) -> list[str]:
        return [str(c) for c in self.generator.class_names] if self.generator is not None else []

    def generate(self, class_id: int, guidance: float, steps: int, n: int = 8, seed: int = 0) -> np.ndarray:
        """n samples of one class (classifier-free guidance ``guidance``, ``steps`` sampler steps)."""
        self._need("generate")
        from ..generation.generator import GeneratorError
        if not 1 <= int(n) <= MAX_SAMPLES:
            raise ViewError(f"samples: 1 to {MAX_SAMPLES}, got {n}")
        if int(steps) < 1:
            raise ViewError(f"steps must be at least 1, got {steps}")
        try:
            images = self.generator.sample_images([int(class_id)] * int(n), cfg_scale=float(guidance),
                                                  steps=int(steps), seed=int(seed))
        except GeneratorError as e:
            raise ViewError(str(e)) from None
        return grid_picture(images, nrow=min(int(n), 8))
