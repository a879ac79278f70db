"""Tiny agent configs and compiled-run fixtures shared by the test modules.

The configs set sizes only (algorithm options keep the library defaults unless a keyword changes
them); tests/pinned.py's metrics in tests/data/pinned.npz depend on these values.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from purejaxrl import ppo, sac

KEYS = jax.random.split(jax.random.key(0), 2)
LRS = jnp.array([3e-4, 3e-3])


def ppo_config(updates: int, **changes) -> ppo.PPOConfig:
    """PPO on CartPole-v1: `updates` updates of 4 envs x 16 steps (total_timesteps follows the
    num_envs and num_steps of `changes`), 2 epochs of 2 minibatches, a [16, 16] MLP."""
    fields = {
        "env": "CartPole-v1",
        "num_envs": 4,
        "num_steps": 16,
        "update_epochs": 2,
        "num_minibatches": 2,
        "hidden_sizes": (16, 16),
    } | changes
    steps = fields["num_envs"] * fields["num_steps"] * updates
    return ppo.PPOConfig(total_timesteps=steps, **fields)


def sac_config(total_timesteps: int, **changes) -> sac.SACConfig:
    """SAC on Pendulum-v1: `total_timesteps` env steps of 2 envs, a 64-transition buffer,
    batches of 8 after 16 warm-up steps, [16, 16] MLPs."""
    fields = {
        "env": "Pendulum-v1",
        "num_envs": 2,
        "buffer_size": 64,
        "batch_size": 8,
        "learning_starts": 16,
        "hidden_sizes": (16, 16),
    } | changes
    return sac.SACConfig(total_timesteps=total_timesteps, **fields)


def train_fixtures(make_train, cfg):
    """Module fixtures `(single, over_seeds, over_lrs)` of `make_train(cfg)` with a traced
    learning rate: `single` the jitted run `(key, lr) -> TrainOutput` (one compile), `over_seeds`
    the run vmapped over `KEYS` at cfg's rate, `over_lrs` vmapped over `LRS` with `KEYS[0]`.
    Assign them to these names in the test module."""

    def run(key, lr):
        return make_train(dataclasses.replace(cfg, learning_rate=lr))(key)

    @pytest.fixture(scope="module")
    def single():
        return jax.jit(run)

    @pytest.fixture(scope="module")
    def over_seeds():
        return jax.jit(jax.vmap(run, in_axes=(0, None)))(KEYS, cfg.learning_rate)

    @pytest.fixture(scope="module")
    def over_lrs():
        return jax.jit(jax.vmap(run, in_axes=(None, 0)))(KEYS[0], LRS)

    return single, over_seeds, over_lrs
