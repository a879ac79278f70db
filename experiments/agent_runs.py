"""Agents that an experiment command trains in its own process (experiments.pmoe and
experiments.smoothing): each run is one jitted program, built (so its config is validated)
before anything compiles, and timed apart from its compile."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

from experiments import aggregate, runs
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


def make(cls: type[Run], name: str, values: dict, show_progress: bool, **fields) -> Run:
    """`cls` for the config of `values` ({"algo": ..., config fields}; unknown keys and bad
    values raise ValueError) with its agent and progress bar."""
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


def configs(planned: list[Run]) -> dict[str, dict]:
    """config.yaml's "runs": every run's algo and full config."""
    return {r.name: {"algo": r.algo, **C.to_dict(r.config)} for r in planned}


def summarize(name: str, values) -> dict:
    """<name>_mean_ci, <name>_iqm and <name>_iqm_ci ([lo, hi]: 95% stratified bootstrap) of
    `values` [n] (experiments/aggregate.py)."""
    s = aggregate.summarize(values)
    return {f"{name}_mean_ci": s["mean_ci"], f"{name}_iqm": s["iqm"], f"{name}_iqm_ci": s["iqm_ci"]}
