"""SAC and its replay buffer on a tiny config: each train function compiles once per module."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxrl import checkpoint, evaluation, replay, sac
from tests import tiny
from tests.helpers import assert_trees_close
from tests.isolated import run_isolated
from tests.tiny import KEYS, LRS

TINY = tiny.sac_config(
    400, buffer_size=512, batch_size=32, learning_starts=60, utd_ratio=0.5, hidden_sizes=(32, 32)
)
single, over_seeds, over_lrs = tiny.train_fixtures(sac.make_train, TINY)


@pytest.fixture(scope="module")
def update():
    """One compiled SAC update of TINY's agent, shared by the checks of a single update."""
    return jax.jit(sac.make_agent(TINY).update)


# --------------------------------------------------------------------------- pure pieces


def test_td_target_bootstraps_on_truncation_not_termination():
    reward = jnp.array([1.0, 1.0, -2.0])
    terminated = jnp.array([0.0, 1.0, 0.0])  # row 2 is a truncation: not terminated
    next_q_min = jnp.array([10.0, 10.0, 4.0])
    next_log_prob = jnp.array([-1.0, -1.0, 2.0])
    y = sac.td_target(reward, terminated, next_q_min, next_log_prob, alpha=0.5, gamma=0.9)
    # 1 + 0.9 (10 + 0.5); 1 (terminated: no bootstrap); -2 + 0.9 (4 - 1)
    np.testing.assert_allclose(y, [1 + 0.9 * 10.5, 1.0, -2 + 0.9 * 3.0], rtol=1e-6)
    y_bool = sac.td_target(reward, terminated > 0, next_q_min, next_log_prob, 0.5, 0.9)
    np.testing.assert_allclose(y_bool, y, rtol=1e-6)


def test_polyak_mixes_online_into_target():
    online = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    target = {"w": jnp.array([0.0, 4.0]), "b": jnp.array(-1.0)}
    new = sac.polyak(online, target, 0.25)
    np.testing.assert_allclose(new["w"], [0.25, 0.25 * 2 + 0.75 * 4])
    np.testing.assert_allclose(new["b"], 0.25 * 3 - 0.75)
    assert_trees_close(sac.polyak(online, target, 1.0), online)


def test_replay_buffer_wraps_around_like_a_numpy_ring():
    capacity = 5
    buf = replay.init({"x": jnp.zeros(2), "r": jnp.zeros((), jnp.int32)}, capacity)
    add = jax.jit(replay.add)
    ref_x, ref_r, pos, size, counter = np.zeros((capacity, 2)), np.zeros(capacity), 0, 0, 0
    for n in (2, 2, 3, 1, 4):
        r = np.arange(counter, counter + n)
        counter += n
        batch = {"x": np.stack([r, -r], 1).astype(np.float32), "r": r.astype(np.int32)}
        buf = add(buf, batch)
        for i in range(n):
            ref_x[pos], ref_r[pos] = batch["x"][i], batch["r"][i]
            pos, size = (pos + 1) % capacity, min(size + 1, capacity)
        np.testing.assert_array_equal(buf.data["x"], ref_x)
        np.testing.assert_array_equal(buf.data["r"], ref_r)
        assert int(buf.pos) == pos and int(buf.size) == size
    assert counter == 12 and sorted(np.asarray(buf.data["r"]).tolist()) == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="capacity"):
        replay.add(buf, {"x": jnp.zeros((6, 2)), "r": jnp.zeros(6, jnp.int32)})


def test_replay_buffer_samples_only_filled_slots_uniformly():
    buf = replay.init({"r": jnp.zeros(())}, 100)
    buf = replay.add(buf, {"r": jnp.arange(1.0, 8.0)})  # 7 filled slots, values 1..7
    sample = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.key(0), 7000)
    values = np.asarray(sample["r"])
    assert values.shape == (7000,)
    assert set(np.unique(values).tolist()) == set(range(1, 8))  # never an empty (0) slot
    counts = np.bincount(values.astype(int), minlength=8)[1:]
    assert np.all(np.abs(counts - 1000) < 150), counts


# --------------------------------------------------------------------------- training runs


def test_metrics_are_per_update_scalars(over_seeds):
    n = TINY.num_updates
    assert n == 200 and TINY.grad_steps == 1 and TINY.warmup_updates == 30
    m = over_seeds.metrics
    for name in (
        "episode_return",
        "episode_length",
        "episodes_finished",
        "env_steps",
        "nan_skipped",
        "q_loss",
        "actor_loss",
        "alpha",
        "alpha_loss",
        "entropy",
        "log_pi",
        "q_mean",
    ):
        assert m[name].shape == (2, n), name
        assert np.all(np.isfinite(m[name])), name
    np.testing.assert_array_equal(m["env_steps"][0], np.arange(1, n + 1) * 2)
    np.testing.assert_array_equal(over_seeds.state.update_step, [n, n])
    assert np.all(m["nan_skipped"] == 0)
    # warm-up: no gradient step, alpha untouched; afterwards the critics train and alpha moves
    assert np.all(m["q_loss"][:, :30] == 0) and np.all(m["alpha"][:, :30] == 1.0)
    assert np.all(m["q_loss"][:, 30:] > 0)
    assert np.all(m["alpha"][:, -1] < 1.0)
    # Pendulum episodes last 200 steps: the 2 envs finish one each at the last update
    np.testing.assert_array_equal(m["episodes_finished"][:, -1], [2, 2])
    assert np.all(m["episode_return"][:, -1] < 0) and np.all(m["episode_length"][:, -1] == 200)
    assert np.all(m["episode_return"][:, :-1] == 0)  # carried forward from 0, never NaN
    buf = over_seeds.state.buffer
    np.testing.assert_array_equal(buf.size, [400, 400])
    assert np.all(np.abs(np.asarray(buf.data["action"][:, :400])) <= 1.0)


def test_same_key_gives_identical_results(single):
    lr = TINY.learning_rate
    assert_trees_close(single(KEYS[0], lr), single(KEYS[0], lr), rtol=0, atol=0)


def test_vmap_over_seeds_equals_separate_runs(single, over_seeds):
    for i in range(2):
        one = single(KEYS[i], TINY.learning_rate)
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], over_seeds.metrics), one.metrics)
        assert_trees_close(
            jax.tree.map(lambda x, i=i: x[i], over_seeds.state.params), one.state.params
        )


def test_vmap_over_learning_rates_equals_separate_runs(single, over_lrs):
    for i in range(2):
        one = single(KEYS[0], LRS[i])
        # a batched learning rate reorders float ops: ~1e-5 relative drift after 170 Adam steps
        got = jax.tree.map(lambda x, i=i: x[i], over_lrs.metrics)
        assert_trees_close(got, one.metrics, rtol=1e-4, atol=1e-5)
    assert not np.allclose(over_lrs.metrics["q_loss"][0], over_lrs.metrics["q_loss"][1])


def test_vmap_over_gamma_and_tau_compiles_and_differs():
    def run(gamma, tau):
        cfg = dataclasses.replace(TINY, total_timesteps=80, gamma=gamma, tau=tau)
        return sac.make_train(cfg)(KEYS[0]).metrics["q_loss"]

    q = jax.jit(jax.vmap(run))(jnp.array([0.9, 0.99]), jnp.array([0.005, 0.5]))
    assert q.shape == (2, 40) and np.all(np.isfinite(q))
    assert not np.allclose(q[0, 30:], q[1, 30:])


def test_target_critic_is_polyak_average_after_one_update(over_seeds, update):
    """One gradient step from the final state: target' = tau q' + (1 - tau) target."""
    state = jax.tree.map(lambda x: x[0], over_seeds.state)
    new, metrics = update(state)
    assert int(metrics["nan_skipped"]) == 0
    expected = sac.polyak(new.params["params"]["q"], state.target_critic, TINY.tau)
    assert_trees_close(new.target_critic, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(
        new.params["params"]["q"]["q_bias"], state.params["params"]["q"]["q_bias"]
    )


def test_nan_loss_skips_the_gradient_step(over_seeds, update):
    state = jax.tree.map(lambda x: x[0], over_seeds.state)
    data = dict(state.buffer.data, reward=state.buffer.data["reward"].at[:].set(jnp.nan))
    state = state.replace(buffer=state.buffer.replace(data=data))
    new, metrics = update(state)
    assert int(metrics["nan_skipped"]) == 1 and float(metrics["q_loss"]) == 0.0
    assert_trees_close(new.params, state.params, rtol=0, atol=0)
    assert_trees_close(new.target_critic, state.target_critic, rtol=0, atol=0)


def test_evaluate_runs_sac_agents(over_seeds):
    agent = sac.make_agent(TINY)
    state = jax.tree.map(lambda x: x[0], over_seeds.state)
    for deterministic in (True, False):
        returns = evaluation.evaluate(agent, state, jax.random.key(1), 3, deterministic)
        assert returns.shape == (3,) and np.all(np.isfinite(returns)) and np.all(returns < 0)


def test_sac_is_registered_for_experiments():
    assert checkpoint.ALGOS["sac"] == (sac.SACConfig, sac.make_agent)
    cfg = checkpoint.config_from_dict("sac", {"env": "Pendulum-v1", "hidden_sizes": [8, 8]})
    assert cfg.hidden_sizes == (8, 8) and checkpoint.algo_name(cfg) == "sac"


def test_utd_ratio_sets_gradient_steps_per_update():
    assert dataclasses.replace(TINY, utd_ratio=0.5, num_envs=4).grad_steps == 2
    assert dataclasses.replace(TINY, utd_ratio=3, num_envs=1).grad_steps == 3


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"env": "CartPole-v1"}, "env"),
        ({"buffer_size": 16}, "buffer_size"),
        ({"buffer_size": 40, "batch_size": 32, "learning_starts": 50}, "buffer_size"),
        ({"learning_starts": 400}, "learning_starts"),
        ({"learning_starts": -1}, "learning_starts"),
        ({"total_timesteps": 0}, "total_timesteps"),
        ({"num_envs": 0}, "num_envs"),
        ({"batch_size": 0}, "batch_size"),
        ({"buffer_size": -5}, "buffer_size"),
        ({"utd_ratio": 0.1}, "utd_ratio"),
        ({"utd_ratio": 0}, "utd_ratio"),
        ({"hidden_sizes": (32, 0)}, "hidden_sizes"),
        ({"activation": "sigmoid"}, "activation"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"tau": 0.0}, "tau"),
        ({"tau": 1.5}, "tau"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"init_alpha": 0.0}, "init_alpha"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_config_raises_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):  # at construction or make_train
        sac.make_train(dataclasses.replace(TINY, **changes))


# --------------------------------------------------------------------------- learning


def _train_sac_pendulum():
    cfg = sac.SACConfig(env="Pendulum-v1", total_timesteps=20_000)
    t0 = time.perf_counter()
    out = jax.jit(jax.vmap(sac.make_train(cfg)))(jax.random.split(jax.random.key(0), 4))
    returns = np.asarray(out.metrics["episode_return"])
    n = returns.shape[1]
    return returns[:, -n // 20 :].mean(axis=1), time.perf_counter() - t0


@pytest.mark.slow
def test_sac_learns_pendulum_in_20k_steps():
    """Runs in a fresh process with a time limit and one retry (see tests/isolated.py)."""
    per_seed, seconds = run_isolated(_train_sac_pendulum)
    print(f"SAC Pendulum per-seed returns {per_seed}, {seconds:.0f} s")
    assert per_seed.mean() >= -250, per_seed
