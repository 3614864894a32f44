"""`ov3 probe llava`'s data: question-answer sets on `shapes`, the word-level tokenizer, sequences."""
from __future__ import annotations

import random

import numpy as np

QUESTION_TYPES = ("colour", "count", "relation", "exists")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
SPECIAL = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "image": "<image>"}
CAPTION_INSTRUCTION = "describe the image ."  # [P] LLaVA stage 1: a brief-description instruction


# ------------------------------------------------------------------------------------------------
# questions


def questions_for(objs: list[dict], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, answer) for one image's objects: the colour of a shape, the number of objects,
    where one shape is relative to another (left/right/above/below), whether a colour-shape pair
    exists. Colour and relation only where the named shapes are unique in the image, so each
    question has one right answer."""
    from ..data.shapes import COLOR_NAMES, SHAPES, _relation  # the geometry the captions' relations use
    shapes = [o["shape"] for o in objs]
    unique = [o for o in objs if shapes.count(o["shape"]) == 1]
    out = []
    if unique:
        o = unique[rng.integers(len(unique))]
        out.append(("colour", f"what colour is the {o['shape']} ?", o["color"]))
    out.append(("count", "how many objects are there ?", NUMBER_WORDS[len(objs)]))
    if len(unique) >= 2:
        i, j = rng.choice(len(unique), size=2, replace=False)
        a, b = unique[int(i)], unique[int(j)]
        out.append(("relation", f"where is the {a['shape']} relative to the {b['shape']} ?", _relation(a, b)))
    present = {(o["color"], o["shape"]) for o in objs}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[rng.integers(len(present))]
        answer = "yes"
    else:
        while True:
            if rng.random() < 0.5:  # a hard "no": one attribute of an object that is there
                o = objs[rng.integers(len(objs))]
                colour, shape = ((COLOR_NAMES[rng.integers(8)], o["shape"]) if rng.random() < 0.5
                                 else (o["color"], SHAPES[rng.integers(8)]))
            else:
                colour, shape = COLOR_NAMES[rng.integers(8)], SHAPES[rng.integers(8)]
            if (colour, shape) not in present:
                break
        answer = "no"
    out.append(("exists", f"is there a {colour} {shape} ?", answer))
    return out


def render_pool(n: int, split: str, resolution: int, seed: int, single_fraction: float):
    """n `shapes` images of ``split`` -> (PIL images, compact captions, question lists)."""
    from ..data.shapes import render
    images, captions, qas = [], [], []
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split], 17])
    for i in range(n):
        img, cap, _, objs = render(i, split=split, kind="mixed", resolution=resolution, gen_seed=seed,
                                   single_fraction=single_fraction, captions="compact")
        images.append(img)
        captions.append(cap)
        qas.append(questions_for(objs, rng))
    return images, captions, qas


# ------------------------------------------------------------------------------------------------
# the closed word-level tokenizer


def build_tokenizer(texts: list[str]):
    """A WordLevel ``tokenizers.Tokenizer`` over the words of ``texts`` (whitespace and punctuation
    splitting), as a PreTrainedTokenizerFast, so LlavaProcessor uses it, with LLaVA's special tokens
    (pad, unk, bos, eos, and the image placeholder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    pre = pre_tokenizers.Whitespace()  # words and punctuation marks
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL.values(), *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre
    tok.add_special_tokens(list(SPECIAL.values()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
                                   unk_token=SPECIAL["unk"], pad_token=SPECIAL["pad"],
                                   extra_special_tokens={"image_token": SPECIAL["image"]})


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _turn_ids(tok, question: str, answer: str, first: bool, n_image: int, image_id: int):
    """One LLaVA v1 turn, ``user : [<image> x n] question assistant : answer </s>``; labels only on
    the answer and its end token [P: LLaVA trains on the assistant's words only]."""
    prompt = _ids(tok, "user :") + ([image_id] * n_image if first else []) + _ids(tok, question) + \
        _ids(tok, "assistant :")
    reply = _ids(tok, answer) + [tok.eos_token_id]
    return prompt + reply, [-100] * len(prompt) + reply


def caption_sequence(tok, caption: str, n_image: int, image_id: int):
    ids, labels = _turn_ids(tok, CAPTION_INSTRUCTION, caption, True, n_image, image_id)
    return [tok.bos_token_id] + ids, [-100] + labels


def conversation_sequence(tok, qas, n_image: int, image_id: int, rng: random.Random):
    """All of an image's questions as one conversation in random order (LLaVA-1.5's multi-turn
    samples [P]); the image tokens sit in the first turn."""
    qas = list(qas)
    rng.shuffle(qas)
    ids, labels = [tok.bos_token_id], [-100]
    for k, (_, q, a) in enumerate(qas):
        i, l_ = _turn_ids(tok, q, a, k == 0, n_image, image_id)
        ids += i
        labels += l_
    return ids, labels


def eval_prompt(question: str) -> str:
    return f"{SPECIAL['bos']} user : {SPECIAL['image']} {question} assistant :"


__all__ = ["QUESTION_TYPES", "NUMBER_WORDS", "SPECIAL", "CAPTION_INSTRUCTION", "questions_for", "render_pool",
           "build_tokenizer", "caption_sequence", "conversation_sequence", "eval_prompt"]
