"""The meta-test of experiments.lpg: per (task, lifetime) cell, A2C agents trained with the
learned rule and A2C and PPO tuned per cell over their learning-rate grids, on the same seed keys;
raw and normalised final returns (docs/experiments.md, section experiments.lpg)."""

from __future__ import annotations

import math
import time
import zlib

import numpy as np

from experiments import command, metacli
from experiments import meta_test as T
from experiments.lpg_settings import BASELINES, LEARNERS, learner_config, test_env

RANDOM_ENVS = 64  # envs of the uniform-random-policy rollout
NORMALISATION = (
    "normalised = (R - R_random) / (R_A2C - R_random): R a seed's final return, R_random the "
    "mean episode return of a uniform random policy on the task, R_A2C the tuned A2C's mean "
    "final return over the seeds in the same cell; undefined (null) where R_A2C <= R_random"
)
MEMO: dict | None = None  # --compare-ta: the tuned baselines and random returns its runs share


def task_seed(seed: int, task: str) -> int:
    """The integer seed of a task's meta-test keys: split(key(it), test_seeds), the keys
    `purejaxrl.sweep.grid(..., seed=it)` gives its seed indices (every learner of a task, at
    every lifetime, meets the same keys; independent of the other tasks)."""
    return zlib.crc32(f"{seed}:{task}".encode()) & 0x7FFFFFFF


def random_return(env, env_params, key, num_envs: int, num_steps: int) -> tuple[float, int]:
    """(mean episode return, episodes) of a uniform random policy: `num_envs` envs (auto-reset)
    x `num_steps` steps, the episodes that finished; NaN if none."""
    import jax.numpy as jnp

    from envs.benchmark import random_rollout

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


def rule_program(cfg, env, env_params, kl_weight: float, sharding):
    """The jitted `(rule params, key data [S, 2]) -> metrics [S, U]` (episode_return,
    episodes_finished, nan_skipped) of A2C agents (`cfg`) trained with the rule, seeds sharded."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from meta import lpg
    from purejaxrl import a2c

    names = ("episode_return", "episodes_finished", "nan_skipped")

    def run(params, key_data):
        rule = lpg.objective(params, kl_weight, cfg.gamma)
        agent = a2c.make_agent(cfg, rule, env=env, env_params=env_params)
        metrics = jax.vmap(lambda k: agent.train(k).metrics)(jax.random.wrap_key_data(key_data))
        return {k: metrics[k] for k in names}

    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.jit(run, in_shardings=(replicated, sharding), out_shardings=sharding)


def tune(learner: str, cfg, lrs, env, env_params, seed: int, seeds: int, devices):
    """One vmapped sweep of `learner` ("a2c" | "ppo") over learning rates `lrs` x `seeds` seeds
    (`purejaxrl.sweep`, keys split(key(seed), seeds)) -> (final returns [L, S], compile_s, run_s)."""
    from purejaxrl import a2c, ppo, sweep

    module = {"a2c": a2c, "ppo": ppo}[learner]
    batch = sweep.grid(cfg, {"learning_rate": list(lrs)}, seeds=seeds, seed=seed)
    make = lambda c: module.make_agent(c, env=env, env_params=env_params)  # noqa: E731
    res = sweep.run(batch, make_agent=make, devices=devices, progress=False)
    finals = T.final_per_seed(res.metrics)
    return finals.reshape(len(lrs), seeds), res.compile_s, res.run_s


def best_lr(finals: np.ndarray) -> int | None:
    """Index of the learning rate with the best mean final return over seeds (`finals` [L, S],
    NaN seeds left out; the first of ties); None if no rate has a finite return."""
    means = np.array([_mean(row) for row in finals])
    means = np.where(np.isfinite(means), means, -np.inf)
    return int(np.argmax(means)) if np.isfinite(means).any() else None


def _mean(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else math.nan


def _memo(key, compute):
    """(compute(), False), or (the value a run of the same --compare-ta computed, True)."""
    if MEMO is not None and key in MEMO:
        return MEMO[key], True
    value = compute()
    if MEMO is not None:
        MEMO[key] = value
    return value, False


def tuned_baseline(plan, learner: str, task: str, m: float, env):
    """(final returns [S] at the best learning rate, {"learning_rate", "grid": {lr: mean}},
    compile_s, run_s) of `learner` ("a2c" | "ppo") on `task` at lifetime multiple `m`."""
    settings = plan.settings
    grid = settings.minatar_lr_grid if task in settings.minatar else settings.lr_grid
    lrs, seeds = grid[learner], settings.test_seeds
    cfg = learner_config(settings, task, m, learner)
    seed = task_seed(settings.seed, task)
    sweep = lambda: tune(learner, cfg, lrs, *env, seed, seeds, plan.devices)  # noqa: E731
    (per_lr, *seconds), cached = _memo(("tune", learner, repr(cfg), lrs, seed, seeds), sweep)
    best = best_lr(per_lr)
    tuned = {
        "learning_rate": None if best is None else lrs[best],
        "grid": {f"{lr:g}": command.num(_mean(row)) for lr, row in zip(lrs, per_lr, strict=True)},
    }
    finals = per_lr[best] if best is not None else np.full(seeds, np.nan)
    return finals, tuned, *([0.0, 0.0] if cached else seconds)


def rule_finals(plan, params, task: str, m: float, env):
    """(final returns [S], updates skipped for non-finite values, compile_s, run_s) of A2C
    agents trained with the rule `params` on `task` at lifetime multiple `m`."""
    import jax

    from purejaxrl import sweep

    settings = plan.settings
    seeds = settings.test_seeds
    cfg = learner_config(settings, task, m, "lpg")
    n_dev = metacli.divisor_devices(len(plan.devices), seeds)
    sharding = sweep.run_sharding(plan.devices[:n_dev])
    program = rule_program(cfg, *env, settings.cfg.lpg.kl_weight, sharding)
    key = jax.random.key(task_seed(settings.seed, task))
    keys = np.asarray(jax.random.key_data(jax.random.split(key, seeds)))
    metrics, compile_s, run_s = T.timed(program, params, sweep.put(keys, sharding))
    skipped = int(np.sum(metrics["nan_skipped"]))
    return T.final_per_seed(metrics), skipped, compile_s, run_s


def run_cell(plan, params, task: str, m: float, env, r_random: float, bar) -> dict:
    """One meta-test cell: the tuned A2C and PPO and the rule's agents on `task` at lifetime
    multiple `m`; raw and normalised statistics per learner (meta_test.json's cell)."""
    settings = plan.settings
    finals, tuned, seconds = {}, {}, np.zeros(2)
    for learner in (*BASELINES, "lpg"):
        bar.set_postfix_str(f"{task} {m:g}x {learner}")
        if learner == "lpg":
            finals[learner], skipped, *s = rule_finals(plan, params, task, m, env)
        else:
            finals[learner], tuned[learner], *s = tuned_baseline(plan, learner, task, m, env)
        seconds += s
        bar.update()
    r_a2c = _mean(finals["a2c"])
    normalised = {k: normalise(finals[k], r_random, r_a2c) for k in LEARNERS}
    cfg = learner_config(settings, task, m, "lpg")
    reps = settings.bootstrap
    return {
        "task": task,
        "kind": "minatar" if task in settings.minatar else "gridworld",
        "lifetime": m,
        "num_updates": int(cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)),
        "total_timesteps": int(cfg.total_timesteps),
        "r_random": command.num(r_random),
        "r_a2c": command.num(r_a2c),
        "normalisable": bool(np.isfinite(normalised["a2c"]).any()),
        "tuned": tuned,
        "lpg_nan_skipped": skipped,
        "results": {k: T.stats(finals[k], reps) for k in LEARNERS},
        "normalised": {k: T.stats(normalised[k], reps) for k in LEARNERS},
        "compile_s": float(seconds[0]),
        "run_s": float(seconds[1]),
    }


def overall(cells: list[dict], lifetimes, reps: int) -> dict:
    """Per lifetime multiple ("1x": every task; others: the grid worlds) and learner: the IQM
    [95% stratified-bootstrap CI] of the normalised return over tasks x seeds (the normalisable
    cells only; tasks are the strata)."""
    from experiments import aggregate

    out = {}
    for m in lifetimes:
        mine = [c for c in cells if c["lifetime"] == m and c["normalisable"]]
        out[f"{m:g}x"] = {"tasks": [c["task"] for c in mine]} if mine else None
        for learner in LEARNERS if mine else ():
            per_seed = [c["normalised"][learner]["per_seed"] for c in mine]
            table = np.asarray(per_seed, dtype=np.float64).T  # [seeds, tasks]; None -> NaN
            s = aggregate.summarize(table, reps=reps, seed=0)
            keys = ("iqm", "iqm_ci", "mean", "num_runs", "num_tasks")
            out[f"{m:g}x"][learner] = {k: command.plain(s[k]) for k in keys}
    return out


def random_returns(plan, envs_of: dict) -> dict:
    """{task: {"return", "episodes"}} of a uniform random policy on every test task."""
    import jax

    settings, out = plan.settings, {}
    for task, env in envs_of.items():
        key = jax.random.fold_in(jax.random.key(task_seed(settings.seed, task)), 1)

        def compute(env=env, key=key):
            r, n = random_return(*env, key, RANDOM_ENVS, settings.random_steps)
            return {"return": command.num(r), "episodes": n}

        kwargs = repr(settings.test_env_kwargs.get(task))
        memo_key = ("random", task, kwargs, settings.seed, settings.random_steps)
        out[task] = dict(_memo(memo_key, compute)[0])
    return out


def meta_test(plan, params) -> dict:
    """Random returns, then every cell (see `run_cell`); returns the table (meta_test.json)."""
    settings = plan.settings
    cells = settings.cells
    plan.say(
        f"meta-test: {len(cells)} (task, lifetime) cells x (the rule + A2C and PPO each tuned "
        f"over its learning rates), {settings.test_seeds} seeds; random-policy returns first ..."
    )
    envs_of = {t: test_env(settings, t) for t in dict.fromkeys(t for t, _ in cells)}
    t0 = time.perf_counter()
    randoms = random_returns(plan, envs_of)
    random_s = time.perf_counter() - t0
    r_random = {t: math.nan if r["return"] is None else r["return"] for t, r in randoms.items()}
    with T.progress_bar(plan, len(cells) * len(LEARNERS)) as bar:
        out_cells = [run_cell(plan, params, t, m, envs_of[t], r_random[t], bar) for t, m in cells]
    what = ("a2c and ppo at their best learning rate of the cell's grid (best mean final return "
            "over the seeds); the same seed keys for every learner and lifetime of a task; "
            "overall: IQM of the normalised return over tasks x seeds (tasks the strata) of the "
            "normalisable cells")  # fmt: skip
    return {
        "learners": list(LEARNERS),
        "test_seeds": settings.test_seeds,
        "lifetimes": list(settings.lifetimes),
        "train_updates": settings.train_updates,
        "test_tasks": list(settings.test_tasks),
        "minatar": list(settings.minatar),
        "normalisation": NORMALISATION,
        "definition": T.definition(what, settings.bootstrap),
        "random": randoms,
        "random_rollout": {"envs": RANDOM_ENVS, "steps": settings.random_steps},
        "cells": out_cells,
        "overall": overall(out_cells, settings.lifetimes, settings.bootstrap),
        "not_normalisable": [
            f"{c['task']}@{c['lifetime']:g}x" for c in out_cells if not c["normalisable"]
        ],
        "programs": len(cells) * len(LEARNERS),
        "devices": len(plan.devices),
        "random_s": random_s,
        "compile_s": sum(c["compile_s"] for c in out_cells),
        "run_s": sum(c["run_s"] for c in out_cells) + random_s,
    }
