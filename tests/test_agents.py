"""PPO and A2C on tiny configs: each train function compiles once per module, many checks each."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from purejaxrl import a2c, evaluation, ppo
from tests import tiny
from tests.helpers import assert_trees_close
from tests.tiny import KEYS, LRS

TINY = tiny.ppo_config(4, anneal_lr=True)
single, over_seeds, over_lrs = tiny.train_fixtures(ppo.make_train, TINY)


def test_metrics_are_per_update_scalars(over_seeds):
    n = TINY.num_updates
    for name in (
        "episode_return",
        "env_steps",
        "policy_loss",
        "value_loss",
        "entropy",
        "nan_skipped",
    ):
        assert over_seeds.metrics[name].shape == (2, n), name
        assert np.all(np.isfinite(over_seeds.metrics[name])), name
    np.testing.assert_array_equal(over_seeds.metrics["env_steps"][0], np.arange(1, n + 1) * 64)
    np.testing.assert_array_equal(over_seeds.state.update_step, [n, n])
    assert np.all(over_seeds.metrics["nan_skipped"] == 0)
    # linear annealing: lr_k = lr (1 - k / n)
    np.testing.assert_allclose(
        over_seeds.metrics["learning_rate"][0], 3e-4 * (1 - np.arange(n) / n), rtol=1e-6
    )


def test_same_key_gives_identical_results(single):
    lr = TINY.learning_rate
    assert_trees_close(single(KEYS[0], lr), single(KEYS[0], lr), rtol=0, atol=0)


def test_vmap_over_seeds_equals_separate_runs(single, over_seeds):
    for i in range(2):
        assert_trees_close(
            jax.tree.map(lambda x: x[i], over_seeds), single(KEYS[i], TINY.learning_rate)
        )
    # and different seeds really differ
    assert not np.allclose(over_seeds.metrics["value_loss"][0], over_seeds.metrics["value_loss"][1])


def test_vmap_over_learning_rates_equals_separate_runs(single, over_lrs):
    for i, lr in enumerate(LRS):
        assert_trees_close(jax.tree.map(lambda x: x[i], over_lrs), single(KEYS[0], lr))
    assert not np.allclose(over_lrs.metrics["policy_loss"][0], over_lrs.metrics["policy_loss"][1])


def test_progress_callback_is_throttled_and_reports_update_steps():
    calls = []
    cfg = dataclasses.replace(TINY, total_timesteps=4 * 16 * 6)
    train = ppo.make_train(
        cfg, progress_fn=lambda step, m: calls.append(int(np.max(step))), progress_every=2
    )
    jax.block_until_ready(jax.jit(train)(KEYS[0]))
    assert sorted(calls) == [2, 4, 6]


class NaNRewardWhenPoleLeansRight(envs.Wrapper):
    """Injects NaN rewards: a stand-in for a buggy reward function."""

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        return obs, state, jnp.where(obs[2] > 0.05, jnp.nan, reward), terminated, truncated, info


def test_nan_rewards_skip_updates_and_keep_parameters_finite():
    env, params = envs.make("CartPole-v1")
    train = ppo.make_train(TINY, env=NaNRewardWhenPoleLeansRight(env), env_params=params)
    out = jax.jit(train)(KEYS[0])
    assert np.sum(out.metrics["nan_skipped"]) > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.state.params))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.state.opt_state))
    assert np.all(np.isfinite(out.metrics["episode_return"]))


def test_a2c_and_continuous_heads_run_and_evaluate():
    """A2C on Pendulum with a tanh-Gaussian, shared layer-normed torso, normalisation on."""
    cfg = a2c.A2CConfig(
        env="Pendulum-v1",
        total_timesteps=4 * 8 * 3,
        num_envs=4,
        num_steps=8,
        policy="tanh_gaussian",
        hidden_sizes=(8,),
        shared_torso=True,
        layer_norm=True,
        normalize_obs=True,
        normalize_reward=True,
    )
    agent = a2c.make_agent(cfg)
    out = jax.jit(agent.train)(KEYS[0])
    assert out.metrics["episode_return"].shape == (3,)
    assert np.all(np.isfinite(out.metrics["loss"]))
    assert set(out.state.params["params"]) >= {"torso", "policy_out", "value_out", "log_std"}
    returns = jax.jit(lambda s, k: evaluation.evaluate(agent, s, k, 3, deterministic=True))(
        out.state, KEYS[1]
    )
    # Pendulum: 200 steps, reward in [-16.3, 0]
    assert returns.shape == (3,) and np.all((returns <= 0) & (returns >= -16.3 * 200))


# ---- bad input: ValueErrors naming the field, raised before compiling -------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"env": "Cartpole-v1"}, "CartPole-v1"),
        ({"num_minibatches": 3}, "num_minibatches"),
        ({"num_envs": 0}, "num_envs"),
        ({"num_steps": -4}, "num_steps"),
        ({"update_epochs": 0}, "update_epochs"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"clip_eps": -0.2}, "clip_eps"),
        ({"total_timesteps": 10}, "total_timesteps"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes"),
        ({"activation": "sigmoidal"}, "activation"),
        ({"policy": "gaussian"}, "continuous"),
        ({"policy": "beta"}, "policy"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        ppo.make_train(dataclasses.replace(TINY, **changes))


def test_categorical_head_on_continuous_env_is_rejected():
    with pytest.raises(ValueError, match="discrete"):
        ppo.make_train(dataclasses.replace(TINY, env="Pendulum-v1", policy="categorical"))


def test_traced_hyperparameters_are_not_validated_but_concrete_ones_are():
    # inside a sweep the leaf is a tracer: make_train must accept it
    jax.eval_shape(lambda g: ppo.make_train(dataclasses.replace(TINY, gamma=g)).__name__ and g, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        ppo.make_train(dataclasses.replace(TINY, gamma=np.float32(-1.0)))


def test_memory_does_not_grow_with_run_length():
    """Compiled working memory is the same for 4 and 4,000 updates; outputs grow by metrics only."""
    stats = {}
    for n in (4, 4000):
        cfg = dataclasses.replace(TINY, total_timesteps=4 * 16 * n)
        compiled = jax.jit(ppo.make_train(cfg)).lower(KEYS[0]).compile()
        stats[n] = compiled.memory_analysis()
    assert stats[4].temp_size_in_bytes == stats[4000].temp_size_in_bytes
    per_update = (stats[4000].output_size_in_bytes - stats[4].output_size_in_bytes) / 3996
    assert per_update <= 4 * 32  # a few dozen float32 scalars per update
