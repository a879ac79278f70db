"""Every command that shards over devices, run as a new user runs it (a fresh process, no
XLA_FLAGS), makes the host's CPU cores jax devices before jax starts and reports and uses them: on
a 2-core machine, 2 (issue 20: `experiments.sweep` once ran "over 1 cpu device(s)" because its
settings check started jax first).

A command shards its run axis over every device, an ES population over the largest device count
that divides it. The fast cases stop each command at its first status line that names the
devices (before it compiles); the slow case runs a whole sweep and reads its summary.json.
(`experiments.bench` stays on one device unless given --devices N, so it is not here.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1
DEVICES = re.compile(r"over (\d+) (?:\w+ )?device\(s\)")

SWEEP = {"algo": "ppo", "env": "CartPole-v1", "total_timesteps": 64, "num_envs": 4,
         "num_steps": 8, "update_epochs": 1, "num_minibatches": 1, "hidden_sizes": [8]}  # fmt: skip
LPO = {
    "tasks": ["CartPole-v1"],
    "inner": {"total_timesteps": 256, "num_envs": 4, "num_steps": 16, "update_epochs": 1,
              "num_minibatches": 1, "hidden_sizes": [8]},
    "normalize": False,  # no PPO-clip baselines before the ES (they would compile first)
    "hidden": 8,
    "es": {"population_size": 2, "num_generations": 1},
    "held_out": [],
    "horizons": [],
    "compare": ["ppo_clip"],
}  # fmt: skip
LPG = {
    "env": "gridworld/small",
    "inner": {"total_timesteps": 256, "num_envs": 4, "num_steps": 16},
    "hidden": 16,
    "meta_optimizer": "es",
    "es": {"population_size": 4, "num_generations": 1},
    "buffer": {"capacity": 4, "min_fill": 0.5},
    "test_tasks": ["gridworld/sparse"],
    "minatar": [],
}


def shards(population: int) -> int:
    """Devices an ES population of this size uses: the largest count <= the cores dividing it."""
    return max(d for d in range(1, CORES + 1) if population % d == 0)


# command -> (its settings, its own flags, the device count it must report)
CASES = {
    "experiments.sweep": (SWEEP, ["learning_rate=1e-3,3e-3", "--seeds", "1"], CORES),
    "experiments.lpo": (LPO, [], shards(2)),
    "experiments.lpg": (LPG, [], shards(4)),
    "experiments.groove": (LPG, [], shards(4)),
}


def fresh_process(command: str, argv: list[str]) -> subprocess.Popen:
    """`python -m command argv` in a new process whose environment has no XLA_FLAGS."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", command, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reported_devices(proc: subprocess.Popen, timeout: float = 300) -> tuple[int | None, str]:
    """(the device count of the first stderr line naming one, stderr up to there); stops the
    process at that line (None and all of stderr if it ends without one)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            match = DEVICES.search(line)
            if match:
                return int(match.group(1)), "".join(lines)
        return None, "".join(lines)
    finally:
        timer.cancel()
        proc.kill()
        proc.communicate()


def argv_for(command: str, tmp_path: Path) -> tuple[list[str], int]:
    settings, flags, expected = CASES[command]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    return ["--config", str(config), "--out", str(tmp_path / "run"), *flags], expected


@pytest.mark.parametrize("command", list(CASES))
def test_a_fresh_process_shards_over_the_host_cores(command, tmp_path):
    argv, expected = argv_for(command, tmp_path)
    devices, stderr = reported_devices(fresh_process(command, argv))
    assert devices == expected, f"{command} on {CORES} cores:\n{stderr[-3000:]}"


@pytest.mark.slow  # compiling and running the tiny sweep: ~50 s on 2 loaded cores
def test_a_whole_sweep_uses_and_records_the_host_cores(tmp_path):
    argv, expected = argv_for("experiments.sweep", tmp_path)
    proc = fresh_process("experiments.sweep", [*argv, "--bootstrap", "50"])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"over {expected} cpu device(s)" in stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["devices"] == f"{expected} x cpu" and summary["device_count"] == CORES
    assert summary["device"].startswith("cpu") and summary["versions"]["jax"]
