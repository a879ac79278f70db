"""experiments/pmoe.py: the Gaussian-vs-mixture comparison writes a complete run folder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pmoe") / "run"
    assert pmoe.main(TINY + ["--out", str(out)]) == 0
    return out


@pytest.mark.slow  # the tiny_run fixture: a whole CLI run, ~65 s
def test_pmoe_experiment_writes_run_folder(tiny_run):
    out = tiny_run
    for name in ("config.yaml", "metrics.csv", "summary.json", "curves.png", "auc.png"):
        assert (out / name).is_file(), name
    assert (out / "experts.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"sac-gaussian", "sac-pmoe"}
    assert {"final_return_mean", "final_return_per_seed", "sps", "compile_s", "wall_s"} <= set(
        summary
    )
    assert (
        summary["final_return_iqm"] == summary["results"][summary["best_run"]]["final_return_iqm"]
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
        for prefix in ("final_return", "eval_deterministic", "eval_stochastic", "auc"):
            lo, hi = r[f"{prefix}_iqm_ci"]  # 2 seeds: the IQM is the mean
            assert lo <= r[f"{prefix}_iqm"] <= hi
            assert r[f"{prefix}_mean_ci"] == pytest.approx([lo, hi])
            assert min(r[f"{prefix}_per_seed"]) <= lo and hi <= max(r[f"{prefix}_per_seed"])
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
        (["--methods", "pmoe", "pmoe"], "repeated value"),
        (["--task", "brax", "--envs", "Pendulum-v1"], "--envs"),
        (["learning_rat=1e-3"], "learning_rat"),
    ],
)
def test_pmoe_experiment_rejects_bad_arguments(args, message, tmp_path, capsys):
    """argparse refuses a bad choice or count, plan() the rest: exit 2 naming the flag."""
    try:
        code = pmoe.main(args + ["--out", str(tmp_path / "x")])
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # the tiny_run fixture: a whole CLI run, ~65 s
def test_merge_writes_one_folder_of_several_runs(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    methods_at = TINY.index("--methods")
    score_only = TINY[: methods_at + 1] + ["score"] + TINY[methods_at + 3 :]
    assert pmoe.main(score_only + ["--out", str(other)]) == 0
    merged = tmp_path / "merged"
    assert pmoe.main(["--merge", str(tiny_run), str(other), "--out", str(merged)]) == 0
    summary = json.loads((merged / "summary.json").read_text())
    assert list(summary["results"]) == ["sac-gaussian", "sac-pmoe", "sac-score"]
    assert summary["merged_from"] == [str(tiny_run.resolve()), str(other.resolve())]
    for r in summary["results"].values():
        assert Path(r["checkpoint"]).is_absolute() and Path(r["checkpoint"]).is_dir()
    first = json.loads((tiny_run / "summary.json").read_text())["results"]["sac-pmoe"]
    assert summary["results"]["sac-pmoe"]["auc_per_seed"] == first["auc_per_seed"]
    lines = (merged / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 2 * (800 // 4)
    assert sorted(lines[1:]) == sorted(
        (tiny_run / "metrics.csv").read_text().splitlines()[1:]
        + (other / "metrics.csv").read_text().splitlines()[1:]
    )
    for name in ("config.yaml", "curves.png", "auc.png"):
        assert (merged / name).is_file(), name
    config = yaml.safe_load((merged / "config.yaml").read_text())
    assert set(config["runs"]) == {"sac-gaussian", "sac-pmoe", "sac-score"}

    # Runs that are not alike, repeated runs, missing folders: one-line errors, nothing written.
    unlike = tmp_path / "unlike"
    shutil.copytree(other, unlike)
    config = yaml.safe_load((unlike / "config.yaml").read_text())
    config["num_seeds"] = 3
    (unlike / "config.yaml").write_text(yaml.safe_dump(config))
    cases = [
        ([str(tiny_run), str(unlike)], "num_seeds"),
        ([str(tiny_run), str(tiny_run)], "also in another folder"),
        ([str(tiny_run), str(tmp_path / "nowhere")], "no config.yaml"),
    ]
    for i, (folders, message) in enumerate(cases):
        bad_out = tmp_path / f"bad{i}"
        capsys.readouterr()
        assert pmoe.main(["--merge", *folders, "--out", str(bad_out)]) == 2
        assert message in capsys.readouterr().err
        assert not bad_out.exists()
    assert pmoe.main(["--merge", str(tiny_run)]) == 2
    assert "--out" in capsys.readouterr().err
