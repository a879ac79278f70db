"""Meta-testing a learned objective: fresh agents trained with it and with baselines on the same
seed keys, one jitted program per (objective, task, horizon), `[S]` final returns per seed
(purejaxrl.scores.final_return). LPO's programs here; LPG's protocol in meta/lpg_meta_test.py.

    keys = meta_test.seed_keys(0, "CartPole-v1", 8)
    make_train = meta_test.lpo_trainer("learned", cfg, time_aware=True)
    finals, nan_skipped, compile_s, run_s = meta_test.finals(make_train, params, keys, devices)
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from meta import drift, lpo_train
from purejaxrl import ppo, scores, sweep

TEST_KEY_SALT = 0x7E57  # meta-test keys: fold_in(key(seed), this), then per task name
METRICS = ("episode_return", "episodes_finished", "nan_skipped")  # a program's outputs, [S, U]


def seed_keys(seed: int, task: str, num: int) -> np.ndarray:
    """Raw key data `[num, 2]` of a task's meta-test seeds (the same for every objective and
    horizon; independent of the other tasks)."""
    key = jax.random.fold_in(jax.random.key(seed), TEST_KEY_SALT)
    key = jax.random.fold_in(key, zlib.crc32(task.encode()))
    return np.asarray(jax.random.key_data(jax.random.split(key, num)))


def seed_devices(devices, seeds: int) -> list:
    """The most of `devices` whose count divides `seeds` (the seed axis is sharded over them)."""
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
