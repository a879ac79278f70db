"""Meta-training of an LPO / TA-LPO drift with evolution strategies (public through meta.lpo).

    cfg = lpo.LPOConfig(tasks=("CartPole-v1", "Acrobot-v1"), time_aware=True)
    meta_train = lpo.make_meta_train(cfg)
    out = meta_train(jax.random.key(0))             # MetaOutput
    out.params, out.es.fitness [G, P], out.baselines # the learned drift (ES mean), history, PPO refs

A candidate is a drift network's parameters (`lpo.init_params`). Its fitness: for every task, a
whole inner PPO run (`ppo.make_agent` with GAE + value loss + the candidate's drift loss, the
inner config of `LPOConfig.inner`), scored by its final return R (`purejaxrl.scores.final_return`:
the mean episode return over the last 5% of updates, from finished episodes only), normalised per
task to (R - R_low) / (R_ppo - R_low), so that 0 is what an untrained policy gets and 1 is
PPO-clip's return at the same budget, then averaged over tasks: no task dominates by its return
scale. There is no floor in raw return units, so a task whose returns are below 1 (Catch, grid
worlds) weighs as much as any other. R_ppo and R_low come from PPO-clip runs over `baseline_seeds`
seeds, computed once (`baselines`) before meta-training: R_low is the return of each seed's first
finished episodes (an almost untrained policy). Every candidate sees every task, so the antithetic
pairs of the ES share their tasks (and keys: es.evolve gives both the same key).

Honest scores: the loop's `episode_return` is a placeholder 0 before a run's first finished
episode; it is never read. A candidate whose inner run finishes no episode at all (on any task)
has no return there, so its fitness is NaN: es.evolve ranks it worst and counts it
(`out.nonfinite`). Baselines are refused (ValueError naming the task, before the ES compiles)
when a PPO-clip seed finished no episode, or when PPO-clip does not beat R_low by the relative
margin `BASELINE_MARGIN`: R_ppo - R_low > BASELINE_MARGIN * max(1, |R_ppo|, |R_low|) must hold
(otherwise the normalisation divides by ~0 or flips the sign of the fitness).

The population is vmapped inside the fitness and sharded over devices by `es.evolve`; a whole
generation (ask, population x tasks x inner PPO runs, tell) is one jitted program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from meta import drift, es
from purejaxrl import config as C
from purejaxrl import objectives, ppo, scores

# Baselines: R_ppo - R_low must exceed BASELINE_MARGIN * max(1, |R_ppo|, |R_low|).
BASELINE_MARGIN = 1e-6

# CPU-sized inner PPO: 64k env steps per task (8 envs x 64 steps x 125 updates), as PPOConfig fields
CPU_INNER = {
    "total_timesteps": 64_000,
    "num_envs": 8,
    "num_steps": 64,
    "update_epochs": 4,
    "num_minibatches": 4,
    "learning_rate": 2.5e-3,
    "anneal_lr": True,
    "hidden_sizes": (64, 64),
}


@dataclasses.dataclass(frozen=True)
class LPOConfig:
    """tasks: env ids trained on; inner: the PPOConfig every task's inner run starts from (its env
    is replaced by the task's; a mapping of PPOConfig fields, as YAML gives, is converted);
    task_inner: per-task overrides {env id: {field: value}}; time_aware: TA-LPO
    (the drift sees n/N); ppo_init: drift = PPO-clip's + the network's; hidden: drift width
    (128 as the LPO paper's code); normalize: score each task as (R - R_low) / (R_ppo - R_low)
    (else the raw mean final return over tasks); baseline_seeds: PPO-clip seeds for R_ppo and
    R_low; es: the ES settings (default OpenES, sigma 0.03 and Adam lr 0.03 as the MinAtar
    re-implementation AlexGoldie/learn-rl-algorithms; population 16 and 64 generations are a
    deliberate CPU-sized deviation: that re-implementation uses 64 and 800, the LPO paper's code
    32 and ~1000). The default inner run (`CPU_INNER`) is ours, sized for a CPU, not a paper's."""

    tasks: tuple[str, ...] = ("CartPole-v1", "Acrobot-v1")
    inner: ppo.PPOConfig | Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: ppo.PPOConfig(**CPU_INNER)
    )
    task_inner: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    time_aware: bool = False
    ppo_init: bool = False
    hidden: int = 128
    normalize: bool = True
    baseline_seeds: int = 4
    es: es.ESConfig = dataclasses.field(
        default_factory=lambda: es.ESConfig(
            population_size=16, num_generations=64, sigma=0.03, learning_rate=0.03
        )
    )

    def __post_init__(self):
        C.check_types(self)
        if not self.tasks:
            raise ValueError(f"LPOConfig.tasks={self.tasks!r}: a non-empty tuple of env ids")
        for task in self.tasks:
            try:
                envs.check_id(task)
            except ValueError as e:
                raise ValueError(f"LPOConfig.tasks: {e}") from None
        unknown = sorted(set(self.task_inner) - set(self.tasks))
        if unknown:
            raise ValueError(f"LPOConfig.task_inner: {unknown} are not among tasks {self.tasks}")
        C.check_positive_int(self, "baseline_seeds")
        C.check_positive_int(self, "hidden")
        if not isinstance(self.es, es.ESConfig):
            raise ValueError(f"LPOConfig.es={self.es!r}: must be a meta.es.ESConfig")
        if isinstance(self.inner, Mapping):
            try:
                object.__setattr__(self, "inner", C.from_dict(ppo.PPOConfig, self.inner))
            except ValueError as e:
                raise ValueError(f"LPOConfig.inner: {e}") from None
        if not isinstance(self.inner, ppo.PPOConfig):
            raise ValueError(
                f"LPOConfig.inner={self.inner!r}: must be a ppo.PPOConfig or a mapping"
            )
        for task in self.tasks:  # builds and validates every inner config now
            self.inner_config(task)

    def inner_config(self, task: str, overrides: Mapping[str, Any] | None = None) -> ppo.PPOConfig:
        """The validated PPOConfig of `task`'s inner run: `inner` on env `task`, with `overrides`
        ({field: value}; default `task_inner[task]`) applied; ValueError naming the field."""
        overrides = self.task_inner.get(task, {}) if overrides is None else overrides
        cfg = C.from_dict(ppo.PPOConfig, {**C.to_dict(self.inner), **overrides, "env": task})
        return cfg


@dataclasses.dataclass
class MetaOutput:
    """params: the learned drift (the ES mean at the end); best_params: the candidate with the
    highest finite fitness over all generations (`es.ESOutput.best_params`: every generation
    meets the same tasks, though not the same inner-run keys, so this maximum is also a maximum
    over noise); es: the ES output (fitness `[G, P]`, NaN where a candidate had no measured
    return, timings); baselines: {task: {"ppo": R_ppo, "low": R_low}} ({} without `normalize`);
    info: what `lpo.save` records (features, trained_on, ...)."""

    params: Any
    best_params: Any
    es: es.ESOutput
    baselines: dict
    info: dict


def inner_train(cfg: ppo.PPOConfig, policy_loss):
    """`train(key) -> TrainOutput` of PPO's loop with GAE + value loss + `policy_loss`."""
    return ppo.make_agent(cfg, objectives.actor_critic(cfg, policy_loss)).train


def first_returns(episode_return, episodes_finished) -> np.ndarray:
    """`[..., U]` -> `[...]`: the return of the episodes finished in the first update that
    finished any (NaN where no update did)."""
    returns = np.asarray(episode_return, np.float64)
    seen = np.asarray(episodes_finished) > 0
    first = np.argmax(seen, axis=-1)
    value = np.take_along_axis(returns, first[..., None], axis=-1)[..., 0]
    return np.where(seen.any(axis=-1), value, np.nan)


def compute_baselines(cfg: LPOConfig, key: jax.Array) -> dict[str, dict[str, float]]:
    """PPO-clip on every task over `baseline_seeds` seeds: {task: {"ppo": the final return,
    "low": the return of the first finished episodes}}, each the mean over seeds, both from
    finished episodes only (`purejaxrl.scores`). ValueError naming the task if any seed finished
    no episode (its R_low and R_ppo are unmeasured, and a mean without it would be of other
    seeds), or if PPO-clip does not beat R_low (`check_baselines`)."""
    out = {}
    for i, task in enumerate(cfg.tasks):
        inner = cfg.inner_config(task)
        keys = jax.random.split(jax.random.fold_in(key, i), cfg.baseline_seeds)
        metrics = jax.jit(jax.vmap(lambda k, c=inner: ppo.make_agent(c).train(k).metrics))(keys)
        returns, finished = metrics["episode_return"], metrics["episodes_finished"]
        low = first_returns(returns, finished)
        final = np.asarray(scores.final_return(returns, finished), np.float64)
        unmeasured = np.flatnonzero(~(np.isfinite(low) & np.isfinite(final)))
        if unmeasured.size:
            num_updates = np.shape(returns)[-1]
            raise ValueError(
                f"baselines for task {task}: PPO-clip seed(s) {unmeasured.tolist()} of "
                f"{cfg.baseline_seeds} finished no episode in {num_updates} updates "
                f"({inner.total_timesteps} env steps), so R_low and R_ppo are unmeasured: give "
                f"the task a longer inner run (inner / task_inner.{task}: total_timesteps, "
                "num_envs)"
            )
        out[task] = {"ppo": float(np.mean(final)), "low": float(np.mean(low))}
    check_baselines(cfg.tasks, out)
    return out


def check_baselines(tasks, baselines: Mapping[str, Mapping[str, float]]) -> None:
    """ValueError unless `baselines` hold finite "ppo" and "low" for every task with
    R_ppo - R_low > BASELINE_MARGIN * max(1, |R_ppo|, |R_low|) (PPO-clip must beat an untrained
    policy for (R - R_low) / (R_ppo - R_low) to mean anything); the message names the task and
    both numbers."""
    if missing := sorted(set(tasks) - set(baselines)):
        raise ValueError(f"the given baselines lack the tasks {missing}")
    for task in tasks:
        b = baselines[task]
        try:
            ppo_return, low = float(b["ppo"]), float(b["low"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"baselines for task {task}: {b!r} must be {{'ppo': R_ppo, 'low': R_low}} numbers"
            ) from None
        finite = np.isfinite(ppo_return) and np.isfinite(low)
        margin = BASELINE_MARGIN * max(1.0, abs(ppo_return), abs(low)) if finite else np.nan
        if not (finite and ppo_return - low > margin):
            raise ValueError(
                f"baselines for task {task}: PPO-clip's final return R_ppo={ppo_return:.6g} does "
                f"not beat the first-episode return R_low={low:.6g} (R_ppo - R_low must exceed "
                f"{BASELINE_MARGIN:g} * max(1, |R_ppo|, |R_low|)), so the fitness (R - R_low) / "
                "(R_ppo - R_low) is undefined there: give PPO-clip a budget at which it learns "
                "the task, or drop the task"
            )


def normalized_return(final, baseline: Mapping[str, float]):
    """(R - R_low) / (R_ppo - R_low) of a final return R (array or scalar; NaN stays NaN): 0 at
    R_low, 1 at R_ppo, no floor on the denominator (`check_baselines` refuses a tiny one)."""
    low = float(baseline["low"])
    return (final - low) / (float(baseline["ppo"]) - low)


def make_fitness(cfg: LPOConfig, baselines: Mapping[str, Mapping[str, float]] | None):
    """fitness(params, key) -> scalar: mean over tasks of the (normalised, with `baselines`)
    final return of an inner PPO run trained with the drift `params`; NaN if any task's run
    finished no episode (see the module docstring). `baselines` are checked
    now (`check_baselines`)."""
    inners = [cfg.inner_config(task) for task in cfg.tasks]
    if baselines is not None:
        check_baselines(cfg.tasks, baselines)

    def fitness(params, key):
        loss = drift.learned_loss(params, time_aware=cfg.time_aware, ppo_init=cfg.ppo_init)
        per_task = []
        for i, (task, inner) in enumerate(zip(cfg.tasks, inners, strict=True)):
            metrics = inner_train(inner, loss)(jax.random.fold_in(key, i)).metrics
            score = scores.final_return(metrics["episode_return"], metrics["episodes_finished"])
            if baselines is not None:
                score = normalized_return(score, baselines[task])
            per_task.append(score)
        return jnp.mean(jnp.stack(per_task))

    return fitness


def make_meta_train(cfg: LPOConfig):
    """`meta_train(key, *, baselines=None, on_baselines=None, devices=None, progress=True,
    checkpoint_dir=None, resume=False, on_generations=None) -> MetaOutput` (the last five as
    es.evolve's). `baselines`: ones computed before for this config and key (e.g. by the run
    being resumed), used instead of computing them again; computed or given, they are checked
    (`check_baselines`: ValueError naming the task) before `on_baselines(baselines)` is called
    (None when `normalize` is off) and before the ES compiles."""

    def meta_train(key, *, baselines=None, on_baselines=None, **evolve_kwargs) -> MetaOutput:
        k_base, k_init, k_es = jax.random.split(key, 3)
        if not cfg.normalize:
            baselines = None
        elif baselines is None:
            baselines = compute_baselines(cfg, k_base)
        else:
            try:
                check_baselines(cfg.tasks, baselines)
            except ValueError as e:
                raise ValueError(f"meta_train: {e}") from None
        if on_baselines is not None:
            on_baselines(baselines)
        init = drift.init_params(k_init, time_aware=cfg.time_aware, hidden=cfg.hidden)
        fitness = make_fitness(cfg, baselines)
        out = es.evolve(fitness, init, cfg.es, k_es, **evolve_kwargs)
        info = {
            "ppo_init": cfg.ppo_init,
            "trained_on": {
                "tasks": list(cfg.tasks),
                "inner": {t: C.to_dict(cfg.inner_config(t)) for t in cfg.tasks},
                "es": dataclasses.asdict(cfg.es),
                "generations": int(out.fitness.shape[0]),
                "normalized_by": baselines,
                "final_mean_fitness": float(out.mean_fitness[-1]),
            },
        }
        return MetaOutput(out.mean_params, out.best_params, out, baselines or {}, info)

    return meta_train
