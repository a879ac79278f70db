"""Orthogonal init without LAPACK (purejaxrl/initializers.py): matches numpy's QR and flax's draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxrl import networks
from purejaxrl.initializers import householder_q, orthogonal, stacked_orthogonal


@pytest.mark.parametrize("shape", [(5, 5), (9, 4), (64, 64), (3, 64)])
def test_householder_q_matches_numpy_qr_with_positive_r_diagonal(shape):
    a = np.random.default_rng(0).normal(size=shape if shape[0] >= shape[1] else shape[::-1])
    q_np, r_np = np.linalg.qr(a)
    q_np = q_np * np.sign(np.diag(r_np))
    q = np.asarray(householder_q(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(q, q_np, atol=2e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=2e-5)


def test_householder_q_rejects_wide_matrix():
    with pytest.raises(ValueError, match="rows >= columns"):
        householder_q(jnp.ones((2, 3)))


@pytest.mark.parametrize("shape", [(3, 64), (64, 64), (64, 1), (256, 17), (4, 2, 5)])
def test_orthogonal_equals_flax_initializer_for_same_key(shape):
    key = jax.random.key(7)
    ours = orthogonal(1.7)(key, shape)
    ref = jax.nn.initializers.orthogonal(1.7)(key, shape)
    assert ours.shape == shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)


def test_stacked_orthogonal_members_are_independent_orthogonal_draws():
    w = np.asarray(stacked_orthogonal(2.0, 2)(jax.random.key(0), (2, 8, 8)))
    for m in w:
        np.testing.assert_allclose(m.T @ m, 4.0 * np.eye(8), atol=1e-4)
    assert np.abs(w[0] - w[1]).max() > 0.1
    with pytest.raises(ValueError, match="leading axis"):
        stacked_orthogonal(1.0, 2)(jax.random.key(0), (3, 8, 8))


def test_vmapped_network_init_has_no_lapack_custom_call():
    """Batched LAPACK QR deadlocked XLA:CPU's 2-thread pool (see initializers.py)."""
    net = networks.ActorCritic(action_dim=2, head_kind="gaussian")
    obs = jnp.zeros((1, 3))
    hlo = jax.jit(jax.vmap(lambda k: net.init(k, obs))).lower(
        jax.random.split(jax.random.key(0), 4)
    )
    assert "custom_call" not in hlo.as_text()


@pytest.mark.parametrize("shared", [False, True])
def test_no_hidden_layers_gives_linear_heads(shared):
    """hidden_sizes=() (tabular agents on one-hot observations): policy, value and prediction are
    linear in the observation, with separate or shared torsos."""
    net = networks.ActorCritic(
        action_dim=3, head_kind="categorical", hidden_sizes=(), shared=shared, prediction_size=2
    )
    obs = jax.random.normal(jax.random.key(0), (5, 4))
    params = net.init(jax.random.key(1), obs, method=networks.ActorCritic.init_all)
    out = net.apply(params, obs, method=networks.ActorCritic.outputs)
    p = params["params"]
    linear = lambda name: obs @ p[name]["kernel"] + p[name]["bias"]
    np.testing.assert_allclose(out["policy"], linear("policy_out"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["value"], linear("value_out")[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["prediction"], linear("prediction_out"), rtol=1e-5, atol=1e-6)
