"""The meta-test table of experiments.lpg (meta_test.json): per (task, lifetime) cell the
statistics of meta.lpg_meta_test's final returns (docs/experiments.md, section experiments.lpg)."""

from __future__ import annotations

import math
import time

import numpy as np

from experiments import command
from experiments import meta_test as T

RANDOM_ENVS = 64  # envs of the uniform-random-policy rollout
NORMALISATION = (
    "normalised = (R - R_random) / (R_A2C - R_random): R a seed's final return, R_random the "
    "mean episode return of a uniform random policy on the task, R_A2C the tuned A2C's mean "
    "final return over the seeds in the same cell; undefined (null) where R_A2C <= R_random"
)

MEMO: dict | None = None  # --compare-ta: the tuned baselines and random returns its runs share


def run_cell(plan, params, task: str, m: float, env, r_random: float, bar) -> dict:
    """One meta-test cell: the tuned A2C and PPO and the rule's agents on `task` at lifetime
    multiple `m`; raw and normalised statistics per learner (meta_test.json's cell)."""
    from meta import lpg_meta_test as L
    from meta import meta_test as M

    s, t = plan.settings, plan.settings.test
    grid = t.minatar_lr_grid if task in t.minatar else t.lr_grid
    seed, seeds = L.task_seed(s.seed, task), t.test_seeds
    finals, tuned, seconds = {}, {}, np.zeros(2)
    for learner in (*L.BASELINES, "lpg"):
        bar.set_postfix_str(f"{task} {m:g}x {learner}")
        cfg = s.learner_config(task, m, learner)
        if learner == "lpg":
            make_train = L.rule_trainer(cfg, *env, s.cfg.lpg.kl_weight)
            keys = L.sweep_keys(seed, seeds)
            finals[learner], skipped, *sec = M.finals(make_train, params, keys, plan.devices)
        else:
            args = (cfg, grid[learner], *env, seed, seeds, plan.devices, MEMO)
            finals[learner], lr, means, *sec = L.tuned_baseline(learner, *args)
            grid_means = {f"{r:g}": command.num(x) for r, x in means.items()}
            tuned[learner] = {"learning_rate": lr, "grid": grid_means}
        seconds += sec
        bar.update()
    r_a2c = L.finite_mean(finals["a2c"])
    normalised = {k: L.normalise(finals[k], r_random, r_a2c) for k in L.LEARNERS}
    return {
        "task": task,
        "kind": "minatar" if task in t.minatar else "gridworld",
        "lifetime": m,
        "num_updates": int(cfg.num_updates),
        "total_timesteps": int(cfg.total_timesteps),
        "r_random": command.num(r_random),
        "r_a2c": command.num(r_a2c),
        "normalisable": bool(np.isfinite(normalised["a2c"]).any()),
        "tuned": tuned,
        "lpg_nan_skipped": skipped,
        "results": {k: T.stats(finals[k], t.bootstrap) for k in L.LEARNERS},
        "normalised": {k: T.stats(normalised[k], t.bootstrap) for k in L.LEARNERS},
        "compile_s": float(seconds[0]),
        "run_s": float(seconds[1]),
    }


def overall(cells: list[dict], lifetimes, reps: int) -> dict:
    """Per lifetime multiple ("1x": every task; others: the grid worlds) and learner: the IQM
    [95% stratified-bootstrap CI] of the normalised return over tasks x seeds (the normalisable
    cells only; tasks are the strata)."""
    from experiments import aggregate
    from meta.lpg_meta_test import LEARNERS

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

    from meta import lpg_meta_test as L

    seed, test, out = plan.settings.seed, plan.settings.test, {}
    for task, env in envs_of.items():
        key = jax.random.fold_in(jax.random.key(L.task_seed(seed, task)), 1)

        def compute(env=env, key=key):
            r, n = L.random_return(*env, key, RANDOM_ENVS, test.random_steps)
            return {"return": command.num(r), "episodes": n}

        kwargs = repr(test.test_env_kwargs.get(task))
        memo_key = ("random", task, kwargs, seed, test.random_steps)
        out[task] = dict(L.memoised(MEMO, memo_key, compute)[0])
    return out


def meta_test(plan, params) -> dict:
    """Random returns, then every cell (see `run_cell`); returns the table (meta_test.json)."""
    from meta.lpg_meta_test import LEARNERS

    settings, test = plan.settings, plan.settings.test
    cells = test.cells
    plan.say(
        f"meta-test: {len(cells)} (task, lifetime) cells x (the rule + A2C and PPO each tuned "
        f"over its learning rates), {test.test_seeds} seeds; random-policy returns first ..."
    )
    envs_of = {t: test.env(t) for t in dict.fromkeys(t for t, _ in cells)}
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
        "test_seeds": test.test_seeds,
        "lifetimes": list(test.multiples),
        "train_updates": settings.train_updates,
        "test_tasks": list(test.test_tasks),
        "minatar": list(test.minatar),
        "normalisation": NORMALISATION,
        "definition": T.definition(what, test.bootstrap),
        "random": randoms,
        "random_rollout": {"envs": RANDOM_ENVS, "steps": test.random_steps},
        "cells": out_cells,
        "overall": overall(out_cells, test.multiples, test.bootstrap),
        "not_normalisable": [
            f"{c['task']}@{c['lifetime']:g}x" for c in out_cells if not c["normalisable"]
        ],
        "programs": len(cells) * len(LEARNERS),
        "devices": len(plan.devices),
        "random_s": random_s,
        "compile_s": sum(c["compile_s"] for c in out_cells),
        "run_s": sum(c["run_s"] for c in out_cells) + random_s,
    }
