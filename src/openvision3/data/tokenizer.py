"""Text tokens for both text towers.

``bpe`` (default): open_clip's BPE ``SimpleTokenizer``, 49,408 ids (its vocabulary ships inside
the package). ``words`` (ours [?]): a closed word-level vocabulary given in the config
(``model.words``), for small synthetic caption sets such as the CPU demo's, whose captions use
28 words: there the 49,408-way caption softmax and the two 49,408-row embedding tables were
about a third of a training step.

Both lay ids out the same way, which the text towers rely on: 0 is padding, and end-of-text is
the largest id (the text encoder pools at the argmax id; cropping keeps it last).
"""
from __future__ import annotations

import itertools
import re

import torch
from open_clip.tokenizer import SimpleTokenizer


def _pad_rows(rows: list[list[int]], context_length: int, eot_id: int) -> torch.LongTensor:
    """``sot ... eot`` rows -> (B, context_length), zero-padded; a cut row still ends in eot."""
    out = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > context_length:
            row = row[:context_length - 1] + [eot_id]
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class Tokenizer:
    """``Tokenizer(context_length)(["a red star"]) -> LongTensor (B, context_length)``: open_clip BPE.

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
        return self._tok.decode(_content_ids(ids, self)).strip()

    def unknown_words(self, texts) -> list[str]:
        """Always empty: byte-level BPE encodes any text without an unknown id."""
        return []


class WordTokenizer:
    """A closed vocabulary of whole words: ids 0 pad, 1 unknown, the words in the order given,
    then sot and eot (eot largest, as in the BPE). Text is lower-cased and split into words and
    single punctuation marks; anything not in the list becomes the unknown id."""

    pad_id, unk_id = 0, 1
    _SPLIT = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

    def __init__(self, words, context_length: int = 77):
        self.words = list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))
        if not self.words:
            raise ValueError("WordTokenizer needs at least one word")
        bad = [w for w in self.words if self._SPLIT.fullmatch(w) is None]
        if bad:
            raise ValueError(f"WordTokenizer words must be single words or punctuation marks, got {bad[:3]}")
        self.context_length = context_length
        self._ids = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot_id, self.eot_id = len(self.words) + 2, len(self.words) + 3
        self.vocab_size = len(self.words) + 4

    def _split(self, text: str) -> list[str]:
        return self._SPLIT.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Word ids without sot/eot."""
        return [self._ids.get(w, self.unk_id) for w in self._split(text)]

    def unknown_words(self, texts) -> list[str]:
        """The words of ``texts`` outside the list (they would all become the unknown id), sorted."""
        if isinstance(texts, str):
            texts = [texts]
        return sorted({w for t in texts for w in self._split(t) if w not in self._ids})

    def __call__(self, texts) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        return _pad_rows([[self.sot_id, *self.encode(t), self.eot_id] for t in texts],
                         self.context_length, self.eot_id)

    def decode(self, ids) -> str:
        """ids -> words joined by spaces (no space before punctuation); unknown ids as ``<unk>``."""
        text = " ".join(self.words[i - 2] if i >= 2 else "<unk>" for i in _content_ids(ids, self))
        return re.sub(r" ([^\sa-z0-9<])", r"\1", text)


def _content_ids(ids, tok) -> list[int]:
    """Drop sot and padding, stop at the first eot."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return [int(i) for i in itertools.takewhile(lambda i: i != tok.eot_id, ids) if i not in (tok.sot_id, tok.pad_id)]


def build_tokenizer(model_cfg, context_length: int | None = None):
    """The tokenizer a model config names (``model.tokenizer``), long enough for both text towers."""
    if context_length is None:
        context_length = max(model_cfg.text.context_length, model_cfg.caption.context_length)
    if model_cfg.tokenizer == "words":
        return WordTokenizer(model_cfg.words, context_length)
    return Tokenizer(context_length)


def vocab_size(model_cfg) -> int:
    """Rows of the text towers' embedding tables for this config (without loading the BPE)."""
    if model_cfg.tokenizer == "words":
        return WordTokenizer(model_cfg.words).vocab_size
    return model_cfg.vocab_size


__all__ = ["Tokenizer", "WordTokenizer", "build_tokenizer", "vocab_size"]
