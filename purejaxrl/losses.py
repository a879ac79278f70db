"""Per-sample policy losses and the value loss. Every policy loss has one signature, so the
on-policy loop can swap them (objectives.ActorCritic calls it on each minibatch of B samples):

    policy_loss(log_ratio [B], advantages [B], progress [], extras: dict) -> (loss [], aux: dict)

- `log_ratio` = log pi_new(a|s) - log pi_old(a|s), differentiable in the new policy;
- `advantages`: GAE advantages, normalised per minibatch if the config says so;
- `progress` = n / N, the update index over the number of updates, float32 in [0, 1];
- `extras`:
    "entropy" [B]         entropy of the new policy at s (differentiable);
    "raw_advantages" [B]  the GAE advantages before normalisation;
    "value" [B]           V_new(s) (differentiable); "old_value" [B]: V(s) at rollout time;
    "target" [B]          the return target (raw advantage + old value);
    "num_updates"         N, a Python int (log N for lifetime-aware rules).
`aux` holds scalar metrics (averaged per update into the training metrics). Hyper-parameters are
closed over by the factory that builds the loss, so they may be traced (swept with vmap).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

PolicyLoss = Callable[..., tuple[jnp.ndarray, dict]]


def ppo_clip(clip_eps) -> PolicyLoss:
    """PPO's clipped surrogate: -mean(min(r A, clip(r, 1-eps, 1+eps) A))."""

    def loss(log_ratio, advantages, progress, extras):
        del progress, extras
        ratio = jnp.exp(log_ratio)
        unclipped = ratio * advantages
        clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
        aux = {
            "clip_frac": jnp.mean(jnp.abs(ratio - 1.0) > clip_eps),
            # k3 estimator of KL(old || new): unbiased and non-negative.
            "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        }
        return -jnp.mean(jnp.minimum(unclipped, clipped)), aux

    return loss


def policy_gradient() -> PolicyLoss:
    """Vanilla (A2C) policy gradient: -mean(log_ratio A), whose gradient is -mean(A grad log pi)."""

    def loss(log_ratio, advantages, progress, extras):
        del progress, extras
        return -jnp.mean(log_ratio * advantages), {
            "approx_kl": jnp.mean(jnp.expm1(log_ratio) - log_ratio)
        }

    return loss


def value_loss(values, old_values, targets, clip_eps=None):
    """0.5 mean squared error to targets; with `clip_eps`, PPO's clipped value loss (max of both)."""
    unclipped = (values - targets) ** 2
    if clip_eps is None:
        return 0.5 * jnp.mean(unclipped)
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(jnp.maximum(unclipped, (clipped_values - targets) ** 2))
