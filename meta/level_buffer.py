"""A prioritised level buffer (PLR / robust PLR) as pure functions over a pytree state.

GROOVE (Jackson et al., NeurIPS 2023, arXiv 2310.02782) picks the grid-world levels its learned
update rule trains on with Prioritized Level Replay (Jiang et al. 2021, arXiv 2010.03934), scoring
levels by algorithmic regret; new levels enter by the robust-PLR rule (Jiang et al. 2021, arXiv
2110.02439). A level is any pytree of fixed-shape arrays (an env-params dataclass).

    from meta import level_buffer as lb
    cfg = lb.BufferConfig(capacity=4000, replay_prob=0.5, prioritization="rank")
    state = lb.init(cfg, example_level, example_extra={"ar_cache": 0.0, "cached": False})
    if lb.decide_replay(key, cfg, state):               # (inside jit: lax.cond on it)
        state, idx, levels = lb.sample(key, cfg, state, n)   # [n], levels [n, ...]
        state = lb.update(cfg, state, idx, new_scores)       # rescore what was replayed
    else:
        state, slots = lb.insert(cfg, state, new_levels, scores, extras)  # slots [B], -1 = rejected

Every function is pure and jittable (`cfg` is a hashable frozen dataclass: close over it or pass
it as a static argument), runs inside `lax.scan`, and vmaps over independent buffers.

Replay distribution (`probabilities`), over the filled slots only (empty slots get 0):

    P = (1 - rho) P_S + rho P_C,     rho = staleness_coef
    P_S(i) = h(S_i)^(1/T) / sum_j h(S_j)^(1/T),     T = temperature
    rank:          h(S_i) = 1 / rank(S_i), rank 1 = highest score; tied scores share the best
                   rank of their group ("1, 2, 2, 4"), so tied levels are equally likely whatever
                   their slots (jaxued and PLR's code break ties by slot order instead).
    proportional:  h(S_i) = max(S_i, 0) (PLR assumes S >= 0; algorithmic regret can be negative,
                   and later PLR code clips at 0 the same way); if no filled level has a positive
                   score, P_S is uniform over the filled slots.
    P_C(i) = (c - C_i) / sum_j (c - C_j),   c = `step`, C_i = step when level i was last played;
             uniform over the filled slots when every level was just played (sum = 0).

Both P_S forms are computed as a masked softmax of log h / T, so a small temperature or a large
score cannot overflow.

`step` counts levels played: `sample(n)` and `insert` of a batch of B levels (new levels are
played to be scored) advance it by n and B, and stamp the played levels with the new value.

Non-finite scores (NaN, +-inf) count as the worst score: `insert` never admits such a level (not
even into an empty slot), and `update` stores it as -inf, so it ranks last, gets no proportional
weight (only staleness mass) and is the first to be replaced.

Minimum fill (`min_fill`, default 1.0 as jaxued's `minimum_fill_ratio` and PLR's code's
`level_replay_rho`): `decide_replay` says "new levels" until the buffer holds at least
ceil(min_fill * capacity) levels.

Defaults and their sources: capacity 4000 and replay_prob 0.5 are GROOVE's (Jackson et al. 2023,
code EmptyJackson/groove: buffer 4000, p_replay 0.5); rank prioritisation with temperature 0.1
and staleness_coef 0.1 are PLR's Procgen settings (Jiang et al. 2021, arXiv 2010.03934: beta 0.1,
rho 0.1). GROOVE's public code has no staleness term and a different sampler (a softmax of the
raw scores at temperature 1.0, with "rank" picking the top levels deterministically), so its
numbers do not transfer to this buffer's T and rho. jaxued's `LevelSampler` defaults differ:
replay_prob 0.95, staleness 0.5, rank temperature 1.0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purejaxrl import config as C

PRIORITIZATIONS = ("rank", "proportional")


@dataclasses.dataclass(frozen=True)
class BufferConfig:
    """Settings of a level buffer (hashable: usable as a static jit argument).

    capacity: number of slots C (default 4000: GROOVE's), a positive integer.
    replay_prob: probability that `decide_replay` says "replay" once the buffer is filled enough,
        in [0, 1] (default 0.5: GROOVE's; jaxued's default is 0.95).
    prioritization: "rank" (h = 1 / rank; default, as PLR's Procgen settings) or "proportional"
        (h = max(score, 0)).
    temperature: T > 0; score weights are h^(1/T) (default 0.1: PLR's beta).
    staleness_coef: rho in [0, 1], the weight of the staleness distribution (default 0.1: PLR's
        rho).
    min_fill: fraction of `capacity` that must be filled before replay, in (0, 1] (default 1.0:
        jaxued's and PLR's code's).
    """

    capacity: int = 4000  # GROOVE (EmptyJackson/groove: buffer_size 4000)
    replay_prob: float = 0.5  # GROOVE (p_replay 0.5)
    prioritization: str = "rank"  # PLR's Procgen settings (Jiang et al. 2021)
    temperature: float = 0.1  # PLR's Procgen settings: beta = 0.1
    staleness_coef: float = 0.1  # PLR's Procgen settings: rho = 0.1
    min_fill: float = 1.0  # jaxued minimum_fill_ratio, PLR code level_replay_rho

    def __post_init__(self):
        C.check_types(self)
        C.check_positive_int(self, "capacity")
        object.__setattr__(self, "capacity", int(self.capacity))
        C.check_choice(self, "prioritization", PRIORITIZATIONS)
        for name in ("replay_prob", "temperature", "staleness_coef", "min_fill"):
            object.__setattr__(self, name, float(getattr(self, name)))
        C.check_range(self, "replay_prob", 0.0, 1.0)
        C.check_range(self, "temperature", 0.0, math.inf, low_open=True)
        C.check_range(self, "staleness_coef", 0.0, 1.0)
        C.check_range(self, "min_fill", 0.0, 1.0, low_open=True)

    @property
    def min_levels(self) -> int:
        """Levels the buffer must hold before `decide_replay` may say "replay" (>= 1)."""
        return max(1, math.ceil(self.min_fill * self.capacity - 1e-9))


@struct.dataclass
class BufferState:
    """The buffer's contents (a pytree; C = capacity).

    levels: the level pytree with a leading [C] axis (slots >= size hold the example level).
    scores: [C] float32, the latest score of each slot (-inf: empty, or a non-finite score).
    timestamps: [C] int32, `step` when the slot's level was last played (sampled or inserted).
    size: [] int32, filled slots; they are always slots 0 .. size-1.
    step: [] int32, levels played so far (the staleness clock c).
    extra: a per-level pytree with a leading [C] axis (e.g. GROOVE's cached antagonist return and
        a "cached" flag); it is written with its level and replaced only when the level is.
    """

    levels: Any
    scores: jax.Array
    timestamps: jax.Array
    size: jax.Array
    step: jax.Array
    extra: Any


def init(cfg: BufferConfig, example_level: Any, example_extra: Any = None) -> BufferState:
    """An empty buffer whose slots are shaped like `example_level` / `example_extra` (one level,
    no batch axis; `example_extra=None`: no per-level extra)."""

    def stack(x):
        x = jnp.asarray(x)
        x = jnp.asarray(x, dtype=x.dtype)  # drops a weak type (Python scalars), for scan carries
        return jnp.broadcast_to(x, (cfg.capacity, *x.shape)).copy()

    return BufferState(
        levels=jax.tree.map(stack, example_level),
        scores=jnp.full((cfg.capacity,), -jnp.inf, jnp.float32),
        timestamps=jnp.zeros((cfg.capacity,), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        extra=jax.tree.map(stack, example_extra),
    )


def filled(state: BufferState) -> jax.Array:
    """[C] bool: which slots hold a level."""
    return jnp.arange(state.scores.shape[0]) < state.size


def gather(state: BufferState, indices: jax.Array) -> tuple[Any, Any]:
    """(levels [n, ...], extra [n, ...]) of the slots `indices` [n]."""
    take = lambda x: x[indices]
    return jax.tree.map(take, state.levels), jax.tree.map(take, state.extra)


def _clean(scores: jax.Array) -> jax.Array:
    """Scores as float32 with every non-finite value replaced by -inf (the worst score)."""
    scores = jnp.asarray(scores, jnp.float32)
    return jnp.where(jnp.isfinite(scores), scores, -jnp.inf)


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax over `mask` (zeros elsewhere); all zeros when the mask or every logit is empty."""
    logits = jnp.where(mask, logits, -jnp.inf)
    top = jnp.max(logits)
    safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.where(mask, jnp.exp(logits - safe_top), 0.0)
    total = w.sum()
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def _uniform(mask: jax.Array) -> jax.Array:
    n = mask.sum()
    return jnp.where(mask, 1.0 / jnp.maximum(n, 1), 0.0)


def score_ranks(state: BufferState) -> jax.Array:
    """[C] int32 rank of each filled slot's score (1 = highest; ties share the best rank of their
    group; -inf scores rank after every finite one); empty slots get capacity + 1."""
    mask = filled(state)
    neg = jnp.where(mask, -_clean(state.scores), jnp.inf)  # ascending neg = descending score
    ranks = jnp.searchsorted(jnp.sort(neg), neg, side="left") + 1  # 1 + #(strictly higher)
    return jnp.where(mask, ranks, state.scores.shape[0] + 1).astype(jnp.int32)


def score_probabilities(cfg: BufferConfig, state: BufferState) -> jax.Array:
    """[C] P_S, the score-prioritised part of the replay distribution (0 on empty slots)."""
    mask = filled(state)
    if cfg.prioritization == "rank":
        logits = -jnp.log(score_ranks(state).astype(jnp.float32)) / cfg.temperature
        return _masked_softmax(logits, mask)
    scores = _clean(
        state.scores
    )  # (stored scores are clean already; a hand-built state may not be)
    positive = mask & (scores > 0)
    logits = jnp.log(jnp.where(positive, scores, 1.0)) / cfg.temperature
    p = _masked_softmax(logits, positive)
    return jnp.where(positive.any(), p, _uniform(mask))


def staleness_probabilities(state: BufferState) -> jax.Array:
    """[C] P_C(i) = (c - C_i) / sum_j (c - C_j) over the filled slots; uniform when the sum is 0."""
    mask = filled(state)
    stale = jnp.where(mask, state.step - state.timestamps, 0).astype(jnp.float32)
    total = stale.sum()
    return jnp.where(total > 0, stale / jnp.where(total > 0, total, 1.0), _uniform(mask))


def probabilities(cfg: BufferConfig, state: BufferState) -> jax.Array:
    """[C] replay distribution P = (1 - rho) P_S + rho P_C; sums to 1 over the filled slots
    (all zeros for an empty buffer)."""
    rho = cfg.staleness_coef
    p = score_probabilities(cfg, state)
    if rho > 0:
        p = (1.0 - rho) * p + rho * staleness_probabilities(state)
    return p


def sample(
    key: jax.Array, cfg: BufferConfig, state: BufferState, n: int, played: jax.Array | None = None
) -> tuple[BufferState, jax.Array, Any]:
    """Draws n slots i.i.d. (with replacement) from `probabilities`; returns (state, indices [n]
    int32, levels [n, ...]). `step` advances by the number of levels played and the played slots
    are stamped with it: all n, or where `played [n]` (bool) is True (a draw for agents of which
    only some need a level). Call it on a non-empty buffer (`decide_replay` ensures that); an
    empty one yields slot 0."""
    p = probabilities(cfg, state)
    idx = jax.random.choice(key, cfg.capacity, shape=(n,), replace=True, p=p).astype(jnp.int32)
    if played is None:
        step = state.step + n
        stamp = idx
    else:
        step = state.step + jnp.sum(played).astype(jnp.int32)
        stamp = jnp.where(played, idx, cfg.capacity)  # out of range: dropped
    state = state.replace(step=step, timestamps=state.timestamps.at[stamp].set(step, mode="drop"))
    return state, idx, jax.tree.map(lambda x: x[idx], state.levels)


def _check_batch(name: str, buffer_tree: Any, batch_tree: Any, batch: int) -> None:
    """Trace-time check that a batch pytree matches the buffer's per-slot structure and shapes."""
    want, got = jax.tree.structure(buffer_tree), jax.tree.structure(batch_tree)
    if want != got:
        raise ValueError(f"{name}: pytree structure {got} does not match the buffer's {want}")
    for buf, new in zip(jax.tree.leaves(buffer_tree), jax.tree.leaves(batch_tree), strict=True):
        if jnp.shape(new) != (batch, *buf.shape[1:]):
            raise ValueError(
                f"{name}: a leaf has shape {jnp.shape(new)}, expected {(batch, *buf.shape[1:])}"
            )


def insert(
    cfg: BufferConfig,
    state: BufferState,
    levels: Any,
    scores: jax.Array,
    extras: Any = None,
    offered: jax.Array | None = None,
) -> tuple[BufferState, jax.Array]:
    """Offers a batch of B new levels (`levels` [B, ...], `scores` [B], `extras` [B, ...]).

    Same result as offering them one by one in batch order: a level with a finite score goes into
    an empty slot while there is one; once the buffer is full it replaces the lowest-scoring
    level, but only if its score is strictly higher (robust PLR). So the buffer ends holding the
    best `capacity` of (its levels + the new finite-scored ones). Ties for the lowest score are
    broken by keeping levels stored before this call over new ones (among those, the lower slot
    leaves first) and an earlier new level over a later one. Non-finite scores never enter.
    Cost: two sorts of C + B keys and one scatter, whatever B (no per-level loop).

    Returns (state, slots [B] int32): the slot each level now occupies, or -1 if it is not in the
    buffer (rejected, or admitted and then displaced by a better level of the same batch). Empty
    slots are used in index order, then the displaced levels' slots from the lowest score up.
    `step` advances by B (every offered level was played) and admitted levels are stamped with it.
    `offered [B]` (bool, optional): only those rows are offered (the others are never admitted
    and do not advance `step`).
    """
    C = cfg.capacity
    scores = _clean(scores)
    (B,) = scores.shape
    played = B
    if offered is not None:
        scores = jnp.where(offered, scores, -jnp.inf)
        played = jnp.sum(offered).astype(jnp.int32)
    _check_batch("insert levels", state.levels, levels, B)
    _check_batch("insert extras", state.extra, extras, B)
    mask = filled(state)

    # Who stays: the best C of (stored levels, finite new levels); ties: stored first (among
    # stored ties the lower slot leaves first, as jnp.argmin would pick it), then batch order.
    cand_scores = jnp.concatenate([_clean(state.scores), scores])
    cand_valid = jnp.concatenate([mask, jnp.isfinite(scores)])
    tiebreak = jnp.concatenate([C - 1 - jnp.arange(C), C + jnp.arange(B)])
    order = jnp.lexsort((tiebreak, -cand_scores, ~cand_valid))
    position = jnp.zeros(C + B, jnp.int32).at[order].set(jnp.arange(C + B, dtype=jnp.int32))
    kept = cand_valid & (position < C)
    kept_new = kept[C:]
    evicted = mask & ~kept[:C]

    # Where they go: empty slots in index order, then evicted slots from the lowest score up.
    category = jnp.where(~mask, 0, jnp.where(evicted, 1, 2))
    free = jnp.lexsort((jnp.arange(C), jnp.where(evicted, state.scores, 0.0), category))
    rank_new = jnp.cumsum(kept_new) - 1
    slots = jnp.where(kept_new, free[jnp.clip(rank_new, 0, C - 1)], -1).astype(jnp.int32)

    target = jnp.where(kept_new, slots, C)  # out of range: dropped
    put = lambda buf, new: buf.at[target].set(jnp.asarray(new, buf.dtype), mode="drop")
    step = state.step + played
    state = state.replace(
        levels=jax.tree.map(put, state.levels, levels),
        scores=state.scores.at[target].set(scores, mode="drop"),
        timestamps=state.timestamps.at[target].set(step, mode="drop"),
        size=jnp.minimum(state.size + jnp.isfinite(scores).sum(), C).astype(jnp.int32),
        step=step,
        extra=jax.tree.map(put, state.extra, extras),
    )
    return state, slots


def update(
    cfg: BufferConfig,
    state: BufferState,
    indices: jax.Array,
    scores: jax.Array,
    extras: Any = None,
) -> BufferState:
    """Rescores the slots `indices` [n] with `scores` [n] (and, if given, sets their `extras`
    [n, ...]; otherwise the stored extras stay). Indices outside the filled slots (e.g. -1 from
    `insert`) are ignored; for a repeated index the last entry wins. A non-finite score is stored
    as -inf. Timestamps and `step` are unchanged (`sample` stamped the levels when they were drawn)."""
    C = cfg.capacity
    indices = jnp.asarray(indices, jnp.int32)
    scores = _clean(scores)
    (n,) = indices.shape
    if scores.shape != (n,):
        raise ValueError(f"update: scores have shape {scores.shape}, expected {(n,)}")
    if n == 0:
        return state
    valid = (indices >= 0) & (indices < state.size)
    # Keep only the last occurrence of each index: sort by (index, position), look one ahead.
    order = jnp.lexsort((jnp.arange(n), indices))
    sorted_idx = indices[order]
    last_sorted = jnp.append(sorted_idx[1:] != sorted_idx[:-1], True)
    is_last = jnp.zeros(n, bool).at[order].set(last_sorted)
    target = jnp.where(valid & is_last, indices, C)
    state = state.replace(scores=state.scores.at[target].set(scores, mode="drop"))
    if extras is not None:
        _check_batch("update extras", state.extra, extras, n)
        put = lambda buf, new: buf.at[target].set(jnp.asarray(new, buf.dtype), mode="drop")
        state = state.replace(extra=jax.tree.map(put, state.extra, extras))
    return state


def decide_replay(key: jax.Array, cfg: BufferConfig, state: BufferState) -> jax.Array:
    """[] bool: replay (True) with probability `replay_prob` once the buffer holds at least
    `cfg.min_levels` levels; new levels (False) otherwise."""
    ready = state.size >= cfg.min_levels
    return ready & (jax.random.uniform(key) < cfg.replay_prob)
