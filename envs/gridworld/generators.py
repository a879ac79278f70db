"""Grid-world level generators: the five LPG configs, the random-level distributions, sampling
(`sample_level`, `sample_levels`) and `mutate_level`; all jittable and vmappable."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envs.gridworld.levels import (
    CELLS,
    COLS,
    MAX_OBJECTS,
    MAX_SIZE,
    ROWS,
    Level,
    cells_mask,
    check_int,
    close_hint,
    random_cells,
    random_index,
    uniforms,
)


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
        raise ValueError(
            f"unknown level distribution {name!r}{close_hint(name, NAMES)} Known: {NAMES}"
        )


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
    inside = (ROWS < fields["height"]) & (COLS < fields["width"])
    cells = random_cells(u, inside & ~fields["walls"], MAX_OBJECTS + 1)
    obj_pos = jnp.where(fields["obj_mask"][:, None], cells[1:], 0)
    spawn = jnp.asarray(random_spawn, jnp.bool_)
    return Level(**fields, start=cells[0], obj_pos=obj_pos, random_spawn=spawn)


def _sample_config(key: jax.Array, weights: jax.Array, random_spawn) -> Level:
    """One of the five configs drawn with `weights` [5], with random start and object cells."""
    u = uniforms(key, pick=1, cells=CELLS)
    cdf = jnp.cumsum(weights) / jnp.sum(weights)
    pick = jnp.minimum(jnp.sum(cdf <= u["pick"][0]), len(CONFIGS) - 1)
    fields = {k: jnp.asarray(v)[pick] for k, v in _TEMPLATES.items()}
    return _finish(u["cells"], fields, random_spawn)


def _sample_walls(u, size, n_needed, count, box) -> jax.Array:
    """bool [MAX_SIZE, MAX_SIZE]: `count` distinct random cells of the `box` x `box` corner, each
    kept in turn if inside the grid and the free cells stay connected and >= n_needed."""
    inside = (ROWS < size) & (COLS < size)
    candidates = random_cells(u, (ROWS < box) & (COLS < box), _MAX_WALL_CANDIDATES)

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
    u = uniforms(
        key, size=1, n=1, reward=k, term=k, respawn=k, walls=CELLS, steps=1, life=1, cells=CELLS
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
    check_int("n", n, 1)
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
    c, k = CELLS, MAX_OBJECTS
    u = uniforms(key, add=c, gone=c, move=c, to=c, value=1, j=k, who=k + 1, kind=7)
    n = jnp.sum(level.obj_mask)
    inside = (ROWS < level.height) & (COLS < level.width)
    free = inside & ~level.walls
    spawn = cells_mask(level.start[None], jnp.ones((1,), bool)) | cells_mask(
        level.obj_pos, level.obj_mask
    )
    open_cells = free & ~spawn

    def pick(u, mask):
        """(any cell in mask, bool [MAX_SIZE, MAX_SIZE] marking one of them at random)."""
        cell = random_cells(u, mask, 1)
        return jnp.any(mask), cells_mask(cell, jnp.ones((1,), bool))

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

    j = random_index(u["j"], level.obj_mask)
    value = u["value"][0]  # one uniform for whichever value is resampled
    new_reward = jnp.where(j == 0, value, 2.0 * value - 1.0)  # the first object stays positive
    new_term = jnp.clip(_log_uniform(value, 1e-2, 1.0), 0.0, 1.0)
    new_respawn = jnp.clip(_log_uniform(value, 1e-3, 1e-1), 0.0, 1.0)
    has_obj = n > 0
    who = random_index(u["who"], jnp.concatenate([jnp.ones((1,), bool), level.obj_mask]))
    to_cell = random_cells(u["to"], open_cells, 1)[0]

    feasible = jnp.concatenate([ok, jnp.stack([has_obj, has_obj, has_obj, jnp.any(open_cells)])])
    kind = random_index(u["kind"], feasible)
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
