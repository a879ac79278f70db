"""Config helpers: frozen pytree dataclasses whose shape-setting fields are static.

Numeric hyper-parameters are pytree leaves, so `jax.vmap` over a batch of configs (or over
`dataclasses.replace(cfg, learning_rate=lr)` inside a vmapped function) sweeps them in one program.
Every config validates itself at construction (`__post_init__`: `check_types`, then the range and
choice checks below); a numeric leaf is checked only when its value is concrete (inside a sweep it
is a tracer, and jax rebuilds configs with placeholder leaves: neither can be inspected).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

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


def is_value(x: Any) -> bool:
    """True for a leaf a user could have given (checked); False for tracers, None and the other
    placeholders jax puts in rebuilt pytrees (vmap axis specs, eval_shape), which are skipped."""
    if isinstance(x, jax.Array):
        return is_concrete(x)
    return isinstance(x, str | bytes | int | float | np.generic | np.ndarray)


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
    if not is_value(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    lo_ok = np.all(arr > low) if low_open else np.all(arr >= low)
    hi_ok = np.all(arr < high) if high_open else np.all(arr <= high)
    if not (np.all(np.isfinite(arr)) and lo_ok and hi_ok):
        lb = "(" if low_open or not np.isfinite(low) else "["
        rb = ")" if high_open or not np.isfinite(high) else "]"
        raise ValueError(f"{_name(cfg)}.{field}={value!r}: must lie in {lb}{low:g}, {high:g}{rb}")


def close_match(value, choices: Iterable[Any], n: int = 1) -> str:
    """ "; did you mean 'x'?" for the choice closest to `value` (by spelling), or "" if none is
    close; with n > 1 the up to n closest as a list, "; did you mean ['x', 'y']?"."""
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=n)
    if not hint:
        return ""
    return f"; did you mean {hint[0]!r}?" if n == 1 else f"; did you mean {hint}?"


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


_KINDS = {bool: "b", int: "iu", float: "iuf"}  # numpy dtype kinds each number type accepts


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str | int | float | bool) and value in args
    if tp in _KINDS:
        if isinstance(value, np.generic | np.ndarray | jax.Array):
            return np.dtype(value.dtype).kind in _KINDS[tp]
        if isinstance(value, bool) or tp is bool:
            return isinstance(value, bool) and tp is bool
        return isinstance(value, int | float) if tp is float else isinstance(value, int)
    if tp is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(map(_matches, value, args)))
    if tp is type(None):
        return value is None
    return isinstance(value, origin or tp)


def _type_name(tp) -> str:
    """'int', 'tuple[int, ...]', 'PPOConfig | Mapping', "one of ['a', 'b']"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        return str(tp)
    if tp is type(None):
        return "None"
    return getattr(origin or tp, "__name__", str(tp))


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_types(cfg) -> None:
    """Checks every field of the dataclass `cfg` against its annotated type; ValueError
    "PPOConfig.num_envs: expected int, got str '16'" (with a close match for a Literal).

    Understands int, float, bool, str, tuple, tuple[X, ...], tuple[X, Y], Literal[...], unions
    (X | None), Any and classes. bools are not ints; ints are floats; numpy scalars and arrays
    (sweeps batch leaves as `[R]` arrays) pass when their dtype kind fits. Tracers and other
    placeholders in pytree leaves (jax rebuilds configs with them) are skipped.
    """
    types_ = _field_types(type(cfg))
    pytree = getattr(type(cfg), "_flax_dataclass", False)  # plain dataclasses have no leaves
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), types_[f.name]
        if pytree and f.metadata.get("pytree_node", True) and not is_value(value):
            continue
        if not _matches(value, tp):
            hint = (
                close_match(value, typing.get_args(tp)) if typing.get_origin(tp) is Literal else ""
            )
            raise ValueError(
                f"{_name(cfg)}.{f.name}: expected {_type_name(tp)}, got "
                f"{type(value).__name__} {value!r}{hint}"
            )


def whole(default: Any, value: Any) -> Any:
    """`value` for a field whose default is `default`: a whole float onto an int field is that int
    (YAML reads 1e6 as 1000000.0); anything else unchanged (check_types judges it)."""
    is_int = isinstance(default, int) and not isinstance(default, bool)
    return int(value) if is_int and isinstance(value, float) and value.is_integer() else value


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
    """Builds config `cls` from a plain dict (e.g. parsed YAML); an unknown key is a ValueError
    naming it with its close matches. Lists become tuples (hidden_sizes), dicts become frozen
    kwargs (env_kwargs) and a whole float on an int field an int (`whole`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    fields = sorted(defaults)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = close_match(key, fields, n=3) or f"; fields are {fields}"
            raise ValueError(f"{cls.__name__} has no field {key!r}{hint}")
        kwargs[key] = tuple(value) if isinstance(value, list) else whole(defaults[key], value)
    return cls(**kwargs)


def freeze_fields(cfg) -> None:
    """In `__post_init__`: static mapping fields (env_kwargs, objective) frozen, lists -> tuples."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("pytree_node", True) or isinstance(value, tuple):
            continue
        if is_mapping_field(f.name) and (value is None or isinstance(value, Mapping | list)):
            object.__setattr__(cfg, f.name, freeze_mapping(value))
        elif isinstance(value, list):
            object.__setattr__(cfg, f.name, _freeze(value))


def to_dict(cfg) -> dict[str, Any]:
    """Plain-Python dict of a config (tuples as lists, frozen kwargs as dicts) for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_mapping_field(f.name):
            value = {k: _thaw(v) for k, v in value}
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.generic | np.ndarray | jax.Array):
            value = np.asarray(value).tolist()
        out[f.name] = value
    return out
