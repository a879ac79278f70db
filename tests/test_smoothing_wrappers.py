"""Policy smoothing (Kumar et al., ICLR 2022): ObservationNoise, FrameStack and their config wiring.

Agent runs are tiny and compile once per module (PPO: default, traced sigma, vmap over sigma,
smoothed with frame stacking; SAC: one smoothed run).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import spaces
from envs.core import Environment
from envs.wrappers import (
    AutoReset,
    ClipAction,
    EpisodeStatistics,
    FrameStack,
    ObservationNoise,
    RescaleAction,
    VecEnv,
)
from purejaxrl import a2c, actor_critic, evaluation, ppo, sac
from tests import tiny
from tests.helpers import assert_trees_close, rollout

KEY = jax.random.key(0)


class _Counter(Environment):
    """obs = [t, t + 0.5] at step t of an episode; terminates at t = 3 (hand-checkable stacks)."""

    def reset(self, key, params):
        return self._obs(jnp.int32(0)), jnp.int32(0)

    def step(self, key, state, action, params):
        t = state + 1
        return self._obs(t), t, jnp.float32(1.0), t >= 3, jnp.bool_(False), {}

    @staticmethod
    def _obs(t):
        t = t.astype(jnp.float32)
        return jnp.stack([t, t + 0.5])

    def observation_space(self, params):
        return spaces.Box(0.0, 10.0, (2,))

    def action_space(self, params):
        return spaces.Discrete(2)

    @property
    def default_params(self):
        return None


def _wrapper_types(env):
    out = []
    while hasattr(env, "env"):
        out.append(type(env))
        env = env.env
    return out


# ---------------------------------------------------------------------------------------------
# ObservationNoise


def test_observation_noise_is_zero_mean_sigma_std_and_independent():
    sigma = 0.3
    env = VecEnv(ObservationNoise(AutoReset(_Counter()), sigma), num_envs=512)
    clean = VecEnv(AutoReset(_Counter()), num_envs=512)
    actions = jnp.zeros((16, 512), jnp.int32)
    obs0, (obs, *_), _ = rollout(env, None, KEY, actions)
    obs0_c, (obs_c, *_), _ = rollout(clean, None, KEY, actions)
    noise = np.concatenate([(obs0 - obs0_c)[None], obs - obs_c])  # [17, 512, 2]
    assert abs(noise.mean()) < 0.01
    np.testing.assert_allclose(noise.std(), sigma, rtol=0.02)
    # independent across steps, envs and observation dimensions
    flat = noise.reshape(17, -1)
    assert abs(np.corrcoef(flat[:-1].ravel(), flat[1:].ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1]) < 0.03


def test_observation_noise_final_observation_contract():
    env = ObservationNoise(AutoReset(_Counter()), 0.5)
    clean = AutoReset(_Counter())
    actions = jnp.zeros((8,), jnp.int32)
    _, (obs, _, term, trunc, info), _ = rollout(env, None, KEY, actions)
    _, (obs_c, *_, info_c), _ = rollout(clean, None, KEY, actions)
    done = term | trunc
    np.testing.assert_array_equal(np.flatnonzero(done), [2, 5])
    final = info["final_observation"]
    # off episode ends: final == obs exactly (envs.core contract); at ends: an independent draw
    np.testing.assert_array_equal(final[~done], obs[~done])
    assert not np.any(
        np.isclose(final[done] - info_c["final_observation"][done], obs[done] - obs_c[done])
    )
    # the noisy final observation is the old episode's last one plus noise, not the reset obs
    np.testing.assert_allclose(final[done], info_c["final_observation"][done], atol=3.0)
    assert np.all(np.abs(final[done][:, 0] - 3.0) < 3.0)


def test_zero_sigma_is_the_identity_bit_for_bit():
    base, params = envs.make("CartPole-v1", max_steps_in_episode=5)
    actions = jnp.tile(jnp.array([0, 1], jnp.int32), 6)
    want = rollout(base, params, KEY, actions)[:2]
    got = rollout(ObservationNoise(base, 0.0), params, KEY, actions)[:2]
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(x, y)
    # a traced zero too (the wrapper is then in the program); against the op-by-op reset, another
    # program: CartPole's initial state may round differently in the last bit (1 ulp, seen with
    # XLA's backend optimisation level 0)
    traced = jax.jit(lambda s: ObservationNoise(base, s).reset(KEY, params)[0])(0.0)
    np.testing.assert_allclose(traced, base.reset(KEY, params)[0], rtol=1e-6, atol=1e-9)


def test_vmap_over_sigma_on_the_wrapped_step():
    base, params = envs.make("Pendulum-v1")
    _, state = base.reset(KEY, params)
    action = jnp.array([0.5])
    sigmas = jnp.array([0.0, 0.1, 1.0])

    @jax.jit
    @jax.vmap
    def step(sigma):
        return ObservationNoise(base, sigma).step(KEY, state, action, params)

    obs, new_state, reward, _, _, info = step(sigmas)
    clean_obs, clean_state, clean_reward, *_ = base.step(KEY, state, action, params)
    assert obs.shape == (3, 3)
    # The vmapped jitted step and the plain one are different programs (Pendulum's sin/cos,
    # vectorised or not): equal up to float rounding.
    close = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(obs[0], clean_obs, **close)
    # common random numbers: the same draw, scaled by sigma; the env itself is untouched
    np.testing.assert_allclose(obs[2] - clean_obs, 10 * (obs[1] - clean_obs), rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(obs[2] - clean_obs) > 0)
    np.testing.assert_allclose(reward, jnp.broadcast_to(clean_reward, (3,)), **close)
    for x, y in zip(jax.tree.leaves(new_state), jax.tree.leaves(clean_state), strict=True):
        np.testing.assert_allclose(x, jnp.broadcast_to(y, x.shape), **close)
    np.testing.assert_array_equal(info["final_observation"], obs)


def test_observation_noise_space_is_unbounded_same_shape():
    base, params = envs.make("CartPole-v1")
    space = ObservationNoise(base, 0.1).observation_space(params)
    assert space.shape == (4,) and not space.bounded


# ---------------------------------------------------------------------------------------------
# FrameStack


def test_frame_stack_contents_over_reset_steps_and_episode_end():
    env = FrameStack(AutoReset(_Counter()), 3)
    obs0, (obs, _, term, _, info), _ = rollout(env, None, KEY, jnp.zeros((5,), jnp.int32))
    o = lambda t: [t, t + 0.5]
    np.testing.assert_array_equal(obs0, o(0) * 3)  # filled with the first observation
    np.testing.assert_array_equal(obs[0], o(0) + o(0) + o(1))  # oldest first
    np.testing.assert_array_equal(obs[1], o(0) + o(1) + o(2))
    assert term[2]
    # episode end: a fresh stack of the new episode's first obs; the final stack ends at obs 3
    np.testing.assert_array_equal(obs[2], o(0) * 3)
    np.testing.assert_array_equal(info["final_observation"][2], o(1) + o(2) + o(3))
    np.testing.assert_array_equal(obs[3], o(0) + o(0) + o(1))
    not_done = ~term
    np.testing.assert_array_equal(info["final_observation"][not_done], obs[not_done])


def test_frame_stack_above_and_below_vecenv_agree_on_cartpole():
    base, params = envs.make("CartPole-v1", max_steps_in_episode=4)
    actions = jnp.ones((9, 3), jnp.int32)
    below = rollout(VecEnv(FrameStack(base, 2), 3), params, KEY, actions)[:2]
    above = rollout(FrameStack(VecEnv(base, 3), 2), params, KEY, actions)[:2]
    for x, y in zip(jax.tree.leaves(below), jax.tree.leaves(above), strict=True):
        np.testing.assert_array_equal(x, y)
    obs0, (obs, _, term, trunc, info) = below
    assert obs.shape == (9, 3, 8)
    raw = rollout(VecEnv(base, 3), params, KEY, actions)
    raw_obs0, (raw_obs, *_, raw_info), _ = raw
    np.testing.assert_array_equal(obs0, np.concatenate([raw_obs0, raw_obs0], -1))
    np.testing.assert_array_equal(obs[0], np.concatenate([raw_obs0, raw_obs[0]], -1))
    t = 3  # truncation at the 4th step
    assert np.all(trunc[t])
    np.testing.assert_array_equal(
        info["final_observation"][t],
        np.concatenate([raw_obs[t - 1], raw_info["final_observation"][t]], -1),
    )
    np.testing.assert_array_equal(obs[t], np.concatenate([raw_obs[t], raw_obs[t]], -1))


def test_frame_stack_observation_space_and_bad_num_frames():
    base, params = envs.make("CartPole-v1")
    inner = base.observation_space(params)
    space = FrameStack(base, 3).observation_space(params)
    assert space.shape == (12,)
    np.testing.assert_array_equal(space.high, np.tile(inner.high, 3))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_frames"):
            FrameStack(base, bad)


# ---------------------------------------------------------------------------------------------
# config wiring and agents

TINY = tiny.ppo_config(4)
SIGMAS = jnp.array([0.0, 0.3])


def _run_sigma(key, sigma):
    return ppo.make_train(dataclasses.replace(TINY, obs_noise_sigma=sigma))(key)


@pytest.fixture(scope="module")
def default_run():
    return jax.jit(ppo.make_train(TINY))(KEY)


@pytest.fixture(scope="module")
def single():
    """(key, sigma) -> TrainOutput with sigma traced: one compile, the noise wrapper in place."""
    return jax.jit(_run_sigma)


@pytest.fixture(scope="module")
def over_sigmas():
    return jax.jit(jax.vmap(_run_sigma, in_axes=(None, 0)))(KEY, SIGMAS)


def test_single_env_stack_follows_the_config():
    plain, _ = actor_critic.make_single_env(TINY)
    assert _wrapper_types(plain) == [EpisodeStatistics, AutoReset]
    zero, _ = actor_critic.make_single_env(dataclasses.replace(TINY, obs_noise_sigma=0.0))
    assert _wrapper_types(zero) == [EpisodeStatistics, AutoReset]
    cfg = dataclasses.replace(TINY, obs_noise_sigma=0.2, frame_stack=2)
    smoothed, params = actor_critic.make_single_env(cfg)
    assert _wrapper_types(smoothed) == [EpisodeStatistics, FrameStack, ObservationNoise, AutoReset]
    assert smoothed.observation_space(params).shape == (8,)
    scfg = sac.SACConfig(obs_noise_sigma=0.1, frame_stack=3)
    s_env, s_params = actor_critic.make_single_env(scfg)
    assert _wrapper_types(s_env) == [
        EpisodeStatistics,
        FrameStack,
        ObservationNoise,
        ClipAction,
        RescaleAction,
        AutoReset,
    ]
    assert s_env.observation_space(s_params).shape == (9,)
    # A2C shares the wiring
    agent = a2c.make_agent(a2c.A2CConfig(num_envs=2, num_steps=4, total_timesteps=8, frame_stack=2))
    obs, _ = agent.env.reset(KEY, agent.env_params)
    assert obs.shape == (2, 8)


def test_traced_zero_sigma_run_equals_the_default_run(single, default_run):
    assert_trees_close(single(KEY, 0.0).metrics, default_run.metrics, rtol=1e-6, atol=1e-7)


def test_vmap_over_obs_noise_sigma_equals_separate_runs(single, over_sigmas, default_run):
    for i, s in enumerate(SIGMAS):
        assert_trees_close(jax.tree.map(lambda x: x[i], over_sigmas), single(KEY, s))
    assert_trees_close(jax.tree.map(lambda x: x[0], over_sigmas.metrics), default_run.metrics)
    m = over_sigmas.metrics["value_loss"]
    assert not np.allclose(m[0], m[1])


def test_ppo_smoothed_with_frame_stack_trains_and_evaluates():
    cfg = dataclasses.replace(TINY, obs_noise_sigma=0.2, frame_stack=2)
    agent = ppo.make_agent(cfg)
    out = jax.jit(agent.train)(KEY)
    for name, v in out.metrics.items():
        assert v.shape == (cfg.num_updates,), name
        assert np.all(np.isfinite(v)), name
    assert out.state.obs.shape == (4, 8)
    returns = jax.jit(lambda s, k: evaluation.evaluate(agent, s, k, 3, max_steps=20))(
        out.state, jax.random.key(1)
    )
    assert returns.shape == (3,) and np.all(np.isfinite(returns))


def test_sac_smoothed_run_is_finite():
    cfg = tiny.sac_config(
        120,
        buffer_size=128,
        batch_size=16,
        learning_starts=40,
        utd_ratio=0.5,
        obs_noise_sigma=0.1,
        frame_stack=2,
    )
    out = jax.jit(sac.make_train(cfg))(KEY)
    for name, v in out.metrics.items():
        assert np.all(np.isfinite(v)), name
    assert out.state.obs.shape == (2, 6)
    assert out.state.buffer.data["next_obs"].shape[-1] == 6


@pytest.mark.parametrize(
    "make, cfg",
    [
        (ppo.make_agent, TINY),
        (a2c.make_agent, a2c.A2CConfig(num_envs=2, num_steps=4, total_timesteps=8)),
        (sac.make_agent, sac.SACConfig()),
    ],
)
@pytest.mark.parametrize(
    "field, value",
    [
        ("obs_noise_sigma", -0.1),
        ("obs_noise_sigma", float("nan")),
        ("frame_stack", 0),
        ("frame_stack", 2.0),
    ],
)
def test_bad_smoothing_values_raise_naming_the_field(make, cfg, field, value):
    with pytest.raises(ValueError, match=field):
        make(dataclasses.replace(cfg, **{field: value}))
