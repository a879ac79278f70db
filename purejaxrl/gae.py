"""Generalised advantage estimation that keeps termination and truncation apart."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards, values, next_values, terminated, truncated, gamma, gae_lambda):
    """Advantages and value targets for one rollout.

    Args (all `[T, N]`, time-major):
      rewards: r_t.
      values: V(s_t).
      next_values: V of the observation reached after step t *before* any auto-reset
        (the final observation of an episode when it ended at t).
      terminated: true terminal at t: no bootstrap (V = 0 beyond it).
      truncated: time limit at t: bootstrap from next_values[t], then cut the trace.
      gamma, gae_lambda: scalars (may be traced).
    Returns:
      (advantages, targets), each `[T, N]`; targets = advantages + values.

    delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t);
    A_t = delta_t + gamma lambda (1 - (term_t or trunc_t)) A_{t+1}; A_T = 0 past the rollout end
    (the last step bootstraps through next_values).
    """
    terminated = terminated.astype(values.dtype)
    done = jnp.maximum(terminated, truncated.astype(values.dtype))
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    decay = gamma * gae_lambda * (1.0 - done)

    def step(carry, x):
        delta, k = x
        adv = delta + k * carry
        return adv, adv

    _, advantages = jax.lax.scan(
        step, jnp.zeros_like(values[0]), (deltas, decay), reverse=True, unroll=16
    )
    return advantages, advantages + values
