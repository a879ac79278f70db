"""experiments/pmoe.py: the Gaussian-vs-mixture comparison writes a complete run folder."""

from __future__ import annotations

import json
import math

import pytest

from experiments import pmoe

TINY = [
    "--task",
    "multimodal",
    "--algos",
    "sac",
    "--methods",
    "gaussian",
    "pmoe",
    "--seeds",
    "2",
    "--steps",
    "800",
    "--eval-episodes",
    "8",
    "--no-progress",
    "sac.learning_starts=200",
    "hidden_sizes=[16,16]",
]


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def test_pmoe_experiment_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    assert pmoe.main(TINY + ["--out", str(out)]) == 0
    for name in ("config.yaml", "metrics.csv", "summary.json", "curves.png", "auc.png"):
        assert (out / name).is_file(), name
    assert (out / "experts.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"sac-gaussian", "sac-pmoe"}
    assert {"final_return_mean", "final_return_per_seed", "sps", "compile_s", "wall_s"} <= set(
        summary
    )
    for name, r in summary["results"].items():
        assert (out / r["checkpoint"]).is_dir(), name
        for key in (
            "final_return_per_seed",
            "eval_deterministic_per_seed",
            "eval_stochastic_per_seed",
            "auc_per_seed",
        ):
            assert len(r[key]) == 2 and _finite(r[key]), (name, key)
        assert r["sps"] > 0 and r["compile_s"] > 0 and r["wall_s"] > 0
        experts = r["experts"]
        k = 1 if r["method"] == "gaussian" else 2
        for ctx in pmoe.CONTEXTS:
            weights = experts["contexts"][ctx]["weights"]
            assert len(weights) == 2 and all(len(w) == k for w in weights)
            assert all(abs(sum(w) - 1) < 1e-5 for w in weights)
            assert all(len(m) == k for m in experts["contexts"][ctx]["mean"])
        assert 0.0 <= experts["both_modes_split_fraction"] <= 1.0
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "algo,env,method,seed,update,env_steps,episode_return"
    assert len(lines) == 1 + 2 * 2 * (800 // 4)  # methods x seeds x updates


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "gauss"], "--methods"),
        (["--algos", "dqn"], "--algos"),
        (["--task", "atari"], "--task"),
        (["--seeds", "0"], "--seeds"),
        (["--steps", "-5"], "--steps"),
        (["--num-experts", "1"], "--num-experts"),
        (["--task", "brax", "--envs", "Pendulum-v1"], "--envs"),
        (["learning_rat=1e-3"], "learning_rat"),
    ],
)
def test_pmoe_experiment_rejects_bad_arguments(args, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        pmoe.prepare(pmoe.parse_args(args + ["--out", str(tmp_path / "x")]))
    assert pmoe.main(args + ["--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
