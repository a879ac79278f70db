"""GROOVE (meta/groove.py) and the ES driver's curriculum hook (meta/es.py): the antagonist cache,
regret scores, NaN isolation, resume with a level buffer, pairwise fitness shaping, bad input.

The fast tests drive the curricula with cheap stand-ins (a level is {"id", "x"}, the antagonist
a key-dependent function, the fitness a quadratic), so they compile in seconds; the real grid-world
meta-training runs with `-m slow`."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta import es, groove, level_buffer, lpg

INIT = {"w": jnp.zeros(4)}


def sample_levels(key, n):
    """n stand-in levels: a random id (a label to count antagonist runs by) and a target x."""
    k_id, k_x = jax.random.split(key)
    return {
        "id": jax.random.randint(k_id, (n,), 0, 2**30, jnp.int32),
        "x": jax.random.uniform(k_x, (n,), minval=-1.0, maxval=1.0),
    }


EXAMPLE = {"id": jnp.int32(0), "x": jnp.float32(0.0)}


class Recorder:
    """A stand-in antagonist that records every level it is trained on (through a host callback,
    which runs only in the branch of `lax.cond` that executes)."""

    def __init__(self):
        self.calls = collections.Counter()
        self.results = {}

    def _record(self, ids, returns):
        for i, r in zip(np.ravel(ids), np.ravel(returns), strict=True):
            self.calls[int(i)] += 1
            self.results[int(i)] = float(r)

    def __call__(self, key, level):
        value = 2.0 * level["x"] + jax.random.uniform(key)  # depends on the key: a rerun differs
        jax.debug.callback(self._record, level["id"], value)
        return {"return": value, "pvl": jnp.abs(level["x"])}


def fitness(params, key, level):
    """The rule's agents' 'return' on a level: near x, lower the farther w[0] is from x."""
    return level["x"] - (params["w"][0] - level["x"]) ** 2 + 0.01 * jax.random.normal(key)


ES = es.ESConfig(population_size=4, num_generations=12, generations_per_call=4, sigma=0.5,
                 learning_rate=0.1, fitness_shaping="pairwise")  # fmt: skip
BUFFER = level_buffer.BufferConfig(capacity=6, replay_prob=0.5, min_fill=0.5)


TINY_INNER = dict(lpg.CPU_INNER, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 12)


def replay_curriculum(antagonist, score="regret", buffer=BUFFER):
    return groove.LevelReplay(buffer, score, sample_levels, antagonist, EXAMPLE)


@pytest.fixture(scope="module")
def run():
    """12 generations of the regret curriculum with the recording antagonist."""
    recorder = Recorder()
    out = es.evolve(fitness, INIT, ES, jax.random.key(3), progress=False,
                    curriculum=replay_curriculum(recorder))  # fmt: skip
    return recorder, out


def test_antagonists_train_only_on_new_levels_once_each_and_their_returns_are_cached(run):
    recorder, out = run
    replay = out.curriculum["replay"]
    assert replay.shape == (12,) and 0 < replay.sum() < 12  # both kinds of generation happened
    np.testing.assert_array_equal(out.curriculum["antagonist_runs"], np.where(replay, 0, 2))
    # every antagonist the curriculum counted was trained, each level at most once
    assert sum(recorder.calls.values()) == out.curriculum["antagonist_runs"].sum()
    assert max(recorder.calls.values()) == 1
    # the buffer holds, beside each level, the return its antagonist had when the level was new
    buffer = out.task_state
    size = int(buffer.size)
    assert size == out.curriculum["buffer_size"][-1] and size > 0
    for slot in range(size):
        level_id = int(buffer.levels["id"][slot])
        assert buffer.extra["antagonist_return"][slot] == np.float32(recorder.results[level_id])


def test_replayed_levels_are_rescored_by_regret_with_the_cached_return(run):
    _, out = run
    buffer = out.task_state
    size = int(buffer.size)
    scores = buffer.scores[:size]
    assert np.all(np.isfinite(scores))
    # the stand-in agents' return is <= x, so regret >= 2x + U(0,1) - x: bounded below by x - ...;
    # exactly: a level's score is its antagonist return minus the pair's mean fitness, which for
    # this fitness is at most x (+ noise): score >= antagonist - x - 0.05
    x, ant = buffer.levels["x"][:size], buffer.extra["antagonist_return"][:size]
    assert np.all(scores >= ant - x - 0.05)


def test_regret_is_antagonist_minus_the_mean_of_the_agents():
    ant = jnp.array([1.0, 0.5, 2.0])
    agents = jnp.array([[0.0, 1.0], [0.5, 0.5], [jnp.nan, 1.0]])
    got = np.asarray(groove.regret(ant, agents))
    np.testing.assert_allclose(got[:2], [0.5, 0.0])
    assert np.isnan(got[2])


def test_nan_agents_poison_neither_the_buffer_nor_the_rule():
    """Levels with x > 0.5 make every agent NaN: they never enter the buffer (new), a replayed
    one would be stored as -inf; the ES mean stays finite."""

    def flaky(params, key, level):
        return jnp.where(level["x"] > 0.5, jnp.nan, fitness(params, key, level))

    cfg = es.ESConfig(population_size=4, num_generations=8, generations_per_call=8, sigma=0.5,
                      learning_rate=0.1, fitness_shaping="pairwise")  # fmt: skip
    out = es.evolve(flaky, INIT, cfg, jax.random.key(5), progress=False,
                    curriculum=replay_curriculum(Recorder()))  # fmt: skip
    assert out.num_nonfinite > 0  # some levels did have NaN agents
    buffer = out.task_state
    size = int(buffer.size)
    assert size > 0 and np.all(buffer.levels["x"][:size] <= 0.5)
    assert not np.any(np.isnan(buffer.scores))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.mean_params))


def test_pvl_scores_are_the_cached_antagonist_pvl():
    out = es.evolve(fitness, INIT, ES, jax.random.key(3), progress=False,
                    curriculum=replay_curriculum(Recorder(), score="pvl"))  # fmt: skip
    buffer = out.task_state
    size = int(buffer.size)
    np.testing.assert_array_equal(buffer.scores[:size], buffer.extra["pvl"][:size])
    np.testing.assert_allclose(buffer.extra["pvl"][:size], np.abs(buffer.levels["x"][:size]))


def test_domain_randomisation_gives_fresh_levels_every_generation():
    seen = []

    def recording(params, key, level):
        jax.debug.callback(lambda i: seen.append(int(i)), level["id"])
        return fitness(params, key, level)

    cfg = es.ESConfig(population_size=4, num_generations=5, generations_per_call=5, sigma=0.5,
                      learning_rate=0.1, fitness_shaping="pairwise")  # fmt: skip
    out = es.evolve(recording, INIT, cfg, jax.random.key(1), progress=False,
                    curriculum=groove.DomainRandomisation(sample_levels))  # fmt: skip
    # 5 generations x 2 pairs, both members of a pair on the pair's level: 10 distinct levels,
    # each seen by exactly 2 candidates
    counts = collections.Counter(seen)
    assert len(counts) == 10 and set(counts.values()) == {2}
    assert list(out.curriculum) == ["mean_agent_return"] and out.curriculum[
        "mean_agent_return"
    ].shape == (5,)


class Interrupted(Exception):
    """Stands for a Ctrl-C between two ES calls."""


def test_resume_with_a_level_buffer_equals_an_uninterrupted_run(tmp_path):
    cur = replay_curriculum(lambda key, level: {"return": level["x"] + jax.random.uniform(key),
                                                "pvl": jnp.abs(level["x"])})  # fmt: skip
    key = jax.random.key(11)
    whole = es.evolve(fitness, INIT, ES, key, progress=False, curriculum=cur)

    def stop(generation, metrics):
        assert set(metrics["curriculum"]) == set(groove.BUFFER_METRICS)
        assert int(metrics["task_state"].size) == metrics["curriculum"]["buffer_size"][-1]
        if generation == 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        es.evolve(fitness, INIT, ES, key, progress=False, curriculum=cur,
                  checkpoint_dir=tmp_path, on_generations=stop)  # fmt: skip
    resumed = es.evolve(fitness, INIT, ES, key, progress=False, curriculum=cur,
                        checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    np.testing.assert_array_equal(whole.fitness, resumed.fitness)
    for name in groove.BUFFER_METRICS:
        np.testing.assert_array_equal(whole.curriculum[name], resumed.curriculum[name])
    for a, b in zip(jax.tree.leaves((whole.task_state, whole.mean_params)),
                    jax.tree.leaves((resumed.task_state, resumed.mean_params)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    # the checkpoint of a curriculum run does not resume without it
    with pytest.raises(ValueError, match="curriculum"):
        es.evolve(lambda p, k: fitness(p, k, {"x": 0.0}), INIT, ES, key, progress=False,
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip


# --------------------------------------------------------------------------- pairwise shaping


def test_pairwise_shaping_scores_each_mirrored_pair_by_its_winner():
    # minimised fitness (evosax's view): candidate i vs i + 3
    fitness = jnp.array([1.0, 5.0, 2.0, 3.0, 4.0, 2.0])
    shaped = es.pairwise_shaping(None, fitness, None, None)
    np.testing.assert_array_equal(shaped, [-0.5, 0.5, 0.0, 0.5, -0.5, 0.0])


def test_pairwise_shaping_follows_the_better_member_of_each_pair():
    """One pair per generation on a 1-d problem: the mean moves toward the winner's side."""
    cfg = es.ESConfig(population_size=2, num_generations=30, generations_per_call=30, sigma=0.3,
                      learning_rate=0.1, fitness_shaping="pairwise")  # fmt: skip
    out = es.evolve(lambda p, k: -jnp.sum((p["w"] - 1.0) ** 2), {"w": jnp.zeros(1)}, cfg,
                    jax.random.key(0), progress=False)  # fmt: skip
    assert out.mean_params["w"][0] > 0.5


def test_pairwise_shaping_needs_antithetic_pairs():
    with pytest.raises(ValueError, match="antithetic"):
        es.ESConfig(population_size=4, antithetic=False, fitness_shaping="pairwise")


# --------------------------------------------------------------------------- bad input


def test_config_errors():
    with pytest.raises(ValueError, match="did you mean 'regret'"):
        groove.GrooveConfig(score="regrt")
    with pytest.raises(ValueError, match="antithetic"):
        groove.GrooveConfig(
            lpg=lpg.LPGConfig(env="gridworld/small", es=es.ESConfig(strategy="snes")),
            meta_optimizer="es",
        )
    groove.GrooveConfig(  # the meta-gradient needs no antithetic pairs
        lpg=lpg.LPGConfig(env="gridworld/small", es=es.ESConfig(strategy="snes"))
    )
    with pytest.raises(ValueError, match="did you mean 'meta_gradient'"):
        groove.GrooveConfig(meta_optimizer="meta_gradiant")
    with pytest.raises(ValueError, match="shorter than meta_gradient.num_agent_updates=5"):
        groove.GrooveConfig(lpg=lpg.LPGConfig(env="gridworld/small", inner=TINY_INNER | {
            "total_timesteps": 4 * 8 * 3}))  # fmt: skip
    with pytest.raises(ValueError, match="GrooveConfig.meta_gradient: expected MetaGradientConfig"):
        groove.GrooveConfig(meta_gradient={"num_agents": 4})
    with pytest.raises(ValueError, match="GrooveConfig.antagonist"):
        groove.GrooveConfig(antagonist={"learning_rat": 0.1})
    with pytest.raises(ValueError, match="sample_levels"):
        groove.make_curriculum(groove.GrooveConfig(lpg=lpg.LPGConfig(env="Catch-bsuite")))
    with pytest.raises(TypeError, match="curriculum"):
        es.evolve(fitness, INIT, ES, jax.random.key(0), progress=False, curriculum=object())


# --------------------------------------------------------------------------- grid worlds (slow)


@pytest.mark.slow
def test_groove_meta_trains_on_random_grid_worlds_with_cached_antagonists(tmp_path):
    inner = dict(lpg.CPU_INNER, total_timesteps=8 * 16 * 10)
    es_cfg = es.ESConfig(population_size=4, num_generations=6, generations_per_call=3,
                         sigma=0.1, learning_rate=0.01, fitness_shaping="pairwise")  # fmt: skip
    cfg = groove.GrooveConfig(
        lpg=lpg.LPGConfig(env="gridworld/small", inner=inner, hidden=16, es=es_cfg),
        buffer=level_buffer.BufferConfig(capacity=8, replay_prob=0.5, min_fill=0.25),
        meta_optimizer="es",
    )
    meta_train = groove.make_meta_train(cfg)
    out = meta_train(jax.random.key(0), progress=False, checkpoint_dir=tmp_path / "es")
    replay = out.curriculum["replay"]
    assert 0 < replay.sum() < 6
    assert out.antagonist_runs == 2 * int((1 - replay).sum())
    assert out.antagonist_runs_uncached == 12
    assert out.antagonist_runs_saved == pytest.approx(replay.mean())
    size = int(out.buffer.size)
    assert size == out.curriculum["buffer_size"][-1]
    assert np.all(np.isfinite(out.buffer.extra["antagonist_return"][:size]))
    assert np.all(np.isfinite(out.es.fitness))
    # continued further from its checkpoint: the same first 6 generations, the program reused
    more = meta_train(jax.random.key(0), progress=False, checkpoint_dir=tmp_path / "es",
                      resume=True, num_generations=9)  # fmt: skip
    assert more.es.fitness.shape == (9, 4) and more.es.compile_s == 0
    np.testing.assert_array_equal(more.es.fitness[:6], out.es.fitness)
    np.testing.assert_array_equal(more.curriculum["replay"][:6], replay)
    path = lpg.save(tmp_path / "rule", out.params, out.info)
    params, info = lpg.load(path)
    assert info["trained_on"]["curriculum"] == "regret"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(out.params), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- meta-gradient GROOVE


def _reset_case(replay_prob=0.5):
    """A regret curriculum whose buffer holds 4 levels (ids 10..13, uids 1..4, cached antagonist
    returns 2, 3, 4, 5) and three agents: 0 on the replayed slot 1 (uid 2), 1 on a new level, 2
    on slot 3 whose level was replaced meanwhile (its uid 4 is no longer there)."""
    buffer = level_buffer.BufferConfig(capacity=6, replay_prob=replay_prob, min_fill=0.5)
    cur = groove.LevelReplay(buffer, "regret", sample_levels, None, EXAMPLE)
    state = cur.init(None)
    levels = {"id": jnp.arange(10, 14, dtype=jnp.int32), "x": jnp.zeros(4)}
    extras = {"antagonist_return": jnp.array([2.0, 3.0, 4.0, 5.0]), "pvl": jnp.zeros(4),
              "uid": jnp.arange(1, 5, dtype=jnp.int32)}  # fmt: skip
    state, _ = level_buffer.insert(buffer, state, levels, jnp.array([0.1, 0.2, 0.3, 0.4]), extras)
    state = state.replace(extra={**state.extra, "uid": state.extra["uid"].at[3].set(99)})
    tags = {
        "slot": jnp.array([1, -1, 3], jnp.int32),
        "uid": jnp.array([2, 50, 4], jnp.int32),
        "cached": {"antagonist_return": jnp.array([3.0, jnp.nan, 5.0]), "pvl": jnp.zeros(3)},
    }
    agent_levels = {"id": jnp.array([11, 77, 13], jnp.int32), "x": jnp.zeros(3)}
    return cur, state, agent_levels, tags


def test_meta_gradient_reset_rescores_a_replayed_level_with_the_cached_antagonist():
    """Hand case: agent 0 (replayed slot 1, cached R_antagonist 3) ends with return 0.5: AR
    3 - 0.5 = 2.5 is its slot's new score, whatever its lockstep antagonist got (9); agent 1 (a
    new level) is scored with its lockstep antagonist, 6 - 1 = 5, and offered to the buffer with
    that return cached; agent 2's replayed level was evicted (uid changed), so it is offered as
    a level with its cached return, 5 - 4 = 1; an agent that has not finished changes nothing."""
    cur, state, levels, tags = _reset_case()
    results = {"agent_return": jnp.array([0.5, 1.0, 4.0]),
               "antagonist_return": jnp.array([9.0, 6.0, 9.0]), "pvl": jnp.zeros(3)}  # fmt: skip
    done = jnp.array([True, True, True])
    new_state, new_levels, new_tags, metrics = cur.reset(
        state, jax.random.key(0), done, levels, tags, results, jnp.int32(7)
    )
    assert float(new_state.scores[1]) == 2.5
    assert float(new_state.extra["antagonist_return"][1]) == 3.0  # the cache is kept
    stored = {int(u): i for i, u in enumerate(np.asarray(new_state.extra["uid"]))}
    assert 50 in stored and 4 in stored  # both offered levels admitted (there was room)
    assert float(new_state.scores[stored[50]]) == 5.0
    assert float(new_state.extra["antagonist_return"][stored[50]]) == 6.0
    assert float(new_state.scores[stored[4]]) == 1.0
    assert int(new_state.levels["id"][stored[50]]) == 77
    assert int(metrics["antagonist_runs"]) == 1 and int(metrics["admitted"]) == 2
    assert float(metrics["mean_score"]) == pytest.approx((2.5 + 5.0 + 1.0) / 3)
    # the same step with only agent 0 finished: agent 1 and 2 keep their levels and tags
    partial = jnp.array([True, False, False])
    s2, l2, t2, m2 = cur.reset(state, jax.random.key(0), partial, levels, tags, results, 7)
    assert float(s2.scores[1]) == 2.5 and int(s2.size) == 4 and int(m2["admitted"]) == 0
    for leaf, old in zip(jax.tree.leaves(t2), jax.tree.leaves(tags), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf)[1:], np.asarray(old)[1:])
    np.testing.assert_array_equal(l2["id"][1:], levels["id"][1:])


def test_meta_gradient_reset_nan_returns_are_never_admitted_and_are_counted():
    cur, state, levels, tags = _reset_case()
    tags = {**tags, "slot": jnp.array([-1, -1, -1], jnp.int32)}
    results = {"agent_return": jnp.array([jnp.nan, 1.0, 0.0]),
               "antagonist_return": jnp.array([1.0, jnp.nan, 2.0]), "pvl": jnp.zeros(3)}  # fmt: skip
    new_state, *_, metrics = cur.reset(
        state, jax.random.key(1), jnp.ones(3, bool), levels, tags, results, 3
    )
    assert int(metrics["admitted"]) == 1 and int(new_state.size) == 5
    assert float(metrics["mean_score"]) == 2.0  # only the finite score


@pytest.mark.parametrize("replay_prob", [0.0, 0.3, 1.0])
def test_finished_agents_replay_buffer_levels_at_the_configured_rate(replay_prob):
    """2,000 agents finish at once: a fraction ~replay_prob of them draws a buffer level (tagged
    with its slot, uid and cached antagonist return), the rest fresh levels (slot -1)."""
    cur, state, _, _ = _reset_case(replay_prob)
    n = 2000
    levels = sample_levels(jax.random.key(5), n)
    tags = cur._new_tags(n, jnp.int32(0))
    nan = jnp.full((n,), jnp.nan)
    results = {"agent_return": nan, "antagonist_return": nan, "pvl": nan}
    _, new_levels, new_tags, metrics = jax.jit(cur.reset, static_argnums=())(
        state, jax.random.key(2), jnp.ones(n, bool), levels, tags, results, jnp.int32(1)
    )
    replayed = np.asarray(new_tags["slot"]) >= 0
    assert abs(replayed.mean() - replay_prob) < 0.04
    assert float(metrics["replay"]) == pytest.approx(replayed.mean())
    slots = np.asarray(new_tags["slot"])[replayed]
    np.testing.assert_array_equal(np.asarray(new_levels["id"])[replayed], 10 + slots)
    np.testing.assert_array_equal(
        np.asarray(new_tags["uid"])[replayed], np.where(slots == 3, 99, slots + 1)
    )
    np.testing.assert_array_equal(
        np.asarray(new_tags["cached"]["antagonist_return"])[replayed], 2.0 + slots
    )
    fresh_uids = np.asarray(new_tags["uid"])[~replayed]
    assert len(set(fresh_uids.tolist())) == len(fresh_uids)
    assert np.all(fresh_uids > n)  # step 1 of n agents: uids n + 1 .. 2n


def test_a_buffer_below_min_fill_never_replays():
    cur, state, levels, tags = _reset_case(replay_prob=1.0)
    small = level_buffer.BufferConfig(capacity=20, replay_prob=1.0, min_fill=0.5)  # needs 10
    cur = groove.LevelReplay(small, "regret", sample_levels, None, EXAMPLE)
    empty = cur.init(None)
    nan = jnp.full((3,), jnp.nan)
    results = {"agent_return": nan, "antagonist_return": nan, "pvl": nan}
    _, _, new_tags, _ = cur.reset(empty, jax.random.key(0), jnp.ones(3, bool), levels,
                                  cur._new_tags(3, 0), results, 1)  # fmt: skip
    assert np.all(np.asarray(new_tags["slot"]) == -1)


@pytest.mark.slow  # two compiles of a meta-gradient GROOVE chunk, ~90 s
def test_meta_gradient_groove_runs_resumes_exactly_and_fills_its_buffer(tmp_path):
    cfg = groove.GrooveConfig(
        lpg=lpg.LPGConfig(env="gridworld/small", hidden=16, inner=TINY_INNER),
        meta_gradient=lpg.MetaGradientConfig(num_agents=8, num_agent_updates=3),
        buffer=level_buffer.BufferConfig(capacity=16, replay_prob=0.5, min_fill=0.25),
    )
    meta_train = groove.make_meta_train(cfg)
    full = meta_train(jax.random.key(0), num_steps=20, steps_per_call=10, progress=False)
    m, c = full.metrics, full.curriculum
    # 8 agents of 12 updates, K = 3, staggered: two lives end per meta-step
    np.testing.assert_array_equal(m["agents_restarted"], 2)
    assert int(m["unscored"][:3].sum()) >= 6  # the staggered first lives score nothing
    assert c["buffer_size"][-1] > 0 and 0 < np.nanmean(c["replay"][-10:]) < 1
    assert full.antagonist_runs == int(np.sum(c["antagonist_runs"])) > 0
    assert full.antagonist_runs_uncached == 20 * 8
    assert int(np.sum(m["rule_skipped"])) == 0
    part = meta_train(jax.random.key(0), num_steps=10, steps_per_call=10, progress=False,
                      checkpoint_dir=tmp_path)  # fmt: skip
    assert part.metrics["meta_loss"].shape == (10,)
    more = meta_train(jax.random.key(0), num_steps=20, steps_per_call=10, progress=False,
                      checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(more.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same program, the same machine: exact
    for k in full.metrics:
        np.testing.assert_array_equal(full.metrics[k], more.metrics[k])
    other = groove.make_meta_train(dataclasses.replace(cfg, score="pvl"))
    with pytest.raises(ValueError, match="another GrooveConfig"):
        other(jax.random.key(0), num_steps=20, progress=False, checkpoint_dir=tmp_path, resume=True)
