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

from experiments import runs
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
    spec = runs.build_spec(runs.load_yaml(CONFIGS / name))
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
