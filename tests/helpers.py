"""Assertions and helpers shared by the test modules."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    """Every leaf of pytrees `a` and `b` equal within rtol/atol (same structure)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def rollout(env, params, key, actions):
    """Jitted reset + scan of `env.step` over `actions` `[T, ...]`: numpy `(obs0, (obs, reward,
    terminated, truncated, info), final_state)`, the step outputs with a leading axis T."""

    @jax.jit
    def run(key, actions):
        key_reset, key_steps = jax.random.split(key)
        obs0, state = env.reset(key_reset, params)

        def body(state, x):
            k, a = x
            obs, state, reward, terminated, truncated, info = env.step(k, state, a, params)
            return state, (obs, reward, terminated, truncated, info)

        keys = jax.random.split(key_steps, actions.shape[0])
        state, traj = jax.lax.scan(body, state, (keys, actions))
        return obs0, traj, state

    return jax.tree.map(np.asarray, run(key, actions))


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


def cli_compile_cache(request, tmp_path_factory, name: str):
    """Generator body of a module fixture for the experiment-CLI tests: jax's persistent
    compilation cache (pytest's cache dir `name`, else a temporary one) and XLA_FLAGS as the
    CLIs' `main` sets them (the flags are part of the cache key, so library calls in the tests
    load the CLI's programs). The backend starts first, so the process keeps its device count.
    Yields the cache path; restores the cache setting and XLA_FLAGS afterwards."""

    import pytest

    from experiments import command, metacli

    jax.devices()
    mp = pytest.MonkeyPatch()
    mp.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored at the end
    command.use_host_cores(None)
    cache = getattr(request.config, "cache", None)
    path = Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp("jax-cache")
    restore = metacli.use_compile_cache(path)
    yield path
    restore()
    mp.undo()


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `folder` (a run folder's state)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_bad_resume(run_cli, folder, argv: list[str], message: str, capsys) -> None:
    """`run_cli(argv)` of a --resume / --meta-test-only of the run `folder` ("{a}" in argv) with
    changed settings: exit code 2, `error: ...` with `message`, the folder unchanged (the
    experiment modules' slow cases, on their own runs)."""
    before = snapshot(folder)
    assert run_cli([x.format(a=folder) for x in argv]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert snapshot(folder) == before


def interrupt_after_first_generation(monkeypatch) -> None:
    """Makes an ES meta-training command stop as on Ctrl-C right after its first generation's
    checkpoint and fitness.csv row (the experiment modules' interrupt cases)."""
    from experiments import metacli

    original = metacli.write_fitness

    def interrupt(run_dir, rows, keep_upto=None):
        original(run_dir, rows, keep_upto)
        if keep_upto is not None:  # called by on_generations, after the checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(metacli, "write_fitness", interrupt)
