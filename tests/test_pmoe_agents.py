"""PMOE mixtures inside PPO and SAC on tiny configs: K = 1 is the Gaussian agent, K = 3 trains
with every estimator, checkpoints and evaluation work, bad configs fail before compiling."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxrl import checkpoint, evaluation, ppo, sac
from tests import tiny

PPO_TINY = tiny.ppo_config(
    4,
    env="Pendulum-v1",
    num_envs=16,
    num_steps=32,
    num_minibatches=4,
    hidden_sizes=(32, 32),
    policy="gaussian",
)
SAC_TINY = tiny.sac_config(
    300, num_envs=1, buffer_size=512, batch_size=32, learning_starts=100, hidden_sizes=(32, 32)
)
KEY = jax.random.key(0)


@functools.cache
def trained(algo: str, **changes):
    module, base = (ppo, PPO_TINY) if algo == "ppo" else (sac, SAC_TINY)
    cfg = dataclasses.replace(base, **changes)
    agent = module.make_agent(cfg)
    return agent, jax.jit(agent.train)(KEY)


def assert_same_run(a, b):
    assert a.metrics.keys() <= b.metrics.keys()
    for key in a.metrics:
        np.testing.assert_allclose(
            np.asarray(b.metrics[key]),
            np.asarray(a.metrics[key]),
            rtol=1e-4,
            atol=1e-5,
            err_msg=key,
        )


# Two agents compiled for this check alone (12-16 s CPU per case): with the slow checks. The head
# itself is checked bit for bit in test_pmoe.py, and the mixture agents in the pinned tests.
@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_one_expert_mixture_is_the_gaussian_agent(algo):
    """Same parameters at init, same key use; equal up to float32 rounding (XLA fuses the two
    programs differently, so bit equality holds for the head, tested in test_pmoe.py)."""
    _, gauss = trained(algo)
    _, mixture = trained(algo, policy="pmoe", num_experts=1)
    assert_same_run(gauss, mixture)
    first_update = {k: np.asarray(v)[0] for k, v in gauss.metrics.items()}
    same_first = {k: np.asarray(v)[0] for k, v in mixture.metrics.items() if k in first_update}
    for k, v in first_update.items():
        np.testing.assert_allclose(same_first[k], v, rtol=2e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
# The Gumbel and score-function baselines also run in the pinned tests; their training checks
# (~20 s each) run with the slow checks.
@pytest.mark.parametrize(
    "grad",
    [
        "pmoe",
        pytest.param("gumbel", marks=pytest.mark.slow),
        pytest.param("score", marks=pytest.mark.slow),
    ],
)
def test_three_experts_train_with_every_estimator(algo, grad):
    agent, out = trained(algo, policy="pmoe", num_experts=3, mixture_grad=grad)
    m = {k: np.asarray(v) for k, v in out.metrics.items()}
    for key, value in m.items():
        assert np.all(np.isfinite(value)), key
    assert m["nan_skipped"].sum() == 0
    # Three experts' weights: the heaviest holds between 1/3 and 1 of the mass.
    assert np.all((m["weight_max"][-3:] >= 1 / 3 - 1e-6) & (m["weight_max"][-3:] <= 1.0))
    if grad == "pmoe":
        assert m["weight_loss"][-1] > 0
    params = out.state.params["params"]
    if algo == "ppo":
        assert "mixture_q" in params and "mixture_logits" in params
        assert m["q_loss"][-1] > 0
    else:
        assert "mixture_logits" in params["pi"]
    returns = evaluation.evaluate(agent, out.state, jax.random.key(1), num_episodes=2)
    assert np.all(np.isfinite(np.asarray(returns)))


def test_ppo_mixture_q_trains_only_its_advantage_head():
    """Q(s, a) = V(s) + A(critic features, a): its loss moves A alone; the critic is untouched."""
    agent, out = trained("ppo", policy="pmoe", num_experts=3, mixture_grad="pmoe")
    net, params = agent.network, out.state.params
    obs = jax.random.normal(jax.random.key(2), (5, 3))
    proposals = jax.random.normal(jax.random.key(3), (5, 3, 1))

    def q_loss(p):
        _, value, features = net.apply(p, obs, method=net.with_features)
        q = net.apply(p, features, value, proposals[:, 0], method=net.action_value)
        return jnp.sum((q - 1.0) ** 2)

    grads = jax.grad(q_loss)(params)["params"]
    for name, g in grads.items():
        norm = float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(g)))
        assert (norm > 0) == (name == "mixture_q"), name
    # Per-expert proposals [B, K, d] give each expert's Q, equal to scoring them one at a time.
    _, value, features = net.apply(params, obs, method=net.with_features)
    q_all = net.apply(params, features, value, proposals, method=net.action_value)
    assert q_all.shape == (5, 3)
    for k in range(3):
        q_k = net.apply(params, features, value, proposals[:, k], method=net.action_value)
        np.testing.assert_allclose(np.asarray(q_all[:, k]), np.asarray(q_k), rtol=1e-5, atol=1e-6)
        # and Q - V is the advantage head alone, the same for any V
        np.testing.assert_allclose(
            np.asarray(q_k - value),
            np.asarray(
                net.apply(params, features, 0 * value, proposals[:, k], method=net.action_value)
            ),
            rtol=1e-4,
            atol=1e-5,
        )


def test_mixture_checkpoint_round_trip_and_shape_check(tmp_path):
    agent, out = trained("sac", policy="pmoe", num_experts=3, mixture_grad="pmoe")
    path = tmp_path / "ckpt"
    checkpoint.save(path, out.state, agent.config)
    state, info = checkpoint.load(path, agent.config, num_seeds=None)
    assert info["config"]["num_experts"] == 3
    for a, b in zip(jax.tree.leaves(out.state.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(checkpoint.CheckpointError, match="num_experts"):
        checkpoint.load(path, dataclasses.replace(agent.config, num_experts=2), num_seeds=None)


@pytest.mark.parametrize(
    "module, base, changes, field",
    [
        (ppo, PPO_TINY, dict(policy="pmoe", num_experts=0), "num_experts"),
        (ppo, PPO_TINY, dict(policy="pmoe", num_experts=2, mixture_grad="x"), "mixture_grad"),
        (ppo, PPO_TINY, dict(num_experts=3), "num_experts"),
        (ppo, PPO_TINY, dict(policy="pmoe", mixture_coef=-1.0), "mixture_coef"),
        (ppo, PPO_TINY, dict(env="CartPole-v1", policy="pmoe", num_experts=2), "pmoe"),
        (sac, SAC_TINY, dict(policy="pmoe", num_experts=-1), "num_experts"),
        (sac, SAC_TINY, dict(policy="pmoe", mixture_grad="gumbel-st"), "mixture_grad"),
    ],
)
def test_bad_mixture_config_raises_before_compiling(module, base, changes, field):
    with pytest.raises(ValueError, match=field):
        module.make_agent(dataclasses.replace(base, **changes))
