"""Every data source behind one spec string (docs/data.md lists the specs and their options).

    ds = open_data("shapes", split="train", resolution=128, train=True, cfg=DataConfig(), seed=0,
                   rank=0, world_size=1, infinite=None)       # infinite defaults to ``train``
    for batch in make_loader(ds, batch_size=64, num_workers=2): ...
        # {"image": (B,3,R,R) in [-1,1], "caption": [str], "label": (B,), "key": [str],
        #  "skipped": Counter since the previous batch}
    ckpt["data"] = ds.state_dict(); ...; ds.load_state_dict(ckpt["data"])   # exact resume

``open_data(..., kind="single" | "multi")`` selects the ``shapes`` evaluation sets (zero-shot,
retrieval); ``ds.class_names`` / ``ds.templates`` feed zero-shot; ``ds.num_samples`` is the size
of the whole split (None for wds without info.json). ``resolution=None`` yields PIL images (used
by pack/inspect). Position guarantees: ``stream.py``.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from .errors import DataSpecError, SkipSample
from .stream import Loader, StreamDataset, collate
from .tokenizer import Tokenizer, WordTokenizer
from .transforms import build_transform

__all__ = ["open_data", "make_loader", "parse_spec", "DataSpecError", "SkipSample", "Tokenizer", "WordTokenizer",
           "StreamDataset", "Loader", "collate", "build_transform"]

SCHEMES = ("shapes", "wds", "folder", "fashion-mnist", "imagefolder")
USAGE = "use shapes, wds:PATTERN, folder:DIR, imagefolder:DIR or fashion-mnist"


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """``"shapes?kind=single"`` -> ("shapes", "", {"kind": "single"}); ``"wds:a.tar"`` -> ("wds", "a.tar", {})."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataSpecError(f"empty data spec; {USAGE}")
    spec = spec.strip()
    scheme, _, rest = spec.partition(":")
    query = {}
    if scheme.split("?")[0] in ("shapes", "fashion-mnist"):
        head, _, q = spec.partition("?")
        scheme, _, rest = head.partition(":")
        query = dict(parse_qsl(q, keep_blank_values=True))
    elif scheme == "folder" and "?" in rest:
        rest, _, q = rest.partition("?")
        query = dict(parse_qsl(q, keep_blank_values=True))
    if scheme not in SCHEMES:
        raise DataSpecError(f"unknown data spec '{spec}'; {USAGE}")
    if scheme in ("wds", "folder", "imagefolder") and not rest:
        raise DataSpecError(f"data spec '{spec}' needs a path: {scheme}:PATH")
    return scheme, rest, query


def _num(query, key, cast, default):
    if key not in query:
        return default
    try:
        return cast(query.pop(key))
    except ValueError:
        raise DataSpecError(f"shapes: option {key} expects a {cast.__name__}") from None


def open_source(spec: str, split: str = "train", cfg=None, kind: str | None = None):
    """The raw source behind a spec (no transform); ``open_data`` wraps it into a dataset."""
    from ..config import DataConfig
    cfg = cfg or DataConfig()
    scheme, rest, query = parse_spec(spec)
    q = dict(query)  # each option a source takes is popped; what is left is unknown
    if scheme == "shapes":
        from .shapes import ShapesSource
        opts = cfg.shapes
        captions = q.pop("captions", opts.captions)
        # the config's single_size belongs to compact captions; a spec asking for another style
        # (an evaluation set, say) simply drops it, while `single_size=` in that spec is an error
        cfg_size = opts.single_size if captions == "compact" else 0.0
        src = ShapesSource(split, kind=kind or q.pop("kind", "mixed"), n=_num(q, "n", int, None),
                           gen_seed=_num(q, "seed", int, 0),
                           single_fraction=_num(q, "single", float, opts.single_fraction),
                           captions=captions, label=q.pop("label", "shape_color"),
                           single_size=_num(q, "single_size", float, cfg_size),
                           # the curriculum belongs to training: val/test keep the final share
                           single_start=opts.single_fraction_start if split == "train" else None,
                           single_switch=opts.single_switch,
                           single_sizes_start=opts.single_sizes_start if split == "train" else None,
                           memo=opts.memo and split == "train")
    elif scheme == "fashion-mnist":
        from .fashion_mnist import FashionMnistSource
        src = FashionMnistSource(split, rest or None)
    elif scheme == "imagefolder":
        from .imagefolder import ImageFolderSource
        src = ImageFolderSource(rest, split)
    elif scheme == "folder":
        from .folder import FolderSource
        src = FolderSource(rest)
    else:
        from .webdataset import WdsSource
        src = WdsSource(rest, shuffle_buffer=cfg.shuffle_buffer)
    if q:
        raise DataSpecError(f"{scheme}: unknown option(s) {', '.join(sorted(q))}")
    return src


def open_data(spec: str, split: str = "train", resolution: int | None = 128, train: bool = True,
              cfg=None, seed: int = 0, rank: int = 0, world_size: int = 1,
              infinite: bool | None = None, kind: str | None = None) -> StreamDataset:
    """Open a data spec as a resumable IterableDataset (see the module docstring)."""
    from ..config import DataConfig
    cfg = cfg or DataConfig()
    src = open_source(spec, split, cfg, kind)
    augment = getattr(src, "augment", True)
    return StreamDataset(src, spec=spec, split=split, resolution=resolution, train=train,
                         transform_factory=lambda r: build_transform(r, train, cfg, augment),
                         seed=seed, rank=rank, world_size=world_size,
                         infinite=train if infinite is None else infinite)


def make_loader(ds: StreamDataset, batch_size: int, num_workers: int = 0) -> Loader:
    """Batches with ``skipped`` counts; consuming a batch advances ``ds.state_dict()``."""
    return Loader(ds, batch_size, num_workers=num_workers)
