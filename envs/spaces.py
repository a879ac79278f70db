"""Action and observation spaces: what an agent needs to size its networks and heads."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Discrete:
    """Integer actions in {0, ..., n - 1}; samples are int32 scalars."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    @property
    def dtype(self):
        return jnp.int32

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, (), 0, self.n, dtype=jnp.int32)

    def contains(self, x) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.logical_and(x >= 0, x < self.n)


@dataclass(frozen=True, eq=False)
class Box:
    """Real vectors in [low, high] (bounds may be +-inf); `low`/`high`: numpy arrays of `shape`."""

    low: np.ndarray
    high: np.ndarray
    shape: tuple[int, ...]
    dtype: type = jnp.float32

    def __post_init__(self):
        low = np.broadcast_to(np.asarray(self.low, np.float32), self.shape)
        high = np.broadcast_to(np.asarray(self.high, np.float32), self.shape)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def bounded(self) -> bool:
        return bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))

    def sample(self, key: jax.Array) -> jax.Array:
        """Uniform in the box where bounded, standard normal where a bound is infinite."""
        lo = jnp.asarray(np.where(np.isfinite(self.low), self.low, -1.0))
        hi = jnp.asarray(np.where(np.isfinite(self.high), self.high, 1.0))
        return jax.random.uniform(key, self.shape, self.dtype, lo, hi)

    def contains(self, x) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.all((x >= self.low) & (x <= self.high))

    def __repr__(self) -> str:
        return f"Box(low={self.low.min():.3g}, high={self.high.max():.3g}, shape={self.shape})"


def is_discrete(space) -> bool:
    return isinstance(space, Discrete)


def action_dim(space) -> int:
    """Number of policy outputs: categories for Discrete, flat size for Box."""
    if isinstance(space, Discrete):
        return space.n
    return int(np.prod(space.shape))
