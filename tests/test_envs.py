"""Tests for envs/: registry, raw adapters, auto-reset semantics and the wrappers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import spaces
from envs.core import Environment
from tests.helpers import rollout


def random_actions(space, key, num_steps, num_envs=None):
    shape = (num_steps,) if num_envs is None else (num_steps, num_envs)
    if isinstance(space, spaces.Discrete):
        return jax.random.randint(key, shape, 0, space.n, dtype=jnp.int32)
    return jax.random.uniform(key, shape + space.shape, jnp.float32, space.low, space.high)


KEY = jax.random.key(0)

pytestmark = pytest.mark.filterwarnings("ignore:Brax System:UserWarning")


# ---------------------------------------------------------------------------------------------
# registry


def test_registered_holds_every_family_once():
    ids = envs.registered()
    for env_id in [
        "CartPole-v1",
        "Breakout-MinAtar",
        "Catch-bsuite",
        "FourRooms-misc",
        "brax/ant",
        "brax/walker2d",
        "multimodal/bandit",
        "gridworld/dense",
    ]:
        assert env_id in ids
    assert "brax/fast" not in ids
    assert len(ids) == len(set(ids))


def test_unknown_id_suggests_close_match():
    with pytest.raises(ValueError, match="CartPole-v1"):
        envs.make("Cartpole-v1")
    with pytest.raises(ValueError, match="brax/hopper"):
        envs.make("hopper")


def test_unknown_override_raises():
    with pytest.raises(ValueError, match="max_step_in_episode") as err:
        envs.make("CartPole-v1", max_step_in_episode=3)
    assert "max_steps_in_episode" in str(err.value)  # the valid keys are listed
    with pytest.raises(ValueError, match="bogus"):
        envs.make("brax/inverted_pendulum", bogus=1)
    with pytest.raises(ValueError, match="backend"):
        envs.make("brax/swimmer", backend="spring")


def test_overrides_set_params_and_name():
    env, params = envs.make("CartPole-v1", max_steps_in_episode=200, gravity=5.0)
    assert params.max_steps_in_episode == 200 and params.gravity == 5.0
    assert env.default_params.max_steps_in_episode == 200
    assert env.name == "CartPole-v1"
    assert env.action_space(params) == spaces.Discrete(2)
    assert env.observation_space(params).shape == (4,)


def test_minatar_flattened_by_default():
    env, params = envs.make("Breakout-MinAtar")
    obs, _ = jax.eval_shape(env.reset, KEY, params)
    assert obs.shape == (400,) and obs.dtype == jnp.float32
    assert env.observation_space(params).shape == (400,)
    env, params = envs.make("Breakout-MinAtar", flatten=False)
    obs, _ = jax.eval_shape(env.reset, KEY, params)
    assert obs.shape == (10, 10, 4)
    assert env.observation_space(params).shape == (10, 10, 4)


def test_spaces_pendulum():
    env, params = envs.make("Pendulum-v1")
    space = env.action_space(params)
    assert isinstance(space, spaces.Box) and space.shape == (1,)
    np.testing.assert_allclose(space.low, [-2.0])
    np.testing.assert_allclose(space.high, [2.0])


# ---------------------------------------------------------------------------------------------
# auto-reset semantics


def test_cartpole_truncation_at_max_steps():
    env, params = envs.make("CartPole-v1", max_steps_in_episode=10)
    actions = jnp.tile(jnp.array([0, 1], jnp.int32), 10)  # alternate: the pole stays up
    obs0, (obs, reward, term, trunc, info), _ = rollout(env, params, KEY, actions)
    assert reward.dtype == np.float32 and reward.shape == (20,)
    assert term.dtype == np.bool_ and trunc.dtype == np.bool_
    assert not term.any()
    np.testing.assert_array_equal(np.flatnonzero(trunc), [9, 19])
    final = info["final_observation"]
    # at the truncation step: obs is the new episode's reset obs, final_observation the old one
    assert not np.allclose(final[9], obs[9])
    assert np.all(np.abs(obs[9]) <= 0.05)  # a CartPole reset obs
    not_done = ~(term | trunc)
    np.testing.assert_array_equal(final[not_done], obs[not_done])


def test_cartpole_pole_falls_terminates():
    env, params = envs.make("CartPole-v1")
    actions = jnp.ones((60,), jnp.int32)  # always push right: the pole falls
    _, (obs, reward, term, trunc, info), _ = rollout(env, params, KEY, actions)
    first = int(np.flatnonzero(term)[0])
    assert 3 < first < 40
    assert not trunc.any()
    final = info["final_observation"][first]
    assert abs(final[2]) > 12 * 2 * np.pi / 360 or abs(final[0]) > 2.4
    assert np.all(np.abs(obs[first]) <= 0.05)  # already reset


class _NoisyStepEnv(Environment):
    """A tiny env whose step *uses* its key: AutoReset must then split it."""

    def reset(self, key, params):
        return jax.random.uniform(key, (2,)), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params):
        obs = jax.random.uniform(key, (2,))
        t = state + 1
        return obs, t, jnp.float32(1.0), t >= 2, jnp.bool_(False), {}

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (2,))

    def action_space(self, params):
        return spaces.Discrete(2)

    @property
    def default_params(self):
        return None


def test_autoreset_splits_key_only_when_step_uses_it():
    env = envs.AutoReset(_NoisyStepEnv())
    _, state = env.reset(KEY, None)
    assert env._step_uses_key(KEY, state, jnp.int32(0), None)
    _, (obs, _, term, _, info), _ = rollout(env, None, KEY, jnp.zeros((4,), jnp.int32))
    assert term[1] and term[3]
    # the reset obs after a termination is not the same random draw as the final obs
    assert not np.allclose(obs[1], info["final_observation"][1])

    cartpole, params = envs.make("CartPole-v1")
    _, state = cartpole.reset(KEY, params)
    assert not cartpole._step_uses_key(KEY, state, jnp.int32(0), params)


# ---------------------------------------------------------------------------------------------
# wrappers


def test_episode_statistics_match_numpy():
    base, params = envs.make("Pendulum-v1", max_steps_in_episode=7)
    env = envs.EpisodeStatistics(base)
    actions = random_actions(env.action_space(params), KEY, 30)
    _, (_, reward, term, trunc, info), _ = rollout(env, params, KEY, actions)
    done = term | trunc
    np.testing.assert_array_equal(info["episode_done"], done)
    assert done.sum() == 4
    start = 0
    for t in np.flatnonzero(done):
        np.testing.assert_allclose(
            info["episode_return"][t], reward[start : t + 1].sum(), rtol=1e-5
        )
        assert info["episode_length"][t] == t + 1 - start == 7
        start = t + 1
    assert np.all(info["episode_return"][~done] == 0) and np.all(info["episode_length"][~done] == 0)
    assert info["episode_length"].dtype == np.int32 and info["episode_return"].dtype == np.float32


def test_vecenv_shapes_and_vmap_over_seeds():
    base, params = envs.make("CartPole-v1")
    env = envs.VecEnv(envs.EpisodeStatistics(base), num_envs=4)
    assert env.action_space(params) == spaces.Discrete(2)
    obs, state = env.reset(KEY, params)
    assert obs.shape == (4, 4)
    obs, state, reward, term, trunc, info = env.step(KEY, state, jnp.zeros(4, jnp.int32), params)
    assert obs.shape == (4, 4) and reward.shape == term.shape == trunc.shape == (4,)
    assert set(info) == {"final_observation", "episode_done", "episode_return", "episode_length"}
    assert info["final_observation"].shape == (4, 4)
    assert all(v.shape[0] == 4 for v in info.values())
    # the envs are independent draws
    assert not np.allclose(obs[0], obs[1])

    def run(key):
        actions = random_actions(env.action_space(params), key, 50, num_envs=4)
        obs0, state = env.reset(key, params)

        def body(state, x):
            k, a = x
            obs, state, reward, term, trunc, info = env.step(k, state, a, params)
            return state, (reward, info)

        return jax.lax.scan(body, state, (jax.random.split(key, 50), actions))[1]

    reward, info = jax.jit(jax.vmap(run))(jax.random.split(KEY, 3))
    assert reward.shape == (3, 50, 4)
    assert info["final_observation"].shape == (3, 50, 4, 4)
    assert info["episode_done"].any()  # random CartPole episodes end within 50 steps
    assert not np.allclose(reward[0], reward[1]) or not np.allclose(
        info["episode_length"][0], info["episode_length"][1]
    )


def _raw_observations(env, params, key, actions):
    """All observations a NormalizeObservation on top of `env` sees: reset obs + each step obs."""
    obs0, (obs, _, term, trunc, info), _ = rollout(env, params, key, actions)
    return obs0, obs, info["final_observation"], term | trunc


@pytest.mark.parametrize("num_envs", [None, 3])
def test_normalize_observation_matches_numpy(num_envs):
    base, params = envs.make("Pendulum-v1", max_steps_in_episode=10)
    env = base if num_envs is None else envs.VecEnv(base, num_envs)
    norm = envs.NormalizeObservation(env)
    actions = random_actions(base.action_space(params), KEY, 25, num_envs)
    obs0, obs, final, done = _raw_observations(env, params, KEY, actions)
    nobs0, (nobs, _, _, _, ninfo), state = rollout(norm, params, KEY, actions)

    seen = np.concatenate([obs0.reshape(-1, 3), obs.reshape(-1, 3)]).astype(np.float64)
    stats = envs.obs_norm_stats(state)
    assert stats.mean.shape == (3,)
    np.testing.assert_allclose(stats.mean, seen.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats.var, seen.var(0), rtol=1e-4, atol=1e-5)
    assert float(stats.count) == seen.shape[0]
    # the last step's obs and final_observation are normalised with the final statistics
    scale = 1.0 / np.sqrt(np.asarray(stats.var, np.float64) + 1e-8)
    expect = np.clip((obs[-1] - stats.mean) * scale, -10, 10)
    np.testing.assert_allclose(nobs[-1], expect, rtol=1e-4, atol=1e-4)
    expect_final = np.clip((final[-1] - stats.mean) * scale, -10, 10)
    np.testing.assert_allclose(ninfo["final_observation"][-1], expect_final, rtol=1e-4, atol=1e-4)
    # a step that ends the episodes (10-step episodes): both use the statistics of that step
    t = 9
    assert done[t].all()
    seen_t = np.concatenate([obs0.reshape(-1, 3), obs[: t + 1].reshape(-1, 3)]).astype(np.float64)
    m, v = seen_t.mean(0), seen_t.var(0)
    np.testing.assert_allclose(
        ninfo["final_observation"][t], (final[t] - m) / np.sqrt(v + 1e-8), rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(nobs[t], (obs[t] - m) / np.sqrt(v + 1e-8), rtol=1e-3, atol=1e-3)


def test_normalize_observation_frozen_and_per_env():
    base, params = envs.make("Pendulum-v1")
    # per-env statistics when the normaliser sits inside the envs.VecEnv
    venv = envs.VecEnv(envs.NormalizeObservation(base), 3)
    _, state = venv.reset(KEY, params)
    assert envs.obs_norm_stats(state).mean.shape == (3, 3)
    # frozen: given statistics are used as they are and never updated
    stats = envs.RunningMeanStd(
        mean=jnp.array([0.5, -0.5, 1.0]), var=jnp.array([4.0, 1.0, 0.25]), count=jnp.float32(7)
    )
    raw = envs.VecEnv(base, 2)
    frozen = envs.NormalizeObservation(raw, update=False, stats=stats)
    actions = random_actions(base.action_space(params), KEY, 5, 2)
    obs0, obs, _, _ = _raw_observations(raw, params, KEY, actions)
    nobs0, (nobs, *_), state = rollout(frozen, params, KEY, actions)
    expect = (obs - np.asarray(stats.mean)) / np.sqrt(np.asarray(stats.var) + 1e-8)
    np.testing.assert_allclose(nobs, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(envs.obs_norm_stats(state).var, stats.var)
    assert float(envs.obs_norm_stats(state).count) == 7
    # envs.replace_obs_norm_stats swaps the statistics inside a wrapped state
    wrapped = envs.EpisodeStatistics(frozen)
    _, wstate = wrapped.reset(KEY, params)
    new = envs.replace_obs_norm_stats(wstate, envs.RunningMeanStd.create((3,)))
    assert float(envs.obs_norm_stats(new).count) == 0


def test_normalize_reward_matches_numpy():
    gamma, num_envs, steps = 0.9, 3, 25
    base, params = envs.make("Pendulum-v1", max_steps_in_episode=10)
    env = envs.VecEnv(base, num_envs)
    norm = envs.NormalizeReward(env, gamma=gamma, clip=10.0)
    actions = random_actions(base.action_space(params), KEY, steps, num_envs)
    _, (_, reward, term, trunc, _), _ = rollout(env, params, KEY, actions)
    _, (_, scaled, _, _, _), state = rollout(norm, params, KEY, actions)
    done = term | trunc
    ret = np.zeros(num_envs)
    returns = []
    for t in range(steps):
        ret = gamma * ret + reward[t]
        returns.append(ret.copy())
        std = np.std(np.concatenate(returns))
        expect = np.clip(reward[t] / np.sqrt(std**2 + 1e-8), -10, 10)
        np.testing.assert_allclose(scaled[t], expect, rtol=2e-4, atol=1e-5)
        ret[done[t]] = 0.0
    np.testing.assert_allclose(
        np.sqrt(envs.reward_norm_stats(state).var), np.std(np.concatenate(returns)), rtol=1e-4
    )
    assert done.any()


def test_rescale_and_clip_action_pendulum():
    base, params = envs.make("Pendulum-v1")
    env = envs.RescaleAction(base, -1.0, 1.0)
    space = env.action_space(params)
    assert isinstance(space, spaces.Box)
    np.testing.assert_allclose(space.low, [-1.0])
    np.testing.assert_allclose(space.high, [1.0])
    _, state = base.reset(KEY, params)

    def next_obs(e, a):
        return np.asarray(e.step(KEY, state, jnp.array([a], jnp.float32), params)[0])

    for a, expect in [(1.0, 2.0), (-1.0, -2.0), (0.5, 1.0), (0.0, 0.0)]:
        np.testing.assert_allclose(next_obs(env, a), next_obs(base, expect), rtol=1e-6)
    np.testing.assert_allclose(next_obs(envs.ClipAction(base), 5.0), next_obs(base, 2.0), rtol=1e-6)
    np.testing.assert_allclose(next_obs(envs.ClipAction(env), 3.0), next_obs(base, 2.0), rtol=1e-6)


def test_info_keys_same_every_step_full_stack():
    base, params = envs.make("Pendulum-v1", max_steps_in_episode=5)
    env = envs.NormalizeReward(
        envs.NormalizeObservation(envs.VecEnv(envs.EpisodeStatistics(base), 2))
    )
    actions = random_actions(base.action_space(params), KEY, 12, 2)
    _, (obs, reward, term, trunc, info), _ = rollout(env, params, KEY, actions)
    assert set(info) == {"final_observation", "episode_done", "episode_return", "episode_length"}
    assert obs.shape == (12, 2, 3) and info["episode_return"].shape == (12, 2)
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(reward))
    assert env.name == "Pendulum-v1"


# ---------------------------------------------------------------------------------------------
# brax (one compile for the whole module)


@pytest.fixture(scope="module")
def brax_pendulum():
    env, params = envs.make("brax/inverted_pendulum", episode_length=5)

    @jax.jit
    def run(key, actions, params):
        obs0, state = env.reset(key, params)

        def body(state, a):
            obs, state, reward, term, trunc, info = env.step(key, state, a, params)
            return state, (obs, reward, term, trunc, info)

        return obs0, jax.lax.scan(body, state, actions)[1]

    return env, params, run


def test_brax_spaces_and_truncation(brax_pendulum):
    env, params, run = brax_pendulum
    assert env.name == "brax/inverted_pendulum"
    assert env.observation_space(params).shape == (4,)
    space = env.action_space(params)
    assert space.shape == (1,) and float(space.low[0]) == -1 and float(space.high[0]) == 1
    assert params.episode_length == 5
    obs0, (obs, reward, term, trunc, info) = run(KEY, jnp.zeros((12, 1)), params)
    assert obs0.shape == (4,) and obs0.dtype == jnp.float32 and obs.shape == (12, 4)
    assert reward.dtype == jnp.float32 and reward.shape == (12,)
    assert term.dtype == jnp.bool_ and trunc.dtype == jnp.bool_
    np.testing.assert_array_equal(np.flatnonzero(trunc), [4, 9])
    assert not term.any()
    assert set(info) == {"final_observation"}
    assert not np.allclose(info["final_observation"][4], obs[4])
    np.testing.assert_array_equal(info["final_observation"][3], obs[3])


def test_brax_termination_is_not_truncation(brax_pendulum):
    env, params, run = brax_pendulum
    # same compiled function: episode_length is a pytree leaf, not a static field
    _, (obs, reward, term, trunc, info) = run(
        KEY, jnp.ones((12, 1)), params.replace(episode_length=1000)
    )
    assert not trunc.any()
    assert term.any()  # full force one way: the pole falls past 0.2 rad
    t = int(np.flatnonzero(term)[0])
    assert abs(info["final_observation"][t][1]) > 0.2
