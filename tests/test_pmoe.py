"""Mixture policy head and PMOE gradient estimators: references, K = 1 identity, estimator checks."""

import dataclasses

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from purejaxrl import pmoe, sac
from purejaxrl.distributions import Gaussian, GaussianMixture, TanhGaussian

K, D, B = 3, 2, 5


def mixture_out(key=0, batch=B, k=K, d=D):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    logits = jax.random.normal(k1, (batch, k))
    mean = 1.5 * jax.random.normal(k2, (batch, k, d))
    log_std = 0.4 * jax.random.normal(k3, (batch, k, d)) - 0.5
    return logits, mean, log_std


def numpy_mixture_log_prob(out, u, squash):
    logits, mean, log_std = (np.asarray(x, np.float64) for x in out)
    u = np.asarray(u, np.float64)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    dens = np.zeros(u.shape[0])
    for b in range(u.shape[0]):
        for k in range(w.shape[1]):
            comp = stats.norm.pdf(u[b], mean[b, k], np.exp(log_std[b, k])).prod()
            dens[b] += w[b, k] * comp
    logp = np.log(dens)
    if squash:  # change of variables a = tanh(u): divide by |da/du| = prod(1 - tanh(u)^2)
        logp -= np.log(1.0 - np.tanh(u) ** 2).sum(-1)
    return logp


@pytest.mark.parametrize("squash", [False, True])
def test_mixture_log_prob_matches_scipy_and_distrax(squash):
    out = mixture_out()
    head = GaussianMixture(D, K, squash)
    u = 0.7 * jax.random.normal(jax.random.key(9), (B, D))
    ours = np.asarray(head.log_prob(out, u))
    np.testing.assert_allclose(ours, numpy_mixture_log_prob(out, u, squash), rtol=1e-5, atol=1e-5)
    ref = head.dist(out).log_prob(jnp.tanh(u) if squash else u)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_distrax_reference_is_mixture_same_family():
    out = mixture_out()
    assert isinstance(GaussianMixture(D, K).dist(out), distrax.MixtureSameFamily)


@pytest.mark.parametrize("squash", [False, True])
def test_sample_log_prob_is_the_mixture_density_of_the_sample(squash):
    out = mixture_out()
    head = GaussianMixture(D, K, squash)
    u, logp = head.sample_and_log_prob(jax.random.key(3), out)
    assert u.shape == (B, D) and logp.shape == (B,)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(head.log_prob(out, u)), atol=1e-5)


def test_acting_picks_experts_with_the_mixing_weights():
    out = mixture_out(batch=1)
    head = GaussianMixture(D, K)
    n = 40_000
    keys = jax.random.split(jax.random.key(1), n)
    picks = jax.vmap(lambda k: head.sample_expert_index(k, out))(keys)[:, 0]
    freq = np.bincount(np.asarray(picks), minlength=K) / n
    w = np.asarray(jax.nn.softmax(out[0][0]))
    np.testing.assert_allclose(freq, w, atol=4 * np.sqrt(w * (1 - w) / n).max())


def test_entropy_is_an_upper_bound_and_mode_is_the_heaviest_experts_mean():
    out = mixture_out(batch=1)
    head = GaussianMixture(D, K)
    u, logp = jax.vmap(lambda k: head.sample_and_log_prob(k, out))(
        jax.random.split(jax.random.key(2), 20_000)
    )
    mc_entropy = -float(jnp.mean(logp))
    assert float(head.entropy(out)[0]) >= mc_entropy - 0.02
    k = int(jnp.argmax(out[0][0]))
    np.testing.assert_array_equal(np.asarray(head.mode(out))[0], np.asarray(out[1])[0, k])


@pytest.mark.parametrize("squash", [False, True])
def test_one_expert_is_the_gaussian_head_bit_for_bit(squash):
    logits, mean, log_std = mixture_out(k=1)
    gauss = TanhGaussian(D) if squash else Gaussian(D)
    mix = GaussianMixture(D, 1, squash)
    g_out, m_out = (mean[:, 0], log_std[:, 0]), (jnp.zeros_like(logits), mean, log_std)
    key = jax.random.key(4)
    pairs = zip(
        gauss.sample_and_log_prob(key, g_out), mix.sample_and_log_prob(key, m_out), strict=True
    )
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    u = jax.random.normal(jax.random.key(5), (B, D))
    np.testing.assert_array_equal(gauss.log_prob(g_out, u), mix.log_prob(m_out, u))
    np.testing.assert_array_equal(gauss.entropy(g_out), mix.entropy(m_out))
    np.testing.assert_array_equal(gauss.mode(g_out), mix.mode(m_out))
    # Per-expert proposals draw the same noise as the Gaussian head.
    u_experts, lp_experts = mix.sample_experts(key, m_out)
    u_g, lp_g = gauss.sample_and_log_prob(key, g_out)
    np.testing.assert_array_equal(np.asarray(u_experts[:, 0]), np.asarray(u_g))
    np.testing.assert_array_equal(np.asarray(lp_experts[:, 0]), np.asarray(lp_g))


# --------------------------------------------------------------------------- estimators

SAC_CFG = sac.SACConfig(policy="pmoe", num_experts=K, mixture_grad="pmoe", mixture_coef=1.0)


def known_q(pre_squash):
    """A critic with a known best expert: Q(s, a) = -sum (a - 0.5)^2, a = tanh(u)."""
    return -jnp.sum((jnp.tanh(pre_squash) - 0.5) ** 2, axis=-1)


def test_pmoe_actor_gradient_reaches_only_the_best_expert():
    out = mixture_out()
    head = GaussianMixture(D, K, squash=True)
    key = jax.random.key(6)
    u, _ = head.sample_experts(key, out)
    best = np.asarray(jnp.argmax(known_q(u), axis=-1))

    def loss(mean, log_std):
        return sac.mixture_actor_loss(SAC_CFG, head, (out[0], mean, log_std), known_q, 0.2, key)[0]

    g_mean, g_log_std = jax.grad(loss, argnums=(0, 1))(out[1], out[2])
    for b in range(B):
        for k in range(K):
            nonzero = float(jnp.abs(g_mean[b, k]).sum() + jnp.abs(g_log_std[b, k]).sum()) > 0
            assert nonzero == (k == best[b]), (b, k, best[b])


def test_pmoe_weights_regress_onto_one_hot_of_the_best_expert():
    out = mixture_out()
    head = GaussianMixture(D, K, squash=True)
    key = jax.random.key(6)
    u, _ = head.sample_experts(key, out)
    best = jnp.argmax(known_q(u), axis=-1)

    def weight_part(logits):
        return sac.mixture_actor_loss(SAC_CFG, head, (logits, *out[1:]), known_q, 0.2, key)[0]

    w = np.asarray(jax.nn.softmax(out[0]))
    target = np.eye(K)[np.asarray(best)]
    expected = np.mean(np.sum((w - target) ** 2, -1))
    _, (_, aux) = sac.mixture_actor_loss(SAC_CFG, head, out, known_q, 0.2, key)
    np.testing.assert_allclose(float(aux["weight_loss"]), expected, rtol=1e-5)
    # Gradient descent on the logits alone drives w to one_hot(k*).
    logits = out[0]
    for _ in range(300):
        logits = logits - 2.0 * jax.grad(weight_part)(logits)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), target, atol=0.1)


@pytest.mark.parametrize("grad", ["pmoe", "score"])
def test_sac_mixture_loss_equals_its_plain_formula(grad):
    """The loss runs the critic's backward pass on the one chosen action only; value and gradient
    must equal the formula written over all K proposals (pmoe: alpha log pi_k* - Q(a_k*) + weight
    regression; score: f_k + stop_grad(f_k - baseline) log w_k, f = alpha log pi - Q)."""
    cfg = dataclasses.replace(SAC_CFG, mixture_grad=grad)
    head = GaussianMixture(D, K, squash=True)
    key, alpha = jax.random.key(6), 0.2

    def plain(out):
        u, own = head.sample_experts(key, out)
        q = known_q(u)
        if grad == "pmoe":
            best = jnp.argmax(jax.lax.stop_gradient(q), axis=-1)
            pick = lambda x: jnp.take_along_axis(x, best[:, None], 1)[:, 0]
            weight = pmoe.weight_regression_loss(out[0], best)
            return jnp.mean(alpha * pick(own) - pick(q)) + weight
        chosen = head.sample_expert_index(key, out)
        logp = jnp.stack([head.log_prob(out, u[:, k]) for k in range(K)], axis=1)
        f = alpha * logp - q
        return jnp.mean(pmoe.select(f, chosen)) + pmoe.score_function_term(out[0], chosen, f)

    ours = lambda out: sac.mixture_actor_loss(cfg, head, out, known_q, alpha, key)[0]
    out = mixture_out()
    np.testing.assert_allclose(float(ours(out)), float(plain(out)), rtol=1e-5)
    for a, b in zip(jax.grad(ours)(out), jax.grad(plain)(out), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# One-dimensional case with a closed-form objective: J(l) = E_{k~softmax(l)} E_{u~N_k}[f(u)] with
# f(u) = -(u - c)^2, so E_{N_k} f = F_k = -((mu_k - c)^2 + s_k^2) and dJ/dl = w (F - sum_k w_k F_k).
LOGITS = jnp.array([0.3, -0.2, 0.1])
MU, SIGMA, C = jnp.array([-1.0, 0.5, 1.5]), jnp.array([0.3, 0.2, 0.4]), 0.8
N_MC = 200_000


def true_gradient():
    F = -((MU - C) ** 2 + SIGMA**2)
    w = jax.nn.softmax(LOGITS)
    return np.asarray(w * (F - jnp.sum(w * F)))


def proposals(key):
    return MU + SIGMA * jax.random.normal(key, (N_MC, 3))


def f(u):
    return -((u - C) ** 2)


def test_score_function_gradient_is_unbiased():
    k_u, k_pick = jax.random.split(jax.random.key(0))
    u = proposals(k_u)
    picks = jax.random.categorical(k_pick, jnp.broadcast_to(LOGITS, (N_MC, 3)))

    def per_sample(logits, u_i, k_i):
        return jax.grad(lambda lg: pmoe.score_function_term(lg[None], k_i[None], f(u_i)[None]))(
            logits
        )

    grads = jax.vmap(per_sample, in_axes=(None, 0, 0))(LOGITS, u, picks)
    mean, se = np.asarray(grads.mean(0)), np.asarray(grads.std(0)) / np.sqrt(N_MC)
    assert np.all(np.abs(mean - true_gradient()) < 4 * se + 1e-6), (mean, true_gradient(), se)


def test_gumbel_softmax_gradient_converges_to_the_true_gradient_as_temperature_falls():
    """Gumbel-softmax is biased for temperature > 0; the bias must shrink towards 0 with it."""
    u = proposals(jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), N_MC)
    errors = {}
    for temperature in (1.0, 0.5, 0.05):

        def per_sample(logits, u_i, key):
            def value(lg):
                y = pmoe.gumbel_softmax(key, lg[None], temperature)
                return pmoe.relaxed_choice(y, f(u_i)[None])[0]

            return jax.grad(value)(logits)

        grads = jax.vmap(per_sample, in_axes=(None, 0, 0))(LOGITS, u, keys)
        errors[temperature] = np.abs(np.asarray(grads.mean(0)) - true_gradient()).max()
    assert errors[1.0] > errors[0.5] > errors[0.05]
    assert errors[0.05] < 0.05 * np.abs(true_gradient()).max(), errors


def test_mixture_field_errors_name_the_field():
    bad = [
        (dict(policy="pmoe", num_experts=0), "num_experts"),
        (dict(policy="pmoe", num_experts=2, mixture_grad="reinforce"), "mixture_grad"),
        (dict(num_experts=2), "num_experts"),
        (dict(policy="pmoe", num_experts=2, gumbel_temperature=0.0), "gumbel_temperature"),
        (dict(policy="beta"), "policy"),
    ]
    for changes, field in bad:
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(sac.SACConfig(), **changes)  # validated at construction
