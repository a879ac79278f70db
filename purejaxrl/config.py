"""Config helpers: frozen pytree dataclasses whose shape-setting fields are static.

Numeric hyper-parameters are pytree leaves, so `jax.vmap` over a batch of configs (or over
`dataclasses.replace(cfg, learning_rate=lr)` inside a vmapped function) sweeps them in one program.
Validation runs in `make_train`, before anything is compiled; a numeric leaf is checked only when
its value is concrete (inside a sweep it is a tracer and cannot be inspected).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import struct

dataclass = struct.dataclass


def static(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A config field that sets shapes or code paths: part of the treedef, never traced."""
    if default is dataclasses.MISSING:
        return struct.field(pytree_node=False, **kwargs)
    return struct.field(pytree_node=False, default=default, **kwargs)


def is_concrete(x: Any) -> bool:
    """False for tracers (values inside jit/vmap), True for Python and numpy numbers."""
    return not isinstance(x, jax.core.Tracer)


def _name(cfg) -> str:
    return type(cfg).__name__


def check_positive_int(cfg, field: str) -> None:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{_name(cfg)}.{field}={value!r}: must be a positive integer")


def check_range(
    cfg, field: str, low: float, high: float, *, low_open=False, high_open=False
) -> None:
    """Checks low <=/< value <=/< high when the value is concrete (skipped for tracers).

    Non-finite values are always refused, so the message shows an infinite bound as open:
    `check_range(cfg, "learning_rate", 0.0, np.inf, low_open=True)` says "must lie in (0, inf)".
    """
    value = getattr(cfg, field)
    if not is_concrete(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    lo_ok = np.all(arr > low) if low_open else np.all(arr >= low)
    hi_ok = np.all(arr < high) if high_open else np.all(arr <= high)
    if not (np.all(np.isfinite(arr)) and lo_ok and hi_ok):
        lb = "(" if low_open or not np.isfinite(low) else "["
        rb = ")" if high_open or not np.isfinite(high) else "]"
        raise ValueError(f"{_name(cfg)}.{field}={value!r}: must lie in {lb}{low:g}, {high:g}{rb}")


def close_match(value, choices: Iterable[Any]) -> str:
    """ "; did you mean 'x'?" for the choice closest to `value` (by spelling), or ""."""
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def check_choice(cfg, field: str, allowed: Iterable[Any], where: str | None = None) -> None:
    """ValueError "<where>.<field>=<value> is unknown; did you mean ...? (allowed values are
    [...])" unless the field's value is one of `allowed` (`where` defaults to the class name)."""
    value = getattr(cfg, field)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"{where or _name(cfg)}.{field}={value!r} is unknown{close_match(value, allowed)} "
            f"(allowed values are {list(allowed)})"
        )


def check_hidden_sizes(cfg, field: str = "hidden_sizes") -> None:
    sizes = getattr(cfg, field)
    if not isinstance(sizes, tuple) or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(f"{_name(cfg)}.{field}={sizes!r}: must be a tuple of positive integers")


def _freeze(value: Any) -> Any:
    """Lists -> tuples and mappings -> frozen mappings, recursively (hashable static values)."""
    if isinstance(value, Mapping):
        return freeze_mapping(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Tuples -> lists, recursively (for YAML/JSON)."""
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def freeze_mapping(mapping: Mapping | Iterable | None) -> tuple[tuple[str, Any], ...]:
    """A hashable, order-independent form of a kwargs dict (for static config fields)."""
    if mapping is None:
        return ()
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted((str(k), _freeze(v)) for k, v in items))


MAPPING_FIELDS = ("objective",)  # static fields held as frozen mappings, besides `*_kwargs`


def is_mapping_field(name: str) -> bool:
    return name.endswith("_kwargs") or name in MAPPING_FIELDS


def from_dict(cls, values: Mapping[str, Any]):
    """Builds config `cls` from a plain dict (e.g. parsed YAML); unknown keys get close-match hints.

    Lists become tuples (hidden_sizes) and dicts become frozen kwargs (env_kwargs).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, sorted(fields), n=3)
            raise ValueError(
                f"{cls.__name__} has no field {key!r}"
                + (f"; did you mean {hint}?" if hint else f"; fields are {sorted(fields)}")
            )
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
    """Plain-Python dict of a config (tuples as lists, frozen kwargs as dicts) for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_mapping_field(f.name):
            value = {k: _thaw(v) for k, v in value}
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.generic | np.ndarray) or hasattr(value, "dtype"):
            value = np.asarray(value).tolist()
        out[f.name] = value
    return out
