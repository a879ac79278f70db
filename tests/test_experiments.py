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

from experiments import command, evaluate, runs, train
from purejaxrl import checkpoint, progress

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


def seed_returns(row: dict) -> list[float]:
    """The seeds' returns of a metrics.csv row; NaN for an empty cell (no finished episode yet)."""
    cells = [v for k, v in sorted(row.items()) if k.startswith("episode_return_seed")]
    return [float(v) if v else math.nan for v in cells]


def has_return(rows: list[dict], seed: int) -> list[bool]:
    return [bool(r[f"episode_return_seed{seed}"]) for r in rows]


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
    for seed in (0, 1):  # empty until the seed's first finished episode, then filled
        filled = has_return(rows, seed)
        assert filled[-1] and filled == sorted(filled)
    for r in rows:
        seeds = [x for x in seed_returns(r) if math.isfinite(x)]
        if seeds:
            assert float(r["episode_return_mean"]) == pytest.approx(np.mean(seeds), rel=1e-4)
            assert float(r["episode_return_min"]) == pytest.approx(min(seeds), rel=1e-4)
        else:
            assert r["episode_return_mean"] == r["episode_length"] == ""

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
    values = command.merge(
        TINY,
        command.parse_overrides(
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


def test_objective_is_selected_from_yaml_and_overrides(tmp_path):
    values = command.merge(
        {**TINY, "objective": {"name": "ppo_clip", "clip_eps": 0.1}},
        command.parse_overrides(["objective.clip_eps=0.3"]),
    )
    spec = runs.build_spec(values)
    assert dict(spec.config.objective) == {"name": "ppo_clip", "clip_eps": 0.3}
    runs.write_config(tmp_path, spec)  # config.yaml round-trips
    again = runs.build_spec(command.load_yaml(tmp_path / "config.yaml"))
    assert again.config == spec.config
    agent = checkpoint.make_agent(again.algo, again.config)
    assert agent.num_updates == again.config.num_updates  # the registered objective builds
    values["objective"] = {"name": "ppo_clp"}
    with pytest.raises(ValueError, match=r"did you mean \['ppo_clip'\]"):
        checkpoint.make_agent("ppo", runs.build_spec(values).config)


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
    *before, last = capsys.readouterr().err.strip().splitlines()
    assert last.startswith("error: ") and message in last
    assert all(line.startswith("building ") for line in before) and len(before) <= 1
    assert not out.exists()
    assert (
        train.main(["--config", str(tiny_yaml), "--out", str(out), override, "--no-progress"]) == 2
    )
    assert capsys.readouterr().err.startswith("error: ")


def test_a_folder_holding_a_run_is_not_overwritten(trained, tiny_yaml, capsys):
    before = (trained / "metrics.csv").read_bytes()
    assert train.main(["--config", str(tiny_yaml), "--out", str(trained)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (trained / "metrics.csv").read_bytes() == before


def test_resume_extends_the_run(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = Path("extended")  # relative, as a user types it
    shutil.copytree(trained, run)
    old_rows = read_csv(run / "metrics.csv")
    (run / "evaluation.json").write_text(json.dumps({"checkpoint_update": 6}))
    code = train.main(["--resume", "extended", f"total_timesteps={8 * UPDATE_STEPS}"])
    assert code == 0
    # The evaluation of the update-6 checkpoint is stale now: renamed, and said so on stderr.
    assert not (run / "evaluation.json").exists()
    assert json.loads((run / "evaluation.stale.json").read_text()) == {"checkpoint_update": 6}
    err = capsys.readouterr().err
    assert "evaluation.stale.json" in err and "update 6" in err and "update 8" in err
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
    (run / "evaluation.json").write_text("{}")  # an evaluation of the update-8 checkpoint
    assert train.main(["--resume", str(run)]) == 0
    assert (run / "metrics.csv").read_bytes() == before
    assert (run / "evaluation.json").read_text() == "{}"


def synthetic(returns, finished, first_step=0) -> dict:
    """Seed-batched metrics [seeds, updates] as `agent.run` returns them (8 env steps/update)."""
    returns, finished = np.asarray(returns, float), np.asarray(finished, float)
    n = returns.shape[1]
    steps = 8 * (first_step + np.arange(1, n + 1))
    return {
        "episode_return": returns,
        "episodes_finished": finished,
        "episode_length": np.where(returns != 0, 10.0, 0.0),
        "env_steps": np.broadcast_to(steps, returns.shape),
        "loss": np.ones_like(returns),
    }


def test_metrics_are_empty_until_each_seed_finishes_an_episode(tmp_path):
    # Seed 0 finishes its first episode in update 2, seed 1 in update 5 (after a resume at 3).
    runs.append_metrics(tmp_path, synthetic([[0, -5, -6], [0, 0, 0]], [[0, 2, 0], [0, 0, 0]]), 0)
    runs.append_metrics(tmp_path, synthetic([[-6, -6], [0, -9]], [[0, 0], [0, 1]], 3), 3)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5]
    # Seed 0 stays filled after the resume although it finished nothing in updates 3-5.
    assert has_return(rows, 0) == [False, True, True, True, True]
    assert has_return(rows, 1) == [False, False, False, False, True]
    assert [r["episode_return_mean"] for r in rows] == ["", "-5", "-6", "-6", "-7.5"]
    assert [r["episode_return_min"] for r in rows] == ["", "-5", "-6", "-6", "-9"]
    assert [r["episode_return_std"] for r in rows] == ["", "0", "0", "0", "1.5"]
    assert [r["episode_length"] for r in rows] == ["", "10", "10", "10", "10"]
    assert [r["loss"] for r in rows] == ["1"] * 5  # other metrics: all seeds, every row
    columns, data = runs.read_metrics(tmp_path)
    assert np.isnan(data[0, columns.index("episode_return_seed0")])
    # curve.png leaves out the update where no seed has a return.
    assert runs.curve_points(tmp_path)["env_steps"].tolist() == [16, 24, 32, 40]
    assert runs.curve_points(tmp_path)["mean"].tolist() == [-5, -6, -6, -7.5]
    final = runs.final_returns(tmp_path)
    assert final["final_return_per_seed"] == [-6, -9] and final["final_return_mean"] == -7.5
    assert final["seeds_without_finished_episode"] == []
    # Rewriting from update 1 on (a resume from an earlier checkpoint): the kept row 1 has no
    # return, so seed 0 is empty again until it finishes.
    runs.append_metrics(tmp_path, synthetic([[-5, -5], [0, 0]], [[0, 1], [0, 0]], 1), 1)
    rows = read_csv(tmp_path / "metrics.csv")
    assert has_return(rows, 0) == [False, False, True]
    assert not any(has_return(rows, 1))


def test_a_seed_without_a_finished_episode_has_a_nan_final_return_said_so(tmp_path):
    runs.append_metrics(tmp_path, synthetic([[0, -5], [0, 0]], [[0, 1], [0, 0]]), 0)
    final = runs.final_returns(tmp_path)
    assert final["final_return_per_seed"][0] == -5 and math.isnan(final["final_return_per_seed"][1])
    assert math.isnan(final["final_return_mean"])
    assert final["seeds_without_finished_episode"] == [1]
    # A seed whose first episode ends inside the final window: the mean of its filled cells.
    other = tmp_path / "other"
    other.mkdir()
    runs.append_metrics(other, synthetic([[0, -4]], [[0, 1]]), 0)
    assert runs.final_returns(other)["final_return_per_seed"] == [-4]
    runs.plot_curve(other, "t")  # empty points are fine
    assert (other / "curve.png").is_file()


PENDULUM = {  # 200-step episodes, 64 steps per update: the first ends in update 4, the next in 7
    **TINY,
    "env": "Pendulum-v1",
    "num_envs": 2,
    "num_steps": 64,
    "update_epochs": 1,
    "total_timesteps": 2 * 128,
}


def test_returns_stay_empty_until_an_episode_ends_across_resumes(tmp_path, capsys):
    config = tmp_path / "pendulum.yaml"
    config.write_text(yaml.safe_dump(PENDULUM))
    run = tmp_path / "run"
    # Two updates, 128 steps per seed: no episode has ended, so no return exists yet.
    assert train.main(["--config", str(config), "--out", str(run), "--seeds", "2"]) == 0
    out, err = capsys.readouterr()
    status = [line for line in err.splitlines() if not line.startswith("ppo Pendulum")]
    assert status[0] == "building ppo on Pendulum-v1 (2 seeds x 2 envs) ..."
    assert status[1].startswith("initialising 2 seeds") and status[2].startswith("compiling")
    assert status[3].startswith("compiled in ")
    assert "warning: seeds 0, 1 finished no episode in 2 updates" in err
    assert "final return nan" in out
    rows = read_csv(run / "metrics.csv")
    assert all(r["episode_return_mean"] == r["episode_return_seed0"] == "" for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds_without_finished_episode"] == [0, 1]
    assert math.isnan(summary["final_return_mean"])
    # Resume to 6 updates in segments of 2: the first episodes end in update 4, none in 5 and 6,
    # whose segment is appended as a resume's is (its filled cells come from metrics.csv).
    args = ["--resume", str(run), "total_timesteps=768", "--checkpoint-every", "2"]
    assert train.main([*args, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --no-progress: no status lines, no bar
    assert out.startswith("final return -")
    rows = read_csv(run / "metrics.csv")
    assert [float(r["episodes_finished"]) for r in rows] == [0, 0, 0, 2, 0, 0]
    for seed in (0, 1):
        assert has_return(rows, seed) == [False] * 3 + [True] * 3
    assert rows[4]["episode_return_seed0"] == rows[3]["episode_return_seed0"]  # carried
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds_without_finished_episode"] == []
    assert all(math.isfinite(x) and x < 0 for x in summary["final_return_per_seed"])
    assert runs.curve_points(run)["env_steps"].tolist() == [512, 640, 768]  # per seed


def test_train_starts_without_importing_jax():
    """`python -m experiments.train` says what it does before the slow imports."""
    code = "import sys, experiments.train; print(sorted({'jax', 'purejaxrl'} & set(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "[]", proc.stderr


def test_progress_bar_shows_no_return_before_an_episode_finished():
    bar = progress.Progress()
    bar.start(total=10, initial=0, desc="t")
    try:
        zeros = {"episode_return": np.zeros(2), "episodes_finished": np.zeros(2)}
        bar(np.array([1, 1]), {**zeros, "env_steps": np.array([8, 8])})
        assert bar.bar.tqdm.postfix == "env steps 8 | return -"
        # A report between finished episodes: the carried return is nonzero, so one finished.
        bar(np.array([2, 2]), {**zeros, "episode_return": np.array([-5.0, -7.0])})
        assert bar.bar.tqdm.n == 2 and bar.bar.tqdm.postfix.endswith("return -6.00")
    finally:
        bar.close()


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
    from experiments import lpo

    for path in sorted((ROOT / "experiments" / "configs").glob("*.yaml")):
        values = command.load_yaml(path)
        if path.name.startswith("lpo_"):  # python -m experiments.lpo settings, not a single run
            settings = lpo.resolve(values)
            assert settings.cfg.es.num_generations >= 1, path.name
        elif path.name.startswith("lpg_"):  # python -m experiments.lpg / .groove settings
            from experiments import lpg

            assert lpg.resolve(values).es.num_generations >= 1, path.name
        else:
            spec = runs.build_spec(values)
            assert spec.config.num_updates >= 1, path.name


@pytest.mark.slow  # ~25 s
def test_bench_times_the_mixture_against_its_gaussian_in_pairs():
    from experiments.bench import cli

    rows = cli.main(
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

    from experiments.bench import timing

    x = jnp.ones((256, 256))

    def chain(n):
        return jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda _, y: jnp.tanh(y @ x), x))

    light, heavy = chain(2).lower(x).compile(), chain(40).lower(x).compile()
    ratio = timing.paired_time_ratio((heavy, (x,)), (light, (x,)), repeats=3)
    assert ratio > 3, ratio


def test_bench_compare_alternates_old_and_new():
    from experiments.bench import cli, compare

    assert compare.alternation(3) == ["old", "new"] * 3
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--compare", "HEAD", "--peer", "rejax"])
    assert excinfo.value.code == 2
    with pytest.raises(RuntimeError, match="rev-parse"):
        with compare.old_worktree("no-such-rev-for-bench"):
            pass


def test_bench_compare_worker_imports_the_old_tree_and_the_worktree_goes():
    from experiments.bench import compare

    with pytest.raises(KeyboardInterrupt):
        with compare.old_worktree("HEAD") as (tree, commit):
            assert compare.git("rev-parse", "HEAD", repo=tree) == commit
            found = compare.check_imports({"old": tree, "new": ROOT})
            assert found == {"old": tree / "purejaxrl/ppo.py", "new": ROOT / "purejaxrl/ppo.py"}
            raise KeyboardInterrupt
    assert not tree.parent.exists()
    assert str(tree) not in compare.git("worktree", "list", "--porcelain")
