"""The grid-world env over a `Level` (its env params), and `make` for the `gridworld/<name>` ids.

Dynamics (one step): the agent moves (actions 0 up, 1 down, 2 left, 3 right, 4 stay: the
reference's five); a move into a wall or off the grid leaves it in place. An object present on the
cell the agent ends on is collected: its reward is paid and the episode terminates with its
`obj_p_terminate` probability. Then every object of the level that was absent at the start of the
step reappears with its `obj_p_respawn` probability (so a collected object is away for at least one
step). After `max_steps` steps the episode is *truncated* (not terminated: bootstrap).

Spawning (`Level.random_spawn`, a bool leaf):
- False (the reference's tabular levels, and the default): the agent starts on `start` and the
  objects on `obj_pos` every episode and respawn on their own cells. These cells are part of the
  level (drawn once, when a level is sampled), so the tabular state (agent cell, which objects are
  present) is Markov and `optimal_return` is exact.
- True (the reference's non-tabular "rand_*" levels): every reset draws distinct random free cells
  for the agent and the objects, and a respawning object appears on a random free cell not taken
  by the agent or another present object. (The tabular observation does not show where objects
  are: pair random spawning with obs="mlp".) Only an env made with `random_spawn=True` spawns at
  random (`envs.make(id, random_spawn=True)`); one made without it (the default) skips the
  random-cell draws and treats every level it is given as fixed-spawn.

Observations (`obs=`, static; the env observes an `obs_size` x `obs_size` grid and the first
`obs_objects` objects, its static capacity; `validate_level` refuses levels that do not fit):
- "tabular": one-hot `[obs_size^2 * 2^obs_objects]` of (agent cell, present-objects bitmask), the
  reference's tabular state (which also appends time / 1000; we do not: the state stays a pure
  one-hot and the time limit is a truncation the learner bootstraps through).
- "mlp": `[(1 + obs_objects) * obs_size^2]`: the agent's cell one-hot, then one map per object
  slot with a 1 on that object's cell while it is present.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import spaces
from envs.core import Environment, check_override_keys
from envs.gridworld.generators import IDS, capacity, sample_levels
from envs.gridworld.levels import (
    CELLS,
    MAX_OBJECTS,
    MAX_SIZE,
    MOVES,
    NUM_ACTIONS,
    Level,
    cells_mask,
    check_int,
    close_hint,
    free_cells,
    needed_capacity,
    random_cells,
    uniforms,
    validate_level,
)

OBS_KINDS = ("tabular", "mlp")
OVERRIDES = (
    "obs",
    "obs_size",
    "obs_objects",
    "level_seed",
    "random_spawn",
    "max_steps",
    "lifetime",
)


@struct.dataclass
class State:
    pos: jax.Array  # int32 [2] agent cell
    obj_pos: jax.Array  # int32 [MAX_OBJECTS, 2] object cells (meaningful while present)
    present: jax.Array  # bool [MAX_OBJECTS] objects on the grid now
    t: jax.Array  # int32 steps taken this episode


class GridWorld(Environment):
    """The grid-world env (no auto-reset; `envs.make` adds it). `default_params` is its level.

    obs: "tabular" | "mlp" (module docstring). obs_size / obs_objects: the static observation
    capacity (grid side and object slots); default: what the default level needs.
    random_spawn: whether the env draws random spawn cells at all (static; default: the default
    level's `random_spawn`). An env made without it treats every level as fixed-spawn and skips
    the per-step random-cell draws (most of a tabular step's cost when the levels arrive as
    runtime arrays, e.g. from a level buffer): levels with `random_spawn=True` need an env made
    with `random_spawn=True` (`envs.make(id, random_spawn=True)`).
    """

    def __init__(
        self,
        level: Level,
        obs: str = "tabular",
        obs_size: int | None = None,
        obs_objects: int | None = None,
        name: str = "gridworld",
        random_spawn: bool | None = None,
    ):
        if obs not in OBS_KINDS:
            raise ValueError(
                f"obs must be one of {OBS_KINDS}, got {obs!r}{close_hint(obs, OBS_KINDS)}"
            )
        validate_level(level)
        need_size, need_objects = needed_capacity(level)
        obs_size = need_size if obs_size is None else obs_size
        obs_objects = need_objects if obs_objects is None else obs_objects
        check_int("obs_size", obs_size, 1, MAX_SIZE)
        check_int("obs_objects", obs_objects, 0, MAX_OBJECTS)
        self.obs = obs
        self.obs_size = int(obs_size)
        self.obs_objects = int(obs_objects)
        self._name = name
        default_spawn = bool(np.asarray(level.random_spawn))
        self.random_spawn = default_spawn if random_spawn is None else bool(random_spawn)
        if default_spawn and not self.random_spawn:
            raise ValueError(
                "GridWorld(random_spawn=False) with a default level that spawns at random"
            )
        validate_level(level, obs_size=self.obs_size, obs_objects=self.obs_objects)
        self._default_params = level

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_params(self) -> Level:
        return self._default_params

    @property
    def obs_dim(self) -> int:
        cells = self.obs_size * self.obs_size
        if self.obs == "tabular":
            return cells * 2**self.obs_objects
        return cells * (1 + self.obs_objects)

    def observation_space(self, params: Level) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.obs_dim,))

    def action_space(self, params: Level) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def observe(self, state: State) -> jax.Array:
        """float32 [obs_dim] observation of `state` (module docstring)."""
        s, k = self.obs_size, self.obs_objects
        cell = state.pos[0] * s + state.pos[1]
        if self.obs == "tabular":
            bits = jnp.sum(state.present[:k].astype(jnp.int32) << jnp.arange(k, dtype=jnp.int32))
            return jax.nn.one_hot(cell + s * s * bits, self.obs_dim, dtype=jnp.float32)
        obj_cells = state.obj_pos[:k, 0] * s + state.obj_pos[:k, 1]
        maps = jax.nn.one_hot(obj_cells, s * s, dtype=jnp.float32) * state.present[:k, None]
        agent = jax.nn.one_hot(cell, s * s, dtype=jnp.float32)
        return jnp.concatenate([agent, maps.ravel()])

    def reset(self, key: jax.Array, params: Level):
        level = params
        pos, obj_pos = level.start, level.obj_pos
        if self.random_spawn:
            u = jax.random.uniform(key, (CELLS,))
            cells = random_cells(u, free_cells(level), MAX_OBJECTS + 1)
            pos = jnp.where(level.random_spawn, cells[0], pos)
            obj_pos = jnp.where(level.random_spawn, cells[1:], obj_pos)
        state = State(
            pos=pos.astype(jnp.int32),
            obj_pos=obj_pos.astype(jnp.int32),
            present=jnp.asarray(level.obj_mask, jnp.bool_),
            t=jnp.zeros((), jnp.int32),
        )
        return self.observe(state), state

    def step(self, key: jax.Array, state: State, action: jax.Array, params: Level):
        level = params
        u = uniforms(key, term=1, respawn=MAX_OBJECTS, cells=CELLS)
        free = free_cells(level)
        move = jnp.asarray(MOVES)[jnp.clip(action, 0, NUM_ACTIONS - 1)]
        target = state.pos + move
        inside = jnp.all((target >= 0) & (target < MAX_SIZE))
        target = jnp.clip(target, 0, MAX_SIZE - 1)
        pos = jnp.where(inside & free[target[0], target[1]], target, state.pos)

        collected = state.present & jnp.all(state.obj_pos == pos, axis=-1)
        reward = jnp.sum(jnp.where(collected, level.obj_reward, 0.0)).astype(jnp.float32)
        p_continue = jnp.prod(jnp.where(collected, 1.0 - level.obj_p_terminate, 1.0))
        terminated = u["term"][0] >= p_continue

        absent = level.obj_mask & ~state.present
        respawn = absent & (u["respawn"] < level.obj_p_respawn)
        present = (state.present & ~collected) | respawn
        obj_pos = state.obj_pos
        if self.random_spawn:
            # Random respawn cells: free, not the agent's, not another present object's.
            taken = cells_mask(pos[None], jnp.ones((1,), bool)) | cells_mask(
                state.obj_pos, state.present & ~collected
            )
            cells = random_cells(u["cells"], free & ~taken, MAX_OBJECTS)
            rank = jnp.clip(jnp.cumsum(respawn) - 1, 0, MAX_OBJECTS - 1)
            moved = (respawn & level.random_spawn)[:, None]
            obj_pos = jnp.where(moved, cells[rank], obj_pos)

        t = state.t + 1
        truncated = (t >= level.max_steps) & ~terminated
        state = State(pos=pos, obj_pos=obj_pos, present=present, t=t)
        return self.observe(state), state, reward, terminated, truncated, {}

    def __repr__(self) -> str:
        return (
            f"GridWorld({self._name!r}, obs={self.obs!r}, obs_size={self.obs_size}, "
            f"obs_objects={self.obs_objects}, random_spawn={self.random_spawn})"
        )


def default_level(name: str, level_seed: int = 0) -> Level:
    """The level `envs.make("gridworld/<name>")` starts from: the `level_seed` sample of `name`
    (concrete even when called inside a trace, e.g. `envs.make` in a vmapped sweep)."""
    with jax.ensure_compile_time_eval():
        level = sample_levels(jax.random.key(level_seed), 1, name)
        return jax.tree.map(lambda x: x[0], level)


def make(env_id: str, **overrides) -> tuple[Environment, Any]:
    """`(raw env, level)` for a gridworld id. Overrides: obs ("tabular" | "mlp"), obs_size,
    obs_objects (default `capacity(name)`), level_seed (default 0), random_spawn, max_steps,
    lifetime. Unknown ids, keys or invalid values raise ValueError."""
    if env_id not in IDS:  # envs.make checks ids first; this is for direct calls
        hint = close_hint(env_id, IDS)
        raise ValueError(f"unknown gridworld id {env_id!r}{hint} Known: {', '.join(IDS)}")
    name = env_id.split("/", 1)[1]
    check_override_keys(env_id, overrides, list(OVERRIDES))
    size, objects = capacity(name)
    seed = overrides.get("level_seed", 0)
    check_int("level_seed", seed, 0)
    level = default_level(name, int(seed))
    for key in ("max_steps", "lifetime"):
        if key in overrides:
            check_int(key, overrides[key], 1)
            level = level.replace(**{key: jnp.asarray(overrides[key], jnp.int32)})
    if "random_spawn" in overrides:
        spawn = overrides["random_spawn"]
        if not isinstance(spawn, bool | np.bool_):
            raise ValueError(f"random_spawn must be a bool, got {spawn!r}")
        level = level.replace(random_spawn=jnp.asarray(bool(spawn)))
    env = GridWorld(
        level,
        obs=overrides.get("obs", "tabular"),
        obs_size=overrides.get("obs_size", size),
        obs_objects=overrides.get("obs_objects", objects),
        name=env_id,
    )
    return env, level
