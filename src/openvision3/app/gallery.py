"""A gallery: any data spec, encoded once (image features, captions, thumbnails), then searched
by a text query (its images, text -> image) or by an image (its captions, image -> text).
Shapes galleries are the held-out multi-object scenes the retrieval evaluation uses
(eval/common.py ``open_for``)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataSpecError
from ..eval.common import EvalError, has_splits, iterate, open_for
from ..eval.zeroshot import image_embeddings
from .pictures import picture


class GalleryError(ValueError):
    """A gallery spec that cannot be opened or holds no readable image (one line)."""


@dataclass
class Gallery:
    spec: str
    features: torch.Tensor  # (G, E), L2-normalised image embeddings
    captions: list
    texts: list  # the distinct captions, in order of first appearance
    text_features: torch.Tensor  # (U, E), L2-normalised text embeddings of ``texts``
    thumbnails: list  # (R, R, 3) uint8 each
    seconds: float  # the one-time encoding

    @classmethod
    @torch.no_grad()
    def encode(cls, model, spec: str, size: int, resolution: int, batch_size: int = 100) -> "Gallery":
        t0 = time.perf_counter()
        feats, caps, thumbs = [], [], []
        try:
            ds = open_for("retrieval", spec, "test" if has_splits(spec) else "train", resolution)
            for batch in iterate(ds, size, batch_size, "gallery", progress=False):
                x = batch["image"].to(model.logit_scale.device)
                feats.append(image_embeddings(model, x).cpu())
                caps += list(batch["caption"])
                thumbs += [picture(im) for im in batch["image"]]
        except (DataSpecError, EvalError, OSError, ValueError) as e:
            raise GalleryError(f"gallery '{spec}' cannot be opened: {' '.join(str(e).split())}") from None
        if not caps:
            raise GalleryError(f"gallery '{spec}' holds no readable image")
        texts = list(dict.fromkeys(caps))
        text_feats = torch.cat([F.normalize(model.encode_text(texts[i:i + batch_size]).float(), dim=-1).cpu()
                                for i in range(0, len(texts), batch_size)])
        return cls(spec, torch.cat(feats), caps, texts, text_feats, thumbs, round(time.perf_counter() - t0, 2))

    def __len__(self) -> int:
        return len(self.captions)

    def summary(self) -> str:
        return (f"gallery `{self.spec}`: {len(self)} images, {len(self.texts)} distinct captions, "
                f"encoded in {self.seconds} s")

    @staticmethod
    def _top(features: torch.Tensor, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """(E,) normalised query -> [(row, cosine)] best first."""
        best = (features @ query.float().cpu()).topk(min(k, features.shape[0]))
        return [(int(i), float(s)) for s, i in zip(best.values, best.indices)]

    @torch.no_grad()
    def search_text(self, model, query: str, k: int) -> list[tuple[np.ndarray, str, float]]:
        """Text -> image: the k gallery images nearest to the query, as (thumbnail, caption, cosine)."""
        q = F.normalize(model.encode_text([query]).float(), dim=-1)[0]
        return [(self.thumbnails[i], self.captions[i], s) for i, s in self._top(self.features, q, k)]

    def search_image(self, image_feature: torch.Tensor, k: int) -> list[tuple[str, float]]:
        """Image -> text: the k gallery captions nearest to an image embedding, as (caption, cosine)."""
        return [(self.texts[i], s) for i, s in self._top(self.text_features, image_feature, k)]
