"""Parsed YAML (mappings of plain values) -> typed values: the mechanics the feature-spec loader and the training
config share, so both reject the same things the same way.

- `deep_merge`: layered documents (a spec that `extends` another, a config's base + experiment + overrides);
- `mapping`: unknown keys rejected (a misspelt switch must not be silently ignored), required keys present;
- `typed` / `choice`: one type rule (a bool is never a number, an int is a float, true/false only for bools);
- `build`: a frozen dataclass tree from its type hints (Optional, tuple[X, ...], nested dataclasses).

A check raises `Problem` with the key path below the value it checked; each loader wraps it into its own error
(SpecError, ConfigError) naming the file and section, in the style its users know.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, get_args, get_origin, get_type_hints


class Problem(ValueError):
    """What is wrong with a value; `path` is the key path from the checked value down to the culprit."""

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.path = message, path

    def under(self, key: str) -> "Problem":
        """The same problem seen from one level up (`key` is where the checked value sat)."""
        return Problem(self.message, (key, *self.path))

    @property
    def dotted(self) -> str:
        """The path as `a.b[0].c` ("" at the checked value itself)."""
        return "".join(k if k.startswith("[") or i == 0 else f".{k}" for i, k in enumerate(self.path))


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key (nested mappings merged, anything else replaced); inputs unchanged."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mapping(value: Any, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """`value` itself when it is a mapping whose keys are all allowed and include the required ones."""
    if not isinstance(value, dict):
        raise Problem(f"expected a mapping, got {type(value).__name__}")
    allowed = set(allowed)
    for k in value:
        if k not in allowed:
            raise Problem(f"unknown key {str(k)!r} (allowed: {', '.join(sorted(allowed))})", (str(k),))
    for k in required:
        if k not in value:
            raise Problem("is required", (k,))
    return value


def _type_name(typ: type | tuple) -> str:
    return typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)


def typed(value: Any, typ: type | tuple[type, ...]) -> Any:
    """`value` checked against `typ` (None passes: the caller decides what absent means); an int given for a
    float becomes a float, a bool is never taken for a number, and a bool must be true/false."""
    if value is None:
        return None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and typ in (int, float):
        raise Problem(f"expected {_type_name(typ)}, got a boolean")
    if typ is bool and not isinstance(value, bool):
        raise Problem(f"expected true/false, got {type(value).__name__} {value!r}")
    if not isinstance(value, typ):
        raise Problem(f"expected {_type_name(typ)}, got {type(value).__name__} {value!r}")
    return value


def choice(value: Any, options: Iterable[str]) -> Any:
    """`value` when it is one of `options` (listed in the error otherwise)."""
    options = tuple(options)
    if value not in options:
        raise Problem(f"{value!r} is not one of {', '.join(options)}")
    return value


def build(cls: type, raw: Any) -> Any:
    """Dataclass `cls` from a mapping: keys must be fields, values are checked against the type hints, missing
    fields keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in mapping(raw, names).items():
        try:
            kwargs[key] = _coerce(hints[key], value)
        except Problem as p:
            raise p.under(key) from None
    return cls(**kwargs)


def _coerce(typ: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(typ):
        return build(typ, value)
    args = get_args(typ)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
        args = get_args(typ)
    if value is None:
        raise Problem(f"expected {getattr(typ, '__name__', typ)}, got null")
    if get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)):
            raise Problem(f"expected a list, got {type(value).__name__} {value!r}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_coerce(args[0], v))
            except Problem as p:
                raise p.under(f"[{i}]") from None
        return tuple(out)
    return typed(value, typ)
