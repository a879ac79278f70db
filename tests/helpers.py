"""Assertions shared by the test modules."""

import jax
import numpy as np


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    """Every leaf of pytrees `a` and `b` equal within rtol/atol (same structure)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
