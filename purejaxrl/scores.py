"""A run's final return, measured from finished episodes only (jittable; works on numpy too).

The loop's per-update `episode_return` metric is the mean return of the episodes finished in that
update, carried forward when none finished; before a run's first finished episode it is a
placeholder 0, not a measurement. Every score built on returns (ES fitness, baselines, the
antagonist's return, algorithmic regret) goes through this module so that placeholder is never
read:

    measured_returns(episode_return, episodes_finished)   # [..., U]: NaN before the first finish
    final_return(episode_return, episodes_finished)        # [...]: mean over the last 5% of updates
    final_return(..., lifetime=L)                          # the same at update L (L may be traced)

`final_return` is the mean over the last `FINAL_FRACTION` of the updates (at least one) of the
measured returns: updates before the first finished episode are left out of the mean, and a run
with no finished episode by the end of its window is NaN (an ES candidate with NaN fitness is
ranked worst and counted; a level with NaN score is never admitted to a level buffer).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

FINAL_FRACTION = 0.05  # final return: mean episode_return over the last 5% of updates


def measured_returns(episode_return, episodes_finished):
    """`episode_return [..., U]` with NaN at the updates before the first finished episode
    (`episodes_finished [..., U]`, the number finished per update)."""
    xp, dtype = _backend(episode_return, episodes_finished)
    seen = xp.cumsum(xp.asarray(episodes_finished) > 0, axis=-1) > 0
    return xp.where(seen, xp.asarray(episode_return, dtype), xp.nan)


def final_window(num_updates: int, fraction: float = FINAL_FRACTION) -> int:
    """The number of last updates `final_return` averages over: `fraction` of them, at least 1."""
    return max(1, math.ceil(fraction * num_updates))


def _backend(*arrays):
    """(jnp, float32) if any input is a jax array or tracer; else (np, float64): host numbers
    (metrics.csv, device_get metrics) keep their precision."""
    if any(isinstance(a, jax.Array) for a in arrays):
        return jnp, jnp.float32
    return np, np.float64


def final_return(episode_return, episodes_finished, lifetime=None, fraction=FINAL_FRACTION):
    """`[...]`: mean of the measured returns over the last `fraction` (at least one) of the first
    `lifetime` updates (None: all U); NaN where none of those updates has a measured return.

    episode_return, episodes_finished `[..., U]` (the loop's metrics); lifetime an int or an
    int array broadcastable to `[...]` (may be traced), clipped to [1, U]."""
    xp, _ = _backend(episode_return, episodes_finished, lifetime)
    returns = measured_returns(episode_return, episodes_finished)
    returns = jnp.asarray(returns) if xp is jnp else returns
    num = returns.shape[-1]
    n = xp.arange(num)
    if lifetime is None:
        window = final_window(num, fraction)
        inside = n >= num - window
    else:
        lifetime = xp.clip(xp.asarray(lifetime, xp.int32), 1, num)[..., None]
        window = xp.maximum(xp.ceil(fraction * lifetime), 1)
        inside = (n < lifetime) & (n >= lifetime - window)
    use = inside & xp.isfinite(returns)
    count = xp.sum(use, axis=-1)
    total = xp.sum(xp.where(use, returns, 0.0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)
