"""Building typed dataclass configs from plain dicts: type coercion, numeric bounds and
``key=value`` overrides, each failure one line naming the key (:class:`ConfigError`).

Shared by every config tree: the OpenVision 3 tree (config.py), the VAE trainer's
(train/vae_config.py) and the generator's (generation/config.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml


class ConfigError(ValueError):
    """A bad config key, value or file. The message is one line meant for the user."""


# Numeric types with bounds, (what the error says it must be, the check), for the fields of every
# config tree: checked as YAML or key=value sets them, so an impossible value is one line naming
# the key instead of a crash minutes later.
PosInt = Annotated[int, (">= 1", lambda v: v >= 1)]
NonNegInt = Annotated[int, (">= 0", lambda v: v >= 0)]
PosFloat = Annotated[float, ("> 0", lambda v: v > 0)]
NonNegFloat = Annotated[float, (">= 0", lambda v: v >= 0)]
Fraction = Annotated[float, ("between 0 and 1", lambda v: 0 <= v <= 1)]
OpenFraction = Annotated[float, ("in (0, 1]", lambda v: 0 < v <= 1)]
Decay = Annotated[float, ("in [0, 1)", lambda v: 0 <= v < 1)]


def _strip_optional(tp):
    """Optional[X] -> X; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value, tp, key: str):
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}, got {value!r}")
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, str) and type(value) is tp:  # a bool is not an int here
        return value
    expected = "true/false" if tp is bool else getattr(tp, "__name__", tp)
    raise ConfigError(f"config key '{key}' expects {expected}, got {value!r}")


def _build(cls, values: dict, prefix: str = "", base=None):
    """Instantiate dataclass ``cls`` from ``values`` on top of ``base`` (or defaults)."""
    hints, bounded = typing.get_type_hints(cls), typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = base if base is not None else cls()
    for key, value in values.items():
        if key not in names:
            moved = MOVED.get(cls.__name__, {}).get(key)
            if moved:
                raise ConfigError(f"config key '{prefix}{key}' is now '{prefix}{moved}'")
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else (
                f"; valid keys: {', '.join(prefix + n for n in names)}")
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        tp, _ = _strip_optional(hints[key])
        current = getattr(obj, key)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and current is not None:
            _build(tp, value, f"{prefix}{key}.", base=current)
        else:
            setattr(obj, key, _coerce(value, hints[key], prefix + key))
            _check_bounds(bounded[key], getattr(obj, key), prefix + key)
    return obj


def build_with_preset(cls, values: dict, section: str, presets: dict):
    """``cls`` from its defaults, then the size preset ``values[section]["preset"]`` names (applied
    before the section's other keys, so they override it), then ``values``."""
    values = dict(values or {})
    obj = cls()
    part = getattr(obj, section)
    preset = (values.get(section) or {}).get("preset", part.preset)
    if preset not in presets:
        close = difflib.get_close_matches(str(preset), presets, n=3)
        raise ConfigError(f"unknown {section} preset '{preset}'; choose one of {', '.join(presets)}"
                          + (f" (closest: {', '.join(close)})" if close else ""))
    _build(type(part), presets[preset], f"{section}.", base=part)
    return _build(cls, values, "", base=obj)


# Keys that moved, by dataclass name: old key -> its new dotted path below the same section, so an
# old name is one line naming the new one instead of a list of valid keys.
MOVED: dict[str, dict[str, str]] = {}


def _check_bounds(hint, value, dotted: str) -> None:
    """``value`` against the bound of its field's hint (e.g. ``PosInt | None``), if it has one."""
    hint, _ = _strip_optional(hint)
    bound = hint.__metadata__[0] if typing.get_origin(hint) is Annotated else None
    if bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and not bound[1](value):
        raise ConfigError(f"config key '{dotted}' must be {bound[0]}, got {value!r}")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "model.preset=nano"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping, plain YAML data only (``yaml.safe_load``): a ``!!python/...`` tag,
    which ``yaml.load`` would turn into a call, is refused with one line and never constructed."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.constructor.ConstructorError as e:
        tag = re.search(r"tag '([^']+)'", str(e))
        raise ConfigError(f"{path}: refused: a YAML tag that only Python-object loaders accept "
                          f"({tag.group(1) if tag else str(e).splitlines()[0]}); configs are plain data, "
                          f"nothing in the file was run") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values
