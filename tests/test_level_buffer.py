"""meta.level_buffer: PLR replay probabilities, robust-PLR insertion, rescoring, the per-level
extra cache, NaN handling, jit/vmap, and config validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from scipy import stats

from meta import level_buffer as lb


@struct.dataclass
class Level:
    """A stand-in for an env-params level: mixed dtypes and shapes."""

    grid: jax.Array  # [3, 3] int32
    reward: jax.Array  # [2] float32
    max_steps: jax.Array  # [] int32


def make_levels(ids) -> Level:
    """A batch of levels whose every leaf encodes its id (so contents can be checked)."""
    ids = jnp.asarray(ids, jnp.int32)
    return Level(
        grid=ids[:, None, None] * jnp.ones((1, 3, 3), jnp.int32),
        reward=ids[:, None].astype(jnp.float32) * jnp.ones((1, 2)),
        max_steps=ids,
    )


# Jitted once per (config, shapes), for tests that call them repeatedly with one config; tests
# that go through many configs call the eager functions (whose small ops are cached across configs).
insert = jax.jit(lb.insert, static_argnums=0)
update = jax.jit(lb.update, static_argnums=0)
sample = jax.jit(lb.sample, static_argnums=(1, 3))
probabilities = jax.jit(lb.probabilities, static_argnums=0)

EXAMPLE = Level(jnp.zeros((3, 3), jnp.int32), jnp.zeros(2), jnp.int32(0))
EXTRA = {"ar_cache": jnp.float32(0.0), "cached": jnp.bool_(False)}


def make_extras(ids, cached=False):
    ids = jnp.asarray(ids)
    return {"ar_cache": ids.astype(jnp.float32), "cached": jnp.full(ids.shape, cached)}


def state_with(cfg, scores, timestamps=None, step=0):
    """A buffer whose first len(scores) slots are filled with the given scores/timestamps."""
    n = len(scores)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    ts = np.zeros(cfg.capacity, np.int32)
    if timestamps is not None:
        ts[:n] = timestamps
    sc = np.full(cfg.capacity, -np.inf, np.float32)
    sc[:n] = scores
    return state.replace(
        scores=jnp.asarray(sc), timestamps=jnp.asarray(ts), size=jnp.int32(n), step=jnp.int32(step)
    )


# --------------------------------------------------------------------------- numpy reference


def reference_probabilities(scores, timestamps, size, step, prioritization, temperature, rho):
    """PLR's P = (1 - rho) P_S + rho P_C written directly from the formulas, in float64."""
    cap = len(scores)
    s = np.asarray(scores, np.float64)[:size]
    s = np.where(np.isfinite(s), s, -np.inf)
    if prioritization == "rank":
        rank = np.array([1 + np.sum(s > x) for x in s], np.float64)  # ties share the best rank
        h = (1.0 / rank) ** (1.0 / temperature)
    else:
        h = np.clip(np.where(np.isfinite(s), s, 0.0), 0.0, None) ** (1.0 / temperature)
        if h.sum() == 0:
            h = np.ones(size)
    p_s = h / h.sum()
    stale = step - np.asarray(timestamps, np.float64)[:size]
    p_c = stale / stale.sum() if stale.sum() > 0 else np.full(size, 1.0 / size)
    out = np.zeros(cap)
    out[:size] = (1 - rho) * p_s + rho * p_c
    return out


def reference_insert(cap, contents, offers):
    """One-by-one robust-PLR insertion. contents: [id, score, slot] of the stored levels; offers:
    (id, score) pairs. A finite-scored offer fills a free slot, else replaces the lowest stored
    level if its score is strictly higher. Ties for the lowest evict new levels of this batch
    before stored ones, a later new level before an earlier one, a lower slot before a higher
    one. Returns {id: score}."""
    # keep preference: stored levels cap + slot (higher slot kept first), the j-th offer -j
    held = [[lid, score, cap + slot] for lid, score, slot in contents]
    for j, (lid, score) in enumerate(offers):
        if not np.isfinite(score):
            continue
        if len(held) < cap:
            held.append([lid, score, -j])
            continue
        low = min(range(len(held)), key=lambda k: (held[k][1], held[k][2]))
        if score > held[low][1]:
            held[low] = [lid, score, -j]
    return {lid: score for lid, score, _ in held}


# --------------------------------------------------------------------------- probabilities


def test_rank_probabilities_hand_cases():
    cfg = lb.BufferConfig(capacity=4, prioritization="rank", temperature=1.0, staleness_coef=0.0)
    # ranks [1, 3, 2] -> h = [1, 1/3, 1/2], sum 11/6; the empty slot gets 0
    p = lb.probabilities(cfg, state_with(cfg, [3.0, 1.0, 2.0]))
    np.testing.assert_allclose(p, [6 / 11, 2 / 11, 3 / 11, 0.0], rtol=1e-6)
    # temperature 0.5 squares h: [1, 1/9, 1/4], sum 49/36
    cfg_t = lb.BufferConfig(capacity=4, temperature=0.5, staleness_coef=0.0)
    p = lb.probabilities(cfg_t, state_with(cfg_t, [3.0, 1.0, 2.0]))
    np.testing.assert_allclose(p, [36 / 49, 4 / 49, 9 / 49, 0.0], rtol=1e-6)
    # ties share the best rank: scores [2, 2, 1] -> ranks [1, 1, 3] -> [1, 1, 1/3] / (7/3)
    p = lb.probabilities(cfg, state_with(cfg, [2.0, 2.0, 1.0]))
    np.testing.assert_allclose(p, [3 / 7, 3 / 7, 1 / 7, 0.0], rtol=1e-6)
    # all tied: uniform over the filled slots, whatever their positions
    p = lb.probabilities(cfg, state_with(cfg, [0.5, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(p, [0.25] * 4, rtol=1e-6)


def test_staleness_mixture_hand_case():
    # c = 10, C_i = [4, 10, 7] -> staleness [6, 0, 3] / 9; rank part [6, 2, 3] / 11; rho = 0.5
    cfg = lb.BufferConfig(capacity=4, temperature=1.0, staleness_coef=0.5)
    state = state_with(cfg, [3.0, 1.0, 2.0], timestamps=[4, 10, 7], step=10)
    want = 0.5 * np.array([6 / 11, 2 / 11, 3 / 11, 0]) + 0.5 * np.array([6 / 9, 0, 3 / 9, 0])
    np.testing.assert_allclose(lb.probabilities(cfg, state), want, rtol=1e-6)
    # every level just played: the staleness part is uniform over the filled slots
    state = state_with(cfg, [3.0, 1.0, 2.0], timestamps=[10, 10, 10], step=10)
    want = 0.5 * np.array([6 / 11, 2 / 11, 3 / 11, 0]) + 0.5 * np.array([1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(lb.probabilities(cfg, state), want, rtol=1e-6)
    # staleness only
    cfg1 = lb.BufferConfig(capacity=4, staleness_coef=1.0)
    state = state_with(cfg1, [3.0, 1.0, 2.0], timestamps=[4, 10, 7], step=10)
    np.testing.assert_allclose(lb.probabilities(cfg1, state), [6 / 9, 0, 3 / 9, 0], rtol=1e-6)


def test_proportional_probabilities_hand_cases():
    cfg = lb.BufferConfig(
        capacity=5, prioritization="proportional", temperature=1.0, staleness_coef=0.0
    )
    # h = max(S, 0): [3, 1, 0, 0] / 4
    p = lb.probabilities(cfg, state_with(cfg, [3.0, 1.0, -2.0, 0.0]))
    np.testing.assert_allclose(p, [0.75, 0.25, 0, 0, 0], atol=1e-7)
    # temperature 0.5: [9, 1] / 10; ties get equal mass
    cfg_t = lb.BufferConfig(
        capacity=5, prioritization="proportional", temperature=0.5, staleness_coef=0.0
    )
    p = lb.probabilities(cfg_t, state_with(cfg_t, [3.0, 1.0, 3.0]))
    np.testing.assert_allclose(p, [9 / 19, 1 / 19, 9 / 19, 0, 0], rtol=1e-6)
    # no positive score: uniform over the filled slots
    p = lb.probabilities(cfg, state_with(cfg, [-1.0, 0.0, -3.0]))
    np.testing.assert_allclose(p, [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-6)
    # a tiny temperature with large scores neither overflows nor NaNs
    cfg_small = lb.BufferConfig(
        capacity=5, prioritization="proportional", temperature=1e-3, staleness_coef=0.0
    )
    p = lb.probabilities(cfg_small, state_with(cfg_small, [1e30, 2e30, 1.0]))
    assert np.all(np.isfinite(p)) and p[1] == pytest.approx(1.0)


@pytest.mark.parametrize("prioritization", ["rank", "proportional"])
def test_probabilities_match_numpy_reference(prioritization):
    rng = np.random.default_rng(0)
    cap = 16
    for temperature in (0.3, 1.0, 2.5):
        for rho in (0.0, 0.3, 1.0):
            cfg = lb.BufferConfig(
                capacity=cap,
                prioritization=prioritization,
                temperature=temperature,
                staleness_coef=rho,
            )
            for size in (1, 7, cap):
                scores = np.round(rng.normal(size=size), 1)  # rounding makes ties
                if size > 3:
                    scores[2] = -np.inf  # a stored non-finite score (the worst)
                step = 50
                ts = rng.integers(0, step + 1, size=size)
                p = lb.probabilities(cfg, state_with(cfg, scores, ts, step))
                full_scores = np.full(cap, -np.inf)
                full_scores[:size] = scores
                full_ts = np.zeros(cap)
                full_ts[:size] = ts
                want = reference_probabilities(
                    full_scores, full_ts, size, step, prioritization, temperature, rho
                )
                np.testing.assert_allclose(p, want, rtol=2e-5, atol=1e-7)
                assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)


def test_empty_buffer_has_zero_probabilities():
    cfg = lb.BufferConfig(capacity=4)
    p = probabilities(cfg, lb.init(cfg, EXAMPLE))
    np.testing.assert_array_equal(p, np.zeros(4))


# --------------------------------------------------------------------------- sampling


def test_sample_frequencies_match_probabilities():
    cfg = lb.BufferConfig(capacity=10, temperature=0.7, staleness_coef=0.3)
    state = state_with(cfg, [0.1, 2.0, 2.0, -1.0, 0.7, 3.0, 0.0, 1.5], [0, 3, 5, 9, 2, 1, 8, 4], 10)
    p = np.asarray(probabilities(cfg, state), np.float64)
    n = 40_000
    new_state, idx, levels = sample(jax.random.key(1), cfg, state, n)
    counts = np.bincount(np.asarray(idx), minlength=cfg.capacity)
    assert counts[8:].sum() == 0  # empty slots are never drawn
    expected = p[:8] * n
    _, pvalue = stats.chisquare(counts[:8], expected)
    assert pvalue > 1e-3, (counts, expected)
    # the drawn slots are stamped with the advanced clock; the others keep their timestamps
    assert int(new_state.step) == 10 + n
    drawn = np.zeros(cfg.capacity, bool)
    drawn[np.asarray(idx)] = True
    ts = np.asarray(new_state.timestamps)
    assert np.all(ts[drawn] == 10 + n)
    np.testing.assert_array_equal(ts[~drawn], np.asarray(state.timestamps)[~drawn])
    # the returned levels are the stored levels of those slots
    np.testing.assert_array_equal(levels.max_steps, np.asarray(state.levels.max_steps)[idx])


def test_sampled_levels_become_less_stale():
    cfg = lb.BufferConfig(capacity=3, staleness_coef=1.0)
    state = state_with(cfg, [1.0, 1.0, 1.0], [0, 0, 0], 6)
    state, idx, _ = sample(jax.random.key(0), cfg, state, 1)
    p = np.asarray(probabilities(cfg, state))
    assert p[int(idx[0])] == 0.0 and p.sum() == pytest.approx(1.0)


def test_sample_with_a_played_mask_stamps_and_counts_only_the_played_draws():
    """Meta-gradient resets draw a level for every agent but use only those of agents that
    finished: only those are stamped and advance the staleness clock."""
    cfg = lb.BufferConfig(capacity=3, staleness_coef=1.0)
    state = state_with(cfg, [1.0, 1.0, 1.0], [0, 0, 0], 6)
    played = jnp.array([True, False, False, False])
    new, idx, _ = lb.sample(jax.random.key(1), cfg, state, 4, played=played)
    assert int(new.step) == 7
    ts = np.asarray(new.timestamps)
    assert ts[int(idx[0])] == 7
    unplayed = set(np.asarray(idx)[1:].tolist()) - {int(idx[0])}
    assert all(ts[i] == 0 for i in unplayed)


def test_insert_offers_only_the_masked_rows():
    cfg = lb.BufferConfig(capacity=4)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    offered = jnp.array([True, False, True])
    state, slots = lb.insert(
        cfg, state, make_levels([1, 2, 3]), jnp.array([5.0, 9.0, 2.0]), make_extras([1, 2, 3]),
        offered=offered,
    )  # fmt: skip
    np.testing.assert_array_equal(slots, [0, -1, 1])
    assert contents_of(state) == {1: 5.0, 3: 2.0}
    assert int(state.size) == 2 and int(state.step) == 2


# --------------------------------------------------------------------------- insertion


def contents_of(state):
    """{level id: score} of the filled slots, checking every leaf and extra agrees with the id."""
    size = int(state.size)
    ids = np.asarray(state.levels.max_steps)[:size]
    np.testing.assert_array_equal(np.asarray(state.levels.grid)[:size, 1, 2], ids)
    np.testing.assert_array_equal(np.asarray(state.levels.reward)[:size, 0], ids)
    np.testing.assert_array_equal(np.asarray(state.extra["ar_cache"])[:size], ids)
    return dict(zip(ids.tolist(), np.asarray(state.scores)[:size].tolist(), strict=True))


def test_insert_fills_then_replaces_only_lowest_with_better():
    cfg = lb.BufferConfig(capacity=4)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    # filling: every finite level enters, in slot order, whatever its score
    state, slots = insert(
        cfg, state, make_levels([1, 2, 3]), jnp.array([5.0, -1.0, 2.0]), make_extras([1, 2, 3])
    )
    np.testing.assert_array_equal(slots, [0, 1, 2])
    assert int(state.size) == 3 and int(state.step) == 3
    np.testing.assert_array_equal(state.timestamps[:3], [3, 3, 3])
    # one empty slot left: the first new level takes it, the second replaces the lowest (-1.0),
    # the third (0.0) is not better than the lowest stored (2.0) and is rejected
    state, slots = insert(
        cfg, state, make_levels([4, 5, 6]), jnp.array([1.0, 4.0, 0.0]), make_extras([4, 5, 6])
    )
    assert contents_of(state) == {1: 5.0, 5: 4.0, 3: 2.0, 4: 1.0}
    np.testing.assert_array_equal(slots, [3, 1, -1])
    # full: an equal score does not displace; a better one replaces exactly the lowest
    state, slots = insert(cfg, state, make_levels([7]), jnp.array([1.0]), make_extras([7]))
    np.testing.assert_array_equal(slots, [-1])
    before = np.asarray(state.scores).copy()
    state, slots = insert(cfg, state, make_levels([8]), jnp.array([1.5]), make_extras([8]))
    np.testing.assert_array_equal(slots, [3])
    changed = np.flatnonzero(np.asarray(state.scores) != before)
    np.testing.assert_array_equal(changed, [3])
    assert contents_of(state) == {1: 5.0, 5: 4.0, 3: 2.0, 8: 1.5}
    # a level admitted and displaced within one batch reports -1
    state, slots = insert(
        cfg, state, make_levels([9, 10, 11]), jnp.array([1.6, 2.5, 3.0]), make_extras([9, 10, 11])
    )
    np.testing.assert_array_equal(slots, [-1, 3, 2])
    assert contents_of(state) == {1: 5.0, 5: 4.0, 11: 3.0, 10: 2.5}


def test_insert_matches_one_by_one_reference():
    rng = np.random.default_rng(3)
    cap = 12
    cfg = lb.BufferConfig(capacity=cap)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    next_id = 1
    for batch in (5, 5, 5, 20, 5, 20, 5):  # 20 > capacity: more offers than slots
        ids = np.arange(next_id, next_id + batch)
        next_id += batch
        scores = np.round(rng.normal(size=batch), 1).astype(np.float32)  # ties
        scores[rng.random(batch) < 0.15] = np.nan
        size = int(state.size)
        stored = zip(
            np.asarray(state.levels.max_steps)[:size].tolist(),
            np.asarray(state.scores)[:size].tolist(),
            range(size),
            strict=True,
        )
        want = reference_insert(
            cap, list(stored), list(zip(ids.tolist(), scores.tolist(), strict=True))
        )
        state, slots = insert(cfg, state, make_levels(ids), jnp.asarray(scores), make_extras(ids))
        got = contents_of(state)
        assert got == want
        # slots point at the levels that are now stored; -1 for the others
        slots = np.asarray(slots)
        stored_ids = np.asarray(state.levels.max_steps)
        for lid, slot in zip(ids.tolist(), slots.tolist(), strict=True):
            if slot >= 0:
                assert stored_ids[slot] == lid
            else:
                assert lid not in got
        assert int(state.size) == len(want)


# --------------------------------------------------------------------------- rescoring and cache


def test_update_rescores_and_keeps_or_sets_extras():
    cfg = lb.BufferConfig(capacity=4, staleness_coef=0.0)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    state, _ = insert(
        cfg, state, make_levels([1, 2, 3]), jnp.array([1.0, 2.0, 3.0]), make_extras([1, 2, 3])
    )
    ts, step = np.asarray(state.timestamps).copy(), int(state.step)
    # -1 and the empty slot 3 are ignored; a repeated index takes its last score
    new = update(cfg, state, jnp.array([0, -1, 2, 0, 3]), jnp.array([7.0, 9.0, 0.5, 6.0, 9.0]))
    np.testing.assert_array_equal(new.scores[:3], [6.0, 2.0, 0.5])
    assert int(new.size) == 3 and not np.isfinite(float(new.scores[3]))
    np.testing.assert_array_equal(new.timestamps, ts)
    assert int(new.step) == step
    # without extras the cache is kept; with extras it is set for those slots only
    np.testing.assert_array_equal(new.extra["ar_cache"][:3], [1.0, 2.0, 3.0])
    new = update(
        cfg,
        new,
        jnp.array([1]),
        jnp.array([2.0]),
        {"ar_cache": jnp.array([42.0]), "cached": jnp.array([True])},
    )
    np.testing.assert_array_equal(new.extra["ar_cache"][:3], [1.0, 42.0, 3.0])
    np.testing.assert_array_equal(new.extra["cached"][:3], [False, True, False])
    # the ranks follow the new scores
    np.testing.assert_array_equal(lb.score_ranks(new)[:3], [1, 2, 3])


def test_algorithmic_regret_cache_stays_until_its_level_is_replaced():
    cfg = lb.BufferConfig(capacity=3)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    state, _ = insert(
        cfg, state, make_levels([1, 2, 3]), jnp.array([3.0, 1.0, 2.0]), make_extras([1, 2, 3])
    )
    # cache each stored level's antagonist return: (ar_cache = 100 + id, cached = True)
    idx = jnp.arange(3)
    ids = state.levels.max_steps
    state = update(
        cfg, state, idx, state.scores, {"ar_cache": 100.0 + ids, "cached": jnp.ones(3, bool)}
    )
    # a better level replaces level 2 (lowest score): its slot gets the new level's fresh extra
    state, slots = insert(
        cfg, state, make_levels([4]), jnp.array([5.0]), make_extras([4], cached=False)
    )
    assert int(slots[0]) == 1
    _, extra = lb.gather(state, jnp.arange(3))
    np.testing.assert_array_equal(state.levels.max_steps, [1, 4, 3])
    np.testing.assert_array_equal(extra["ar_cache"], [101.0, 4.0, 103.0])
    np.testing.assert_array_equal(extra["cached"], [True, False, True])
    # sampling and rejected offers leave the cache alone
    state, _, _ = sample(jax.random.key(0), cfg, state, 5)
    state, slots = insert(cfg, state, make_levels([5]), jnp.array([0.0]), make_extras([5]))
    assert int(slots[0]) == -1
    np.testing.assert_array_equal(state.extra["ar_cache"], [101.0, 4.0, 103.0])


# --------------------------------------------------------------------------- non-finite scores


def test_nonfinite_scores_never_enter():
    cfg = lb.BufferConfig(capacity=3)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    bad = jnp.array([jnp.nan, jnp.inf, -jnp.inf])
    state, slots = insert(cfg, state, make_levels([1, 2, 3]), bad, make_extras([1, 2, 3]))
    np.testing.assert_array_equal(slots, [-1, -1, -1])
    assert int(state.size) == 0
    state, _ = insert(
        cfg, state, make_levels([4, 5, 6]), jnp.array([-5.0, -6.0, -7.0]), make_extras([4, 5, 6])
    )
    state, slots = insert(cfg, state, make_levels([1, 2, 3]), bad, make_extras([1, 2, 3]))
    np.testing.assert_array_equal(slots, [-1, -1, -1])
    assert contents_of(state) == {4: -5.0, 5: -6.0, 6: -7.0}


@pytest.mark.parametrize("prioritization", ["rank", "proportional"])
def test_nonfinite_rescore_is_the_worst_and_replaced_first(prioritization):
    cfg = lb.BufferConfig(capacity=4, prioritization=prioritization, staleness_coef=0.0)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    state, _ = insert(
        cfg,
        state,
        make_levels([1, 2, 3, 4]),
        jnp.array([1.0, 2.0, 3.0, 0.5]),
        make_extras([1, 2, 3, 4]),
    )
    for bad in (jnp.nan, jnp.inf):
        s = update(cfg, state, jnp.array([2]), jnp.array([bad]))  # the best level goes bad
        p = np.asarray(probabilities(cfg, s))
        assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
        assert p[2] == p.min() and p[2] < p[3]  # below even the lowest finite score (0.5)
        assert int(np.argmax(p)) == 1
        s, slots = insert(cfg, s, make_levels([9]), jnp.array([-10.0]), make_extras([9]))
        assert int(slots[0]) == 2  # any finite score beats it


# --------------------------------------------------------------------------- replay decision


def test_decide_replay_waits_for_min_fill_then_uses_replay_prob():
    cfg = lb.BufferConfig(capacity=10, replay_prob=0.5, min_fill=0.5)
    assert cfg.min_levels == 5
    keys = jax.random.split(jax.random.key(0), 4000)
    decide = jax.jit(jax.vmap(lb.decide_replay, in_axes=(0, None, None)), static_argnums=1)
    state = state_with(cfg, [1.0] * 4)
    assert not bool(decide(keys, cfg, state).any())
    state = state_with(cfg, [1.0] * 5)
    assert float(decide(keys, cfg, state).mean()) == pytest.approx(0.5, abs=0.04)
    full = lb.BufferConfig(capacity=10, replay_prob=1.0)  # min_fill 1.0: only when full
    assert not bool(lb.decide_replay(keys[0], full, state_with(full, [1.0] * 9)))
    assert bool(lb.decide_replay(keys[0], full, state_with(full, [1.0] * 10)))


# --------------------------------------------------------------------------- jit, scan, vmap


def _meta_loop(cfg, key, num_steps=30, batch=4):
    """A GROOVE-like loop: each step replays (and rescores) or offers new levels."""

    def step(state, key):
        k_dec, k_smp, k_lvl, k_scr = jax.random.split(key, 4)
        scores = jax.random.normal(k_scr, (batch,))

        def replay(state):
            state, idx, _ = sample(k_smp, cfg, state, batch)
            return update(cfg, state, idx, scores)

        def new(state):
            ids = jax.random.randint(k_lvl, (batch,), 0, 1000)
            state, _ = insert(cfg, state, make_levels(ids), scores, make_extras(ids))
            return state

        state = jax.lax.cond(lb.decide_replay(k_dec, cfg, state), replay, new, state)
        return state, state.size

    return jax.lax.scan(step, lb.init(cfg, EXAMPLE, EXTRA), jax.random.split(key, num_steps))


def test_jit_scan_and_vmap_over_independent_buffers():
    cfg = lb.BufferConfig(capacity=16, replay_prob=0.5, min_fill=0.5)
    keys = jax.random.split(jax.random.key(7), 3)
    run = jax.jit(functools.partial(_meta_loop, cfg))
    batched_state, batched_sizes = jax.jit(jax.vmap(functools.partial(_meta_loop, cfg)))(keys)
    for i in range(3):
        state, sizes = run(keys[i])
        one = jax.tree.map(lambda x: x[i], batched_state)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(one), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sizes, batched_sizes[i])
        assert int(state.size) == 16
        contents_of(state)  # levels and their extras stayed together
        p = probabilities(cfg, state)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    # the buffers are independent: different keys, different contents
    assert not np.array_equal(batched_state.scores[0], batched_state.scores[1])


def test_mismatched_level_or_missing_extras_raise():
    cfg = lb.BufferConfig(capacity=4)
    state = lb.init(cfg, EXAMPLE, EXTRA)
    with pytest.raises(ValueError, match="insert extras"):
        insert(cfg, state, make_levels([1]), jnp.array([1.0]))
    wrong = make_levels([1]).replace(reward=jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="insert levels"):
        insert(cfg, state, wrong, jnp.array([1.0]), make_extras([1]))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("capacity", 0),
        ("capacity", 2.5),
        ("capacity", True),
        ("replay_prob", 1.5),
        ("replay_prob", -0.1),
        ("temperature", 0.0),
        ("temperature", float("inf")),
        ("staleness_coef", 1.1),
        ("staleness_coef", float("nan")),
        ("min_fill", 0.0),
        ("min_fill", 2.0),
        ("replay_prob", "0.5"),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"BufferConfig\.{field}[=:]"):
        lb.BufferConfig(**{field: value})


def test_unknown_prioritization_suggests_a_close_match():
    with pytest.raises(ValueError, match=r"prioritization='rnak'.*did you mean 'rank'"):
        lb.BufferConfig(prioritization="rnak")
    with pytest.raises(ValueError, match=r"BufferConfig\.prioritization='topk'"):
        lb.BufferConfig(prioritization="topk")


def test_defaults_are_the_cited_sources_settings():
    """capacity 4000 and replay 0.5: GROOVE's code; rank, temperature 0.1, staleness 0.1: PLR's
    Procgen settings (Jiang et al. 2021); min_fill 1.0: jaxued's and PLR's code's."""
    cfg = lb.BufferConfig()
    assert (cfg.capacity, cfg.replay_prob, cfg.min_fill) == (4000, 0.5, 1.0)
    assert (cfg.prioritization, cfg.temperature, cfg.staleness_coef) == ("rank", 0.1, 0.1)
    # PLR's rank weights at beta = 0.1 on three levels, staleness [6, 0, 3] / 9 at rho = 0.1:
    # h = (1 / rank)^10 = [1, 3^-10, 2^-10]
    small = lb.BufferConfig(capacity=4)
    state = state_with(small, [3.0, 1.0, 2.0], timestamps=[4, 10, 7], step=10)
    h = np.array([1.0, 3.0**-10, 2.0**-10])
    want = 0.9 * np.append(h / h.sum(), 0) + 0.1 * np.array([6 / 9, 0, 3 / 9, 0])
    np.testing.assert_allclose(lb.probabilities(small, state), want, rtol=1e-5, atol=1e-8)


def test_config_is_hashable_for_static_jit_arguments():
    assert hash(lb.BufferConfig()) == hash(lb.BufferConfig(capacity=4000))
    assert lb.BufferConfig(capacity=np.int64(8)).capacity == 8
