"""Smoothed-policy Monte-Carlo evaluation and the adaptive l2 attack (purejaxrl/robust).

One tiny PPO is trained on CartPole (200-step episodes, as in Kumar et al.); every attack call on
it shares one compiled program (same sizes; sigma, budget and step size are traced).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxrl import evaluation, ppo, sac
from purejaxrl.robust import attack, montecarlo

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
    """SAC (min twin Q objective) and PPO Gaussian (log-prob of the clean action) on Pendulum."""
    sac_cfg = sac.SACConfig(
        env="Pendulum-v1",
        total_timesteps=200,
        num_envs=1,
        buffer_size=64,
        batch_size=32,
        learning_starts=60,
        hidden_sizes=(32, 32),
    )
    sac_agent = sac.make_agent(sac_cfg)
    sac_state = jax.jit(sac_agent.init)(jax.random.key(0))
    ppo_agent, ppo_state = _untrained(
        dataclasses.replace(UNTRAINED, env="Pendulum-v1", env_kwargs=(), normalize_obs=False)
    )
    assert attack.resolve_objective(sac_agent, "auto") == "q"
    assert attack.resolve_objective(ppo_agent, "auto") == "log_prob"
    key, budget = jax.random.key(8), 0.5
    kw = dict(num_noise_draws=8, num_steps_per_attack=5, step_size=0.05, max_steps=30)
    for agent, state in ((sac_agent, sac_state), (ppo_agent, ppo_state)):
        returns, spent = attack.attacked_returns(agent, state, key, 0.1, budget, 4, **kw)
        assert returns.shape == (4,) and np.all(np.isfinite(np.asarray(returns)))
        assert np.sqrt(np.asarray(spent, np.float64).max()) <= budget + 1e-6
        assert np.asarray(spent).max() > 0
    # Budget 0 is the unattacked smoothed policy here too (same compiled attack, budget traced).
    unattacked, spent0 = attack.attacked_returns(sac_agent, sac_state, key, 0.1, 0.0, 4, **kw)
    clean = montecarlo.smoothed_returns(sac_agent, sac_state, key, 0.1, 4, max_steps=30)
    np.testing.assert_array_equal(np.asarray(unattacked), np.asarray(clean))
    assert np.all(np.asarray(spent0) == 0.0)
