"""The composable on-policy loop: objectives written in a test file (no library edits), what a
per-sample loss sees, time-ordered minibatches, an extra prediction head, env params as inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from purejaxrl import a2c, losses, objectives, ppo, sac
from tests import tiny
from tests.helpers import assert_trees_close

TINY = tiny.ppo_config(3, num_steps=8, update_epochs=1, num_minibatches=1, hidden_sizes=(8, 8))


# --------------------------------------------------------------------------- what a loss sees


def test_per_sample_loss_sees_the_loops_values():
    """One epoch of one minibatch: at that step the new policy is the behaviour policy, so every
    identity between the extras holds exactly (or to matmul rounding)."""
    seen = []

    def spy(log_ratio, advantages, progress, extras):
        jax.debug.callback(
            lambda *a: seen.append([np.asarray(x) for x in a]),
            log_ratio,
            advantages,
            progress,
            extras["raw_advantages"],
            extras["value"],
            extras["old_value"],
            extras["target"],
            extras["entropy"],
            extras["num_updates"],
        )
        return losses.ppo_clip(0.2)(log_ratio, advantages, progress, extras)

    out = jax.jit(ppo.make_train(TINY, spy))(jax.random.key(1))
    n = TINY.num_updates
    assert len(seen) == n
    seen.sort(key=lambda s: float(s[2]))
    for k, (log_ratio, adv, progress, raw, value, old, target, entropy, big_n) in enumerate(seen):
        assert int(big_n) == n
        np.testing.assert_allclose(progress, k / n, rtol=1e-7)
        assert log_ratio.shape == adv.shape == value.shape == (TINY.num_envs * TINY.num_steps,)
        np.testing.assert_allclose(log_ratio, 0.0, atol=1e-5)
        np.testing.assert_allclose(value, old, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(target, raw + old, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(adv, (raw - raw.mean()) / (raw.std() + 1e-8), atol=1e-5)
        assert np.all(entropy > 0) and np.all(entropy <= np.log(2) + 1e-6)  # 2 actions
    np.testing.assert_allclose(out.metrics["approx_kl"], 0.0, atol=1e-6)


class ColumnSpy(objectives.Objective):
    """Records the rollout in `targets` and each minibatch in `loss` (time-ordered)."""

    time_ordered = True

    def __init__(self, log):
        object.__setattr__(self, "log", log)

    def targets(self, rollout, ctx):
        jax.debug.callback(lambda o: self.log.append(("rollout", np.asarray(o))), rollout["obs"])
        return {}

    def loss(self, outputs, batch, ctx):
        jax.debug.callback(lambda o: self.log.append(("batch", np.asarray(o))), batch["obs"])
        log_prob = ctx.head.log_prob(outputs["policy"], batch["action"])
        return -jnp.mean(log_prob * batch["reward"]), {}


def test_time_ordered_minibatches_are_whole_env_columns():
    log = []
    cfg = dataclasses.replace(TINY, num_minibatches=2, update_epochs=2, total_timesteps=32)
    jax.block_until_ready(jax.jit(ppo.make_train(cfg, ColumnSpy(log)))(jax.random.key(0)))
    rollout = [x for kind, x in log if kind == "rollout"]
    batches = [x for kind, x in log if kind == "batch"]
    assert len(rollout) == 1 and len(batches) == 4  # 2 epochs x 2 minibatches
    data = rollout[0]  # [T, N, obs]
    for epoch in (batches[:2], batches[2:]):
        used = []
        for b in epoch:
            assert b.shape == (cfg.num_steps, 2, data.shape[-1])  # [T, n, obs]: time order kept
            for j in range(2):
                match = [i for i in range(4) if np.array_equal(b[:, j], data[:, i])]
                assert len(match) == 1
                used += match
        assert sorted(used) == [0, 1, 2, 3]  # each epoch visits every env column once


def test_time_ordered_objective_needs_envs_divisible_by_minibatches():
    cfg = dataclasses.replace(TINY, num_envs=3, num_minibatches=2, num_steps=8, total_timesteps=48)
    with pytest.raises(ValueError, match="num_envs must be divisible"):
        ppo.make_agent(cfg, ColumnSpy([]))


# --------------------------------------------------------------------------- REINFORCE


@dataclasses.dataclass(frozen=True)
class Reinforce(objectives.Objective):
    """REINFORCE with a learned baseline on Monte-Carlo returns, computed here from the rewards
    and the terminated / truncated flags of whole env columns in time order (no GAE): G_t =
    r_t + gamma (1 - term_t) (G_{t+1}, or V(s'_t) where the trace is cut: truncation or the
    rollout's end)."""

    gamma: float = 0.99
    time_ordered = True

    def loss(self, outputs, batch, ctx):
        def back(carry, x):
            r, term, trunc, v_next = x
            g = r + self.gamma * (1.0 - term) * jnp.where(trunc, v_next, carry)
            return g, g

        last = batch["next_value"][-1]
        xs = (batch["reward"], batch["terminated"], batch["truncated"], batch["next_value"])
        _, returns = jax.lax.scan(back, last, xs, reverse=True)
        values = outputs["value"]
        advantage = jax.lax.stop_gradient(returns - values)
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        log_prob = ctx.head.log_prob(outputs["policy"], batch["action"])
        pg = -jnp.mean(log_prob * advantage)
        v = 0.5 * jnp.mean((values - returns) ** 2)
        entropy = jnp.mean(ctx.head.entropy(outputs["policy"]))
        return pg + 0.5 * v - 0.01 * entropy, {"policy_loss": pg, "value_loss": v}


REINFORCE_CFG = a2c.A2CConfig(
    env="CartPole-v1",
    total_timesteps=500_000,
    num_envs=16,
    num_steps=64,
    learning_rate=1e-3,
    hidden_sizes=(64, 64),
)


def test_reinforce_objective_runs_with_time_ordered_columns():
    cfg = dataclasses.replace(REINFORCE_CFG, total_timesteps=4 * 16 * 64, hidden_sizes=(8, 8))
    out = jax.jit(a2c.make_train(cfg, Reinforce()))(jax.random.key(0))
    assert out.metrics["value_loss"].shape == (4,)
    assert np.all(np.isfinite(out.metrics["value_loss"]))
    assert np.all(out.metrics["nan_skipped"] == 0)


@pytest.mark.slow
def test_reinforce_objective_learns_cartpole():
    """Budget: 500k env steps per seed (16 envs x 64 steps, 488 updates), 4 seeds in one program."""
    train = a2c.make_train(REINFORCE_CFG, Reinforce())
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))
    final = np.asarray(out.metrics["episode_return"][:, -20:]).mean(axis=1)
    assert final.mean() >= 195.0, final


# --------------------------------------------------------------------------- extra heads


@dataclasses.dataclass(frozen=True)
class PredictAction(objectives.ActorCritic):
    """PPO plus a cross-entropy loss that trains the prediction head y(s) to predict the action."""

    def loss(self, outputs, batch, ctx):
        total, aux = super().loss(outputs, batch, ctx)
        log_y = jax.nn.log_softmax(outputs["prediction"])
        xent = -jnp.mean(jnp.take_along_axis(log_y, batch["action"][:, None], axis=-1))
        return total + xent, {**aux, "prediction_xent": xent}


def test_prediction_head_reaches_the_objective_and_trains():
    cfg = dataclasses.replace(
        TINY, prediction_size=2, total_timesteps=4 * 8 * 30, num_minibatches=2
    )
    objective = PredictAction(policy_loss=losses.ppo_clip(cfg.clip_eps))
    agent = ppo.make_agent(cfg, objective)
    state = agent.init(jax.random.key(0))
    assert state.params["params"]["prediction_out"]["kernel"].shape == (8, 2)
    out = jax.jit(agent.run)(state)
    xent = np.asarray(out.metrics["prediction_xent"])
    assert xent[-5:].mean() < xent[:5].mean()
    moved = (
        out.state.params["params"]["prediction_out"]["kernel"]
        - state.params["params"]["prediction_out"]["kernel"]
    )
    assert np.abs(moved).max() > 0


def test_prediction_size_is_validated():
    with pytest.raises(ValueError, match="prediction_size"):
        ppo.make_agent(dataclasses.replace(TINY, prediction_size=-1))


# --------------------------------------------------------------------------- registry


def test_config_selects_a_registered_objective():
    cfg = dataclasses.replace(TINY, objective={"name": "policy_gradient"})
    assert cfg.objective == (("name", "policy_gradient"),)
    metrics = lambda c: jax.eval_shape(ppo.make_train(c), jax.random.key(0)).metrics
    assert "clip_frac" not in metrics(cfg)  # the policy gradient reports no clipping
    assert "clip_frac" in metrics(TINY)


def test_unknown_objective_is_refused_with_close_matches():
    cfg = dataclasses.replace(TINY, objective={"name": "ppo_clp"})
    with pytest.raises(
        ValueError, match=r"unknown objective 'ppo_clp'; did you mean \['ppo_clip'\]"
    ):
        ppo.make_agent(cfg)
    with pytest.raises(ValueError, match="objective 'ppo_clip'"):
        ppo.make_agent(dataclasses.replace(TINY, objective={"name": "ppo_clip", "bogus": 1}))


# --------------------------------------------------------------------------- env params


def _pole_lengths(n):
    _, default = envs.make("CartPole-v1")
    lengths = jnp.linspace(0.25, 2.0, n)
    return jax.vmap(lambda length: default.replace(length=length))(lengths), default


# The two vmap-over-env-params checks compile 2 programs each (13-16 s CPU each): with the slow
# checks. Fast: test_sweep.py's sweep over env_params.length equals separate runs, and the
# quickstart notebook trains vmapped over Pendulum's gravity.
@pytest.mark.slow
def test_vmap_over_cartpole_pole_lengths_equals_separate_runs():
    params, _ = _pole_lengths(16)
    agent = ppo.make_agent(dataclasses.replace(TINY, total_timesteps=4 * 8 * 4))
    keys = jax.random.split(jax.random.key(3), 16)
    batched = jax.jit(jax.vmap(agent.train))(keys, params)
    single = jax.jit(agent.train)
    for i in range(16):
        one = single(keys[i], jax.tree.map(lambda x, i=i: x[i], params))
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], batched), one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched.state.env_params.length, np.linspace(0.25, 2.0, 16))
    # a longer pole falls more slowly: fewer episodes end in the same number of steps
    finished = np.asarray(batched.metrics["episodes_finished"]).sum(axis=1)
    assert finished[:8].sum() > finished[8:].sum()


@pytest.mark.slow
def test_vmap_over_pendulum_gravity_equals_separate_runs():
    _, default = envs.make("Pendulum-v1")
    gravity = jnp.array([2.0, 10.0, 20.0])
    params = jax.vmap(lambda g: default.replace(g=g))(gravity)
    cfg = dataclasses.replace(TINY, env="Pendulum-v1", total_timesteps=4 * 8 * 3)
    agent = ppo.make_agent(cfg)
    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.jit(jax.vmap(agent.train, in_axes=(None, 0)))(keys[0], params)
    single = jax.jit(agent.train)
    for i in range(3):
        one = single(keys[0], jax.tree.map(lambda x, i=i: x[i], params))
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], batched), one, rtol=1e-4, atol=1e-5)
    # same key, other gravity: other trajectories
    assert not np.allclose(batched.metrics["value_loss"][0], batched.metrics["value_loss"][2])


def test_sac_trains_on_given_env_params():
    cfg = sac.SACConfig(
        total_timesteps=16, buffer_size=32, batch_size=4, learning_starts=8, hidden_sizes=(8,)
    )
    agent = sac.make_agent(cfg)
    _, default = envs.make("Pendulum-v1")
    state = agent.init(jax.random.key(0), default.replace(max_speed=1.0))
    out = jax.jit(agent.run)(state)
    assert float(out.state.env_params.max_speed) == 1.0
    speed = np.abs(np.asarray(out.state.buffer.data["next_obs"])[:16, 2])  # obs: cos, sin, speed
    assert speed.max() <= 1.0 + 1e-6 and speed.max() > 0.5  # clipped at the given max_speed


def test_make_agent_honours_env_params_without_env():
    _, default = envs.make("CartPole-v1")
    short = default.replace(max_steps_in_episode=5)
    agent = ppo.make_agent(TINY, env_params=short)
    assert agent.env_params.max_steps_in_episode == 5
    out = jax.jit(agent.train)(jax.random.key(0))
    assert np.max(out.metrics["episode_length"]) <= 5


def test_make_agent_refuses_env_params_of_another_env():
    _, pendulum = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match="do not fit this env's params"):
        ppo.make_agent(TINY, env_params=pendulum)


def test_annealed_learning_rate_stops_at_zero_past_num_updates():
    cfg = dataclasses.replace(TINY, anneal_lr=True)
    agent = ppo.make_agent(cfg)
    n = agent.num_updates
    out = jax.jit(lambda s: agent.run(s, n + 3))(agent.init(jax.random.key(0)))
    lr = np.asarray(out.metrics["learning_rate"])
    np.testing.assert_allclose(lr[:n], cfg.learning_rate * (1 - np.arange(n) / n), rtol=1e-6)
    assert np.all(lr >= 0.0) and np.all(lr[n:] == 0.0)
