"""LPG grid worlds (Oh et al. 2020) in pure JAX: the level IS the env-params pytree.

A batch of thousands of levels is one pytree with a leading axis, so
`jax.vmap(env.step, in_axes=(0, 0, 0, 0))` or `jax.vmap(agent.train)(keys, levels)` runs them in
one program. Modules: `levels` (the `Level` pytree, `make_level`, `validate_level`), `env` (the
`GridWorld` dynamics and observations, `make`), `generators` (the LPG configs, random-level
distributions, `sample_levels`, `mutate_level`), `value_iteration` (`optimal_return`).

Ids (`envs.make("gridworld/<name>")`): the five LPG tabular configs `dense`, `sparse`, `long`,
`longer`, `long_dense` (see `CONFIGS`; start and object cells drawn with `level_seed`, default 0),
and one id per random-level distribution (`mixed`, `small`, `medium`, `large`, `all`,
`all_shortlife`, `all_randlife`, `all_vrandlife`: the default level is the `level_seed` sample and
the env's capacity fits every level of the distribution, so `sample_levels(key, n, name)` feeds an
agent made for `gridworld/<name>`). Overrides: `obs`, `obs_size`, `obs_objects`, `level_seed`,
`random_spawn`, `max_steps`, `lifetime`.

Levels: `make_level` (by hand), `sample_levels(key, n, distribution)`, `mutate_level(key, level)`
(jittable, vmappable), `validate_level(level)` (concrete levels), `optimal_return(level, gamma)`
(numpy value iteration over a fixed-spawn level's finite horizon).
"""

from envs.gridworld.env import OBS_KINDS, OVERRIDES, GridWorld, State, default_level, make
from envs.gridworld.generators import (
    CONFIGS,
    DISTRIBUTIONS,
    IDS,
    MIXED,
    NAMES,
    Config,
    Distribution,
    capacity,
    mutate_level,
    sample_level,
    sample_levels,
)
from envs.gridworld.levels import (
    ACTION_NAMES,
    MAX_OBJECTS,
    MAX_SIZE,
    NUM_ACTIONS,
    Level,
    free_cells,
    make_level,
    validate_level,
)
from envs.gridworld.value_iteration import optimal_return

__all__ = [
    "ACTION_NAMES",
    "CONFIGS",
    "DISTRIBUTIONS",
    "IDS",
    "MAX_OBJECTS",
    "MAX_SIZE",
    "MIXED",
    "NAMES",
    "NUM_ACTIONS",
    "OBS_KINDS",
    "OVERRIDES",
    "Config",
    "Distribution",
    "GridWorld",
    "Level",
    "State",
    "capacity",
    "default_level",
    "free_cells",
    "make",
    "make_level",
    "mutate_level",
    "optimal_return",
    "sample_level",
    "sample_levels",
    "validate_level",
]
