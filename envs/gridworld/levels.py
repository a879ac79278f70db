"""A grid-world level (the env-params pytree), its cells, and building and checking levels.

A `Level` holds fixed-shape arrays only (a grid of at most `MAX_SIZE` x `MAX_SIZE` cells and at
most `MAX_OBJECTS` objects), so a batch of levels is one pytree with a leading axis. Cells outside
the level's `height` x `width` are walls.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

MAX_SIZE = 13  # level arrays are [MAX_SIZE, MAX_SIZE]; cells outside height x width are walls
MAX_OBJECTS = 8  # object arrays are [MAX_OBJECTS]; `obj_mask` says which exist
NUM_ACTIONS = 5
ACTION_NAMES = ("up", "down", "left", "right", "stay")
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], np.int32)  # (row, col) per action


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


ROWS, COLS = np.meshgrid(np.arange(MAX_SIZE), np.arange(MAX_SIZE), indexing="ij")


def free_cells(level: Level) -> jax.Array:
    """bool [..., MAX_SIZE, MAX_SIZE]: cells inside the grid that are not walls."""
    inside = (ROWS < level.height[..., None, None]) & (COLS < level.width[..., None, None])
    return inside & ~level.walls


def cells_mask(pos: jax.Array, on: jax.Array) -> jax.Array:
    """bool [MAX_SIZE, MAX_SIZE]: the cells of `pos` [k, 2] whose `on` [k] is set."""
    hit = (ROWS[..., None] == pos[:, 0]) & (COLS[..., None] == pos[:, 1]) & on
    return jnp.any(hit, axis=-1)


CELLS = MAX_SIZE * MAX_SIZE


def uniforms(key: jax.Array, **sizes: int) -> dict:
    """Named segments of one uniform [0, 1) draw: `uniforms(key, a=3, b=1)` -> {"a": [3],
    "b": [1]}. One draw per call keeps the random-bit kernels (and the compile) small."""
    u = jax.random.uniform(key, (sum(sizes.values()),))
    out, i = {}, 0
    for name, size in sizes.items():
        out[name], i = u[i : i + size], i + size
    return out


def random_cells(u: jax.Array, mask: jax.Array, k: int) -> jax.Array:
    """int32 [k, 2]: k distinct cells of `mask` [MAX_SIZE, MAX_SIZE] in uniformly random order
    (a uniform sample without replacement while mask has >= k cells; then masked-out cells),
    from uniforms `u` [MAX_SIZE^2]."""
    score = jnp.where(mask.ravel(), u, u - 2.0)
    _, idx = jax.lax.top_k(score, k)
    return jnp.stack([idx // MAX_SIZE, idx % MAX_SIZE], axis=-1).astype(jnp.int32)


def random_index(u: jax.Array, mask: jax.Array) -> jax.Array:
    """int32 []: a uniformly random index i with mask[i] (any index when mask is empty), from
    uniforms `u` shaped like `mask`."""
    score = jnp.where(mask, u, -1.0)
    return jnp.argmax(score).astype(jnp.int32)


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


def check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    """ValueError naming `name` unless `value` is an integer in [lo, hi] (hi None: no bound)."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def close_hint(name: str, known) -> str:
    """ ". Did you mean: <close names>?" for an unknown `name`, or "." when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.5)
    return f". Did you mean: {', '.join(close)}?" if close else "."


def needed_capacity(level: Level) -> tuple[int, int]:
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
    free = (ROWS < h) & (COLS < w) & ~v["walls"].astype(bool)
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
