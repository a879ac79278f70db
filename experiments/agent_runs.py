"""The runs of experiments.pmoe and experiments.smoothing (each one jitted program, built before
anything compiles, timed apart from its compile) and their config.yaml, metrics.csv, statistics."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from experiments import aggregate, command, runs
from purejaxrl import checkpoint
from purejaxrl import config as C
from purejaxrl.progress import Progress


@dataclasses.dataclass(kw_only=True)
class Run:
    """One trained program: its name, env, algo, config and agent (None in a merged folder)."""

    name: str
    env: str
    algo: str
    config: Any = None
    agent: Any = None
    progress: Progress | None = None


@dataclasses.dataclass(kw_only=True)
class Plan(command.Plan):
    """The runs and the command's settings: config.yaml in order, less its "runs"."""

    settings: dict
    runs: list[Run]


def make(cls: type[Run], name: str, values: dict, show_progress: bool, **fields) -> Run:
    """`cls` for the config of `values` ({"algo": ..., config fields}; ValueError if bad) with its
    agent and progress bar."""
    config = runs.build_spec(values).config
    progress = Progress(enabled=show_progress)
    agent = checkpoint.make_agent(values["algo"], config, progress_fn=progress.callback)
    return cls(name=name, env=config.env, algo=values["algo"], config=config, agent=agent,
               progress=progress, **fields)  # fmt: skip


def train(run: Run, key, seeds: bool, desc: str) -> tuple[Any, float, float]:
    """(TrainOutput, compile_s, train_s) of `jax.jit(agent.train)(key)`, or with `seeds` of
    `jax.jit(jax.vmap(agent.train))(keys)` over keys `[S]` (outputs with a leading seed axis)."""
    fn = jax.jit(jax.vmap(run.agent.train) if seeds else run.agent.train)
    t = time.perf_counter()
    compiled = fn.lower(key).compile()
    compile_s = time.perf_counter() - t
    run.progress.start(run.agent.num_updates, 0, desc)
    t = time.perf_counter()
    try:
        out = jax.block_until_ready(compiled(key))
    finally:
        run.progress.close()
    return out, compile_s, time.perf_counter() - t


def write_config(plan: Plan, configs: dict | None = None) -> None:
    """Creates the run folder and writes config.yaml: the settings, then "runs" (`configs`, or
    every run's algo and full config)."""
    configs = configs or {r.name: {"algo": r.algo, **C.to_dict(r.config)} for r in plan.runs}
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    command.write_yaml(plan.run_dir / "config.yaml", {**plan.settings, "runs": configs})


def write_metrics(plan: Plan, columns: list[str], lead, curves: dict[str, dict]) -> None:
    """metrics.csv in long format: per run in `curves` (in plan order) and index of its curves'
    broadcast shape `[..., U]`, the cells lead(run), the index (update from 1), the values."""
    rows = []
    for run in (r for r in plan.runs if r.name in curves):
        values = np.broadcast_arrays(*curves[run.name].values())
        for *i, u in np.ndindex(values[0].shape):
            rows.append((*lead(run), *i, u + 1, *(v[(*i, u)] for v in values)))
    command.write_csv(plan.run_dir / "metrics.csv", columns, rows)


def summarize(name: str, values, seeds: bool) -> dict:
    """<name>_per_seed (`seeds`) or <name>_std (episodes), _mean, _mean_ci, _iqm and _iqm_ci
    ([lo, hi]: 95% bootstrap, experiments/aggregate.py) of `values` [n]."""
    values = np.asarray(values, np.float64)
    s = aggregate.summarize(values)
    first = {f"{name}_per_seed": values.tolist()} if seeds else {}
    spread = {} if seeds else {f"{name}_std": float(values.std())}
    mean = {f"{name}_mean": float(values.mean())}
    return first | mean | spread | {f"{name}_{k}": s[k] for k in ("mean_ci", "iqm", "iqm_ci")}
