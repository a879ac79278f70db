"""The experiment entry points: run folders, overrides, clean errors, resume and evaluation."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import evaluate, runs, train
from purejaxrl import checkpoint

ROOT = Path(__file__).resolve().parents[1]
UPDATE_STEPS = 4 * 8  # num_envs * num_steps
TINY = {
    "algo": "ppo",
    "seed": 3,
    "num_seeds": 1,
    "env": "CartPole-v1",
    "total_timesteps": 6 * UPDATE_STEPS,
    "num_envs": 4,
    "num_steps": 8,
    "update_epochs": 2,
    "num_minibatches": 2,
    "hidden_sizes": [16, 16],
}


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def trained(tiny_yaml, tmp_path_factory) -> Path:
    """6 updates of 2 seeds in segments of 4 + 2 (two compiled segment functions)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = train.main(
        ["--config", str(tiny_yaml), "--out", str(out), "--seeds", "2", "--checkpoint-every", "4"]
    )
    assert code == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_the_run_folder(trained):
    assert {p.name for p in trained.iterdir()} >= {
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "curve.png",
        "checkpoint",
    }
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["algo"] == "ppo" and config["num_seeds"] == 2 and config["seed"] == 3
    assert config["hidden_sizes"] == [16, 16] and config["env"] == "CartPole-v1"
    assert (trained / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_csv(trained / "metrics.csv")
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["env_steps"]) for r in rows] == [UPDATE_STEPS * k for k in range(1, 7)]
    for key in ("episode_return_mean", "episode_return_seed0", "episode_return_seed1", "loss"):
        assert key in rows[0]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
        assert all(math.isfinite(float(r[key])) for r in rows)
    for r in rows:
        seeds = [float(r["episode_return_seed0"]), float(r["episode_return_seed1"])]
        assert float(r["episode_return_mean"]) == pytest.approx(np.mean(seeds), rel=1e-4)

    summary = json.loads((trained / "summary.json").read_text())
    for key in ("final_return_mean", "sps", "compile_s", "wall_s"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key])
    assert summary["sps"] > 0 and summary["compile_s"] > 0
    assert summary["wall_s"] >= summary["compile_s"]
    assert len(summary["final_return_per_seed"]) == 2
    assert all(math.isfinite(x) for x in summary["final_return_per_seed"])
    assert summary["num_seeds"] == 2
    assert summary["total_env_steps"] == 2 * 6 * UPDATE_STEPS
    assert summary["num_updates"] == 6 and summary["checkpoint_update"] == 6
    assert checkpoint.latest_step(trained / "checkpoint") == 6


def test_overrides_are_parsed_as_yaml_and_coerced():
    values = runs.merge(
        TINY,
        runs.parse_overrides(
            [
                "learning_rate=1e-3",
                "hidden_sizes=[32,32]",
                "total_timesteps=1e4",
                "anneal_lr=true",
                "env_kwargs.max_steps_in_episode=200",
                "num_seeds=4",
            ]
        ),
    )
    spec = runs.build_spec(values)
    assert spec.config.learning_rate == pytest.approx(1e-3)
    assert spec.config.hidden_sizes == (32, 32)
    assert spec.config.total_timesteps == 10_000
    assert spec.config.anneal_lr is True
    assert dict(spec.config.env_kwargs) == {"max_steps_in_episode": 200}
    assert spec.num_seeds == 4 and spec.seed == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("learnign_rate=1e-3", "did you mean ['learning_rate']"),
        ("learning_rate=abc", "learning_rate"),
        ("gamma=1.5", "gamma"),
        ("num_minibatches=3", "num_minibatches"),
        ("env=CartPol-v1", "CartPole-v1"),
        ("algo=sarsa", "algo"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(tiny_yaml, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert train.main(["--config", str(tiny_yaml), "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_folder_holding_a_run_is_not_overwritten(trained, tiny_yaml, capsys):
    before = (trained / "metrics.csv").read_bytes()
    assert train.main(["--config", str(tiny_yaml), "--out", str(trained)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (trained / "metrics.csv").read_bytes() == before


def test_resume_extends_the_run(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Path("extended")  # relative, as a user types it
    shutil.copytree(trained, run)
    old_rows = read_csv(run / "metrics.csv")
    code = train.main(["--resume", "extended", f"total_timesteps={8 * UPDATE_STEPS}"])
    assert code == 0
    rows = read_csv(run / "metrics.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, 9))
    assert rows[:6] == old_rows
    assert yaml.safe_load((run / "config.yaml").read_text())["total_timesteps"] == 8 * UPDATE_STEPS
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True and summary["num_updates"] == 8
    assert [s["last_update"] for s in summary["sessions"]] == [6, 8]
    assert checkpoint.latest_step(run / "checkpoint") == 8
    # Nothing left to do: a second resume at the same length changes nothing.
    before = (run / "metrics.csv").read_bytes()
    assert train.main(["--resume", str(run)]) == 0
    assert (run / "metrics.csv").read_bytes() == before


def test_evaluate_writes_evaluation_json(trained, capsys):
    pytest.importorskip("purejaxrl.evaluation")
    assert evaluate.main([str(trained), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "deterministic" in out and "stochastic" in out
    record = json.loads((trained / "evaluation.json").read_text())
    assert record["checkpoint_update"] == 6 and record["seeds"] == [0, 1]
    for mode in ("deterministic", "stochastic"):
        assert math.isfinite(record[mode]["mean"]) and record[mode]["mean"] > 0
        assert [s["seed"] for s in record[mode]["per_seed"]] == [0, 1]
        assert all(len(s["returns"]) == 3 for s in record[mode]["per_seed"])


def test_evaluate_of_a_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_segments_cover_the_run():
    assert train.segments(10, None) == [10]
    assert train.segments(10, 4) == [4, 4, 2]
    assert train.segments(8, 4) == [4, 4]
    assert train.segments(3, 50) == [3]
    assert train.segments(0, 4) == []


def test_command_line_error_exit_code(tiny_yaml, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", str(tiny_yaml), "gamma=7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: PPOConfig.gamma=7")


def test_shipped_configs_build(tmp_path):
    for path in sorted((ROOT / "experiments" / "configs").glob("*.yaml")):
        spec = runs.build_spec(runs.load_yaml(path))
        assert spec.config.num_updates >= 1, path.name


def test_bench_times_the_mixture_against_its_gaussian_in_pairs():
    from experiments import bench

    rows = bench.main(
        ["--algos", "ppo", "pmoe-ppo", "--envs", "Pendulum-v1"]
        + ["--total-timesteps", "2048", "--num-envs", "16", "--repeats", "1"]
    )
    by_what = {row["what"]: row for row in rows}
    assert set(by_what) == {"env-only", "ppo", "pmoe-ppo"}
    for row in rows:
        assert row["sps"] > 0 and row["compile_s"] > 0
    assert "x_baseline_time" not in by_what["ppo"]
    assert 0.5 < by_what["pmoe-ppo"]["x_baseline_time"] < 10
    assert np.isfinite(by_what["pmoe-ppo"]["final_return"])


def test_paired_time_ratio_orders_programs_by_work():
    import jax
    import jax.numpy as jnp

    from experiments import bench

    x = jnp.ones((256, 256))

    def chain(n):
        return jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda _, y: jnp.tanh(y @ x), x))

    light, heavy = chain(2).lower(x).compile(), chain(40).lower(x).compile()
    ratio = bench.paired_time_ratio((heavy, (x,)), (light, (x,)), repeats=3)
    assert ratio > 3, ratio
