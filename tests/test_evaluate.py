"""`experiments.evaluate` on run folders trained with a learned objective: an LPG rule (meta.lpg)
and an LPO drift (meta.lpo), each saved, named by `objective.path` in a train config, trained a
few updates by `experiments.train`, then evaluated from the run folder alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import yaml

from experiments import evaluate, train
from meta import lpg, lpo

ROOT = Path(__file__).resolve().parents[1]
TINY = {"env": "CartPole-v1", "total_timesteps": 3 * 4 * 8, "num_envs": 4, "num_steps": 8}
EPISODES = 3


def train_run(tmp_path: Path, spec: dict) -> Path:
    """A run folder of `spec` trained by `python -m experiments.train` (in this process)."""
    config, out = tmp_path / "config.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump({**TINY, **spec}))
    assert train.main(["--config", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def check_evaluation(run: Path) -> None:
    record = json.loads((run / "evaluation.json").read_text())
    assert record["checkpoint_update"] == 3 and record["episodes_per_seed"] == EPISODES
    for mode in evaluate.MODES:
        (seed,) = record[mode]["per_seed"]
        assert len(seed["returns"]) == EPISODES
        assert all(math.isfinite(x) and x > 0 for x in seed["returns"])


def test_evaluate_a_run_trained_with_a_learned_lpg_rule(tmp_path):
    rule = lpg.save(tmp_path / "rule", lpg.init_params(jax.random.key(0), y_size=4, hidden=16))
    spec = {"algo": "a2c", "hidden_sizes": [16], "prediction_size": 4}
    run = train_run(tmp_path, {**spec, "objective": {"name": "lpg", "path": str(rule)}})
    # A fresh process, as a user runs it: evaluate itself registers the objective "lpg".
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", str(run), "--episodes", str(EPISODES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "a2c on CartPole-v1 at update 3" in proc.stdout
    check_evaluation(run)


def test_evaluate_a_run_trained_with_a_learned_lpo_drift(tmp_path, capsys):
    drift = lpo.save(tmp_path / "drift", lpo.init_params(jax.random.key(0), hidden=8))
    spec = {"algo": "ppo", "hidden_sizes": [16], "update_epochs": 1, "num_minibatches": 2}
    run = train_run(tmp_path, {**spec, "objective": {"name": "lpo", "path": str(drift)}})
    assert evaluate.main([str(run), "--episodes", str(EPISODES)]) == 0
    assert "ppo on CartPole-v1 at update 3" in capsys.readouterr().out
    check_evaluation(run)
    # The drift the run names is part of what it is: gone, evaluate says which file is missing.
    for f in Path(drift).rglob("*"):
        if f.is_file() and f.name != lpo.MANIFEST:
            f.unlink()
            break
    assert evaluate.main([str(run)]) == 2
    assert "objective 'lpo'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--episodes", "0"], "--episodes=0: must be a positive integer"),
        (["gamma=0.9"], "experiments.evaluate takes a run folder DIR"),
        (["--out", "x"], "experiments.evaluate takes a run folder DIR"),
        (["--config", "c.yaml"], "experiments.evaluate takes a run folder DIR"),
    ],
)
def test_evaluate_takes_a_run_folder_only(tmp_path, capsys, argv, message):
    assert evaluate.main([*argv, str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
