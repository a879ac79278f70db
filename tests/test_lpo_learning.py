"""Learning checks (slow) of the closed-form drift objectives: DPO and MDPO on the PPO reference
configs (experiments/configs/ppo_cartpole.yaml, ppo_pendulum.yaml) with only the objective
swapped, 4 seeds vmapped in one program (keys split from key 0), as `experiments.train` runs them.

A seed's final return is its mean `episode_return` over the last 5% of updates, from finished
episodes only (`purejaxrl.scores.final_return`: NaN, failing the check, for a seed that finished
none); the checks are on the mean over seeds. Measured once when the thresholds were set (2-core
CPU, shared; seconds of the jitted run incl. compile, ~1 min each; then the window was the last
floor(5%) of updates, 12 of 244, now ceil(5%), 13):
    DPO  CartPole-v1, 500k steps: [500, 500, 500, 500], mean 500.0 (49 s)      -> check >= 475
    MDPO CartPole-v1, 500k steps: [500, 500, 500, 492.7], mean 498.2 (56 s)    -> check >= 450
    MDPO Pendulum-v1, 500k steps: [-134.8, -237.1, -270.5, -163.5], mean -201.5 (61 s)
                                                                               -> check >= -300
(PPO on the same configs: CartPole >= 475, Pendulum >= -250, tests/test_learning.py.) MDPO runs
with its defaults: t_k = max(1 - n/N, 0.05).
"""

import pathlib
import time

import jax
import numpy as np
import pytest

from experiments import command, runs
from purejaxrl import checkpoint, scores
from tests.isolated import run_isolated

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def train_objective(config: str, objective: dict, num_seeds: int = 4):
    """Trains `config` with `objective` in a fresh process (tests/isolated.py); returns (final
    return per seed, env steps per seed)."""
    final, steps, seconds = run_isolated(_train, config, objective, num_seeds, timeout_s=1200.0)
    print(
        f"\n{config} + {objective}: final return per seed {np.round(final, 1).tolist()}, "
        f"mean {final.mean():.1f}, {steps} env steps per seed, {seconds:.0f} s incl. compile"
    )
    return final, steps


def _train(config: str, objective: dict, num_seeds: int):
    values = command.merge(command.load_yaml(CONFIGS / config), {"objective": objective})
    spec = runs.build_spec(values)  # registers meta's objectives (lpo, dpo, mdpo, lpg)
    agent = checkpoint.make_agent(spec.algo, spec.config)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(agent.train))(keys))
    seconds = time.perf_counter() - start
    metrics = out.metrics
    final = np.asarray(scores.final_return(metrics["episode_return"], metrics["episodes_finished"]))
    steps = int(np.asarray(out.metrics["env_steps"])[0, -1])
    return final, steps, seconds


@pytest.mark.slow
def test_dpo_cartpole_reaches_475_within_500k_steps():
    final, steps = train_objective("ppo_cartpole.yaml", {"name": "dpo"})
    assert steps <= 500_000
    assert final.mean() >= 475


@pytest.mark.slow
def test_mdpo_learns_cartpole_within_500k_steps():
    final, steps = train_objective("ppo_cartpole.yaml", {"name": "mdpo"})
    assert steps <= 500_000
    assert final.mean() >= 450


@pytest.mark.slow
def test_mdpo_learns_pendulum_within_500k_steps():
    final, steps = train_objective("ppo_pendulum.yaml", {"name": "mdpo"})
    assert steps <= 500_000
    assert final.mean() >= -300
