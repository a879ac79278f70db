"""Smoothed-policy Monte-Carlo evaluation and the adaptive l2 attack (purejaxrl/robust).

One tiny PPO is trained on CartPole (200-step episodes, as in Kumar et al.); every attack call on
it shares one compiled program (same sizes; sigma, budget and step size are traced).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import wrappers
from envs.gymnax_env import with_transition_gradients
from purejaxrl import evaluation, ppo, sac
from purejaxrl.robust import attack, montecarlo
from tests import tiny

CARTPOLE = ppo.PPOConfig(
    env="CartPole-v1",
    env_kwargs=(("max_steps_in_episode", 200),),
    total_timesteps=16 * 64 * 60,
    num_envs=16,
    num_steps=64,
    update_epochs=4,
    num_minibatches=4,
    hidden_sizes=(32, 32),
    learning_rate=2.5e-3,
    ent_coef=0.01,
)
UNTRAINED = dataclasses.replace(CARTPOLE, total_timesteps=16 * 64, normalize_obs=True)
# One attack setting for every call on the trained agent: a single compile.
N, DRAWS, STEPS = 32, 16, 20


@pytest.fixture(scope="module")
def trained():
    agent = ppo.make_agent(CARTPOLE)
    out = jax.jit(agent.train)(jax.random.key(0))
    return agent, out.state


def _attacked(agent, state, key, sigma, budget, step_size=0.05):
    return attack.attacked_returns(
        agent,
        state,
        key,
        sigma,
        budget,
        N,
        num_noise_draws=DRAWS,
        num_steps_per_attack=STEPS,
        step_size=step_size,
    )


def _untrained(cfg):
    agent = ppo.make_agent(cfg)
    return agent, jax.jit(agent.init)(jax.random.key(1))


@pytest.fixture(scope="module")
def stacked_noisy():
    """Untrained, 3 stacked frames, trained-with noise 0.5, frozen observation normalisation."""
    return _untrained(dataclasses.replace(UNTRAINED, frame_stack=3, obs_noise_sigma=0.5))


# ------------------------------------------------------------------------------ Monte Carlo


def test_smoothed_returns_are_finite_episode_totals(trained):
    agent, state = trained
    returns = montecarlo.smoothed_returns(agent, state, jax.random.key(2), 0.2, N)
    returns = np.asarray(returns)
    assert returns.shape == (N,) and returns.dtype == np.float32
    assert np.all(np.isfinite(returns)) and np.all((returns >= 1) & (returns <= 200))
    assert returns.mean() > 150  # the trained policy mostly survives sigma = 0.2 noise


def test_sigma_zero_is_evaluate(trained):
    agent, state = trained
    key = jax.random.key(3)
    smoothed = montecarlo.smoothed_returns(agent, state, key, 0.0, N)
    clean = evaluation.evaluate(agent, state, key, N)
    np.testing.assert_array_equal(np.asarray(smoothed), np.asarray(clean))


def test_sigma_zero_replaces_the_agents_noise_and_frame_stack(stacked_noisy):
    """An agent trained on noisy, stacked frames: at sigma = 0 the evaluator's own frame buffer and
    frozen normalisation give the noise-free agent's env, bit for bit."""
    agent, state = stacked_noisy
    plain = ppo.make_agent(dataclasses.replace(agent.config, obs_noise_sigma=0.0))
    key = jax.random.key(4)
    smoothed = montecarlo.smoothed_returns(agent, state, key, 0.0, 64)
    clean = evaluation.evaluate(plain, state, key, 64)
    np.testing.assert_array_equal(np.asarray(smoothed), np.asarray(clean))
    assert np.unique(np.asarray(clean)).size > 1  # a non-trivial comparison


# ------------------------------------------------------------------------------ attack


def test_project_stays_in_the_ball():
    eps = jnp.array([3.0, 4.0])
    np.testing.assert_allclose(np.asarray(attack.project(eps, jnp.asarray(1.0))), [0.6, 0.8])
    np.testing.assert_array_equal(np.asarray(attack.project(eps, jnp.asarray(6.0))), [3.0, 4.0])
    np.testing.assert_array_equal(np.asarray(attack.project(eps, jnp.asarray(0.0))), [0.0, 0.0])


def test_budget_zero_is_the_unattacked_smoothed_policy(trained):
    agent, state = trained
    key = jax.random.key(5)
    returns, spent = _attacked(agent, state, key, 0.2, 0.0)
    clean = montecarlo.smoothed_returns(agent, state, key, 0.2, N)
    np.testing.assert_array_equal(np.asarray(returns), np.asarray(clean))
    assert np.all(np.asarray(spent) == 0.0)


@pytest.mark.parametrize("step_size", [0.05, 0.7])
def test_attack_never_exceeds_the_budget(trained, step_size):
    agent, state = trained
    budget = 1.0
    _, spent = _attacked(agent, state, jax.random.key(6), 0.2, budget, step_size)
    spent = np.asarray(spent, np.float64)
    assert np.all(spent >= 0) and spent.max() > 0  # it attacks, and within the budget
    assert np.sqrt(spent.max()) <= budget + 1e-6


def test_large_budget_lowers_the_return(trained):
    agent, state = trained
    key = jax.random.key(7)
    for sigma in (0.0, 0.2):
        clean = np.asarray(montecarlo.smoothed_returns(agent, state, key, sigma, N))
        attacked, _ = _attacked(agent, state, key, sigma, 1.0)
        assert np.asarray(attacked).mean() <= clean.mean()
    assert np.asarray(attacked).mean() < clean.mean() - 10  # sigma = 0.2: a real drop


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sigma": -0.1}, "sigma"),
        ({"budget": -1.0}, "budget"),
        ({"num_episodes": 0}, "num_episodes"),
        ({"num_noise_draws": 0}, "num_noise_draws"),
        ({"num_steps_per_attack": -1}, "num_steps_per_attack"),
        ({"step_size": 0.0}, "step_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"objective": "q"}, "objective"),
    ],
)
def test_bad_arguments_raise_naming_them(stacked_noisy, kwargs, name):
    agent, state = stacked_noisy
    args = dict(sigma=0.2, budget=0.5, num_episodes=2) | kwargs
    with pytest.raises(ValueError, match=name):
        attack.attacked_returns(agent, state, jax.random.key(0), **args)
    if set(kwargs) <= {"sigma", "num_episodes", "max_steps"}:
        with pytest.raises(ValueError, match=name):
            montecarlo.smoothed_returns(
                agent,
                state,
                jax.random.key(0),
                **{"sigma": 0.2, "num_episodes": 2} | kwargs,
            )


# ------------------------------------------------------------------------------ continuous


def test_continuous_attacks_smoke():
    """SAC (min twin Q objective) and PPO Gaussian (lookahead through the dynamics) on Pendulum."""
    sac_cfg = tiny.sac_config(
        200, num_envs=1, batch_size=32, learning_starts=60, hidden_sizes=(32, 32)
    )
    sac_agent = sac.make_agent(sac_cfg)
    sac_state = jax.jit(sac_agent.init)(jax.random.key(0))
    ppo_agent, ppo_state = _untrained(
        dataclasses.replace(UNTRAINED, env="Pendulum-v1", env_kwargs=(), normalize_obs=False)
    )
    assert attack.resolve_objective(sac_agent, "auto") == "q"
    assert attack.resolve_objective(ppo_agent, "auto") == "lookahead"
    key, budget = jax.random.key(8), 0.5
    kw = dict(num_noise_draws=8, num_steps_per_attack=5, step_size=0.05, max_steps=30)
    for agent, state in ((sac_agent, sac_state), (ppo_agent, ppo_state)):
        returns, spent = attack.attacked_returns(agent, state, key, 0.1, budget, 4, **kw)
        assert returns.shape == (4,) and np.all(np.isfinite(np.asarray(returns)))
        assert np.sqrt(np.asarray(spent, np.float64).max()) <= budget + 1e-6
        assert np.asarray(spent).max() > 0
    # Budget 0 is the unattacked smoothed policy here too (same compiled attack, budget traced).
    # Pendulum's returns are float sums computed by two different programs: equal up to rounding.
    unattacked, spent0 = attack.attacked_returns(sac_agent, sac_state, key, 0.1, 0.0, 4, **kw)
    clean = montecarlo.smoothed_returns(sac_agent, sac_state, key, 0.1, 4, max_steps=30)
    np.testing.assert_allclose(np.asarray(unattacked), np.asarray(clean), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(spent0) == 0.0)


# ------------------------------------------------------------------------------ lookahead (PPO, continuous)

SCALE_UP = 15.0
PENDULUM = dataclasses.replace(
    UNTRAINED,
    env="Pendulum-v1",
    env_kwargs=(),
    hidden_sizes=(16, 16),
    normalize_obs=False,
    normalize_reward=True,
    gamma=0.9,
)


@pytest.fixture(scope="module")
def pendulum():
    """Untrained PPO on Pendulum whose policy mean reacts strongly to the observation (the output
    layer scaled up from its 0.01 init) and whose reward statistics are not the identity."""
    agent, state = _untrained(PENDULUM)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * SCALE_UP if "policy_out" in jax.tree_util.keystr(path) else x,
        state.params,
    )
    stats = wrappers.reward_norm_stats(state.env_state)
    state = state.replace(
        params=params,
        env_state=_replace_reward_stats(state.env_state, stats.replace(var=stats.var * 0 + 6.25)),
    )
    return agent, state


def _replace_reward_stats(env_state, stats):
    if isinstance(env_state, wrappers.NormalizeRewardState):
        return env_state.replace(stats=stats)
    return env_state.replace(env_state=_replace_reward_stats(env_state.env_state, stats))


def _pendulum_reference(agent, state, obs, eps, z, horizon):
    """The lookahead value by hand: gymnax Pendulum's dynamics and reward in float64, the agent's
    [-1, 1] actions clipped and rescaled to torques in [-2, 2], the critic times sqrt(var)."""
    gamma, scale = agent.config.gamma, np.sqrt(6.25 + 1e-8)
    net = agent.network
    x32 = lambda o: jnp.asarray(o, jnp.float32)
    actor = lambda o: np.asarray(net.apply(state.params, x32(o), method=net.actor)[0], np.float64)
    critic = lambda o: float(net.apply(state.params, x32(o), method=net.critic))
    values = []
    for zj in np.asarray(z, np.float64):
        cos, sin, thdot = np.asarray(obs, np.float64)
        th = np.arctan2(sin, cos)
        total = 0.0
        for h in range(horizon):
            o = np.array([np.cos(th), np.sin(th), thdot]) + zj[h] + (eps if h == 0 else 0.0)
            u = 2.0 * np.clip(actor(o)[0], -1.0, 1.0)
            norm_th = ((th + np.pi) % (2 * np.pi)) - np.pi
            total += gamma**h * -(norm_th**2 + 0.1 * thdot**2 + 0.001 * u**2)
            thdot = np.clip(thdot + (15.0 * np.sin(th) + 3.0 * u) * 0.05, -8.0, 8.0)
            th = th + thdot * 0.05
        values.append(total + gamma**horizon * scale * critic([np.cos(th), np.sin(th), thdot]))
    return float(np.mean(values))


def _lookahead_setup(agent, state, horizon, num_draws=6, sigma=0.1, seed=0):
    smoothing = montecarlo.make_smoothing(agent, state)
    obs, env_state = smoothing.env.reset(jax.random.key(seed), smoothing.env_params)
    frames = jnp.zeros((1, 3), jnp.float32)
    first = jnp.asarray(True)
    key = jax.random.key(seed + 1)
    z = sigma * jax.random.normal(key, (num_draws, horizon, 3))
    env_keys = jax.random.split(jax.random.key(seed + 2), (num_draws, horizon))
    value = attack.make_lookahead(agent, smoothing, state)
    fn = jax.jit(lambda eps: value(eps, obs, frames, first, env_state, z, env_keys))
    return smoothing, obs, env_state, z, fn


@pytest.mark.parametrize("horizon", [1, 3])
def test_lookahead_value_matches_hand_dynamics(pendulum, horizon):
    agent, state = pendulum
    _, obs, _, z, value = _lookahead_setup(agent, state, horizon)
    for eps in (np.zeros(3), np.array([0.2, -0.3, 0.1])):
        got = float(value(jnp.asarray(eps, jnp.float32)))
        want = _pendulum_reference(agent, state, obs, eps, z, horizon)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # The gradient flows through the dynamics (gymnax detaches transitions unless asked not to).
    g = jax.grad(value)(jnp.asarray([0.2, -0.3, 0.1], jnp.float32))
    assert np.all(np.isfinite(np.asarray(g))) and np.linalg.norm(np.asarray(g)) > 1e-3


def test_lookahead_attack_finds_the_worst_perturbation_in_the_ball(pendulum):
    """Known worst case by brute force: the lookahead objective on a dense grid of the ball
    (radius 0.3, 3-d observation); the attack's projected gradient steps must reach its minimum."""
    agent, state = pendulum
    horizon, num_draws, sigma, radius = 6, 6, 0.1, 0.3
    smoothing, obs, env_state, _, value = _lookahead_setup(agent, state, horizon, num_draws, sigma)
    step = attack.make_step_attack(
        agent,
        smoothing,
        state,
        "lookahead",
        num_draws,
        200,
        jnp.float32(sigma),
        jnp.float32(0.005),
        horizon,
    )
    frames, first = jnp.zeros((1, 3), jnp.float32), jnp.asarray(True)
    # The attack draws its noise from its key as _lookahead_setup does from key(seed + 1) ...
    eps = jax.jit(step)(obs, frames, first, jnp.float32(radius), jax.random.key(11), env_state)
    eps = np.asarray(eps, np.float64)
    assert np.linalg.norm(eps) <= radius + 1e-6
    # ... so evaluate both on the attack's own objective.
    noise_key, env_key = jax.random.split(jax.random.key(11))
    z = sigma * jax.random.normal(noise_key, (num_draws, horizon, 3))
    env_keys = jax.random.split(env_key, (num_draws, horizon))
    objective = jax.jit(
        jax.vmap(
            lambda e: attack.make_lookahead(agent, smoothing, state)(
                e, obs, frames, first, env_state, z, env_keys
            )
        )
    )
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(20_000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radii = radius * rng.uniform(size=(20_000, 1)) ** (1 / 3)
    grid = np.concatenate([dirs * radius, dirs[:5000] * radii[:5000]]).astype(np.float32)
    brute = float(np.min(np.asarray(objective(jnp.asarray(grid)))))
    found = float(objective(jnp.asarray(eps[None], jnp.float32))[0])
    clean = float(objective(jnp.zeros((1, 3), jnp.float32))[0])
    assert clean - brute > 1e-3  # the case has something to find (float32 resolves ~1e-5 here)
    assert found <= brute + 0.05 * (clean - brute)


def test_min_gain_and_lookahead_resolution(pendulum):
    agent, state = pendulum
    assert attack.resolve_objective(agent, "auto") == "lookahead"
    key = jax.random.key(9)
    kw = dict(num_noise_draws=4, num_steps_per_attack=5, max_steps=20, lookahead=2)
    fn = attack.make_attacked_returns(agent, 4, 4, 5, max_steps=20, lookahead=2)
    clean = montecarlo.smoothed_returns(agent, state, key, 0.1, 4, max_steps=20)
    attacked, spent = fn(state, key, 0.1, 0.5, 0.05)
    assert np.asarray(spent).max() > 0 and np.sqrt(np.asarray(spent).max()) <= 0.5 + 1e-6
    # An unreachable gain threshold: the attacker never spends, the run is the clean one (up to
    # the rounding of Pendulum's float returns in two different programs).
    held, spent0 = fn(state, key, 0.1, 0.5, 0.05, 1e9)
    np.testing.assert_allclose(np.asarray(held), np.asarray(clean), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(spent0) == 0.0)
    with pytest.raises(ValueError, match="lookahead"):
        attack.attacked_returns(agent, state, key, 0.1, 0.5, 2, **(kw | {"lookahead": 0}))
    cartpole_agent, _ = _untrained(UNTRAINED)
    with pytest.raises(ValueError, match="lookahead"):
        attack.resolve_objective(cartpole_agent, "lookahead")
    # gymnax CartPole has no differentiable transitions: a clear error, not silent zero gradients.
    with pytest.raises(ValueError, match="CartPole-v1.*differentiable"):
        with_transition_gradients(montecarlo.clean_single_env(cartpole_agent))
