"""``shapes``: an embedded, procedural, captioned image set (no download).

Each sample is a pure function of ``(gen_seed, split, kind, index)`` rendered at any resolution:
8 shapes x 8 colours x 3 sizes, 5 positions (jittered), plain, gradient or textured backgrounds,
1-3 objects with spatial relations, varied caption templates and word order. Splits
``train``/``val``/``test`` use disjoint random streams and keys. The selections (``kind``: mixed,
single = class-balanced for zero-shot, multi = retrieval), caption styles and spec options are
listed in docs/data.md and checked in ``ShapesSource``.

A curriculum (data.shapes.single_fraction_start / single_switch / single_sizes_start, training
split only): the first ``single_switch`` samples the whole job draws use the start share of single
objects (and sizes: shape is learnt on objects big enough to show it, then transfers), the rest
``single``. The share goes with each index through the stream, so it depends only on the position
in the run, and a resumed run draws the same samples.

Backgrounds are numpy arrays at the target size; object masks are drawn with PIL at 2x (<= 160 px)
and box-downsampled, so edges are anti-aliased at little cost.
Training does not augment ``shapes``: every sample is new anyway, and flips, crops and colour
jitter would make "left", "top" and colour words false.
"""
from __future__ import annotations

import math
import re
import typing

import numpy as np
from PIL import Image, ImageDraw

from ..config import CaptionStyle
from .errors import DataSpecError
from .mapsource import MapSource

SHAPES = ["circle", "square", "triangle", "star", "diamond", "cross", "heart", "ring"]
COLORS = {"red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 215, 40),
          "green": (40, 165, 60), "cyan": (40, 200, 215), "blue": (40, 70, 215),
          "purple": (135, 55, 190), "pink": (240, 120, 185)}
COLOR_NAMES = list(COLORS)
SIZES = {"small": 0.09, "medium": 0.15, "large": 0.22}  # radius as a fraction of the side
SIZE_NAMES = list(SIZES)
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25),
             "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
POS_NAMES = list(POSITIONS)
POS_PHRASES = {"left": ["on the left", "at the left", "on the left side"],
               "right": ["on the right", "at the right", "on the right side"],
               "top": ["at the top", "near the top", "in the upper part"],
               "bottom": ["at the bottom", "near the bottom", "in the lower part"],
               "centre": ["in the centre", "in the middle", "in the center"]}
TEXTURES = ["striped", "checkered", "speckled", "dotted"]
SPLITS = {"train": 0, "val": 1, "test": 2}
KINDS = {"mixed": 0, "single": 1, "multi": 2}
DEFAULT_N = {"train": 100_000, "val": 2000, "test": 2000}
LABELS = ("shape_color", "shape", "color")
CAPTION_MODES = typing.get_args(CaptionStyle)

SINGLE_TEMPLATES = [
    "a {size} {color} {shape} {pos}", "{pos}, a {size} {color} {shape}",
    "a {size} {color} {shape} {pos} on a {bg} background", "a picture of a {size} {color} {shape} {pos}",
    "there is a {size} {color} {shape} {pos}", "a {color} {shape}, {size}, {pos}",
    "{size} {color} {shape} {pos}, {bg} background", "a {bg} background with a {size} {color} {shape} {pos}",
    "a {shape} in {color}, {size} and {pos}", "the {color} {shape} is {size} and sits {pos}",
]
MULTI_TEMPLATES = [
    "a {o1} {rel} a {o2}", "{o1} {rel} {o2}", "there is a {o1} {rel} a {o2}", "a {o2} {inv} a {o1}",
    "on a {bg} background, a {o1} {rel} a {o2}", "a picture of a {o2} {inv} a {o1}",
]
RELATIONS = {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
             "above": ["above", "over"], "below": ["below", "under"]}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _unit_polygon(shape: str) -> np.ndarray:
    if shape == "square":
        return np.array([[-.8, -.8], [.8, -.8], [.8, .8], [-.8, .8]])
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.15], 1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "diamond":
        return np.array([[0, -1], [.65, 0], [0, 1], [-.65, 0]])
    if shape == "cross":
        w = 0.3
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                         [-w, w], [-1, w], [-1, -w], [-w, -w]])
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 17.0
    raise KeyError(shape)


_POLYS = {s: _unit_polygon(s) for s in SHAPES if s not in ("circle", "ring")}


def _background(rng, size: int):
    """-> (uint8 HxWx3 array, description such as 'dark striped')."""
    dark = rng.random() < 0.35
    tone = "dark" if dark else "light"
    base = ((rng.uniform(20, 70) if dark else rng.uniform(190, 245)) + rng.uniform(-12, 12, 3)).astype(np.float32)
    kind = rng.choice(["plain", "gradient", "textured"])
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).astype(np.uint8), f"plain {tone}"
    u = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    proj = np.cos(ang) * u[None, :] + np.sin(ang) * u[:, None]  # HxW, position along a direction
    if kind == "gradient":
        other = (rng.uniform(20, 90) if dark else rng.uniform(150, 235)) + rng.uniform(-20, 20, 3)
        p = (proj - proj.min()) / (np.ptp(proj) + 1e-6)
        img = base * (1 - p[..., None]) + other * p[..., None]
        return img.clip(0, 255).astype(np.uint8), f"{tone} gradient"
    tex = TEXTURES[rng.integers(len(TEXTURES))]
    period = rng.uniform(0.06, 0.14)
    if tex == "striped":
        pat = np.sin(2 * np.pi * proj / period)[..., None] * 18
    elif tex == "checkered":
        pat = (((u[None, :] // period) + (u[:, None] // period)) % 2 * 2 - 1)[..., None] * 14
    elif tex == "speckled":
        pat = rng.standard_normal((size, size, 1), dtype=np.float32) * 14
    else:  # dotted
        fx, fy = (u[None, :] % period) / period - .5, (u[:, None] % period) / period - .5
        pat = ((fx ** 2 + fy ** 2) < 0.06)[..., None] * (25 if dark else -25)
    return (base + pat).clip(0, 255).astype(np.uint8), f"{tone} {tex}"


def _draw(img: Image.Image, obj: dict, scale: int) -> None:
    """Paste one object through an anti-aliased mask drawn at ``scale`` x the image size."""
    size = img.size[0] * scale
    cx, cy, r = obj["x"] * size, obj["y"] * size, obj["r"] * size
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    if obj["shape"] in ("circle", "ring"):
        rr = 0.92 * r
        d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=255)
        if obj["shape"] == "ring":
            ri = 0.5 * r
            d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        c, s = math.cos(obj["rot"]), math.sin(obj["rot"])
        p = _POLYS[obj["shape"]] @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
        d.polygon([tuple(q) for q in p.tolist()], fill=255)
    img.paste(obj["rgb"], (0, 0), mask.reduce(scale) if scale > 1 else mask)


def _object(rng, shape=None, color=None, size=None, pos=None, sizes=None):
    """One object; ``sizes`` (names) limits the random size to those."""
    shape = SHAPES[rng.integers(8)] if shape is None else shape
    color = COLOR_NAMES[rng.integers(8)] if color is None else color
    if size is None:
        size = SIZE_NAMES[rng.integers(3)] if sizes is None else sizes[rng.integers(len(sizes))]
    r = SIZES[size] * rng.uniform(0.9, 1.1)
    rgb = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, 3), 0, 255))
    obj = {"shape": shape, "color": color, "size": size, "r": r, "rgb": rgb,
           "rot": rng.uniform(-0.25, 0.25)}
    if pos is not None:
        x, y = POSITIONS[pos]
        obj["x"] = float(np.clip(x + rng.uniform(-0.06, 0.06), r, 1 - r))
        obj["y"] = float(np.clip(y + rng.uniform(-0.06, 0.06), r, 1 - r))
        obj["pos"] = pos
    return obj


def _place(rng, objs):
    for i, o in enumerate(objs):
        for _ in range(20):  # rejection sampling: keep objects mostly apart
            o["x"], o["y"] = rng.uniform(o["r"], 1 - o["r"], 2)
            if all(math.hypot(o["x"] - p["x"], o["y"] - p["y"]) > 0.9 * (o["r"] + p["r"])
                   for p in objs[:i]):
                break
        x, y = o["x"], o["y"]  # the nearest named position
        o["pos"] = min(POSITIONS, key=lambda k: (POSITIONS[k][0] - x) ** 2 + (POSITIONS[k][1] - y) ** 2)


def _relation(a, b):
    """Where ``a`` is relative to ``b``: left/right/above/below (image y grows downward)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _caption(rng, objs, bg: str, mode: str, single_size: float = 0.0) -> str:
    if mode == "compact" and len(objs) == 1 and single_size and rng.random() < single_size:
        o = objs[0]  # drawn after the image, so the option changes captions, never pixels
        return f"{o['size']} {o['color']} {o['shape']}"
    if mode == "minimal" or (mode == "compact" and len(objs) == 1):
        return " and ".join(f"{o['color']} {o['shape']}" for o in objs)
    if len(objs) == 1:
        o = objs[0]
        if mode == "simple":
            return f"a {o['size']} {o['color']} {o['shape']} {POS_PHRASES[o['pos']][0]}"
        t = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))]
        pos = POS_PHRASES[o["pos"]][rng.integers(3)]
        return _fix_articles(t.format(size=o["size"], color=o["color"], shape=o["shape"], pos=pos, bg=bg))
    rel = _relation(objs[0], objs[1])
    phrase = [f"{o['size']} {o['color']} {o['shape']}" for o in objs]
    if mode == "compact":  # "small red star left of large blue circle and medium green ring top"
        text = f"{phrase[0]} {RELATIONS[rel][0]} {phrase[1]}"
        if len(objs) == 3:
            text += f" and {phrase[2]} {objs[2]['pos']}"
        return text
    if mode == "simple":
        text = f"a {phrase[0]} {RELATIONS[rel][0]} a {phrase[1]}"
        if len(objs) == 3:
            text += f" and a {phrase[2]} {POS_PHRASES[objs[2]['pos']][0]}"
        return text
    t = MULTI_TEMPLATES[rng.integers(len(MULTI_TEMPLATES))]
    text = t.format(o1=phrase[0], o2=phrase[1], rel=RELATIONS[rel][rng.integers(2)],
                    inv=RELATIONS[INVERSE[rel]][rng.integers(2)], bg=bg)
    if len(objs) == 3:
        tail = POS_PHRASES[objs[2]["pos"]][rng.integers(3)]
        text += f", and a {phrase[2]} {tail}" if rng.random() < 0.5 else f" and a {phrase[2]}"
    return _fix_articles(text)


def class_names_for(label: str) -> list[str]:
    if label == "shape":
        return list(SHAPES)
    if label == "color":
        return list(COLOR_NAMES)
    return [f"{c} {s}" for s in SHAPES for c in COLOR_NAMES]  # class = shape * 8 + colour


def class_attributes_for(label: str) -> dict | None:
    """Per class of ``class_names_for(label)``, its shape's and colour's index (shape_color only)."""
    if label != "shape_color":
        return None
    classes = range(len(SHAPES) * len(COLOR_NAMES))  # class = shape * 8 + colour
    return {"shape": [c // len(COLOR_NAMES) for c in classes], "colour": [c % len(COLOR_NAMES) for c in classes]}


def render(index: int, *, split: str = "train", kind: str = "mixed", resolution: int = 64,
           gen_seed: int = 0, single_fraction: float = 0.5, captions: str = "rich",
           label: str = "shape_color", single_size: float = 0.0, single_sizes: tuple[str, ...] | None = None):
    """One sample -> (PIL RGB image, caption, label or -1, objects). Pure function of its args.
    ``single_sizes`` (kind ``mixed``): the sizes a single object may take (None: all)."""
    rng = np.random.default_rng([gen_seed, SPLITS[split], KINDS[kind], index])
    if kind == "single":
        cls = index % 64  # class-balanced for zero-shot evaluation
        single = True
        obj = _object(rng, shape=SHAPES[cls // 8], color=COLOR_NAMES[cls % 8],
                      pos=POS_NAMES[rng.integers(5)])
    else:
        single = kind == "mixed" and rng.random() < single_fraction
        obj = _object(rng, pos=POS_NAMES[rng.integers(5)], sizes=single_sizes) if single else None
    if single:
        objs = [obj]
        s_idx, c_idx = SHAPES.index(obj["shape"]), COLOR_NAMES.index(obj["color"])
        lab = {"shape": s_idx, "color": c_idx, "shape_color": s_idx * 8 + c_idx}[label]
    else:
        objs = [_object(rng) for _ in range(int(rng.integers(2, 4)))]
        _place(rng, objs)
        lab = -1
    bg, bg_desc = _background(rng, resolution)
    img = Image.fromarray(bg)
    scale = 2 if resolution <= 160 else 1  # supersample the object masks only: cheap anti-aliasing
    for o in objs:
        _draw(img, o, scale)
    return img, _caption(rng, objs, bg_desc, captions, single_size), lab, objs


class ShapesSource(MapSource):
    def __init__(self, split: str, *, kind: str = "mixed", n: int | None = None, gen_seed: int = 0,
                 single_fraction: float = 0.5, captions: str = "rich", label: str = "shape_color",
                 single_size: float = 0.0, single_start: float | None = None, single_switch: int = 0,
                 single_sizes_start: list[str] | None = None, memo: bool = False):
        for option, value, allowed in (("split", split, SPLITS), ("kind", kind, KINDS),
                                       ("captions", captions, CAPTION_MODES), ("label", label, LABELS)):
            if value not in allowed:
                raise DataSpecError(f"shapes: unknown {option} '{value}' ({', '.join(allowed)})")
        for option, value in (("single fraction", single_fraction), ("single_size", single_size),
                              ("single_start", single_start)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise DataSpecError(f"shapes: {option} must be in [0, 1], got {value}")
        if single_size and captions != "compact":
            raise DataSpecError(f"shapes: single_size applies to compact captions only, not {captions}")
        self.split, self.kind, self.gen_seed = split, kind, gen_seed
        self.single_fraction, self.captions, self.label = single_fraction, captions, label
        self.single_size = single_size
        bad = [s for s in single_sizes_start or [] if s not in SIZE_NAMES]
        if bad or single_sizes_start == []:
            raise DataSpecError(f"shapes: single_sizes_start takes sizes from {', '.join(SIZE_NAMES)}, "
                                f"got {single_sizes_start}")
        # a curriculum only matters where singles and scenes mix and it lasts at least one sample
        first_phase = single_start is not None or single_sizes_start is not None
        mixed = kind == "mixed" and first_phase and single_switch > 0
        self.single_start = single_start if mixed else None
        self.single_sizes_start = tuple(single_sizes_start) if mixed and single_sizes_start else None
        self.single_switch = int(single_switch) if mixed else 0
        self.num_samples = int(n) if n is not None else DEFAULT_N[split]
        has_labels = kind != "multi" and (kind == "single" or single_fraction > 0)
        self.class_names = class_names_for(label) if has_labels else None
        # per class, the index of its shape and of its colour: zero-shot reports each attribute's
        # accuracy, so a report says whether shape or colour is what the model misses
        self.class_attributes = class_attributes_for(label) if has_labels else None
        if captions in ("minimal", "compact"):  # single-object captions are the bare class name
            self.templates = ["{}"]
        elif label == "color":
            self.templates = ["a {} shape.", "something {}."]
        else:
            self.templates = ["a {}.", "a picture of a {}.", "there is a {}."]
        self.augment = False  # see module docstring
        # rendered samples by (index, phase, resolution): ``load`` is a pure function of those, so a
        # run that repeats a small set (n) renders each sample once (data.shapes.memo)
        self._memo: dict | None = {} if memo else None

    def raw_stream(self, epoch, shuffle, seed, rank, world_size, part, num_parts):
        indices = super().raw_stream(epoch, shuffle, seed, rank, world_size, part, num_parts)
        if not self.single_switch:
            return indices
        return self._with_phase(indices, epoch, world_size * num_parts)

    def _with_phase(self, indices, epoch: int, stride: int):
        """(index, render options) pairs: the k-th sample of this part is about the
        (epoch * n + k * stride)-th the whole job draws (every part advances in lockstep), and
        those before ``single_switch`` take the first phase's share and sizes."""
        first = {"single_fraction": self.single_fraction if self.single_start is None else self.single_start,
                 "single_sizes": self.single_sizes_start}
        rest = {"single_fraction": self.single_fraction, "single_sizes": None}
        for k, index in enumerate(indices):
            yield index, first if epoch * self.num_samples + k * stride < self.single_switch else rest

    def load(self, raw, resolution: int | None):
        index, phase = raw if isinstance(raw, tuple) else (raw, {"single_fraction": self.single_fraction})
        key = f"shapes-{self.split}-{self.kind}-{self.gen_seed}-{index:07d}"
        memo_key = (index, phase["single_fraction"], phase.get("single_sizes"), resolution)
        if self._memo is not None and memo_key in self._memo:
            img, cap, lab = self._memo[memo_key]
            return img.copy(), cap, lab, key
        img, cap, lab, _ = render(index, split=self.split, kind=self.kind,
                                  resolution=resolution or 128, gen_seed=self.gen_seed,
                                  captions=self.captions, label=self.label, single_size=self.single_size,
                                  **phase)
        if self._memo is not None:
            self._memo[memo_key] = (img.copy(), cap, lab)
        return img, cap, lab, key
