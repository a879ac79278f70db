"""LPG grid worlds (Oh et al. 2020) in pure JAX: the level IS the env-params pytree.

A `Level` holds fixed-shape arrays only (a grid of at most `MAX_SIZE` x `MAX_SIZE` cells and at
most `MAX_OBJECTS` objects), so a batch of thousands of levels is one pytree with a leading axis
and `jax.vmap(env.step, in_axes=(0, 0, 0, 0))` or `jax.vmap(agent.train)(keys, levels)` runs them
in one program. Cells outside the level's `height` x `width` are walls.

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

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import spaces
from envs.core import Environment, check_override_keys

MAX_SIZE = 13  # level arrays are [MAX_SIZE, MAX_SIZE]; cells outside height x width are walls
MAX_OBJECTS = 8  # object arrays are [MAX_OBJECTS]; `obj_mask` says which exist
NUM_ACTIONS = 5
ACTION_NAMES = ("up", "down", "left", "right", "stay")
_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], np.int32)  # (row, col) per action
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

# ---------------------------------------------------------------------------------------------
# level and state


@struct.dataclass
class Level:
    """One grid-world level (env params); every field is an array leaf (add a leading axis for a
    batch). Positions are (row, col) int32 pairs, row 0 at the top.

    height, width: int32 [] grid size, 1..MAX_SIZE. walls: bool [MAX_SIZE, MAX_SIZE].
    start: int32 [2] the agent's start cell. obj_pos: int32 [MAX_OBJECTS, 2] object cells.
    obj_mask: bool [MAX_OBJECTS] which objects exist. obj_reward: float32 [MAX_OBJECTS].
    obj_p_terminate: float32 [MAX_OBJECTS] probability that collecting the object ends the episode.
    obj_p_respawn: float32 [MAX_OBJECTS] per-step probability that an absent object reappears.
    max_steps: int32 [] episode length (then truncation). lifetime: int32 [] agent updates a
    learner gets on this level (TA-LPG reads it; the env only carries it).
    random_spawn: bool [] draw start/object cells at every reset and respawn at random cells.
    """

    height: jax.Array
    width: jax.Array
    walls: jax.Array
    start: jax.Array
    obj_pos: jax.Array
    obj_mask: jax.Array
    obj_reward: jax.Array
    obj_p_terminate: jax.Array
    obj_p_respawn: jax.Array
    max_steps: jax.Array
    lifetime: jax.Array
    random_spawn: jax.Array


@struct.dataclass
class State:
    pos: jax.Array  # int32 [2] agent cell
    obj_pos: jax.Array  # int32 [MAX_OBJECTS, 2] object cells (meaningful while present)
    present: jax.Array  # bool [MAX_OBJECTS] objects on the grid now
    t: jax.Array  # int32 steps taken this episode


_ROWS, _COLS = np.meshgrid(np.arange(MAX_SIZE), np.arange(MAX_SIZE), indexing="ij")


def free_cells(level: Level) -> jax.Array:
    """bool [..., MAX_SIZE, MAX_SIZE]: cells inside the grid that are not walls."""
    inside = (_ROWS < level.height[..., None, None]) & (_COLS < level.width[..., None, None])
    return inside & ~level.walls


def _cells_mask(pos: jax.Array, on: jax.Array) -> jax.Array:
    """bool [MAX_SIZE, MAX_SIZE]: the cells of `pos` [k, 2] whose `on` [k] is set."""
    hit = (_ROWS[..., None] == pos[:, 0]) & (_COLS[..., None] == pos[:, 1]) & on
    return jnp.any(hit, axis=-1)


_CELLS = MAX_SIZE * MAX_SIZE


def _uniforms(key: jax.Array, **sizes: int) -> dict:
    """Named segments of one uniform [0, 1) draw: `_uniforms(key, a=3, b=1)` -> {"a": [3],
    "b": [1]}. One draw per call keeps the random-bit kernels (and the compile) small."""
    u = jax.random.uniform(key, (sum(sizes.values()),))
    out, i = {}, 0
    for name, size in sizes.items():
        out[name], i = u[i : i + size], i + size
    return out


def _random_cells(u: jax.Array, mask: jax.Array, k: int) -> jax.Array:
    """int32 [k, 2]: k distinct cells of `mask` [MAX_SIZE, MAX_SIZE] in uniformly random order
    (a uniform sample without replacement while mask has >= k cells; then masked-out cells),
    from uniforms `u` [MAX_SIZE^2]."""
    score = jnp.where(mask.ravel(), u, u - 2.0)
    _, idx = jax.lax.top_k(score, k)
    return jnp.stack([idx // MAX_SIZE, idx % MAX_SIZE], axis=-1).astype(jnp.int32)


def _random_index(u: jax.Array, mask: jax.Array) -> jax.Array:
    """int32 []: a uniformly random index i with mask[i] (any index when mask is empty), from
    uniforms `u` shaped like `mask`."""
    score = jnp.where(mask, u, -1.0)
    return jnp.argmax(score).astype(jnp.int32)


def _connected(free: jax.Array) -> jax.Array:
    """bool []: the True cells of `free` [MAX_SIZE, MAX_SIZE] form one 4-connected region."""

    def grow(reach):
        for _ in range(4):  # a few dilations per convergence check
            up = jnp.pad(reach[1:], ((0, 1), (0, 0)))
            down = jnp.pad(reach[:-1], ((1, 0), (0, 0)))
            left = jnp.pad(reach[:, 1:], ((0, 0), (0, 1)))
            right = jnp.pad(reach[:, :-1], ((0, 0), (1, 0)))
            reach = (reach | up | down | left | right) & free
        return reach

    seed = (jnp.arange(MAX_SIZE * MAX_SIZE) == jnp.argmax(free.ravel())).reshape(free.shape)

    def body(carry):
        reach, _ = carry
        new = grow(reach)
        return new, jnp.any(new != reach)

    reach, _ = jax.lax.while_loop(lambda c: c[1], body, (seed & free, jnp.bool_(True)))
    return jnp.all(reach == free)


# ---------------------------------------------------------------------------------------------
# the env


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
            raise ValueError(f"obs must be one of {OBS_KINDS}, got {obs!r}{_hint(obs, OBS_KINDS)}")
        validate_level(level)
        need_size, need_objects = _needed_capacity(level)
        obs_size = need_size if obs_size is None else obs_size
        obs_objects = need_objects if obs_objects is None else obs_objects
        _check_int("obs_size", obs_size, 1, MAX_SIZE)
        _check_int("obs_objects", obs_objects, 0, MAX_OBJECTS)
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
            u = jax.random.uniform(key, (_CELLS,))
            cells = _random_cells(u, free_cells(level), MAX_OBJECTS + 1)
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
        u = _uniforms(key, term=1, respawn=MAX_OBJECTS, cells=_CELLS)
        free = free_cells(level)
        move = jnp.asarray(_MOVES)[jnp.clip(action, 0, NUM_ACTIONS - 1)]
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
            taken = _cells_mask(pos[None], jnp.ones((1,), bool)) | _cells_mask(
                state.obj_pos, state.present & ~collected
            )
            cells = _random_cells(u["cells"], free & ~taken, MAX_OBJECTS)
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


# ---------------------------------------------------------------------------------------------
# building and checking levels


def make_level(
    height: int,
    width: int,
    *,
    start: Sequence[int],
    objects: Sequence[Sequence[float]],
    walls: Sequence[Sequence[int]] = (),
    max_steps: int,
    lifetime: int = 2500,
    random_spawn: bool = False,
) -> Level:
    """A validated level from Python values. objects: (row, col, reward, p_terminate, p_respawn)
    per object (at most MAX_OBJECTS); walls: (row, col) cells; start: (row, col)."""
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"objects: {len(objects)} given, at most MAX_OBJECTS={MAX_OBJECTS}")
    for i, obj in enumerate(objects):
        if len(obj) != 5:
            raise ValueError(f"objects[{i}] must be (row, col, reward, p_terminate, p_respawn)")
    wall_grid = np.zeros((MAX_SIZE, MAX_SIZE), bool)
    for r, c in walls:
        if not (0 <= r < MAX_SIZE and 0 <= c < MAX_SIZE):
            raise ValueError(f"walls: cell ({r}, {c}) is outside the {MAX_SIZE}x{MAX_SIZE} maximum")
        wall_grid[r, c] = True
    obj = np.zeros((MAX_OBJECTS, 5), np.float64)
    obj[: len(objects)] = np.asarray(objects, np.float64).reshape(-1, 5)
    level = Level(
        height=jnp.asarray(height, jnp.int32),
        width=jnp.asarray(width, jnp.int32),
        walls=jnp.asarray(wall_grid),
        start=jnp.asarray(start, jnp.int32),
        obj_pos=jnp.asarray(obj[:, :2], jnp.int32),
        obj_mask=jnp.arange(MAX_OBJECTS) < len(objects),
        obj_reward=jnp.asarray(obj[:, 2], jnp.float32),
        obj_p_terminate=jnp.asarray(obj[:, 3], jnp.float32),
        obj_p_respawn=jnp.asarray(obj[:, 4], jnp.float32),
        max_steps=jnp.asarray(max_steps, jnp.int32),
        lifetime=jnp.asarray(lifetime, jnp.int32),
        random_spawn=jnp.asarray(random_spawn, jnp.bool_),
    )
    validate_level(level)
    return level


_SHAPES = {
    "height": (),
    "width": (),
    "walls": (MAX_SIZE, MAX_SIZE),
    "start": (2,),
    "obj_pos": (MAX_OBJECTS, 2),
    "obj_mask": (MAX_OBJECTS,),
    "obj_reward": (MAX_OBJECTS,),
    "obj_p_terminate": (MAX_OBJECTS,),
    "obj_p_respawn": (MAX_OBJECTS,),
    "max_steps": (),
    "lifetime": (),
    "random_spawn": (),
}


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.5)
    return f". Did you mean: {', '.join(close)}?" if close else ""


def _needed_capacity(level: Level) -> tuple[int, int]:
    """(grid side, object count) a concrete level (or batch) needs the observation to cover."""
    h, w = np.asarray(level.height), np.asarray(level.width)
    n = np.asarray(level.obj_mask).sum(axis=-1)
    return int(max(h.max(initial=1), w.max(initial=1))), int(n.max(initial=0))


def validate_level(
    level: Level, obs_size: int | None = None, obs_objects: int | None = None
) -> None:
    """ValueError naming the field unless the concrete `level` (or batch, any leading axes) is
    valid: field shapes; height/width in [1, MAX_SIZE] (and <= obs_size); objects <= obs_objects;
    probabilities in [0, 1]; finite rewards; max_steps, lifetime >= 1; enough free cells for the
    agent and the objects; start and object cells inside the grid, off walls, all distinct."""
    if not isinstance(level, Level):
        raise ValueError(f"level must be a gridworld.Level, got {type(level).__name__}")
    values = {}
    for f in dataclasses.fields(Level):
        x = getattr(level, f.name)
        if isinstance(x, jax.core.Tracer):
            raise ValueError(f"validate_level needs a concrete level; {f.name} is traced")
        values[f.name] = np.asarray(x)
    batch = values["height"].shape
    for name, shape in _SHAPES.items():
        if values[name].shape != batch + shape:
            raise ValueError(
                f"{name} must have shape {batch + shape} (MAX_SIZE={MAX_SIZE}, "
                f"MAX_OBJECTS={MAX_OBJECTS}), got {values[name].shape}"
            )
    for idx in np.ndindex(batch):
        where = f"level{list(idx)}: " if batch else ""
        try:
            _validate_one({k: v[idx] for k, v in values.items()}, obs_size, obs_objects)
        except ValueError as e:
            raise ValueError(where + str(e)) from None


def _validate_one(v: dict, obs_size, obs_objects) -> None:
    h, w = int(v["height"]), int(v["width"])
    for name, size in (("height", h), ("width", w)):
        if not 1 <= size <= MAX_SIZE:
            raise ValueError(f"{name}={size} must be in [1, MAX_SIZE={MAX_SIZE}]")
        if obs_size is not None and size > obs_size:
            raise ValueError(f"{name}={size} is larger than this env's obs_size={obs_size}")
    mask = v["obj_mask"].astype(bool)
    n = int(mask.sum())
    if obs_objects is not None and n > obs_objects:
        raise ValueError(f"obj_mask: {n} objects, but this env observes obs_objects={obs_objects}")
    for name in ("obj_p_terminate", "obj_p_respawn"):
        p = v[name][mask]
        if not np.all((p >= 0.0) & (p <= 1.0)):
            raise ValueError(f"{name} must be in [0, 1], got {p.tolist()}")
    if not np.all(np.isfinite(v["obj_reward"][mask])):
        raise ValueError(f"obj_reward must be finite, got {v['obj_reward'][mask].tolist()}")
    for name in ("max_steps", "lifetime"):
        if int(v[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {int(v[name])}")
    free = (_ROWS < h) & (_COLS < w) & ~v["walls"].astype(bool)
    if int(free.sum()) < n + 1:
        raise ValueError(
            f"obj_mask: {n} objects and the agent need {n + 1} free cells, but the {h}x{w} grid "
            f"has {int(free.sum())} (walls)"
        )
    cells = [("start", tuple(int(x) for x in v["start"]))]
    cells += [
        (f"obj_pos[{i}]", tuple(int(x) for x in v["obj_pos"][i])) for i in np.flatnonzero(mask)
    ]
    seen = {}
    for name, (r, c) in cells:
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"{name}=({r}, {c}) is outside the {h}x{w} grid")
        if not free[r, c]:
            raise ValueError(f"{name}=({r}, {c}) is a wall")
        if (r, c) in seen:
            raise ValueError(f"{name}=({r}, {c}) is also {seen[(r, c)]}: cells must be distinct")
        seen[(r, c)] = name


# ---------------------------------------------------------------------------------------------
# the LPG configurations and the random-level distributions


@dataclasses.dataclass(frozen=True)
class Config:
    """A fixed LPG level family: size, episode length, objects (reward, p_terminate, p_respawn),
    walls; the start and object cells are drawn per level."""

    size: int
    max_steps: int
    objects: tuple[tuple[float, float, float], ...]
    walls: tuple[tuple[int, int], ...] = ()
    lifetime: int = 2500  # the reference's tabular lifetime: 5 x 500 agent updates


def _line_walls(size: int, index: int, gaps: Sequence[int], column: bool):
    cells = [(i, index) if column else (index, i) for i in range(size) if i not in gaps]
    return tuple(cells)


# Values as in the public GROOVE configs (EmptyJackson/groove). `longer` there has 2 + 3 objects
# (the LPG paper: 2 + 5; cut to keep the tabular state small).
CONFIGS: dict[str, Config] = {
    "dense": Config(11, 500, ((1.0, 0.0, 0.05),) * 2 + ((-1.0, 0.5, 0.1), (-1.0, 0.0, 0.5))),
    "sparse": Config(13, 50, ((1.0, 1.0, 0.0), (-1.0, 1.0, 0.0))),
    "long": Config(11, 1000, ((1.0, 0.0, 0.01),) * 2 + ((-1.0, 0.5, 1.0),) * 2),
    "longer": Config(
        9,
        2000,
        ((1.0, 0.1, 0.01),) * 2 + ((-1.0, 0.8, 1.0),) * 3,
        walls=_line_walls(9, 4, (1, 7), column=True),  # centre column, corridors at rows 1, 7
    ),
    "long_dense": Config(
        11,
        2000,
        ((1.0, 0.0, 0.005),) * 4,
        # column 5 (gaps at rows 0, 7) and row 4 (gaps at columns 2, 8): four linked rooms
        walls=tuple(
            sorted(
                set(_line_walls(11, 5, (0, 7), column=True))
                | set(_line_walls(11, 4, (2, 8), column=False))
            )
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Random levels: square grid side in `size` (inclusive), object count in `objects` (rewards
    U(-1, 1), the first U(0, 1); p_terminate and p_respawn log-uniform in their ranges), episode
    length a log-uniform integer in `max_steps`, lifetime a log-uniform integer in `lifetime`.
    Walls: `wall_candidates` distinct random cells of the `wall_box` x `wall_box` corner; in turn,
    each one inside the grid becomes a wall unless the free cells would split or become fewer than
    the agent and the objects need (the reference draws the same candidates but keeps them all)."""

    size: tuple[int, int]
    objects: tuple[int, int]
    max_steps: tuple[int, int]
    wall_candidates: int
    wall_box: int
    lifetime: tuple[int, int]
    p_terminate: tuple[float, float] = (1e-2, 1.0)
    p_respawn: tuple[float, float] = (1e-3, 1e-1)


_ALL = Distribution((4, 10), (1, 5), (20, 750), 15, 10, (1000, 1000))
# As the public GROOVE configs (their lifetimes: "all" 5 x 200 updates, small 5 x 50, ...).
DISTRIBUTIONS: dict[str, Distribution] = {
    "small": Distribution((4, 6), (1, 3), (20, 100), 7, 6, (250, 250)),
    "medium": Distribution((6, 8), (2, 4), (100, 250), 10, 8, (1000, 1000)),
    "large": Distribution((8, 10), (2, 5), (250, 750), 15, 10, (2500, 2500)),
    "all": _ALL,
    "all_shortlife": dataclasses.replace(_ALL, lifetime=(250, 250)),
    "all_randlife": dataclasses.replace(_ALL, lifetime=(50, 250)),
    "all_vrandlife": dataclasses.replace(_ALL, lifetime=(10, 250)),
}
MIXED = "mixed"  # one of the five CONFIGS, uniformly (the reference's "tabular" mode)
NAMES = (*CONFIGS, MIXED, *DISTRIBUTIONS)
IDS = tuple(f"gridworld/{name}" for name in NAMES)
_MAX_WALL_CANDIDATES = max(d.wall_candidates for d in DISTRIBUTIONS.values())


def capacity(name: str) -> tuple[int, int]:
    """(obs_size, obs_objects) that fit every level of config / distribution `name`."""
    _check_name(name)
    if name in CONFIGS:
        return CONFIGS[name].size, len(CONFIGS[name].objects)
    if name == MIXED:
        return max(c.size for c in CONFIGS.values()), max(len(c.objects) for c in CONFIGS.values())
    d = DISTRIBUTIONS[name]
    return d.size[1], d.objects[1]


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown level distribution {name!r}{_hint(name, NAMES)} Known: {NAMES}")


def _template(cfg: Config) -> dict:
    """numpy Level fields of a config (start and object cells still to be drawn)."""
    walls = np.zeros((MAX_SIZE, MAX_SIZE), bool)
    for r, c in cfg.walls:
        walls[r, c] = True
    obj = np.zeros((MAX_OBJECTS, 3), np.float32)
    obj[: len(cfg.objects)] = cfg.objects
    return dict(
        height=np.int32(cfg.size),
        width=np.int32(cfg.size),
        walls=walls,
        obj_mask=np.arange(MAX_OBJECTS) < len(cfg.objects),
        obj_reward=obj[:, 0],
        obj_p_terminate=obj[:, 1],
        obj_p_respawn=obj[:, 2],
        max_steps=np.int32(cfg.max_steps),
        lifetime=np.int32(cfg.lifetime),
    )


# The five configs stacked ([5, ...] per field); a config distribution is a weight vector over them.
_TEMPLATES = {
    k: np.stack([_template(c)[k] for c in CONFIGS.values()]) for k in _template(CONFIGS["dense"])
}
_WEIGHTS = {name: (np.array(list(CONFIGS)) == name).astype(np.float32) for name in CONFIGS}
_WEIGHTS[MIXED] = np.full(len(CONFIGS), 1.0 / len(CONFIGS), np.float32)


def _spec(d: Distribution) -> dict:
    """A distribution as numbers (traced by the shared sampler: one program for every name)."""
    f = dataclasses.asdict(d)
    return {k: np.asarray(v, np.float32 if k.startswith("p_") else np.int32) for k, v in f.items()}


def _log_uniform(u, lo, hi):
    """Log-uniform in [lo, hi] from uniforms `u`."""
    lo, hi = jnp.log(jnp.asarray(lo, jnp.float32)), jnp.log(jnp.asarray(hi, jnp.float32))
    return jnp.exp(lo + u * (hi - lo))


def _log_uniform_int(u, lo, hi) -> jax.Array:
    return jnp.clip(jnp.round(_log_uniform(u, lo, hi)), lo, hi).astype(jnp.int32)


def _uniform_int(u, lo, hi) -> jax.Array:
    """Integer uniform in [lo, hi] (inclusive) from uniforms `u`."""
    return jnp.clip(lo + jnp.floor(u * (hi - lo + 1)), lo, hi).astype(jnp.int32)


def _finish(u, fields: dict, random_spawn) -> Level:
    """Level from `fields` plus start and object cells: distinct random free cells (unused object
    slots at (0, 0)), from uniforms `u` [MAX_SIZE^2]."""
    inside = (_ROWS < fields["height"]) & (_COLS < fields["width"])
    cells = _random_cells(u, inside & ~fields["walls"], MAX_OBJECTS + 1)
    obj_pos = jnp.where(fields["obj_mask"][:, None], cells[1:], 0)
    spawn = jnp.asarray(random_spawn, jnp.bool_)
    return Level(**fields, start=cells[0], obj_pos=obj_pos, random_spawn=spawn)


def _sample_config(key: jax.Array, weights: jax.Array, random_spawn) -> Level:
    """One of the five configs drawn with `weights` [5], with random start and object cells."""
    u = _uniforms(key, pick=1, cells=_CELLS)
    cdf = jnp.cumsum(weights) / jnp.sum(weights)
    pick = jnp.minimum(jnp.sum(cdf <= u["pick"][0]), len(CONFIGS) - 1)
    fields = {k: jnp.asarray(v)[pick] for k, v in _TEMPLATES.items()}
    return _finish(u["cells"], fields, random_spawn)


def _sample_walls(u, size, n_needed, count, box) -> jax.Array:
    """bool [MAX_SIZE, MAX_SIZE]: `count` distinct random cells of the `box` x `box` corner, each
    kept in turn if inside the grid and the free cells stay connected and >= n_needed."""
    inside = (_ROWS < size) & (_COLS < size)
    candidates = _random_cells(u, (_ROWS < box) & (_COLS < box), _MAX_WALL_CANDIDATES)

    def add(walls, x):
        i, (r, c) = x
        new = walls.at[r, c].set(True)
        free = inside & ~new
        ok = (i < count) & (r < size) & (c < size) & (jnp.sum(free) >= n_needed)
        ok = ok & _connected(free)
        return jnp.where(ok, new, walls), None

    steps = (jnp.arange(_MAX_WALL_CANDIDATES), candidates)
    walls, _ = jax.lax.scan(add, jnp.zeros((MAX_SIZE, MAX_SIZE), bool), steps)
    return walls


def _sample_random(key: jax.Array, spec: dict, random_spawn) -> Level:
    """One level of the random distribution `spec` (`_spec(Distribution)`, possibly traced)."""
    k = MAX_OBJECTS
    u = _uniforms(
        key, size=1, n=1, reward=k, term=k, respawn=k, walls=_CELLS, steps=1, life=1, cells=_CELLS
    )
    size = _uniform_int(u["size"][0], *spec["size"])
    n = _uniform_int(u["n"][0], *spec["objects"])
    mask = jnp.arange(MAX_OBJECTS) < n
    reward = 2.0 * u["reward"] - 1.0
    reward = reward.at[0].set(jnp.abs(reward[0]))  # the first object is positive: U(0, 1)
    p_term = _log_uniform(u["term"], *spec["p_terminate"])
    p_respawn = _log_uniform(u["respawn"], *spec["p_respawn"])
    walls = _sample_walls(u["walls"], size, n + 1, spec["wall_candidates"], spec["wall_box"])
    fields = dict(
        height=size.astype(jnp.int32),
        width=size.astype(jnp.int32),
        walls=walls,
        obj_mask=mask,
        obj_reward=jnp.where(mask, reward, 0.0),
        obj_p_terminate=jnp.where(mask, jnp.clip(p_term, 0.0, 1.0), 0.0),
        obj_p_respawn=jnp.where(mask, jnp.clip(p_respawn, 0.0, 1.0), 0.0),
        max_steps=_log_uniform_int(u["steps"][0], *spec["max_steps"]),
        lifetime=_log_uniform_int(u["life"][0], *spec["lifetime"]),
    )
    return _finish(u["cells"], fields, random_spawn)


# Shared programs: every config name (and "mixed") runs one, every random distribution the other.
_config_batch = jax.jit(jax.vmap(_sample_config, in_axes=(0, None, None)))
_random_batch = jax.jit(jax.vmap(_sample_random, in_axes=(0, None, None)))


def sample_level(key: jax.Array, distribution: str, random_spawn=False) -> Level:
    """One random level of `distribution` (static): a CONFIGS name (its level with random start
    and object cells, as the reference samples them), "mixed" (one of the five), or a
    DISTRIBUTIONS name. random_spawn: the levels' `random_spawn` (bool, may be traced)."""
    _check_name(distribution)
    if distribution in _WEIGHTS:
        return _sample_config(key, jnp.asarray(_WEIGHTS[distribution]), random_spawn)
    return _sample_random(key, _spec(DISTRIBUTIONS[distribution]), random_spawn)


def sample_levels(key: jax.Array, n: int, distribution: str, random_spawn=False) -> Level:
    """`n` random levels of `distribution` (every leaf with a leading axis n); see
    `sample_level`. Jittable and vmappable with `n` and `distribution` static; all config names
    share one compiled program and all random distributions another. Unknown names raise
    ValueError with close matches."""
    _check_name(distribution)
    _check_int("n", n, 1)
    keys = jax.random.split(key, n)
    spawn = jnp.asarray(random_spawn, jnp.bool_)
    if distribution in _WEIGHTS:
        return _config_batch(keys, jnp.asarray(_WEIGHTS[distribution]), spawn)
    spec = jax.tree.map(jnp.asarray, _spec(DISTRIBUTIONS[distribution]))
    return _random_batch(keys, spec, spawn)


def mutate_level(key: jax.Array, level: Level) -> Level:
    """`level` with one small random edit, chosen uniformly among those possible: add a wall,
    remove a wall, move a wall, resample one object's reward (U(-1, 1); U(0, 1) for the first),
    p_terminate (log-U[1e-2, 1]) or p_respawn (log-U[1e-3, 1e-1]), or move the start or an
    object's cell to a random free cell. Wall edits keep the free cells connected and enough
    for the agent and the objects; start and object cells never become walls. Jittable and
    vmappable (one level in, one out)."""
    c, k = _CELLS, MAX_OBJECTS
    u = _uniforms(key, add=c, gone=c, move=c, to=c, value=1, j=k, who=k + 1, kind=7)
    n = jnp.sum(level.obj_mask)
    inside = (_ROWS < level.height) & (_COLS < level.width)
    free = inside & ~level.walls
    spawn = _cells_mask(level.start[None], jnp.ones((1,), bool)) | _cells_mask(
        level.obj_pos, level.obj_mask
    )
    open_cells = free & ~spawn

    def pick(u, mask):
        """(any cell in mask, bool [MAX_SIZE, MAX_SIZE] marking one of them at random)."""
        cell = _random_cells(u, mask, 1)
        return jnp.any(mask), _cells_mask(cell, jnp.ones((1,), bool))

    can_add = inside & ~level.walls & ~spawn  # start and object cells never become walls
    any_add, add_at = pick(u["add"], can_add)
    any_wall, gone_at = pick(u["gone"], inside & level.walls)
    any_move, move_at = pick(u["move"], can_add)  # move: remove gone_at, add move_at
    candidates = jnp.stack(
        [level.walls | add_at, level.walls & ~gone_at, (level.walls & ~gone_at) | move_at]
    )
    after = inside & ~candidates  # free cells of each candidate [3, MAX_SIZE, MAX_SIZE]
    ok = jax.vmap(_connected)(after) & (jnp.sum(after, axis=(1, 2)) >= n + 1)
    # (Removing a wall boxed in by other walls would leave an unreachable free cell.)
    ok = ok & jnp.stack([any_add, any_wall, any_wall & any_move])

    j = _random_index(u["j"], level.obj_mask)
    value = u["value"][0]  # one uniform for whichever value is resampled
    new_reward = jnp.where(j == 0, value, 2.0 * value - 1.0)  # the first object stays positive
    new_term = jnp.clip(_log_uniform(value, 1e-2, 1.0), 0.0, 1.0)
    new_respawn = jnp.clip(_log_uniform(value, 1e-3, 1e-1), 0.0, 1.0)
    has_obj = n > 0
    who = _random_index(u["who"], jnp.concatenate([jnp.ones((1,), bool), level.obj_mask]))
    to_cell = _random_cells(u["to"], open_cells, 1)[0]

    feasible = jnp.concatenate([ok, jnp.stack([has_obj, has_obj, has_obj, jnp.any(open_cells)])])
    kind = _random_index(u["kind"], feasible)
    at_j = (jnp.arange(MAX_OBJECTS) == j) & level.obj_mask
    at_who = jnp.arange(MAX_OBJECTS) == who - 1
    move_spawn = kind == 6
    walls = jnp.where(kind < 3, candidates[jnp.minimum(kind, 2)], level.walls)
    return level.replace(
        walls=walls,
        obj_reward=jnp.where((kind == 3) & at_j, new_reward, level.obj_reward),
        obj_p_terminate=jnp.where((kind == 4) & at_j, new_term, level.obj_p_terminate),
        obj_p_respawn=jnp.where((kind == 5) & at_j, new_respawn, level.obj_p_respawn),
        start=jnp.where(move_spawn & (who == 0), to_cell, level.start),
        obj_pos=jnp.where((move_spawn & at_who)[:, None], to_cell, level.obj_pos),
    )


# ---------------------------------------------------------------------------------------------
# the optimum by value iteration (numpy)


def optimal_return(level: Level, gamma: float = 1.0, horizon: int | None = None) -> float:
    """Expected return of the optimal policy from the start of an episode of the fixed-spawn
    `level` (concrete, `random_spawn=False`): backward induction over `horizon` steps (default
    `max_steps`) on states (agent cell, present objects), discounting by `gamma`. Cost
    O(horizon * cells * 4^objects): small levels (the five LPG configs: under a second each)."""
    validate_level(level)
    v = {f.name: np.asarray(getattr(level, f.name)) for f in dataclasses.fields(Level)}
    if v["height"].shape != ():
        raise ValueError("optimal_return takes one level, not a batch")
    if bool(v["random_spawn"]):
        raise ValueError("optimal_return needs fixed spawn cells (random_spawn=False)")
    h, w = int(v["height"]), int(v["width"])
    free = (_ROWS < h) & (_COLS < w) & ~v["walls"].astype(bool)
    cells = np.argwhere(free)  # [C, 2]
    index = -np.ones((MAX_SIZE, MAX_SIZE), int)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    active = np.flatnonzero(v["obj_mask"])
    n, num_masks = len(active), 2 ** len(active)
    if n > 10:
        raise ValueError(f"optimal_return: {n} objects is too many (2^n present-object masks)")
    if n == 0:
        return 0.0
    obj_at = -np.ones(len(cells), int)
    for k, i in enumerate(active):
        obj_at[index[tuple(v["obj_pos"][i])]] = k
    reward = v["obj_reward"][active].astype(np.float64)
    p_term = v["obj_p_terminate"][active].astype(np.float64)
    p_respawn = v["obj_p_respawn"][active].astype(np.float64)

    nxt = np.empty((NUM_ACTIONS, len(cells)), int)  # next cell index per action
    for a, (dr, dc) in enumerate(_MOVES):
        r, c = cells[:, 0] + dr, cells[:, 1] + dc
        ok = (r >= 0) & (r < MAX_SIZE) & (c >= 0) & (c < MAX_SIZE)
        r, c = np.where(ok, r, cells[:, 0]), np.where(ok, c, cells[:, 1])
        ok &= free[r, c]
        nxt[a] = np.where(ok, index[r, c], np.arange(len(cells)))

    masks = np.arange(num_masks)
    bits = (masks[:, None] >> np.arange(n)) & 1  # [M, n]
    # P0[m, m']: present-object mask m at the start of a step -> m' after respawns (no collection).
    stay = bits[:, None, :] == 1
    then = bits[None, :, :] == 1
    per = np.where(stay, then, np.where(then, p_respawn, 1.0 - p_respawn))
    p0 = per.prod(-1)  # [M, M]
    clear = [masks & ~(1 << k) for k in range(n)]

    value = np.zeros((len(cells), num_masks))
    for _ in range(int(v["max_steps"]) if horizon is None else int(horizon)):
        # ev[k, c, m]: expected next value when the step ends on c from mask m, object k collected
        # (k = n: none); a collected object is absent after the step and cannot respawn in it.
        vk = np.stack([value[:, cl] for cl in clear] + [value])  # [n + 1, C, M]
        ev = np.einsum("kcn,mn->kcm", vk, p0)
        q = np.empty((NUM_ACTIONS, len(cells), num_masks))
        for a in range(NUM_ACTIONS):
            c2, k = nxt[a], obj_at[nxt[a]]
            hit = (k >= 0)[:, None] & (bits[:, np.maximum(k, 0)].T == 1)  # [C, M]
            kk = np.where(hit, k[:, None], n)
            r = np.where(hit, reward[np.maximum(k, 0)][:, None], 0.0)
            cont = np.where(hit, 1.0 - p_term[np.maximum(k, 0)][:, None], 1.0)
            q[a] = r + gamma * cont * ev[kk, c2[:, None], masks[None, :]]
        value = q.max(axis=0)
    return float(value[index[tuple(v["start"])], num_masks - 1])


# ---------------------------------------------------------------------------------------------
# envs.make


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
        close = difflib.get_close_matches(str(env_id), IDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown gridworld id {env_id!r}.{hint} Known: {', '.join(IDS)}")
    name = env_id.split("/", 1)[1]
    check_override_keys(env_id, overrides, list(OVERRIDES))
    size, objects = capacity(name)
    seed = overrides.get("level_seed", 0)
    _check_int("level_seed", seed, 0)
    level = default_level(name, int(seed))
    for key in ("max_steps", "lifetime"):
        if key in overrides:
            _check_int(key, overrides[key], 1)
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
