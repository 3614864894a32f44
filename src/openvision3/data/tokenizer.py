"""Text tokens: open_clip's BPE ``SimpleTokenizer`` (its vocabulary ships inside the package)."""
from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer


class Tokenizer:
    """``Tokenizer(context_length)(["a red star"]) -> LongTensor (B, context_length)``.

    Each row is ``sot, tokens..., eot`` then 0 padding; long texts are cut and still end in eot.
    """

    pad_id = 0

    def __init__(self, context_length: int = 77):
        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)
        self.sot_id = self._tok.sot_token_id
        self.eot_id = self._tok.eot_token_id
        self.vocab_size = self._tok.vocab_size

    def __call__(self, texts) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts), context_length=self.context_length).long()

    def encode(self, text: str) -> list[int]:
        """BPE ids without sot/eot."""
        return self._tok.encode(text)

    def decode(self, ids) -> str:
        """ids (list or 1-D tensor) -> text; drops sot and padding, stops at the first eot."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.eot_id:
                break
            if i in (self.sot_id, self.pad_id):
                continue
            out.append(int(i))
        return self._tok.decode(out).strip()
