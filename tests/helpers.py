"""Assertions shared by the test modules."""

import json
import os
import subprocess
import sys

import jax
import numpy as np


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    """Every leaf of pytrees `a` and `b` equal within rtol/atol (same structure)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def run_with_host_devices(script: str, count: int, timeout: float) -> dict:
    """Runs `script` in a fresh Python with `count` forced host devices (XLA_FLAGS must be set
    before jax starts, so not in this process) and returns the JSON of its last stdout line."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
