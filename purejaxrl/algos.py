"""The algorithms known by name to checkpoints and the command line: name -> (config class,
make_agent). Every algorithm module is imported here; none imports this module back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from purejaxrl import a2c, ppo, sac
from purejaxrl import config as C

ALGOS: dict[str, tuple[type, Any]] = {
    "ppo": (ppo.PPOConfig, ppo.make_agent),
    "a2c": (a2c.A2CConfig, a2c.make_agent),
    "sac": (sac.SACConfig, sac.make_agent),
}


def register(name: str, config_cls: type, make_agent) -> None:
    """Makes `name` loadable by config (checkpoints, experiments.train)."""
    ALGOS[name] = (config_cls, make_agent)


def name_of(config) -> str:
    """The registered name of `config`'s algorithm; ValueError if none."""
    for name, (cls, _) in ALGOS.items():
        if type(config) is cls:
            return name
    raise ValueError(f"no registered algorithm for config type {type(config).__name__}")


def _check(algo: str) -> None:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {sorted(ALGOS)}")


def make_agent(algo: str, config, **kwargs):
    _check(algo)
    return ALGOS[algo][1](config, **kwargs)


def config_from_dict(algo: str, values: Mapping[str, Any]):
    _check(algo)
    return C.from_dict(ALGOS[algo][0], values)
