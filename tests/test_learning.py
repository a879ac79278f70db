"""Learning checks (slow): the shipped YAML configs reach the issue's thresholds, 4 seeds vmapped.

Each test trains the config in experiments/configs/ exactly as `experiments.train` would (one
program over 4 seeds) and checks the mean over seeds of the final return, where a seed's final
return is the mean `episode_return` over the last 5% of its updates.
"""

import pathlib
import time

import jax
import numpy as np
import pytest

from experiments import command, runs
from experiments import pmoe as pmoe_experiment
from purejaxrl import checkpoint
from tests.isolated import run_isolated

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def train_config(name: str, num_seeds: int = 4, timeout_s: float = 1800.0, attempts: int = 3):
    """Trains in a fresh process (see tests/isolated.py); returns (final per seed, env steps)."""
    final, steps, seconds = run_isolated(
        _train, name, num_seeds, timeout_s=timeout_s, attempts=attempts
    )
    print(
        f"\n{name}: final return per seed {np.round(final, 1).tolist()}, mean {final.mean():.1f}, "
        f"{steps} env steps per seed, {seconds:.0f} s incl. compile"
    )
    return final, steps


def _train(name: str, num_seeds: int):
    spec = runs.build_spec(command.load_yaml(CONFIGS / name))
    agent = checkpoint.make_agent(spec.algo, spec.config)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(agent.train))(keys))
    seconds = time.perf_counter() - start
    returns = np.asarray(out.metrics["episode_return"])
    tail = max(1, returns.shape[1] // 20)
    final = returns[:, -tail:].mean(axis=1)
    steps = int(np.asarray(out.metrics["env_steps"])[0, -1])
    return final, steps, seconds


@pytest.mark.slow
def test_ppo_cartpole_reaches_475_within_500k_steps():
    final, steps = train_config("ppo_cartpole.yaml")
    assert steps <= 500_000
    assert final.mean() >= 475


@pytest.mark.slow
def test_ppo_pendulum_reaches_minus_250_within_1m_steps():
    final, steps = train_config("ppo_pendulum.yaml")
    assert steps <= 1_000_000
    assert final.mean() >= -250


@pytest.mark.slow
def test_a2c_cartpole_reaches_400_within_1m_steps():
    final, steps = train_config("a2c_cartpole.yaml")
    assert steps <= 1_000_000
    assert final.mean() >= 400


@pytest.mark.slow
def test_ppo_brax_inverted_pendulum_reaches_800():
    final, _ = train_config("ppo_inverted_pendulum.yaml")
    assert final.mean() >= 800


# The experiment's own base config (experiments/pmoe.py), so the check tests what it reports.
MULTIMODAL_SAC = dict(pmoe_experiment.SAC_BANDIT, env="multimodal/bandit")
CONTEXTS = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # open, left blocked, right blocked


def _train_multimodal(changes: dict, num_seeds: int = 4):
    """Deterministic evaluation return per seed and the actor's outputs at the three contexts."""
    import jax.numpy as jnp

    from purejaxrl import evaluation, sac

    agent = sac.make_agent(sac.SACConfig(**MULTIMODAL_SAC, **changes))
    out = jax.jit(jax.vmap(agent.train))(jax.random.split(jax.random.key(0), num_seeds))
    evals, actor = [], []
    for i in range(num_seeds):
        state = jax.tree.map(lambda x, i=i: x[i], out.state)
        evals.append(float(evaluation.evaluate(agent, state, jax.random.key(1), 64).mean()))
        heads = agent.network.apply(state.params, jnp.array(CONTEXTS), method=agent.network.actor)
        actor.append(jax.tree.map(np.asarray, heads))
    return np.array(evals), actor


@pytest.mark.slow
def test_mixture_sac_holds_both_modes_of_the_multimodal_bandit_and_gaussian_does_not():
    """Measured claims (5k steps, 4 seeds, SAC's default init_alpha = 1): the Gaussian's mode sits
    in the valley of the open context (deterministic return ~0.25 of 1.0); a 2-expert mixture
    trained with the score-function estimator holds a = -0.6 and +0.6 with different experts and
    returns >= 95% of the optimum. (The paper's "pmoe" estimator, at this alpha, stays wide at
    ~0 like the Gaussian: see the next test.)"""
    gauss, gauss_actor = run_isolated(_train_multimodal, {}, attempts=1)
    mixture, mix_actor = run_isolated(
        _train_multimodal, {"policy": "pmoe", "num_experts": 2, "mixture_grad": "score"}, attempts=1
    )
    print(f"\ngaussian det. eval {gauss.round(3)}; score-mixture {mixture.round(3)}")
    assert gauss.mean() < 0.6
    assert np.all(np.abs(np.tanh([m[0][0, 0] for m in gauss_actor])) < 0.3)  # mean in the valley
    assert np.sum(mixture >= 0.95) >= 3
    held = 0
    for logits, mean, _ in mix_actor:
        w, a = np.exp(logits[0]) / np.exp(logits[0]).sum(), np.tanh(mean[0, :, 0])
        held += (w.min() >= 0.2) and (np.abs(np.sort(a) - [-0.6, 0.6]).max() < 0.1)
    assert held >= 3


@pytest.mark.slow
def test_pmoe_estimator_solves_the_multimodal_bandit_with_a_small_initial_temperature():
    """With init_alpha = 0.1 the paper's estimator reaches >= 95% of the optimum in every seed
    (measured 0.99-1.0), choosing the open mode in the blocked contexts with different experts."""
    evals, _ = run_isolated(
        _train_multimodal, {"policy": "pmoe", "num_experts": 2, "init_alpha": 0.1}, attempts=1
    )
    print(f"\npmoe (init_alpha 0.1) det. eval {evals.round(3)}")
    assert np.sum(evals >= 0.95) >= 3
