"""Gradient estimators for mixture-of-experts policies (PMOE, Ren et al. 2021, arXiv 2104.09122).

A `distributions.GaussianMixture` policy picks expert k ~ Categorical(w(s)) and samples from it.
That discrete choice has no reparameterisation, so the mixing weights w need an estimator. Every
estimator here scores one reparameterised proposal per expert, u_k ~ N(mu_k, sigma_k), with a
critic, and the agents (SAC, PPO) build their losses from these pieces:

- "pmoe" (the paper's frequency-approximate gradient): k* = argmax_k Q(s, u_k); only expert k*
  receives the actor gradient (`only_expert`), and the weights regress onto one_hot(k*)
  (`weight_regression_loss`), so E[w_k(s)] is the frequency with which expert k wins at s.
- "gumbel": the one-hot expert choice relaxed by Gumbel-softmax, y = softmax((logits + g) /
  temperature) (`gumbel_softmax`), weighting the experts' objectives: sum_k y_k f(u_k)
  (`relaxed_choice`); gradients reach the weights through y. Biased for temperature > 0 (the bias
  vanishes as temperature -> 0, where the variance grows). The choice is relaxed, not the action:
  a blend sum_k y_k u_k of the experts' samples lands between the modes, where it is no sample of
  the policy and -log pi there is no entropy estimate (SAC then pushes the experts apart without
  bound: measured, it collapsed onto the box edges with zero return on multimodal/bandit).
- "score": k ~ w, and the score-function (REINFORCE) term stop_grad(f_k - b) log w_k with the
  baseline b = sum_j w_j f_j over all experts' proposals (`score_function_term`); unbiased.

Shapes: B states, K experts, d action dims. Everything is a pure function of arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIXTURE_GRADS = ("pmoe", "gumbel", "score")


def best_expert(scores: jax.Array) -> jax.Array:
    """k* = argmax_k scores `[B, K]` -> int32 `[B]` (no gradient)."""
    return jnp.argmax(jax.lax.stop_gradient(scores), axis=-1)


def select(x: jax.Array, k: jax.Array) -> jax.Array:
    """x[b, k[b]]: x `[B, K, ...]`, k int `[B]` -> `[B, ...]`."""
    idx = k.reshape(k.shape + (1,) * (x.ndim - k.ndim))
    return jnp.squeeze(jnp.take_along_axis(x, idx, axis=k.ndim), axis=k.ndim)


def weight_regression_loss(logits: jax.Array, target_expert: jax.Array) -> jax.Array:
    """mean_b sum_k (w_k(s_b) - one_hot(k*_b)_k)^2, w = softmax(logits `[B, K]`): PMOE's weight loss."""
    w = jax.nn.softmax(logits, axis=-1)
    target = jax.nn.one_hot(target_expert, logits.shape[-1], dtype=w.dtype)
    return jnp.mean(jnp.sum((w - target) ** 2, axis=-1))


def only_expert(out, k: jax.Array):
    """Mixture head outputs (logits, mean `[B, K, d]`, log_std `[B, K, d]`) through which only
    expert k `[B]` passes gradient: the other experts' parameters and the weights are constants."""
    logits, mean, log_std = out
    keep = jax.nn.one_hot(k, mean.shape[-2], dtype=bool)[..., None]
    sg = jax.lax.stop_gradient
    mask = lambda x: jnp.where(keep, x, sg(x))
    return sg(logits), mask(mean), mask(jnp.broadcast_to(log_std, mean.shape))


def frozen_weights(out):
    """Mixture head outputs whose weights pass no gradient (experts do)."""
    logits, mean, log_std = out
    return jax.lax.stop_gradient(logits), mean, log_std


def gumbel_softmax(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
    """Relaxed one-hot sample y = softmax((logits + g) / temperature), g ~ Gumbel(0, 1): `[B, K]`."""
    g = jax.random.gumbel(key, logits.shape, logits.dtype)
    return jax.nn.softmax((logits + g) / temperature, axis=-1)


def relaxed_choice(y: jax.Array, values: jax.Array) -> jax.Array:
    """sum_k y_k values_k per state: y `[B, K]` relaxed one-hot, values `[B, K]` -> `[B]`."""
    return jnp.sum(y * values, axis=-1)


def score_function_term(logits: jax.Array, k: jax.Array, f: jax.Array) -> jax.Array:
    """Scalar whose gradient in `logits` is the REINFORCE estimate of grad E_{k~w}[f_k]:
    mean_b stop_grad(f_bk - b_b) log w_k(s_b), baseline b_b = sum_j w_j f_bj (f `[B, K]`, k `[B]`).

    Its value is not the objective (add the objective separately); with the baseline built from
    every expert's proposal, E_k[term gradient] stays unbiased given the proposals."""
    log_w = jax.nn.log_softmax(logits, axis=-1)
    f = jax.lax.stop_gradient(f)
    baseline = jnp.sum(jax.lax.stop_gradient(jnp.exp(log_w)) * f, axis=-1)
    return jnp.mean((select(f, k) - baseline) * select(log_w, k))


def check_mixture_fields(cfg) -> None:
    """ValueError naming `num_experts` / `mixture_grad` / `gumbel_temperature` / `mixture_coef`."""
    from purejaxrl import config as C

    name = type(cfg).__name__
    k = cfg.num_experts
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}.num_experts={k!r}: must be an integer >= 1")
    if k > 1 and cfg.policy != "pmoe":
        raise ValueError(
            f"{name}.num_experts={k}: more than one expert needs policy='pmoe', got "
            f"policy={cfg.policy!r}"
        )
    C.check_choice(cfg, "mixture_grad", MIXTURE_GRADS)
    C.check_range(cfg, "gumbel_temperature", 0.0, float("inf"), low_open=True)
    C.check_range(cfg, "mixture_coef", 0.0, float("inf"))
