"""A circular replay buffer held in the train state: a pytree of `[capacity, ...]` arrays.

    buf = replay.init(example_transition, capacity)       # example: one transition, no batch axis
    buf = replay.add(buf, batch)                          # batch: leaves [n, ...], n <= capacity
    sample = replay.sample(buf, key, batch_size)          # leaves [batch_size, ...]

`add` writes the `n` transitions at slots `(pos + arange(n)) % capacity` (wrapping around and
overwriting the oldest), `sample` draws `batch_size` slot indices uniformly, with replacement,
among the `size` filled slots. Everything is pure and jittable, and `size`/`pos` are arrays, so a
buffer vmaps over seeds like the rest of the train state.

Why not flashbax: `flashbax` 0.1.3 installs and runs with jax 0.10.2 (its item buffer does the
same job), but it adds a dependency for ~40 lines of code and was not faster: in a jitted scan of
5000 x (add 1 transition + sample 256) into a 100k buffer of Pendulum transitions on 2 CPU cores,
this buffer did ~48k steps/s and flashbax's item buffer ~40k steps/s. This one is also a plain
pytree whose fields the checkpoint fingerprint names readably.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Buffer:
    """`data`: pytree of `[capacity, ...]`; `pos`: next write slot; `size`: filled slots."""

    data: Any
    pos: jax.Array  # int32 []
    size: jax.Array  # int32 []

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def init(example: Any, capacity: int) -> Buffer:
    """An empty buffer for transitions shaped like `example` (one transition, no batch axis)."""
    data = jax.tree.map(
        lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example
    )
    return Buffer(data=data, pos=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def add(buf: Buffer, batch: Any) -> Buffer:
    """Inserts `n` transitions (leaves `[n, ...]`, `n <= capacity`) with wraparound."""
    capacity = buf.capacity
    n = jax.tree.leaves(batch)[0].shape[0]
    if n > capacity:
        raise ValueError(f"cannot add {n} transitions to a buffer of capacity {capacity}")
    idx = (buf.pos + jnp.arange(n, dtype=jnp.int32)) % capacity
    data = jax.tree.map(lambda d, x: d.at[idx].set(x.astype(d.dtype)), buf.data, batch)
    return Buffer(
        data=data,
        pos=(buf.pos + n) % capacity,
        size=jnp.minimum(buf.size + n, capacity),
    )


def sample_indices(buf: Buffer, key: jax.Array, batch_size: int) -> jax.Array:
    """`batch_size` uniform slot indices in `[0, size)` (int32 `[batch_size]`; size must be > 0)."""
    return jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1), dtype=jnp.int32)


def sample(buf: Buffer, key: jax.Array, batch_size: int) -> Any:
    """A uniform batch (with replacement) of filled transitions: leaves `[batch_size, ...]`."""
    idx = sample_indices(buf, key, batch_size)
    return jax.tree.map(lambda d: d[idx], buf.data)
