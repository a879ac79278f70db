"""A sweep over two real processes on 127.0.0.1 (jax.distributed, CPU collectives over gloo)
equals the same sweep in one process: each process runs its half of the run axis and both end
with every run's metrics."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, nproc, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if nproc > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid
        )
    from purejaxrl import ppo, sweep
    from tests.test_sweep import CFG
    b = sweep.grid(CFG, {"learning_rate": [1e-3, 3e-3], "gamma": [0.9, 0.99]}, seeds=1)
    res = sweep.run(b, ppo.make_agent, progress=False)
    print(json.dumps({
        "process": jax.process_index(), "processes": jax.process_count(),
        "devices": jax.device_count(), "local": jax.local_device_count(),
        "loss": res.metrics["loss"].tolist(),
        "episode_return": res.metrics["episode_return"].tolist(),
    }))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, port: int) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port), str(nproc), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(nproc)
    ]
    try:  # wait for every process: the last one may still be shutting jax.distributed down
        results = [p.communicate(timeout=600) for p in procs]
    finally:  # a hung or failed start leaves nothing behind
        for p in procs:
            p.kill()
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]


# Three fresh processes that each compile: ~80 s on this 2-core machine, so with the slow checks.
@pytest.mark.slow
def test_two_processes_on_localhost_equal_one_process():
    two = launch(2, free_port())
    (one,) = launch(1, free_port())
    assert [o["process"] for o in two] == [0, 1]
    assert all(o["processes"] == 2 and o["devices"] == 2 and o["local"] == 1 for o in two)
    for o in two:  # each process ends with every run's metrics
        for name in ("loss", "episode_return"):
            np.testing.assert_allclose(o[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


# Two fresh processes that compile the same sweep: ~60 s on this 2-core machine.
@pytest.mark.slow
def test_the_cli_runs_one_sweep_over_two_processes(tmp_path):
    """`python -m experiments.sweep --coordinator ... --num-processes 2 --process-id I`: each
    process makes its cores devices, jax.distributed joins them before jax starts, and process 0
    alone writes the sweep folder, with every run."""
    config, out = tmp_path / "tiny.yaml", tmp_path / "sweep"
    config.write_text(json.dumps({**TINY_RUN, "algo": "ppo", "env": "CartPole-v1"}))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "experiments.sweep", "--config", str(config), "--out", str(out)]
    argv += ["learning_rate=1e-3,3e-3", "--seeds", "2", "--bootstrap", "50", "--no-progress"]
    argv += ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    procs = [
        subprocess.Popen([*argv, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    assert "sweep folder:" in results[0][0] and "sweep folder:" not in results[1][0]
    summary = json.loads((out / "summary.json").read_text())
    cores = os.cpu_count() or 1
    assert summary["processes"] == 2 and summary["devices"] == f"{2 * cores} x cpu"
    assert summary["num_runs"] == 4 and all(
        e["final_return_iqm"] for e in summary["configurations"]
    )


TINY_RUN = {"total_timesteps": 64, "num_envs": 4, "num_steps": 8, "update_epochs": 1,
            "num_minibatches": 1, "hidden_sizes": [8]}  # fmt: skip
