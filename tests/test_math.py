"""Pure pieces against independent references: GAE, policy heads, losses."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from envs import spaces
from purejaxrl import losses
from purejaxrl.distributions import Categorical, Gaussian, TanhGaussian, make_head
from purejaxrl.gae import gae


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Advantage by its definition: sum_k (gamma lam)^k delta_{t+k} up to the episode's end."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                bootstrap = 0.0 if terminated[k, n] else gamma * next_values[k, n]
                delta = rewards[k, n] + bootstrap - values[k, n]
                total += weight * delta
                if terminated[k, n] or truncated[k, n]:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_numpy_with_truncation_and_termination_inside_one_rollout():
    rng = np.random.default_rng(0)
    T, N = 12, 3
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[3, 0] = True
    truncated[7, 0] = True
    truncated[2, 1] = True
    terminated[2, 2] = True  # both on different steps of env 2
    truncated[9, 2] = True
    adv, targets = gae(
        *map(jnp.asarray, (rewards, values, next_values, terminated, truncated)), 0.97, 0.9
    )
    ref = gae_reference(rewards, values, next_values, terminated, truncated, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, ref + values, rtol=1e-5, atol=1e-5)


def test_gae_bootstraps_on_truncation_not_on_termination():
    """One step, V(s)=0, V(s')=10, r=1: truncation gives 1 + 0.9*10, termination gives 1."""
    ones = jnp.ones((1, 1))
    kw = dict(rewards=ones, values=0 * ones, next_values=10 * ones, gamma=0.9, gae_lambda=0.95)
    adv_trunc, _ = gae(terminated=ones * 0, truncated=ones, **kw)
    adv_term, _ = gae(terminated=ones, truncated=ones * 0, **kw)
    assert float(adv_trunc[0, 0]) == pytest.approx(10.0)
    assert float(adv_term[0, 0]) == pytest.approx(1.0)


def test_tanh_gaussian_log_prob_matches_numerical_change_of_variables():
    mean, log_std = jnp.array([0.3, -0.5]), jnp.array([-0.2, 0.4])
    head = TanhGaussian(2)
    u = jnp.array([[0.1, -1.2], [1.5, 0.7], [-2.5, 3.0]])
    logp = np.asarray(head.log_prob((mean, log_std), u))
    a, h = np.tanh(np.asarray(u, np.float64)), 1e-6
    sd = np.exp(np.asarray(log_std, np.float64))
    # density of a = tanh(u) from the probability of a small interval around a, per dimension
    lo, hi = np.arctanh(a - h), np.arctanh(a + h)
    mass = stats.norm.cdf(hi, mean, sd) - stats.norm.cdf(lo, mean, sd)
    ref = np.sum(np.log(mass / (2 * h)), axis=-1)
    np.testing.assert_allclose(logp, ref, rtol=1e-4, atol=1e-4)


def test_tanh_gaussian_sample_log_prob_is_consistent():
    head = TanhGaussian(3)
    out = (jnp.zeros((5, 3)), jnp.full((5, 3), -0.3))
    u, logp = head.sample_and_log_prob(jax.random.key(1), out)
    np.testing.assert_allclose(logp, head.log_prob(out, u), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(head.to_env(u)) < 1.0)


def test_gaussian_and_categorical_heads_match_distrax():
    mean, log_std = jnp.array([[0.5, -1.0]]), jnp.array([[0.1, -0.7]])
    action = jnp.array([[0.2, 0.3]])
    ref = distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))
    np.testing.assert_allclose(
        Gaussian(2).log_prob((mean, log_std), action), ref.log_prob(action), rtol=1e-6
    )
    np.testing.assert_allclose(Gaussian(2).entropy((mean, log_std)), ref.entropy(), rtol=1e-6)
    logits = jnp.array([[1.0, -0.5, 2.0]])
    cat = distrax.Categorical(logits=logits)
    np.testing.assert_allclose(
        Categorical(3).log_prob(logits, jnp.array([2])), cat.log_prob(jnp.array([2])), rtol=1e-6
    )
    np.testing.assert_allclose(Categorical(3).entropy(logits), cat.entropy(), rtol=1e-6)


def test_ppo_clip_loss_hand_computed():
    # ratios 1.5 (A=+1: clipped to 1.2), 0.5 (A=-2: clipped to 0.8 -> -1.6 is the min), 1.1 (A=3)
    log_ratio = jnp.log(jnp.array([1.5, 0.5, 1.1]))
    adv = jnp.array([1.0, -2.0, 3.0])
    loss, aux = losses.ppo_clip(0.2)(log_ratio, adv, 0.0, {})
    # min(r A, clip(r) A): min(1.5, 1.2) = 1.2; min(-1.0, -1.6) = -1.6; min(3.3, 3.3) = 3.3
    assert float(loss) == pytest.approx(-(1.2 - 1.6 + 3.3) / 3, rel=1e-6)
    assert float(aux["clip_frac"]) == pytest.approx(2 / 3)


def test_policy_gradient_loss_gradient_is_advantage_weighted_score():
    adv = jnp.array([1.0, -2.0])
    grad = jax.grad(lambda lr: losses.policy_gradient()(lr, adv, 0.0, {})[0])(jnp.zeros(2))
    np.testing.assert_allclose(grad, -adv / 2)


def test_clipped_value_loss_hand_computed():
    values, old, targets = jnp.array([2.0]), jnp.array([1.0]), jnp.array([3.0])
    # unclipped (2-3)^2 = 1; clipped value 1.2 -> (1.2-3)^2 = 3.24; max -> 3.24, times 0.5
    assert float(losses.value_loss(values, old, targets, 0.2)) == pytest.approx(1.62)
    assert float(losses.value_loss(values, old, targets)) == pytest.approx(0.5)


def test_head_space_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="discrete"):
        make_head("categorical", spaces.Box(-1.0, 1.0, (2,)))
    with pytest.raises(ValueError, match="continuous"):
        make_head("gaussian", spaces.Discrete(3))


def test_shuffle_is_a_uniform_permutation():
    from purejaxrl.loop import shuffle

    keys = jax.random.split(jax.random.key(0), 4000)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffle(k, 6)))(keys))
    assert all(sorted(p) == list(range(6)) for p in perms[:50])
    # every element lands in every position with probability 1/6: chi-square over the 6 x 6 table
    counts = np.stack([(perms == i).sum(0) for i in range(6)])
    chi2 = ((counts - 4000 / 6) ** 2 / (4000 / 6)).sum()
    assert chi2 < 70.0  # 25 degrees of freedom: p < 1e-5 of exceeding this by chance
    big = np.asarray(jax.jit(lambda k: shuffle(k, 2048))(jax.random.key(1)))
    assert sorted(big) == list(range(2048)) and not np.array_equal(big, np.arange(2048))
    huge = np.asarray(jax.jit(lambda k: shuffle(k, 70_000))(jax.random.key(2)))  # fallback path
    assert sorted(huge) == list(range(70_000))
