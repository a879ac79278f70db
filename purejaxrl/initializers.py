"""Orthogonal weight initialisation computed with XLA ops only (no LAPACK custom call).

`flax.linen.initializers.orthogonal` takes the Q factor of a Gaussian matrix from
`jnp.linalg.qr`, which on CPU is jaxlib's LAPACK `geqrf` FFI kernel. Batched (under `vmap` over
seeds, or for stacked twin networks) that kernel splits the batch over XLA's intra-op thread pool
and blocks until the pieces finish. On a 2-core machine the pool has two threads; when the thunk
executor runs two such QRs at once, each occupies one pool thread and waits for sub-tasks that no
free thread is left to run: the program deadlocks at its first execution (all threads idle in
`jax::ParallelBatchMap` -> `BlockingCounter::Wait`, seen with gdb on jaxlib 0.10.2).

`orthogonal(scale)` draws from the same distribution as flax's initialiser (the Haar measure on
matrices with orthonormal columns or rows, times `scale`): it factors the same Gaussian matrix
with a Householder QR written as a `lax.fori_loop` over columns and fixes signs so that R has a
positive diagonal, which makes Q a function of the Gaussian draw alone. Given the same key it
returns flax's matrix up to float32 rounding (tested against numpy's QR).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def householder_q(a: jax.Array) -> jax.Array:
    """Q `[m, n]` of the thin QR of `a` `[m, n]` (m >= n) whose R has a non-negative diagonal.

    Householder reflections, one per column, in a `fori_loop`; cost O(m^2 n), float32 or wider.
    """
    m, n = a.shape
    if m < n:
        raise ValueError(f"householder_q needs rows >= columns, got shape {a.shape}")
    rows = jnp.arange(m)
    tiny = jnp.finfo(a.dtype).tiny

    def reflect(k, carry):
        r, q = carry
        x = jnp.where(rows >= k, r[:, k], 0.0)
        norm = jnp.sqrt(jnp.sum(x * x))
        alpha = -jnp.where(x[k] >= 0, 1.0, -1.0) * norm  # R[k, k] after this reflection
        v = x - alpha * (rows == k)
        v = v / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), tiny)
        r = r - 2.0 * jnp.outer(v, v @ r)
        q = q - 2.0 * jnp.outer(q @ v, v)
        return r, q

    r, q = jax.lax.fori_loop(0, n, reflect, (a, jnp.eye(m, dtype=a.dtype)))
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(a.dtype)
    return q[:, :n] * signs


def orthogonal(scale: float = 1.0):
    """Initialiser `(key, shape, dtype) -> [*shape]` like `flax.linen.initializers.orthogonal`
    (column axis last): orthonormal columns (or rows, when there are more columns), times `scale`.
    """

    def init(key, shape, dtype=jnp.float32):
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs at least 2 dimensions, got shape {shape}")
        n_cols = shape[-1]
        n_rows = math.prod(shape) // n_cols
        transpose = n_rows < n_cols
        matrix_shape = (n_cols, n_rows) if transpose else (n_rows, n_cols)
        a = jax.random.normal(key, matrix_shape, jnp.float32)
        q = householder_q(a)
        if transpose:
            q = q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


def spread_expert_means(num_experts: int, action_dim: int, width: int | None = None, scale=1.0):
    """Bias initialiser for a layer whose outputs are `num_experts` blocks of `width` (default
    `action_dim`) whose first `action_dim` entries are an expert's mean: the means start
    uniform in [-scale, scale] (pre-squash), the rest at 0. Breaks the symmetry between experts
    that all start at mean ~0 otherwise; use it only for K > 1 (K = 1 keeps the zero bias)."""
    width = action_dim if width is None else width

    def init(key, shape, dtype=jnp.float32):
        if shape != (num_experts * width,):
            raise ValueError(f"expert bias shape {shape}: expected ({num_experts * width},)")
        means = jax.random.uniform(key, (num_experts, action_dim), dtype, -scale, scale)
        rest = jnp.zeros((num_experts, width - action_dim), dtype)
        return jnp.concatenate([means, rest], axis=-1).reshape(shape)

    return init


def stacked_orthogonal(scale: float, members: int):
    """Initialiser for `[members, fan_in, fan_out]` kernels: each member `orthogonal(scale)`."""
    base = orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        if shape[0] != members:
            raise ValueError(f"stacked kernel shape {shape}: leading axis must be {members}")
        return jax.vmap(lambda k: base(k, shape[1:], dtype))(jax.random.split(key, members))

    return init
