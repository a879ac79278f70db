"""LPG's meta-test protocol: A2C agents trained with a learned rule against A2C and PPO tuned over
a learning-rate grid, on the same seed keys per task; `[S]` final returns per seed, normalised by
a uniform random policy's return and the tuned A2C's.

    seed = lpg_meta_test.task_seed(0, "gridworld/dense")
    make_train = lpg_meta_test.rule_trainer(cfg, env, level, kl_weight=1.0)
    finals, *_ = meta_test.finals(make_train, params, lpg_meta_test.sweep_keys(seed, 8), devices)
    finals, lr, means, *_ = lpg_meta_test.tuned_baseline("a2c", cfg, lrs, env, level, seed, 8, devices)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from envs.benchmark import random_rollout
from meta import lpg_rule
from meta import meta_test as T
from purejaxrl import a2c, ppo, sweep


def task_seed(seed: int, task: str) -> int:
    """The integer seed of a task's meta-test keys split(key(it), seeds): the keys that
    `purejaxrl.sweep.grid(..., seed=it)` gives its seed indices."""
    return zlib.crc32(f"{seed}:{task}".encode()) & 0x7FFFFFFF


def random_return(env, env_params, key, num_envs: int, num_steps: int) -> tuple[float, int]:
    """(mean episode return, episodes) of a uniform random policy: `num_envs` envs (auto-reset)
    x `num_steps` steps, the episodes that finished; NaN if none."""

    def finished(reward, info):
        done = info["episode_done"]
        return jnp.sum(jnp.where(done, info["episode_return"], 0.0)), jnp.sum(done)

    total, count = random_rollout(env, env_params, num_envs, num_steps, finished)(key)
    count = int(count)
    return (float(total) / count if count else math.nan), count


def normalise(returns, r_random: float, r_a2c: float) -> np.ndarray:
    """(R - R_random) / (R_A2C - R_random) elementwise; all NaN where R_A2C <= R_random or
    either is NaN (no normalisation)."""
    returns = np.asarray(returns, np.float64)
    gap = r_a2c - r_random
    if not (math.isfinite(gap) and gap > 0):
        return np.full(returns.shape, np.nan)
    return (returns - r_random) / gap


def finite_mean(x) -> float:
    """The mean of the finite entries of `x` (NaN if none)."""
    x = np.asarray(x, np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else math.nan


def best_lr(finals: np.ndarray) -> int | None:
    """Index of the learning rate with the best mean final return over seeds (`finals` [L, S],
    NaN seeds left out; the first of ties); None if no rate has a finite return."""
    means = np.array([finite_mean(row) for row in finals])
    means = np.where(np.isfinite(means), means, -np.inf)
    return int(np.argmax(means)) if np.isfinite(means).any() else None


def memoised(memo: dict | None, key, compute: Callable):
    """(compute(), False), or (memo[key], True) when `memo` (shared between calls) holds it."""
    if memo is not None and key in memo:
        return memo[key], True
    value = compute()
    if memo is not None:
        memo[key] = value
    return value, False


def rule_trainer(cfg, env, env_params, kl_weight: float) -> Callable:
    """`make_train(params)` of A2C agents (`cfg`) trained with the rule `params`."""
    objective = lambda p: lpg_rule.objective(p, kl_weight, cfg.gamma)  # noqa: E731
    return lambda p: a2c.make_agent(cfg, objective(p), env=env, env_params=env_params).train


def sweep_keys(seed: int, seeds: int) -> np.ndarray:
    """Key data `[seeds, 2]` of split(key(seed), seeds): `purejaxrl.sweep.grid(..., seed)`'s."""
    return np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), seeds)))


def tuned_baseline(learner, cfg, lrs, env, env_params, seed, seeds, devices, memo=None):
    """`learner` ("a2c" | "ppo", `cfg`) at its best of the learning rates `lrs` (`best_lr` of one
    vmapped sweep over lrs x seeds, keys split(key(seed), seeds)): (final returns [S] (NaN if no
    rate has one), that rate or None, {rate: mean final return}, compile_s, run_s); a sweep
    already in `memo` (a dict shared between calls) is reused, at 0 seconds."""
    lrs = tuple(lrs)

    def tune():  # -> (final returns [L, S], compile_s, run_s)
        module = {"a2c": a2c, "ppo": ppo}[learner]
        batch = sweep.grid(cfg, {"learning_rate": list(lrs)}, seeds=seeds, seed=seed)
        make = lambda c: module.make_agent(c, env=env, env_params=env_params)  # noqa: E731
        res = sweep.run(batch, make_agent=make, devices=devices, progress=False)
        return T.final_per_seed(res.metrics).reshape(len(lrs), seeds), res.compile_s, res.run_s

    key = ("tune", learner, repr(cfg), lrs, seed, seeds)
    (per_lr, *seconds), cached = memoised(memo, key, tune)
    best = best_lr(per_lr)
    means = {lr: finite_mean(row) for lr, row in zip(lrs, per_lr, strict=True)}
    finals = per_lr[best] if best is not None else np.full(seeds, np.nan)
    return finals, None if best is None else lrs[best], means, *([0.0, 0.0] if cached else seconds)
