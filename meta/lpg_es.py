"""Meta-training an LPG rule (`meta.lpg_rule`) with evolution strategies, and the settings of
the rule's agents that both meta-optimisers share (`LPGConfig`).

ES (`make_meta_train(LPGConfig(...), levels)`): fitness of a rule = final return (finished
episodes only, `purejaxrl.scores`) of an A2C agent trained with it for its whole lifetime on a
level (env params) drawn from the candidate's key, so the two members of an antithetic pair
(same key in `meta.es.evolve`) meet the same level and agent seed. LPG and TA-LPG (the TA
paper's method).

Levels: `levels` is None (the env's default params), a batch of env params (a pytree whose leaves
have one leading axis [L]; one is drawn uniformly per key) or a function `sample_levels(key) ->
level`. Any env whose params are a pytree works, e.g. `envs.make("gridworld/dense")`'s levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs import gridworld
from meta import es
from meta.lpg_rule import HIDDEN, KL_WEIGHT, Y_SIZE, init_params, objective
from purejaxrl import a2c
from purejaxrl import config as C
from purejaxrl.scores import final_return

# CPU-sized inner A2C: a linear ("tabular") agent, 8 envs x 16 steps x 50 updates = 6,400 steps.
CPU_INNER = {
    "total_timesteps": 8 * 16 * 50,
    "num_envs": 8,
    "num_steps": 16,
    "learning_rate": 0.1,
    "hidden_sizes": (),
    "shared_torso": True,
    "gamma": 0.99,
}


@dataclasses.dataclass(frozen=True)
class LPGConfig:
    """env (+ env_kwargs): the env whose levels the agents train on; inner: the A2CConfig of
    every agent (a mapping of its fields is converted; env, env_kwargs and prediction_size =
    y_size are set from this config; validated at construction); time_aware: TA-LPG; y_size,
    hidden: the rule's y width and GRU width; kl_weight: the agent loss's KL weight; es: the ES
    settings (default: OpenES, population 16, sigma 0.1 and learning rate 0.01 as the public
    GROOVE code's TA-LPG command (its README, April 2023: the ES learning rate is 1e-2, once
    misreported as 1e-4), without its decay of the rate by 0.999 per step to 1e-5, which our
    ESConfig does not express; one level per antithetic pair);
    level_lifetime: honour each level's own lifetime L (a grid world's `Level.lifetime`, in
    updates, e.g. `gridworld/all_randlife`): agents still run the inner config's N updates
    (a static shape), but TA-LPG sees n/L and log L, and the fitness is the final return at
    update L (`purejaxrl.scores.final_return(..., lifetime=L)`); L is clipped to [1, N]."""

    env: str = "Catch-bsuite"
    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inner: a2c.A2CConfig | Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(CPU_INNER)
    )
    time_aware: bool = False
    y_size: int = Y_SIZE
    hidden: int = HIDDEN
    kl_weight: float = KL_WEIGHT
    level_lifetime: bool = False
    es: es.ESConfig = dataclasses.field(
        default_factory=lambda: es.ESConfig(
            population_size=16, num_generations=100, sigma=0.1, learning_rate=0.01
        )
    )

    def __post_init__(self):
        C.check_types(self)
        try:
            envs.check_id(self.env)
        except ValueError as e:
            raise ValueError(f"LPGConfig.env: {e}") from None
        for name in ("y_size", "hidden"):
            C.check_positive_int(self, name)
        if not isinstance(self.es, es.ESConfig):
            raise ValueError(f"LPGConfig.es must be an es.ESConfig, got {type(self.es).__name__}")
        object.__setattr__(self, "inner", self._agent_config(self.inner))

    def _agent_config(self, inner) -> a2c.A2CConfig:
        """`inner` (an A2CConfig or a mapping of its fields) with this config's env and y width."""
        if isinstance(inner, a2c.A2CConfig):
            inner = C.to_dict(inner)
        elif not isinstance(inner, Mapping):
            raise ValueError(
                "LPGConfig.inner must be an a2c.A2CConfig or a mapping of its fields, got "
                f"{type(inner).__name__}"
            )
        fields = {**inner, "env": self.env, "env_kwargs": dict(self.env_kwargs)}
        cfg = C.from_dict(a2c.A2CConfig, {**fields, "prediction_size": self.y_size})
        return cfg

    def inner_config(self) -> a2c.A2CConfig:
        """The agents' A2CConfig (`inner`, validated at construction)."""
        return self.inner

    def init_params(self, key):
        return init_params(key, self.time_aware, self.y_size, self.hidden)


def make_env(cfg: LPGConfig):
    """(env, default level) of `cfg.env`, built once, outside any trace (the agents inside the
    jitted fitness get this env: `envs.make` of a grid world validates its concrete default
    level, which a traced call cannot)."""
    return envs.make(cfg.env, **dict(cfg.env_kwargs))


def level_sampler(levels, default=None) -> Callable[[jax.Array], Any]:
    """`sample(key) -> level` from `levels`: None (always `default`), a batch of env params (a
    pytree whose leaves share one leading axis [L]; uniform draw) or a function key -> level."""
    if levels is None:
        if default is None:
            raise ValueError("level_sampler: levels=None needs the default level")
        return lambda key: default
    if callable(levels):
        return levels
    leaves = jax.tree.leaves(levels)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            "levels: a batch of env params needs one leading axis [L] > 0 on every leaf (got "
            f"leading sizes {sorted(map(str, sizes))}); or pass a function sample_levels(key)"
        )
    (num,) = sizes
    levels = jax.tree.map(jnp.asarray, levels)
    return lambda key: jax.tree.map(lambda x: x[jax.random.randint(key, (), 0, num)], levels)


def make_level_fitness(cfg: LPGConfig):
    """fitness(params, key, level) -> scalar: the final return (mean episode return of the last
    5% of updates, as meta.lpo) of an A2C agent (seed `key`) trained for its lifetime with the
    rule `params` on `level` (env params). Non-finite (NaN) when any of the agent's updates was
    skipped for a non-finite loss or gradient: es.evolve then gives the candidate the worst
    fitness of its generation and never keeps it as best."""
    inner = cfg.inner_config()
    env, default = make_env(cfg)

    def fitness(params, key, level):
        lifetime = level_lifetime(cfg, level, inner.num_updates)
        rule_objective = objective(params, cfg.kl_weight, inner.gamma, lifetime)
        agent = a2c.make_agent(inner, rule_objective, env=env, env_params=default)
        out = agent.train(key, level)
        m = out.metrics
        score = final_return(m["episode_return"], m["episodes_finished"], lifetime)
        clean = (jnp.sum(out.metrics["nan_skipped"]) == 0) & jnp.isfinite(score)
        return jnp.where(clean, score, jnp.nan)

    return fitness


def level_lifetime(cfg: LPGConfig, level, num_updates: int):
    """A level's lifetime clipped to [1, num_updates] (int32 []) when `cfg.level_lifetime`, else
    None; ValueError if the level has no `lifetime` field."""
    if not cfg.level_lifetime:
        return None
    if not isinstance(level, gridworld.Level):
        raise ValueError(
            f"LPGConfig.level_lifetime=True: the levels of {cfg.env} ({type(level).__name__}) "
            "have no `lifetime` field (a grid world's Level has)"
        )
    return jnp.clip(jnp.asarray(level.lifetime, jnp.int32), 1, num_updates)


def make_fitness(cfg: LPGConfig, levels=None):
    """fitness(params, key) -> scalar: `make_level_fitness(cfg)` on the level drawn from `key`
    (k_level, k_agent = split(key); `levels` as `level_sampler`'s)."""
    on_level = make_level_fitness(cfg)
    sample = level_sampler(levels, make_env(cfg)[1])

    def fitness(params, key):
        k_level, k_agent = jax.random.split(key)
        return on_level(params, k_agent, sample(k_level))

    return fitness


@dataclasses.dataclass
class MetaOutput:
    """params: the learned rule (ES mean); best_params: the candidate with the highest fitness
    over all generations, each fitness measured on its own key-drawn level and agent seed (so a
    lucky draw, not a comparison on common levels: `params` is the rule to use); es:
    es.ESOutput; info: what `save` records (trained_on)."""

    params: Any
    best_params: Any
    es: es.ESOutput
    info: dict


def make_meta_train(cfg: LPGConfig, levels=None):
    """`meta_train(key, *, init=None, **evolve_kwargs) -> MetaOutput`: ES over rules (LPG or
    TA-LPG) from `init` (default `cfg.init_params(k_init)`), a generation = ask -> population x
    whole agent lifetimes (vmapped, sharded over devices) -> tell; `evolve_kwargs` as
    es.evolve's (devices, progress, checkpoint_dir, resume, on_generations). The candidates'
    fitness function (`make_fitness(cfg, levels)`) is `meta_train.fitness`."""
    fitness = make_fitness(cfg, levels)

    def meta_train(key, *, init=None, **evolve_kwargs) -> MetaOutput:
        k_init, k_es = jax.random.split(key)
        init = cfg.init_params(k_init) if init is None else init
        out = es.evolve(fitness, init, cfg.es, k_es, **evolve_kwargs)
        source = "default" if levels is None else ("sampler" if callable(levels) else "set")
        info = {
            "trained_on": {
                "method": "es",
                "env": cfg.env,
                "levels": source,
                "inner": C.to_dict(cfg.inner_config()),
                "es": dataclasses.asdict(cfg.es),
                "generations": int(out.fitness.shape[0]),
                "final_mean_fitness": float(out.mean_fitness[-1]),
            }
        }
        return MetaOutput(out.mean_params, out.best_params, out, info)

    meta_train.fitness = fitness
    return meta_train
