"""Meta-testing a learned objective: fresh agents trained with it and with baselines on the same
seed keys, one jitted program per (objective, task, horizon), `[S]` final returns per seed
(purejaxrl.scores.final_return). LPO's settings (`LPOTestConfig`) and programs here; LPG's
protocol in meta/lpg_meta_test.py.

    test = meta_test.LPOTestConfig(held_out=("Catch-bsuite",), compare=("ppo_clip",))
    task, horizon, cfg = test.cells(lpo_cfg)[0]   # the PPOConfig of a cell
    keys = meta_test.seed_keys(0, "CartPole-v1", 8)
    make_train = meta_test.lpo_trainer("learned", cfg, time_aware=True)
    finals, nan_skipped, compile_s, run_s = meta_test.finals(make_train, params, keys, devices)
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

import envs
from meta import drift, lpo_train
from purejaxrl import config as C
from purejaxrl import ppo, scores, sweep

TEST_KEY_SALT = 0x7E57  # meta-test keys: fold_in(key(seed), this), then per task name
METRICS = ("episode_return", "episodes_finished", "nan_skipped")  # a program's outputs, [S, U]
COMPARE = ("ppo_clip", "dpo", "mdpo")  # the closed-form objectives of `lpo_trainer`


# --------------------------------------------------------------------------- settings


def nulls_as_empty(cfg) -> None:
    """In `__post_init__`: a mapping field given None (YAML's null) as {}."""
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is None and f.default_factory is not dataclasses.MISSING:
            object.__setattr__(cfg, f.name, {})


def env_ids(part: str = "") -> list[str]:
    """The registered env ids that contain `part`."""
    return [i for i in envs.registered() if part in i]


def names(where: str, value, known: Iterable[str], what: str = "env id") -> tuple[str, ...]:
    """The distinct names `value` among `known` (one name: a list of it; None: none) as a tuple;
    ValueError naming the setting `where` (with the close match of an unknown name)."""
    known = tuple(known)
    value = [value] if isinstance(value, str) else value or []
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise ValueError(f"{where}={value!r}: must be a list of {what}s")
    listed = f" (choose from {list(known)})" if len(known) <= 8 else ""
    for x in value:
        if x not in known:
            raise ValueError(f"{where}: unknown {what} {x!r}{C.close_match(x, known)}{listed}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}={list(value)}: an {what} appears twice")
    return tuple(value)


def positive_numbers(where: str, value) -> tuple[float, ...]:
    """`value`, a list of finite numbers > 0 (None: none), as floats; ValueError naming `where`
    otherwise."""
    value = value or ()
    if not isinstance(value, list | tuple) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0
        for x in value
    ):
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"{where}={shown!r}: must be a list of positive numbers")
    return tuple(float(x) for x in value)


def check_fields(cfg, names_of: Mapping[str, tuple], multiples: str) -> None:
    """In `__post_init__`, before `check_types`: YAML's nulls, the name fields {field: (known,
    what)} (`names`) and the field `multiples` (of the meta-trained updates, besides 1x: its
    distinct positive floats other than 1.0) in their checked form."""
    nulls_as_empty(cfg)
    where = lambda field: f"{type(cfg).__name__}.{field}"  # noqa: E731
    for field, (known, what) in names_of.items():
        object.__setattr__(cfg, field, names(where(field), getattr(cfg, field), known, what))
    values = positive_numbers(where(multiples), getattr(cfg, multiples))
    object.__setattr__(cfg, multiples, tuple(dict.fromkeys(h for h in values if h != 1.0)))
    C.check_types(cfg)


def check_within(cfg, field: str, among: str) -> None:
    """ValueError unless the keys of mapping `field` are all among the names of field `among`."""
    unknown = sorted(set(getattr(cfg, field)) - set(getattr(cfg, among)))
    if unknown:
        raise ValueError(f"{field}: {unknown} are not among {among} {list(getattr(cfg, among))}")


@dataclasses.dataclass(frozen=True)
class LPOTestConfig:
    """The meta-test of a drift meta-trained with an `LPOConfig` (docs/experiments.md, section
    experiments.lpo): `test_seeds` agents per (objective, task, horizon); held_out: env ids tested
    at 1x but not trained on, with held_out_inner {env id: {PPOConfig field: value}} over the
    trained `inner`; horizons: multiples of the trained updates besides 1x; compare: the
    closed-form objectives beside "learned"; bootstrap: resamples of the 95% CIs."""

    test_seeds: int = 8
    held_out: tuple[str, ...] = ()
    held_out_inner: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    horizons: tuple[float, ...] = (0.5, 2.0)
    compare: tuple[str, ...] = COMPARE
    bootstrap: int = 2000

    def __post_init__(self):
        known = {"held_out": (env_ids(), "env id"), "compare": (COMPARE, "objective")}
        check_fields(self, known, "horizons")
        C.check_positive_int(self, "test_seeds")
        C.check_positive_int(self, "bootstrap")
        check_within(self, "held_out_inner", "held_out")

    objectives = property(lambda self: ("learned", *self.compare))
    multiples = property(lambda self: (1.0, *self.horizons))

    def cells(self, train: lpo_train.LPOConfig) -> list[tuple[str, float, ppo.PPOConfig]]:
        """(task, horizon, PPOConfig) of every meta-test program of a drift meta-trained with
        `train`: its tasks x `multiples`, then the held-out tasks at 1x; ValueError on a held-out
        task that is a training task or whose config is bad."""
        both = sorted(set(self.held_out) & set(train.tasks))
        if both:
            raise ValueError(f"held_out: {both} are training tasks too; a held-out task is not")
        cells = [(t, h, train.inner_config(t)) for t in train.tasks for h in self.multiples]
        for task in self.held_out:
            try:
                cells.append(
                    (task, 1.0, train.inner_config(task, self.held_out_inner.get(task, {})))
                )
            except (TypeError, ValueError) as e:
                raise ValueError(f"held-out task {task}: {e}") from None
        return [(task, h, scaled(cfg, h)) for task, h, cfg in cells]


# --------------------------------------------------------------------------- programs


def seed_keys(seed: int, task: str, num: int) -> np.ndarray:
    """Raw key data `[num, 2]` of a task's meta-test seeds (the same for every objective and
    horizon; independent of the other tasks)."""
    key = jax.random.fold_in(jax.random.key(seed), TEST_KEY_SALT)
    key = jax.random.fold_in(key, zlib.crc32(task.encode()))
    return np.asarray(jax.random.key_data(jax.random.split(key, num)))


def seed_devices(devices, seeds: int) -> list:
    """The most of `devices` whose count divides `seeds` (a seed or population axis is sharded
    over them)."""
    return list(devices)[: max(d for d in range(1, len(devices) + 1) if seeds % d == 0)]


def scaled(cfg, multiple: float):
    """`cfg` with `multiple` x its updates (rounded, at least 1), the rollout unchanged."""
    updates = max(1, round(multiple * cfg.num_updates))
    return dataclasses.replace(cfg, total_timesteps=updates * cfg.num_envs * cfg.num_steps)


def program(make_train: Callable, sharding: NamedSharding):
    """The jitted `(params, key data [S, 2]) -> METRICS [S, U]`: `make_train(params)`'s
    `train(key)` vmapped over the seeds, sharded by `sharding`; params replicated."""

    def run(params, key_data):
        train = make_train(params)
        metrics = jax.vmap(lambda k: train(k).metrics)(jax.random.wrap_key_data(key_data))
        return {k: metrics[k] for k in METRICS}

    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.jit(run, in_shardings=(replicated, sharding), out_shardings=sharding)


def timed(program, *args) -> tuple[dict, float, float]:
    """(the gathered outputs of jitted `program(*args)`, compile seconds, run seconds)."""
    t0 = time.perf_counter()
    compiled = program.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sweep.gather(jax.block_until_ready(compiled(*args)))
    return out, compile_s, time.perf_counter() - t0


def final_per_seed(metrics: Mapping[str, Any]) -> np.ndarray:
    """`[S]` final returns (purejaxrl.scores.final_return) of metrics `[S, U]`."""
    final = scores.final_return(metrics["episode_return"], metrics["episodes_finished"])
    return np.asarray(final, np.float64)


def lpo_trainer(objective: str, cfg, time_aware: bool = False, ppo_init: bool = True):
    """`make_train(params)` of PPO agents (`cfg`) on `objective`: "learned" (the drift `params`,
    meta.drift.learned_loss), "ppo_clip", "dpo" or "mdpo" (closed forms; params unused)."""
    if objective == "learned":
        loss = lambda p: drift.learned_loss(p, time_aware=time_aware, ppo_init=ppo_init)  # noqa: E731
        return lambda params: lpo_train.inner_train(cfg, loss(params))
    if objective == "ppo_clip":
        train = ppo.make_agent(cfg).train  # PPO's default objective: GAE + clipped surrogate
    else:
        train = lpo_train.inner_train(cfg, {"dpo": drift.dpo, "mdpo": drift.mdpo}[objective]())
    return lambda params: train


def finals(make_train: Callable, params, key_data, devices) -> tuple[np.ndarray, int, float, float]:
    """(final returns [S], updates skipped for non-finite values, compile_s, run_s) of the agents
    of `make_train(params)` (`program`) on the seeds' key data `[S, 2]`, over `seed_devices`."""
    sharding = sweep.run_sharding(seed_devices(devices, len(key_data)))
    params = jax.device_put(params, NamedSharding(sharding.mesh, PartitionSpec()))
    metrics, *seconds = timed(program(make_train, sharding), params, sweep.put(key_data, sharding))
    return final_per_seed(metrics), int(np.sum(metrics["nan_skipped"])), *seconds
