"""Tests for envs/multimodal.py: the two-mode bandit and point mass, and the claim they exist for
(a unimodal Gaussian policy pays for its unimodality where a two-component mixture does not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtri

import envs
from envs import multimodal as mm
from envs.wrappers import EpisodeStatistics

KEY = jax.random.key(0)
BANDIT, POINTMASS = mm.BANDIT_ID, mm.POINTMASS_ID
OPEN = jnp.array([False, False])
LEFT_BLOCKED = jnp.array([True, False])
RIGHT_BLOCKED = jnp.array([False, True])


# ---------------------------------------------------------------------------------------------
# registry and params


def test_ids_registered_and_make_applies_overrides():
    ids = envs.registered()
    assert BANDIT in ids and POINTMASS in ids
    env, params = envs.make(BANDIT)
    assert env.name == BANDIT and params == mm.BanditParams()
    assert env.action_space(params).shape == (1,)
    assert env.observation_space(params).shape == (3,)
    env, params = envs.make(BANDIT, action_dim=2, horizon=4, p_block=0.0)
    assert (params.action_dim, params.horizon, params.p_block) == (2, 4, 0.0)
    assert env.default_params == params
    assert env.action_space(params).shape == (2,)
    env, params = envs.make(POINTMASS, max_steps=30)
    assert env.name == POINTMASS and params.max_steps == 30
    assert env.action_space(params).shape == (2,)
    assert env.observation_space(params).shape == (5,)


@pytest.mark.parametrize(
    "env_id, overrides, match",
    [
        (BANDIT, {"horizn": 2}, "horizn.*valid keys: action_dim"),
        (BANDIT, {"horizon": 0}, "horizon must be >= 1"),
        (BANDIT, {"horizon": -3}, "horizon must be >= 1"),
        (BANDIT, {"horizon": 1.5}, "horizon must be an integer"),
        (BANDIT, {"action_dim": 0}, "action_dim must be >= 1"),
        (BANDIT, {"width": 0.0}, "width must be > 0"),
        (BANDIT, {"mode": 1.5}, "mode must be in"),
        (BANDIT, {"p_block": 1.2}, "p_block must be in"),
        (POINTMASS, {"bogus": 1}, "bogus"),
        (POINTMASS, {"max_steps": 0}, "max_steps must be >= 1"),
        (POINTMASS, {"max_steps": 5}, "needs 7 steps"),
        (POINTMASS, {"start_noise": 0.2}, "gate_halfheight"),
        (POINTMASS, {"goal_x": 0.95}, "inside the arena"),
    ],
)
def test_bad_overrides_raise_value_error(env_id, overrides, match):
    with pytest.raises(ValueError, match=match):
        envs.make(env_id, **overrides)


# ---------------------------------------------------------------------------------------------
# reward landscapes


def test_bandit_reward_optimum_valley_symmetry_and_blocking():
    p = mm.BanditParams()
    m = p.mode
    reward = jax.jit(mm.bandit_reward)
    r = lambda a, blocked=OPEN: np.asarray(
        reward(jnp.asarray(a, jnp.float32)[..., None], blocked, p)
    )
    assert mm.bandit_optimal_return(p) == 1.0
    np.testing.assert_allclose(r([-m, m]), [1.0, 1.0], atol=1e-6)  # the documented optimum
    assert r(0.0) == pytest.approx(-p.valley_penalty, abs=1e-6)  # the valley
    grid = np.linspace(-1.0, 1.0, 401, dtype=np.float32)
    assert r(grid).max() <= 1.0 + 1e-6
    assert np.all(r(grid[np.abs(np.abs(grid) - m) > 0.3]) < 0.02)  # only the modes pay
    np.testing.assert_allclose(r(grid), r(-grid), atol=1e-6)  # symmetric
    np.testing.assert_allclose(r(grid, LEFT_BLOCKED), r(-grid, RIGHT_BLOCKED), atol=1e-6)
    # a blocked mode pays nothing; the open one still pays the optimum
    np.testing.assert_allclose(r([-m, m], RIGHT_BLOCKED), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(r([-m, m], LEFT_BLOCKED), [0.0, 1.0], atol=1e-6)
    assert r(5.0) == r(1.0)  # actions are clipped to the box
    # with d = 2 the second axis matters too (no free axis to park entropy in)
    p2 = p.replace(action_dim=2)
    r2 = np.asarray(reward(jnp.array([[m, 0.0], [m, 0.3], [-m, -0.3]]), OPEN, p2))
    np.testing.assert_allclose(r2[0], 1.0, atol=1e-6)
    assert np.all(r2[1:] < 0.02)


def test_pointmass_reward_goals_wall_and_blocking():
    p = mm.PointMassParams()
    pos = jnp.array([[-p.goal_x, 0.0], [p.goal_x, 0.0], [0.0, 0.0], [0.0, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(mm.pointmass_reward(pos, OPEN, p), [1.0, 1.0, 0.0, -0.05, 0.0])
    np.testing.assert_allclose(
        mm.pointmass_reward(pos, RIGHT_BLOCKED, p), [1.0, 0.0, 0.0, -0.05, 0.0]
    )
    mirrored = pos * jnp.array([-1.0, 1.0])
    np.testing.assert_allclose(
        mm.pointmass_reward(mirrored, LEFT_BLOCKED, p), mm.pointmass_reward(pos, RIGHT_BLOCKED, p)
    )
    assert mm.pointmass_min_steps(p) == 7
    assert mm.pointmass_optimal_return(p) == 1.0
    assert mm.pointmass_optimal_return(p, gamma=0.9) == pytest.approx(0.9**6)


# ---------------------------------------------------------------------------------------------
# env API: contexts, termination, jit / vmap, auto-reset statistics


def test_bandit_contexts_drawn_at_reset_with_p_block():
    env, p = envs.make_raw(BANDIT, horizon=3)
    obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(KEY, 4000), p)
    blocked = np.asarray(state.blocked)
    assert not np.any(blocked.all(axis=1))  # at most one mode blocked
    assert blocked.any(axis=1).mean() == pytest.approx(p.p_block, abs=0.03)
    assert blocked[:, 0].mean() == pytest.approx(blocked[:, 1].mean(), abs=0.03)
    np.testing.assert_array_equal(np.asarray(obs)[:, :2], blocked.astype(np.float32))
    _, state0 = env.reset(KEY, p.replace(p_block=0.0))
    assert not np.asarray(state0.blocked).any()
    # the context is fixed within the episode; terminated (not truncated) after `horizon` steps
    step = jax.jit(env.step)
    obs, state = env.reset(KEY, p)
    for t in range(1, 4):
        obs2, state, reward, term, trunc, info = step(KEY, state, jnp.array([0.6]), p)
        assert bool(term) == (t == 3) and not bool(trunc) and info == {}
        np.testing.assert_array_equal(obs2[:2], obs[:2])
        assert float(obs2[2]) == pytest.approx(t / 3)


@pytest.mark.parametrize("env_id", [BANDIT, POINTMASS])
def test_jit_and_vmap_over_keys(env_id):
    env, p = envs.make(env_id)
    space = env.action_space(p)
    keys = jax.random.split(KEY, 8)

    @jax.jit
    def reset_and_step(keys):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, p)
        actions = jax.vmap(space.sample)(keys)
        return obs, jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, actions, p)

    obs0, (obs, _, reward, term, trunc, info) = reset_and_step(keys)
    n_obs = env.observation_space(p).shape[0]
    assert obs0.shape == obs.shape == (8, n_obs) and obs.dtype == jnp.float32
    assert reward.shape == term.shape == trunc.shape == (8,)
    assert reward.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_
    assert set(info) == {"final_observation"}
    assert bool(jax.vmap(env.observation_space(p).contains)(obs0).all())
    assert len({tuple(np.asarray(o)) for o in obs0}) > 1  # keys differ -> contexts/starts differ


def _open_mode_policy(env_id, obs):
    """The optimal policy: the mode (bandit) or full speed towards the goal (point mass) that the
    context leaves open (right unless the right one is blocked)."""
    blocked_right = obs[3] > 0.5 if env_id == POINTMASS else obs[1] > 0.5
    side = jnp.where(blocked_right, -1.0, 1.0)
    if env_id == BANDIT:
        return side[None] * 0.6
    return jnp.stack([side, jnp.clip(-obs[1] / 0.1, -1.0, 1.0)])  # and steer y back to 0


@pytest.mark.parametrize(
    "env_id, overrides, length", [(BANDIT, {"horizon": 3}, 3), (POINTMASS, {"p_block": 0.5}, 7)]
)
def test_auto_reset_statistics_show_optimal_episodes(env_id, overrides, length):
    env, p = envs.make(env_id, **overrides)
    env = EpisodeStatistics(env)

    @jax.jit
    def run(key):
        obs, state = env.reset(key, p)

        def body(carry, k):
            obs, state = carry
            obs, state, _, term, trunc, info = env.step(k, state, _open_mode_policy(env_id, obs), p)
            return (obs, state), (term, trunc, info)

        return jax.lax.scan(body, (obs, state), jax.random.split(key, 5 * length))[1]

    for key in jax.random.split(KEY, 3):
        term, trunc, info = jax.tree.map(np.asarray, run(key))
        done = info["episode_done"]
        np.testing.assert_array_equal(
            np.flatnonzero(done), np.arange(length - 1, 5 * length, length)
        )
        assert term[done].all() and not trunc.any()
        np.testing.assert_array_equal(info["episode_length"][done], length)
        optimum = (
            mm.bandit_optimal_return(p) if env_id == BANDIT else mm.pointmass_optimal_return(p)
        )
        np.testing.assert_allclose(info["episode_return"][done], optimum, atol=1e-5)


def test_pointmass_truncates_and_blocked_goal_does_not_end_the_episode():
    env, p = envs.make_raw(POINTMASS, p_block=1.0, max_steps=12)
    obs, state = env.reset(KEY, p)
    state = state.replace(blocked=RIGHT_BLOCKED)
    step = jax.jit(env.step)
    total, terms, truncs = 0.0, [], []
    for _ in range(12):  # drive right through the blocked goal to the edge of the arena
        obs, state, reward, term, trunc, _ = step(KEY, state, jnp.array([1.0, 0.0]), p)
        total += float(reward)
        terms.append(bool(term))
        truncs.append(bool(trunc))
    assert not any(terms) and truncs == [False] * 11 + [True]
    assert total == 0.0 and float(state.pos[0]) == 1.0  # clipped to the arena


# ---------------------------------------------------------------------------------------------
# the claim: unimodality costs (bandit, d = 1, expectations by quantile quadrature)

_EPS = ndtri((jnp.arange(4000) + 0.5) / 4000)  # standard-normal quantiles


def gaussian_value(mean, std, blocked=OPEN):
    """E[r(a)], a ~ N(mean, std^2), at the default params (the reward clips a to the box);
    broadcasts mean and std."""
    return _gaussian_value(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), blocked)


@jax.jit
def _gaussian_value(mean, std, blocked):
    a = mean[..., None] + std[..., None] * _EPS
    return jnp.mean(mm.bandit_reward(a[..., None], blocked, mm.BanditParams()), axis=-1)


def mixture_value(weight_left, std, blocked=OPEN, m=0.6):
    """A two-component mixture, one component of std `std` on each mode."""
    return weight_left * gaussian_value(-m, std, blocked) + (1 - weight_left) * gaussian_value(
        m, std, blocked
    )


def gaussian_std_for_entropy(entropy):
    """The std of a 1-D Gaussian with this differential entropy (nats)."""
    return float(np.exp(entropy - 0.5 * np.log(2 * np.pi * np.e)))


def mixture_entropy(std, m=0.6):
    x = np.linspace(-m - 12 * std, m + 12 * std, 200_001)
    pdf = lambda mu: np.exp(-0.5 * ((x - mu) / std) ** 2) / (std * np.sqrt(2 * np.pi))
    dens = 0.5 * pdf(-m) + 0.5 * pdf(m)
    return float(-np.sum(dens * np.log(np.maximum(dens, 1e-300))) * (x[1] - x[0]))


def test_gaussian_averaging_the_modes_fails_where_a_mixture_holds_both():
    # a Gaussian centred on the valley (the symmetric stationary point), at its best std
    centred = float(gaussian_value(0.0, jnp.geomspace(0.01, 2.0, 60)).max())
    mixture = float(mixture_value(0.5, 0.045))
    assert centred < 0.1 < 0.85 < mixture


def test_gaussian_at_sac_target_entropy_loses_to_a_mixture_of_equal_entropy():
    entropy = -1.0  # SAC's default target entropy for d = 1 (nats, in action space)
    std_gauss = gaussian_std_for_entropy(entropy)  # ~0.089
    std_comp = std_gauss / 2  # a separated 2-mixture: entropy of a component + log 2
    assert mixture_entropy(std_comp) == pytest.approx(entropy, abs=1e-3)
    means = jnp.linspace(0.0, 1.0, 101)[:, None]  # the reward is symmetric: means >= 0 suffice
    stds = std_gauss * jnp.geomspace(1.0, 10.0, 12)[None, :]  # any std keeping the entropy
    best_gauss = float(gaussian_value(means, stds).max())
    best_mixture = float(mixture_value(0.5, std_comp))
    # measured: Gaussian ~0.73, mixture ~0.91 of the optimum 1.0
    assert best_gauss < 0.78 and best_mixture > 0.87 and best_mixture - best_gauss > 0.15


def test_collapsed_gaussian_loses_return_and_signal_when_its_mode_is_blocked():
    std = gaussian_std_for_entropy(-1.0) / 2
    # where the mode is open, a collapsed Gaussian matches a mixture of the same component std:
    # with the context observed, only entropy or learning dynamics can make unimodality cost
    collapsed_open = float(gaussian_value(0.6, std))
    assert collapsed_open == pytest.approx(float(mixture_value(0.5, std)), abs=1e-5)
    assert collapsed_open > 0.87
    # its own mode blocked: ~nothing, and the local gradient does not point to the open mode
    value_blocked = lambda mean: gaussian_value(mean, std, RIGHT_BLOCKED)
    assert float(value_blocked(0.6)) < 0.01
    assert float(jax.grad(value_blocked)(0.6)) > -1e-4  # (the valley even pushes it away)
    # ignoring the context costs a quarter of the return at p_block = 0.5
    p_block = mm.BanditParams().p_block
    expected = (1 - p_block / 2) * collapsed_open + (p_block / 2) * float(value_blocked(0.6))
    assert expected < 0.7
    # a mixture holding both modes keeps ~half, and its weight gradient moves it to the open one
    value_mix = lambda logit: mixture_value(jax.nn.sigmoid(logit), std, RIGHT_BLOCKED)
    assert float(value_mix(0.0)) > 0.4
    assert float(jax.grad(value_mix)(0.0)) > 0.2
    assert float(mixture_value(1.0, std, RIGHT_BLOCKED)) > 0.87  # reweighted on the context


def test_pointmass_committing_to_a_side_succeeds_where_averaging_fails():
    env, p = envs.make_raw(POINTMASS)

    @jax.jit
    def returns(key, side, noise):
        """Undiscounted first-episode returns [B] of `action = (side_b, steer y to 0) + noise * N`."""

        def episode(key, side):
            key_reset, key_steps = jax.random.split(key)
            _, state = env.reset(key_reset, p)

            def body(carry, k):
                state, alive, total = carry
                steer_y = jnp.clip(-state.pos[1] / p.step_size, -1.0, 1.0)
                action = jnp.stack([side, steer_y]) + noise * jax.random.normal(k, (2,))
                _, state, reward, term, trunc, _ = env.step(k, state, action, p)
                return (state, alive & ~(term | trunc), total + jnp.where(alive, reward, 0.0)), None

            init = (state, jnp.bool_(True), jnp.float32(0.0))
            keys = jax.random.split(key_steps, p.max_steps)
            return jax.lax.scan(body, init, keys)[0][2]

        return jax.vmap(episode)(jax.random.split(key, side.shape[0]), side)

    k_side, k_run = jax.random.split(KEY)
    sides = jnp.where(jax.random.bernoulli(k_side, 0.5, (256,)), 1.0, -1.0)
    committed = float(returns(k_run, sides, 0.3).mean())  # a mixture committing per episode
    averaged = float(returns(k_run, jnp.zeros(256), 0.3).mean())  # the modes' mean action
    assert committed > 0.95 and averaged < 0.2
