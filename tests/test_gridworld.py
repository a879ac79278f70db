"""Tests for envs/gridworld/: the LPG grid worlds, their levels as env params, the level
samplers and mutations, validation, and the value-iteration optimum an A2C agent reaches."""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import gridworld as gw
from envs.wrappers import AutoReset

KEY = jax.random.key(0)
UP, DOWN, LEFT, RIGHT, STAY = range(5)
FIVE = {  # id: (size, max_steps, objects, walls)
    "gridworld/dense": (11, 500, 4, 0),
    "gridworld/sparse": (13, 50, 2, 0),
    "gridworld/long": (11, 1000, 4, 0),
    "gridworld/longer": (9, 2000, 5, 7),
    "gridworld/long_dense": (11, 2000, 4, 17),
}


def hand_level(**kw):
    """A 6x6 level: agent at (0, 0), a wall below it, one +0.5 object to its right."""
    args = dict(start=(0, 0), walls=[(1, 0)], objects=[(0, 1, 0.5, 0.0, 0.0)], max_steps=50)
    args.update(kw)
    return gw.make_level(args.pop("height", 6), args.pop("width", 6), **args)


# One raw env for every hand level (<= 6x6, <= 2 objects): each jitted function compiles once.
# random_spawn=True: the env honours each hand level's own random_spawn flag
ENV = gw.GridWorld(hand_level(), obs="tabular", obs_size=6, obs_objects=2, random_spawn=True)
reset = jax.jit(ENV.reset)
step = jax.jit(ENV.step)
step_keys = jax.jit(jax.vmap(ENV.step, in_axes=(0, None, None, None)))  # many keys, one state
reset_keys = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))
HORIZON = 20  # hand-level episodes are at most this long


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, None, None))
def constant_action_return(key, level, action):
    """Return of one episode (<= HORIZON steps) of the raw ENV always playing `action`."""
    obs, state = ENV.reset(key, level)

    def body(carry, k):
        state, total, done = carry
        _, state, reward, terminated, truncated, _ = ENV.step(k, state, action, level)
        total = total + jnp.where(done, 0.0, reward)
        return (state, total, done | terminated | truncated), None

    init = (state, jnp.float32(0.0), jnp.bool_(False))
    (_, total, _), _ = jax.lax.scan(body, init, jax.random.split(key, HORIZON))
    return total


def connected(level) -> bool:
    """Numpy BFS: the free cells of one concrete level form one 4-connected region."""
    h, w = int(level.height), int(level.width)
    free = ~np.asarray(level.walls)[:h, :w]
    cells = list(zip(*np.nonzero(free), strict=True))
    seen, todo = {cells[0]}, [cells[0]]
    while todo:
        r, c = todo.pop()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            n = (r + dr, c + dc)
            if 0 <= n[0] < h and 0 <= n[1] < w and free[n] and n not in seen:
                seen.add(n)
                todo.append(n)
    return len(seen) == len(cells)


def index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------------
# the ids


@pytest.mark.parametrize("env_id", list(FIVE))
def test_the_five_ids_build_with_the_stated_sizes_lengths_and_objects(env_id):
    size, max_steps, n_objects, n_walls = FIVE[env_id]
    env, level = envs.make(env_id)
    assert env.name == env_id and isinstance(env, AutoReset)
    assert int(level.height) == int(level.width) == size
    assert int(level.max_steps) == max_steps and int(level.lifetime) == 2500
    assert int(level.obj_mask.sum()) == n_objects and int(level.walls.sum()) == n_walls
    assert not bool(level.random_spawn)
    assert env.action_space(level).n == 5
    assert env.observation_space(level).shape == (size * size * 2**n_objects,)
    mlp_env, _ = envs.make(env_id, obs="mlp")
    assert mlp_env.observation_space(level).shape == ((1 + n_objects) * size * size,)
    gw.validate_level(level)
    other = envs.make(env_id, level_seed=1)[1]
    assert not np.array_equal(other.obj_pos, level.obj_pos)  # the layout moves, not the rules
    np.testing.assert_array_equal(other.obj_reward, level.obj_reward)


def test_config_objects_are_the_references():
    _, dense = envs.make("gridworld/dense")
    np.testing.assert_allclose(dense.obj_reward[:4], [1, 1, -1, -1])
    np.testing.assert_allclose(dense.obj_p_terminate[:4], [0, 0, 0.5, 0])
    np.testing.assert_allclose(dense.obj_p_respawn[:4], [0.05, 0.05, 0.1, 0.5])
    _, sparse = envs.make("gridworld/sparse")
    np.testing.assert_allclose(sparse.obj_p_terminate[:2], [1, 1])
    np.testing.assert_allclose(sparse.obj_p_respawn[:2], [0, 0])
    _, longer = envs.make("gridworld/longer")
    walls = np.asarray(longer.walls)[:9, :9]
    assert walls[:, 4].tolist() == [r not in (1, 7) for r in range(9)] and walls.sum() == 7
    assert connected(longer) and connected(envs.make("gridworld/long_dense")[1])


def test_make_overrides():
    env, level = envs.make("gridworld/sparse", max_steps=7, lifetime=30, random_spawn=True)
    assert (int(level.max_steps), int(level.lifetime), bool(level.random_spawn)) == (7, 30, True)
    assert env.unwrapped.obs_size == 13 and env.unwrapped.obs_objects == 2
    assert gw.capacity("all") == (10, 5) and gw.capacity("mixed") == (13, 5)
    env, level = envs.make("gridworld/all_shortlife", obs="mlp")  # a distribution's id
    assert env.observation_space(level).shape == (6 * 10 * 10,) and int(level.lifetime) == 250


# ---------------------------------------------------------------------------------------------
# dynamics on hand levels


def test_walls_and_grid_edges_block_moves_and_collection_pays():
    level = hand_level()
    _, state = reset(KEY, level)
    for action in (UP, LEFT, DOWN, STAY):  # the top and left edges, the wall below, staying
        _, s, reward, terminated, truncated, _ = step(KEY, state, action, level)
        assert s.pos.tolist() == [0, 0] and float(reward) == 0.0
    obs, s, reward, terminated, truncated, _ = step(KEY, state, RIGHT, level)
    assert s.pos.tolist() == [0, 1] and float(reward) == 0.5
    assert not bool(terminated) and not bool(truncated) and s.present.tolist()[:1] == [False]
    assert int(jnp.argmax(obs)) == 1  # tabular: cell (0, 1), no object present
    # A 3x5 grid: the padded cells below and right of it block like walls.
    small = hand_level(height=3, width=5, start=(2, 4), walls=[], objects=[(0, 0, 1.0, 0.0, 0.0)])
    _, state = reset(KEY, small)
    for action in (DOWN, RIGHT):
        assert step(KEY, state, action, small)[1].pos.tolist() == [2, 4]
    assert step(KEY, state, UP, small)[1].pos.tolist() == [1, 4]


def test_termination_probability_matches_the_level():
    n = 20_000
    keys = jax.random.split(KEY, n)
    for p in (0.0, 0.3, 1.0):
        level = hand_level(objects=[(0, 1, 0.5, p, 0.0)])
        _, state = reset(KEY, level)
        _, _, reward, terminated, truncated, _ = step_keys(keys, state, RIGHT, level)
        assert np.all(np.asarray(reward) == 0.5) and not np.any(truncated)
        rate = float(np.mean(terminated))
        assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (p, rate)


def test_respawn_probability_matches_the_level_over_many_steps():
    p, n_envs, steps = 0.2, 256, 200
    # A 1x2 corridor, always pushing right: the agent stands on the object's cell and collects
    # it on the step after each respawn.
    level = hand_level(height=1, width=2, walls=[], objects=[(0, 1, 1.0, 0.0, p)], max_steps=10_000)

    @jax.jit
    @jax.vmap
    def presence(key):
        _, state = ENV.reset(key, level)

        def body(state, k):
            _, new, reward, _, _, _ = ENV.step(k, state, RIGHT, level)
            return new, (state.present[0], new.present[0], reward)

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    before, after, reward = map(np.asarray, presence(jax.random.split(KEY, n_envs)))
    attempts = ~before  # absent at the start of a step: may respawn in it
    rate = (attempts & after).sum() / attempts.sum()
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / attempts.sum()), rate
    assert not np.any(before & after)  # present -> collected on the spot, never respawns at once
    np.testing.assert_array_equal(reward == 1.0, before)


def test_random_spawn_resets_and_respawns_on_free_unoccupied_cells():
    walls = [(1, 1), (1, 2), (2, 1)]
    level = hand_level(
        height=4,
        width=4,
        start=(0, 0),
        walls=walls,
        objects=[(3, 3, 1.0, 0.0, 1.0), (0, 3, -1.0, 0.0, 0.0)],
        random_spawn=True,
    )
    n = 6_000
    keys = jax.random.split(KEY, n)
    _, states = reset_keys(keys, level)
    cells = np.concatenate([np.asarray(states.pos)[:, None], np.asarray(states.obj_pos)[:, :2]], 1)
    free = {(r, c) for r in range(4) for c in range(4)} - set(walls)
    for row in cells:
        assert len({tuple(x) for x in row}) == 3 and all(tuple(x) in free for x in row)
    assert {tuple(x) for x in cells[:, 0]} == free  # the agent starts anywhere free
    # Object 0 absent, agent at (0, 0), object 1 at (0, 3): respawns uniformly on the other cells.
    _, state = reset(KEY, level)
    state = state.replace(
        pos=jnp.array([0, 0]),
        obj_pos=state.obj_pos.at[1].set(jnp.array([0, 3])),
        present=state.present.at[0].set(False),
    )
    _, s, _, _, _, _ = step_keys(keys, state, STAY, level)
    assert np.all(np.asarray(s.present)[:, 0])
    counts = collections.Counter(tuple(x) for x in np.asarray(s.obj_pos)[:, 0])
    allowed = free - {(0, 0), (0, 3)}
    assert set(counts) == allowed
    expected = n / len(allowed)
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in counts.values()), counts


def test_episode_length_truncates_and_auto_reset_starts_the_next_episode():
    level = hand_level(max_steps=3)
    _, state = reset(KEY, level)
    flags = []
    for _ in range(3):
        _, state, _, terminated, truncated, info = step(KEY, state, STAY, level)
        flags.append((bool(terminated), bool(truncated)))
    assert flags == [(False, False), (False, False), (False, True)] and info == {}
    # Terminated on the last step: terminated, not truncated.
    ending = hand_level(max_steps=1, objects=[(0, 1, 0.5, 1.0, 0.0)])
    _, state = reset(KEY, ending)
    _, _, _, terminated, truncated, _ = step(KEY, state, RIGHT, ending)
    assert bool(terminated) and not bool(truncated)
    auto = AutoReset(ENV)
    _, state = reset(KEY, level)
    state = state.replace(pos=jnp.array([0, 2]), t=jnp.asarray(2, jnp.int32))
    obs, state, _, _, truncated, info = jax.jit(auto.step)(KEY, state, STAY, level)
    assert bool(truncated) and int(state.t) == 0 and state.pos.tolist() == [0, 0]
    assert int(jnp.argmax(info["final_observation"])) == 2 + 36 * 1  # cell (0, 2), object present


# ---------------------------------------------------------------------------------------------
# random levels


@pytest.fixture(scope="module")
def all_levels():
    return gw.sample_levels(KEY, 1000, "all")  # eager: runs the shared jitted sampler


def test_sample_levels_all_are_valid_connected_and_in_range(all_levels):
    levels = to_numpy(all_levels)
    gw.validate_level(levels, obs_size=10, obs_objects=5)
    size, n = np.asarray(levels.height), np.asarray(levels.obj_mask).sum(1)
    np.testing.assert_array_equal(size, levels.width)
    assert set(size.tolist()) == set(range(4, 11)) and set(n.tolist()) == set(range(1, 6))
    mask = np.asarray(levels.obj_mask)
    reward = np.asarray(levels.obj_reward)
    assert np.all(reward[:, 0] > 0) and reward[mask].min() < -0.9 and reward[mask].max() > 0.9
    term, respawn = np.asarray(levels.obj_p_terminate)[mask], np.asarray(levels.obj_p_respawn)[mask]
    assert (
        0.01 <= term.min() and term.max() <= 1.0 and 1e-3 <= respawn.min() <= respawn.max() <= 0.1
    )
    assert np.median(term) == pytest.approx(0.1, rel=0.2)  # log-uniform: median sqrt(lo * hi)
    steps = np.asarray(levels.max_steps)
    assert (
        20 <= steps.min() and steps.max() <= 750 and np.median(steps) == pytest.approx(122, rel=0.2)
    )
    assert np.all(np.asarray(levels.lifetime) == 1000)
    walls = np.asarray(levels.walls).sum((1, 2))
    assert walls.max() <= 15 and walls.mean() > 2
    assert all(connected(index(levels, i)) for i in range(1000))


def test_lifetime_distributions_and_mixed_configs():
    sample = gw.sample_levels  # every random distribution runs the program "all" compiled
    life = np.asarray(sample(KEY, 1000, "all_vrandlife").lifetime)
    assert 10 <= life.min() < 20 and 200 < life.max() <= 250
    assert np.median(life) == pytest.approx(50, rel=0.25)  # log-uniform [10, 250]
    mixed = to_numpy(sample(KEY, 1000, "mixed"))  # the program every config name runs
    jitted = jax.jit(gw.sample_levels, static_argnums=(1, 2))(KEY, 1000, "mixed")
    jax.tree.map(np.testing.assert_array_equal, to_numpy(jitted), mixed)
    assert set(np.asarray(mixed.height).tolist()) == {9, 11, 13}
    gw.validate_level(mixed, obs_size=13, obs_objects=5)


def test_vmapped_levels_match_levels_run_one_by_one(all_levels):
    env = gw.GridWorld(index(all_levels, 0), obs="mlp", obs_size=10, obs_objects=5)

    def rollout(key, level):
        obs, state = env.reset(key, level)

        def body(carry, k):
            state, obs = carry
            k_act, k_step = jax.random.split(k)
            action = jax.random.randint(k_act, (), 0, 5)
            obs, state, reward, terminated, truncated, _ = env.step(k_step, state, action, level)
            return (state, obs), (obs.sum(), state.pos, reward, terminated, truncated)

        return jax.lax.scan(body, (state, obs), jax.random.split(key, 60))[1]

    keys = jax.random.split(KEY, 1000)
    batched = jax.jit(jax.vmap(rollout))(keys, all_levels)  # 1,000 levels, one program
    obs_sum, pos, reward, terminated, truncated = map(np.asarray, batched)
    assert np.all(obs_sum >= 1) and np.all(np.isfinite(reward))
    assert np.all(pos < np.asarray(all_levels.height)[:, None, None])
    assert reward.any() and terminated.any() and truncated.any()
    single = jax.jit(rollout)
    for i in (0, 1, 500, 999):
        one = single(keys[i], index(all_levels, i))
        for a, b in zip(one, batched, strict=True):
            np.testing.assert_array_equal(a, b[i])


def test_mutate_level_makes_one_small_valid_edit():
    _, base = envs.make("gridworld/long_dense")
    n = 400
    out = jax.jit(jax.vmap(gw.mutate_level, in_axes=(0, None)))(jax.random.split(KEY, n), base)
    out = to_numpy(out)
    gw.validate_level(out, obs_size=11, obs_objects=4)
    kinds = collections.Counter()
    b = {f.name: np.asarray(getattr(base, f.name)) for f in dataclasses.fields(gw.Level)}
    for i in range(n):
        level = index(out, i)
        changed = [f for f in b if not np.array_equal(np.asarray(getattr(level, f)), b[f])]
        if changed == ["walls"]:
            assert connected(level)
            diff = int(level.walls.sum()) - int(b["walls"].sum())
            cells = int((np.asarray(level.walls) != b["walls"]).sum())
            kinds[{1: "add", -1: "remove", 0: "move"}[diff]] += 1
            assert cells == (2 if diff == 0 else 1)
        else:
            assert len(changed) == 1, changed
            field = changed[0]
            assert field in ("obj_reward", "obj_p_terminate", "obj_p_respawn", "start", "obj_pos")
            if field.startswith("obj_"):  # one object's value or cell
                rows = np.asarray(getattr(level, field)) != b[field]
                assert rows.reshape(gw.MAX_OBJECTS, -1).any(1).sum() == 1
            kinds[field] += 1
    assert set(kinds) == {"add", "remove", "move", "obj_reward", "obj_p_terminate"} | {
        "obj_p_respawn",
        "start",
        "obj_pos",
    }, kinds


# ---------------------------------------------------------------------------------------------
# validation


def _replace(**kw):
    return dataclasses.replace(hand_level(objects=[(0, 1, 0.5, 0.0, 0.0), (2, 2, -1, 0, 0)]), **kw)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(height=jnp.asarray(14)), r"height=14 must be in \[1, MAX_SIZE=13\]"),
        (dict(width=jnp.asarray(0)), r"width=0 must be in"),
        (dict(walls=jnp.zeros((15, 15), bool)), r"walls must have shape \(13, 13\)"),
        (dict(obj_p_terminate=jnp.full(8, 1.5)), r"obj_p_terminate must be in \[0, 1\]"),
        (dict(obj_p_respawn=jnp.full(8, -0.1)), r"obj_p_respawn must be in \[0, 1\]"),
        (dict(obj_reward=jnp.full(8, jnp.nan)), r"obj_reward must be finite"),
        (dict(max_steps=jnp.asarray(0)), r"max_steps must be >= 1"),
        (dict(lifetime=jnp.asarray(0)), r"lifetime must be >= 1"),
        (dict(start=jnp.array([1, 0])), r"start=\(1, 0\) is a wall"),
        (dict(start=jnp.array([0, 6])), r"start=\(0, 6\) is outside the 6x6 grid"),
        (dict(obj_pos=jnp.zeros((8, 2), int).at[0].set(7)), r"obj_pos\[0\]=\(7, 7\) is outside"),
        (dict(obj_pos=jnp.ones((8, 2), int)), r"obj_pos\[1\]=\(1, 1\) is also obj_pos\[0\]"),
        (dict(height=jnp.asarray(1), width=jnp.asarray(2)), r"need 3 free cells.*has 2"),
    ],
)
def test_bad_levels_raise_value_errors_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        gw.validate_level(_replace(**change))


def test_bad_env_arguments_raise_value_errors():
    level = _replace()
    with pytest.raises(
        ValueError, match=r"obj_mask: 2 objects, but this env observes obs_objects=1"
    ):
        gw.GridWorld(level, obs_objects=1)
    with pytest.raises(ValueError, match=r"height=6 is larger than this env's obs_size=4"):
        gw.GridWorld(level, obs_size=4)
    with pytest.raises(ValueError, match=r"Did you mean: gridworld/dense"):
        envs.make("gridworld/dens")
    with pytest.raises(
        ValueError, match=r"unknown gridworld id .CartPole-v1.\. Known: gridworld/dense"
    ):
        gw.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"obs must be one of.*Did you mean: mlp"):
        envs.make("gridworld/dense", obs="mpl")
    with pytest.raises(ValueError, match=r"'max_step'.*valid keys"):
        envs.make("gridworld/dense", max_step=3)
    with pytest.raises(ValueError, match=r"max_steps must be >= 1, got 0"):
        envs.make("gridworld/dense", max_steps=0)
    with pytest.raises(ValueError, match=r"height=14 must be in \[1, MAX_SIZE=13\]"):
        gw.GridWorld(dataclasses.replace(level, height=jnp.asarray(14)), obs_size=11)
    with pytest.raises(ValueError, match=r"unknown level distribution 'alll'.*Did you mean: all"):
        gw.sample_levels(KEY, 4, "alll")
    with pytest.raises(ValueError, match=r"concrete"):
        jax.jit(gw.validate_level)(level)
    with pytest.raises(ValueError, match=r"start=\(1, 0\) is a wall"):
        gw.make_level(3, 3, start=(1, 0), walls=[(1, 0)], objects=[], max_steps=5)


# ---------------------------------------------------------------------------------------------
# the optimum


def test_optimal_return_of_hand_levels():
    # Shortest path (0, 0) -> (3, 3) around the wall is 6 steps: gamma^5, or 0 if too slow.
    level = hand_level(height=4, width=4, objects=[(3, 3, 1.0, 1.0, 0.0)], max_steps=10)
    assert gw.optimal_return(level, gamma=0.9) == pytest.approx(0.9**5)
    assert gw.optimal_return(level, horizon=5) == 0.0
    # Respawn in place with p = 1: collect every other step (steps 1, 3, 5 of 6).
    corridor = dict(height=1, width=2, walls=[], objects=[(0, 1, 1.0, 0.0, 1.0)], max_steps=6)
    assert gw.optimal_return(hand_level(**corridor)) == pytest.approx(3.0)
    # Random respawn and termination: value iteration equals the env's Monte Carlo return of the
    # optimal policy (always push right: stand on the object's cell).
    corridor.update(objects=[(0, 1, 1.0, 0.2, 0.3)], max_steps=HORIZON)
    level = hand_level(**corridor)
    n = 10_000
    returns = constant_action_return(jax.random.split(KEY, n), level, RIGHT)
    best = gw.optimal_return(level)
    assert abs(float(returns.mean()) - best) < 4 * float(returns.std()) / np.sqrt(n), best


def test_tabular_a2c_reaches_the_value_iteration_optimum():
    from purejaxrl import a2c

    # +1 at (0, 0) behind a wall (4 steps) or +0.3 at (2, 4) next door (2 steps); 8 steps to act.
    level = hand_level(
        height=5,
        width=5,
        start=(2, 2),
        walls=[(1, 1), (1, 2)],
        objects=[(0, 0, 1.0, 1.0, 0.0), (2, 4, 0.3, 1.0, 0.0)],
        max_steps=8,
    )
    best = gw.optimal_return(level)
    assert best == pytest.approx(1.0)
    # hidden_sizes=() with one shared (identity) torso: linear policy and value on the one-hot
    # state, i.e. tabular. (Separate torsos with no hidden layer do not give that.)
    cfg = a2c.A2CConfig(
        env="gridworld/sparse",
        hidden_sizes=(),
        shared_torso=True,
        total_timesteps=32_000,
        num_envs=16,
        num_steps=8,
        learning_rate=0.05,
        gamma=0.99,
    )
    agent = a2c.make_agent(cfg)
    returns = np.asarray(jax.jit(agent.train)(KEY, level).metrics["episode_return"])
    assert returns[:5].mean() < 0.5 * best  # a random policy rarely gets there in time
    assert returns[-20:].mean() >= 0.95 * best


def test_make_inside_a_trace_builds_the_concrete_default_level():
    """`envs.make` inside a jitted / vmapped function (e.g. a sweep's make_agent) validates the
    default level, so the level must stay concrete under the trace."""

    @jax.jit
    def height(x):
        _, level = envs.make("gridworld/small")
        return x + level.height

    _, level = envs.make("gridworld/small")
    assert int(height(0)) == int(level.height)


def test_a_fixed_spawn_env_equals_a_random_capable_env_on_fixed_levels():
    """An env made without random spawning skips the random-cell draws: on fixed-spawn levels
    it steps exactly like an env that can spawn at random; a default level that spawns at random
    needs the capable env."""
    fixed = gw.GridWorld(hand_level(), obs="tabular", obs_size=6, obs_objects=2)
    assert not fixed.random_spawn and ENV.random_spawn
    level = hand_level(objects=[(0, 1, 0.5, 0.0, 0.3), (2, 2, -1.0, 0.5, 0.2)])
    keys = jax.random.split(KEY, 64)

    def episode(env):
        def body(state, key):
            k_act, k_step = jax.random.split(key)
            obs, state, reward, term, trunc, _ = env.step(
                k_step, state, jax.random.randint(k_act, (), 0, gw.NUM_ACTIONS), level
            )
            return state, (obs, reward, term, state.obj_pos)

        _, state = env.reset(KEY, level)
        return jax.lax.scan(body, state, keys)[1]

    for a, b in zip(
        jax.jit(lambda: episode(fixed))(), jax.jit(lambda: episode(ENV))(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="spawns at random"):
        gw.GridWorld(hand_level(random_spawn=True), random_spawn=False)
