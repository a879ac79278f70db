"""LPG's meta-test protocol: A2C agents trained with a learned rule against A2C and PPO tuned over
a learning-rate grid, on the same seed keys per task; `[S]` final returns per seed, normalised by
a uniform random policy's return and the tuned A2C's. Its settings: `LPGTestConfig`.

    test = lpg_meta_test.LPGTestConfig(test_tasks=("gridworld/sparse",), minatar=())
    cfg = test.learner_config(inner, y_size, "gridworld/sparse", 2.0, "a2c")  # a run's config
    seed = lpg_meta_test.task_seed(0, "gridworld/dense")
    make_train = lpg_meta_test.rule_trainer(cfg, env, level, kl_weight=1.0)
    finals, *_ = meta_test.finals(make_train, params, lpg_meta_test.sweep_keys(seed, 8), devices)
    finals, lr, means, *_ = lpg_meta_test.tuned_baseline("a2c", cfg, lrs, env, level, seed, 8, devices)
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs.benchmark import random_rollout
from meta import lpg_rule
from meta import meta_test as T
from purejaxrl import a2c, ppo, sweep
from purejaxrl import config as C

GRID_TASKS = ("gridworld/dense", "gridworld/sparse", "gridworld/long", "gridworld/longer",
              "gridworld/long_dense")  # fmt: skip
BASELINES = ("a2c", "ppo")
LEARNERS = ("lpg", *BASELINES)  # the rule's agents, then the tuned baselines
MINATAR_INNER = {"hidden_sizes": [64, 64], "num_envs": 16, "num_steps": 16,
                 "total_timesteps": 16 * 16 * 200, "learning_rate": 3e-3}  # fmt: skip


def _grid(a2c_rates, ppo_rates):
    return dataclasses.field(default_factory=lambda: {"a2c": a2c_rates, "ppo": ppo_rates})


@dataclasses.dataclass(frozen=True)
class LPGTestConfig:
    """The meta-test of a learned rule (docs/experiments.md, section experiments.lpg): the grid
    worlds `test_tasks` (with test_env_kwargs {env id: {envs.make override: value}}) at 1x and
    `lifetimes` (multiples of the meta-trained updates besides 1x), the MinAtar tasks `minatar`
    at 1x (minatar_inner: A2CConfig fields over the meta-trained `inner`); a2c and ppo tuned
    over lr_grid / minatar_lr_grid {a2c: rates, ppo: rates}; ppo: the PPO baseline's fields;
    random_steps: steps of the random-policy rollout; test_seeds per program; bootstrap:
    resamples of the 95% CIs."""

    test_tasks: tuple[str, ...] = GRID_TASKS
    test_env_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    lifetimes: tuple[float, ...] = (0.5, 2.0)
    minatar: tuple[str, ...] = ("Breakout-MinAtar",)
    minatar_inner: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(MINATAR_INNER)
    )
    lr_grid: Mapping[str, tuple[float, ...]] = _grid((0.03, 0.1, 0.3), (0.01, 0.03, 0.1))
    minatar_lr_grid: Mapping[str, tuple[float, ...]] = _grid((1e-3, 3e-3, 1e-2), (3e-4, 1e-3, 3e-3))
    ppo: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"update_epochs": 4, "num_minibatches": 4}
    )
    random_steps: int = 2000
    test_seeds: int = 8
    bootstrap: int = 2000

    def __post_init__(self):
        known = {"test_tasks": (T.env_ids("gridworld/"), "env id"),
                 "minatar": (T.env_ids("-MinAtar"), "env id")}  # fmt: skip
        T.check_fields(self, known, "lifetimes")
        for name in ("random_steps", "test_seeds", "bootstrap"):
            C.check_positive_int(self, name)
        if not self.test_tasks and not self.minatar:
            raise ValueError("test_tasks, minatar: give at least one meta-test task")
        T.check_within(self, "test_env_kwargs", "test_tasks")
        for name in ("lr_grid", "minatar_lr_grid"):
            grid = getattr(self, name)
            T.names(name, list(grid), BASELINES, "baseline")
            rates = {b: T.positive_numbers(f"{name}.{b}", grid.get(b, ())) for b in BASELINES}
            for b, lrs in rates.items():
                if not lrs:
                    raise ValueError(f"{name}.{b}={grid.get(b)!r}: give at least one rate > 0")
            object.__setattr__(self, name, rates)
        for task in self.test_tasks:  # unknown envs.make overrides fail now
            self.env(task)

    multiples = property(lambda self: (1.0, *self.lifetimes))

    @property
    def cells(self) -> list[tuple[str, float]]:
        """(task, lifetime multiple): the grid worlds x `multiples`, then MinAtar at 1x."""
        return [(t, m) for t in self.test_tasks for m in self.multiples] + [
            (t, 1.0) for t in self.minatar
        ]

    def env(self, task: str):
        """(env, env_params) of a test task, built on the host (a grid world's level must be
        concrete: agents get it as an argument, never build it inside a trace)."""
        try:
            return envs.make(task, **self.test_env_kwargs.get(task, {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"test_env_kwargs.{task}: {e}") from None

    def learner_config(self, inner: Mapping, y_size: int, task: str, lifetime: float,
                       learner: str, lr=None):  # fmt: skip
        """The config of one meta-test run on `task` of a rule meta-trained with agents `inner`
        (A2CConfig fields) and prediction width `y_size`: an A2CConfig for "lpg" (with the rule's
        prediction head) and "a2c", a PPOConfig for "ppo"; learning rate `lr` (None: the
        fields'); `lifetime` x the meta-trained updates (`meta.meta_test.scaled`)."""
        fields = {**inner, **(self.minatar_inner if task in self.minatar else {})}
        if lr is not None:
            fields["learning_rate"] = float(lr)
        env_kwargs = self.test_env_kwargs.get(task, {})
        cls, extra = {"lpg": (a2c.A2CConfig, {"prediction_size": y_size}),
                      "a2c": (a2c.A2CConfig, {}), "ppo": (ppo.PPOConfig, self.ppo)}[learner]  # fmt: skip
        try:
            cfg = C.from_dict(cls, {**fields, **extra, "env": task, "env_kwargs": env_kwargs})
        except (TypeError, ValueError) as e:
            raise ValueError(f"the {learner} config of the meta-test on {task}: {e}") from None
        return T.scaled(cfg, lifetime)


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
