"""python -m experiments.sweep: parsing, the sweep folder, resume, and bad input.

One tiny PPO CartPole sweep (2 learning rates x 2 seeds, 10 updates) runs in-process; the resume
check deletes one stored chunk and the outputs, resumes, and compares the tables.
"""

import csv
import json
import shutil

import numpy as np
import pytest

from experiments import command
from experiments import sweep as cli

TINY = {
    "algo": "ppo",
    "env": "CartPole-v1",
    "total_timesteps": 320,
    "num_envs": 4,
    "num_steps": 8,
    "update_epochs": 2,
    "num_minibatches": 2,
    "hidden_sizes": [16, 16],
}


def test_parse_space_splits_lists_ranges_and_fixed_overrides():
    fixed, space = cli.parse_space(
        [
            "learning_rate=1e-4,3e-4,1e-3",
            "hidden_sizes=[32],[64,64]",
            "gamma=0.99",
            "clip_eps=loguniform(0.05, 0.3)",
            "ent_coef=uniform(0,0.01)",
            "env_params.length=0.5",
            "env_kwargs.max_steps_in_episode=200",
        ]
    )
    assert fixed == {"gamma": 0.99, "env_kwargs": {"max_steps_in_episode": 200}}
    assert space["learning_rate"] == [1e-4, 3e-4, 1e-3]
    assert space["hidden_sizes"] == [[32], [64, 64]]
    assert space["clip_eps"] == {"loguniform": [0.05, 0.3]}
    assert space["ent_coef"] == {"uniform": [0.0, 0.01]}
    assert space["env_params.length"] == [0.5]


@pytest.mark.parametrize(
    "items, match",
    [
        (["learning_rate=1e-4,"], "empty value"),
        (["learning_rate"], "key=value"),
        (["learning_rate=loguniform(a,1)"], "bounds must be numbers"),
    ],
)
def test_parse_space_refuses_malformed_items(items, match):
    with pytest.raises(ValueError, match=match):
        cli.parse_space(items)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return command.write_yaml(tmp_path_factory.mktemp("cfg") / "tiny.yaml", TINY)


@pytest.fixture(scope="module")
def finished(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "lr"
    argv = ["--config", str(config_file), "learning_rate=3e-4,3e-3", "--seeds", "2"]
    argv += ["--chunk", "2", "--bootstrap", "200", "--no-progress", "--out", str(out)]
    argv += ["--log", "tensorboard"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", "")
        assert cli.main(argv) == 0
    return out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_folder_holds_tables_summary_and_plots(finished):
    for name in ("sweep.yaml", "results.csv", "runs.csv", "summary.json", "curves.png"):
        assert (finished / name).is_file(), name
    assert (finished / "sensitivity_learning_rate.png").is_file()
    assert (finished / "profile.png").is_file()
    rows = read_csv(finished / "results.csv")
    assert len(rows) == 4 * 10  # 4 runs x 10 updates (all logged below MAX_ROWS_PER_RUN)
    assert {"run", "config", "seed", "learning_rate", "update", "env_steps"} <= set(rows[0])
    assert {"episode_return", "loss", "grad_norm", "diverged"} <= set(rows[0])
    assert [r["update"] for r in rows[:10]] == [str(u) for u in range(1, 11)]
    assert rows[9]["env_steps"] == "320"
    per_run = read_csv(finished / "runs.csv")
    assert [r["seed"] for r in per_run] == ["0", "1", "0", "1"]
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["num_runs"] == 4 and summary["num_configurations"] == 2
    assert summary["programs"] == 1 and summary["sps"] > 0
    entry = summary["configurations"][0]
    finals = [float(r["final_return"]) for r in per_run[:2]]
    assert entry["final_return_per_seed"] == pytest.approx(finals, rel=1e-5)
    assert entry["final_return_mean"] == pytest.approx(np.mean(finals), rel=1e-5)
    lo, hi = entry["final_return_iqm_ci95"]
    assert lo <= entry["final_return_iqm"] <= hi
    ranked = sorted(summary["configurations"], key=lambda e: -e["final_return_iqm"])
    assert summary["ranking"] == [e["config"] for e in ranked]
    assert summary["best"]["config"] == ranked[0]["config"]


def test_resume_runs_only_missing_chunks_and_gives_the_same_tables(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "chunks" / "chunk_00001.npz").unlink()  # as if interrupted during the second chunk
    for name in ("results.csv", "runs.csv", "summary.json"):
        (copy / name).unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", "")
        assert cli.main(["--resume", str(copy), "--no-progress"]) == 0
    assert read_csv(copy / "results.csv") == read_csv(finished / "results.csv")
    assert read_csv(copy / "runs.csv") == read_csv(finished / "runs.csv")


def test_resume_refuses_another_definition_and_changes_nothing(finished, config_file, capsys):
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    argv = ["--resume", str(finished), "--config", str(config_file), "learning_rate=1e-3,1e-2"]
    assert cli.main(argv) == 2
    assert "space.learning_rate: the run has [0.0003, 0.003], given [0.001, 0.01]" in (
        capsys.readouterr().err
    )
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "items, match",
    [
        (["learnig_rate=1e-3,1e-2"], "did you mean"),
        (["learning_rate=1e-3,fast"], "must be a number"),
        (["learning_rate=loguniform(0,1e-2)"], "ranges need --random"),
        (["gamma=0.99"], "nothing to sweep"),
        (["learning_rate=1e-3,1e-2", "--seeds", "0"], "--seeds=0"),
        (["learning_rate=1e-3,1e-2", "--chunk", "0"], "--chunk=0"),
        (["learning_rate=1e-3,1e-2", "--devices", "64"], "devices=64"),
        (["learning_rate=1e-3,1e-2", "--coordinator", "127.0.0.1:1"], "go together"),
    ],
)
def test_bad_input_stops_before_compiling_and_writes_nothing(
    items, match, config_file, tmp_path, capsys, monkeypatch
):
    import jax

    jax.devices()  # started: --devices 64 is more than there are (a fresh process makes 64)
    monkeypatch.setenv("XLA_FLAGS", "")
    out = tmp_path / "never"
    assert cli.main(["--config", str(config_file), *items, "--out", str(out)]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_random_draws_need_and_use_the_range(config_file, tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    argv = ["--config", str(config_file), "learning_rate=loguniform(1e-4,1e-2)", "--random", "5"]
    out = str(tmp_path / "never")
    batch = cli.plan(command.parser(cli.COMMAND).parse_args([*argv, "--out", out])).batch
    assert not (tmp_path / "never").exists()
    assert batch.num_runs == 5 and np.all(batch.values["learning_rate"] >= 1e-4)


def test_tensorboard_logs_each_configuration_under_its_prefix(finished):
    from tests.test_sinks import tensorboard_scalars

    scalars = tensorboard_scalars(finished / "tb")
    for lr in ("0.0003", "0.003"):
        losses = scalars[f"learning_rate_{lr}/train/loss"]
        assert max(losses) == 320  # logged against env steps per run, to the last update
    rows = [r for r in read_csv(finished / "results.csv") if r["config"] == "0"]
    mean_last_loss = np.mean([float(r["loss"]) for r in rows if r["update"] == "10"])
    logged = scalars["learning_rate_0.0003/train/loss"][320]
    assert logged == pytest.approx(mean_last_loss, rel=1e-4)
