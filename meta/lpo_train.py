"""Meta-training of an LPO / TA-LPO drift with evolution strategies (public through meta.lpo).

    cfg = lpo.LPOConfig(tasks=("CartPole-v1", "Acrobot-v1"), time_aware=True)
    meta_train = lpo.make_meta_train(cfg)
    out = meta_train(jax.random.key(0))             # MetaOutput
    out.params, out.es.fitness [G, P], out.baselines # the learned drift (ES mean), history, PPO refs

A candidate is a drift network's parameters (`lpo.init_params`). Its fitness: for every task, a
whole inner PPO run (`ppo.make_agent` with GAE + value loss + the candidate's drift loss, the
inner config of `LPOConfig.inner`), scored by its final return (the mean episode return over the
last `FINAL_FRACTION` of updates), normalised per task to (R - R_low) / (R_ppo - R_low), so that
0 is what an untrained policy gets and 1 is PPO-clip's return at the same budget, then averaged
over tasks: no task dominates by its return scale. R_ppo and R_low come from PPO-clip runs over
`baseline_seeds` seeds, computed once (`baselines`) before meta-training: R_low is the return of
the first finished episodes (an almost untrained policy). Every candidate sees every task, so the
antithetic pairs of the ES share their tasks (and keys: es.evolve gives both the same key).

The population is vmapped inside the fitness and sharded over devices by `es.evolve`; a whole
generation (ask, population x tasks x inner PPO runs, tell) is one jitted program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from meta import drift, es
from purejaxrl import config as C
from purejaxrl import objectives, ppo

FINAL_FRACTION = 0.05  # as experiments.runs: final return = mean over the last 5% of updates

# CPU-sized inner PPO: 64k env steps per task (8 envs x 64 steps x 125 updates)
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
    """tasks: env ids trained on; inner: PPOConfig fields shared by every task's inner run (env
    is set per task); task_inner: per-task overrides {env id: {field: value}}; time_aware: TA-LPO
    (the drift sees n/N); ppo_init: drift = PPO-clip's + the network's; hidden: drift width;
    normalize: score tasks relative to PPO-clip (else raw mean return); baseline_seeds: PPO-clip
    seeds for the normalisation; es: the ES settings."""

    tasks: tuple[str, ...] = ("CartPole-v1", "Acrobot-v1")
    inner: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(CPU_INNER))
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
        if not self.tasks or not all(isinstance(t, str) for t in self.tasks):
            raise ValueError(f"LPOConfig.tasks={self.tasks!r}: a non-empty tuple of env ids")
        for task in self.tasks:
            try:
                envs.check_id(task)
            except ValueError as e:
                raise ValueError(f"LPOConfig.tasks: {e}") from None
        unknown = sorted(set(self.task_inner) - set(self.tasks))
        if unknown:
            raise ValueError(f"LPOConfig.task_inner: {unknown} are not among tasks {self.tasks}")
        if self.baseline_seeds < 1:
            raise ValueError(f"LPOConfig.baseline_seeds={self.baseline_seeds}: must be >= 1")
        if self.hidden < 1:
            raise ValueError(f"LPOConfig.hidden={self.hidden}: must be >= 1")
        for task in self.tasks:  # builds and validates every inner config now
            self.inner_config(task)

    def inner_config(self, task: str) -> ppo.PPOConfig:
        fields = {**dict(self.inner), **dict(self.task_inner.get(task, {})), "env": task}
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        cfg = C.from_dict(ppo.PPOConfig, fields)
        from purejaxrl import actor_critic

        actor_critic.validate(cfg)
        return cfg


@dataclasses.dataclass
class MetaOutput:
    """params: the learned drift (the ES mean at the end); best_params: the best candidate seen;
    es: the ES output (fitness `[G, P]`, timings); baselines: {task: {"ppo": R_ppo, "low": R_low}};
    info: what `lpo.save` records (features, trained_on, ...)."""

    params: Any
    best_params: Any
    es: es.ESOutput
    baselines: dict
    info: dict


def final_return(episode_return: jax.Array) -> jax.Array:
    """Mean of the last FINAL_FRACTION of a run's per-update returns `[U]` -> `[]`."""
    window = max(1, math.ceil(FINAL_FRACTION * episode_return.shape[-1]))
    return jnp.mean(episode_return[..., -window:], axis=-1)


def inner_train(cfg: ppo.PPOConfig, policy_loss):
    """`train(key) -> TrainOutput` of PPO's loop with GAE + value loss + `policy_loss`."""
    return ppo.make_agent(cfg, objectives.actor_critic(cfg, policy_loss)).train


def compute_baselines(cfg: LPOConfig, key: jax.Array) -> dict[str, dict[str, float]]:
    """PPO-clip on every task over `baseline_seeds` seeds: {task: {"ppo": final return, "low":
    the return of the first finished episodes}}, means over seeds."""
    out = {}
    for i, task in enumerate(cfg.tasks):
        inner = cfg.inner_config(task)
        keys = jax.random.split(jax.random.fold_in(key, i), cfg.baseline_seeds)
        metrics = jax.jit(jax.vmap(lambda k, c=inner: ppo.make_agent(c).train(k).metrics))(keys)
        returns = np.asarray(metrics["episode_return"], np.float64)
        finished = np.cumsum(np.asarray(metrics["episodes_finished"]), axis=1) > 0
        first = np.argmax(finished, axis=1)
        low = returns[np.arange(len(returns)), first]
        out[task] = {
            "ppo": float(np.mean(np.asarray(final_return(jnp.asarray(returns))))),
            "low": float(np.mean(low)),
        }
    return out


def make_fitness(cfg: LPOConfig, baselines: Mapping[str, Mapping[str, float]] | None):
    """fitness(params, key) -> scalar: mean over tasks of the (normalised) final return of an
    inner PPO run trained with the drift `params` (see the module docstring)."""
    inners = [cfg.inner_config(task) for task in cfg.tasks]

    def fitness(params, key):
        loss = drift.learned_loss(params, time_aware=cfg.time_aware, ppo_init=cfg.ppo_init)
        scores = []
        for i, (task, inner) in enumerate(zip(cfg.tasks, inners, strict=True)):
            out = inner_train(inner, loss)(jax.random.fold_in(key, i))
            score = final_return(out.metrics["episode_return"])
            if baselines is not None:
                b = baselines[task]
                score = (score - b["low"]) / max(b["ppo"] - b["low"], 1.0)
            scores.append(score)
        return jnp.mean(jnp.stack(scores))

    return fitness


def make_meta_train(cfg: LPOConfig):
    """`meta_train(key, *, baselines=None, on_baselines=None, devices=None, progress=True,
    checkpoint_dir=None, resume=False, on_generations=None) -> MetaOutput` (the last five as
    es.evolve's). `baselines`: ones computed before for this config and key (e.g. by the run
    being resumed), used instead of computing them again; `on_baselines(baselines)` is called
    once they are known (None when `normalize` is off), before the ES starts."""

    def meta_train(key, *, baselines=None, on_baselines=None, **evolve_kwargs) -> MetaOutput:
        k_base, k_init, k_es = jax.random.split(key, 3)
        if not cfg.normalize:
            baselines = None
        elif baselines is None:
            baselines = compute_baselines(cfg, k_base)
        elif missing := sorted(set(cfg.tasks) - set(baselines)):
            raise ValueError(f"meta_train: the given baselines lack the tasks {missing}")
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
