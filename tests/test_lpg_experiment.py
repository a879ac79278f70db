"""python -m experiments.lpg / experiments.groove (meta-train an LPG rule, meta-test it against
tuned A2C and PPO) and the pieces they share with experiments.lpo (experiments/metacli.py).

The default tests check settings, bad input, the normalisation and the small meta-test helpers
without compiling a training program (except one random-policy rollout). The end-to-end CLI runs
(`-m slow`) share one tiny GROOVE run (regret curriculum on gridworld/small, population 4, 2
generations, meta-test on gridworld/sparse at 1x and 2x with 2 seeds); compiling is most of
their time, so the module keeps jax's persistent compilation cache in pytest's cache folder
(the resumed, interrupted and meta-test-only runs load the programs the first run compiled).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from experiments import groove as groove_cli
from experiments import lpg as cli
from experiments import metacli
from meta import lpg
from tests.helpers import cli_compile_cache

TINY = {
    "seed": 0,
    "env": "gridworld/small",
    "inner": {"total_timesteps": 256, "num_envs": 4, "num_steps": 16},
    "hidden": 16,
    "es": {"population_size": 4, "num_generations": 2, "generations_per_call": 1},
    "buffer": {"capacity": 4, "min_fill": 0.5},
    "test_tasks": ["gridworld/sparse"],
    "lifetimes": [2.0],
    "minatar": [],
    "test_seeds": 2,
    "random_steps": 200,
    "bootstrap": 200,
}


@pytest.fixture(scope="module")
def compile_cache(request, tmp_path_factory):
    """The module's compile cache and XLA_FLAGS (tests/helpers.cli_compile_cache)."""
    yield from cli_compile_cache(request, tmp_path_factory, "experiments-lpg-jax-cache")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run_cli(argv, cache, main=cli.main) -> int:
    """A CLI's main in this process (with the module's XLA_FLAGS)."""
    return main([*argv, "--no-progress", "--compile-cache", str(cache)])


@pytest.fixture(scope="module")
def run_a(config_file, compile_cache, tmp_path_factory):
    """The tiny GROOVE run, through experiments.groove (curriculum regret by default)."""
    out = tmp_path_factory.mktemp("groove") / "a"
    argv = ["--config", str(config_file), "--out", str(out)]
    assert run_cli(argv, compile_cache, groove_cli.main) == 0
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- settings


def test_settings_resolve_defaults_and_lifetimes():
    settings = cli.resolve({})
    assert settings.curriculum == "dr" and settings.algo == "lpg"
    assert settings.cfg.lpg.env == "gridworld/all_shortlife"
    assert settings.test_tasks == cli.GRID_TASKS and settings.minatar == ("Breakout-MinAtar",)
    assert settings.lifetimes == (1.0, 0.5, 2.0) and settings.test_seeds == 8
    assert settings.es.fitness_shaping == "pairwise" and settings.es.sigma == 0.1
    assert settings.train_updates == 50  # meta.lpg.CPU_INNER: 8 envs x 16 steps x 50 updates
    assert settings.cells[:3] == [
        ("gridworld/dense", 1.0), ("gridworld/dense", 0.5), ("gridworld/dense", 2.0)
    ]  # fmt: skip
    assert settings.cells[-1] == ("Breakout-MinAtar", 1.0) and len(settings.cells) == 16
    steps = [
        cli.learner_config(settings, "gridworld/long", m, "lpg").total_timesteps
        for m in (0.5, 1.0, 2.0)
    ]
    assert steps == [25 * 128, 50 * 128, 100 * 128]  # updates scaled, rollout kept
    rule = cli.learner_config(settings, "gridworld/long", 1.0, "lpg")
    a2c = cli.learner_config(settings, "gridworld/long", 1.0, "a2c", lr=0.3)
    ppo = cli.learner_config(settings, "gridworld/long", 1.0, "ppo")
    assert rule.prediction_size == lpg.Y_SIZE and a2c.prediction_size == 0
    assert a2c.learning_rate == 0.3 and a2c.hidden_sizes == () and a2c.num_steps == 16
    assert ppo.update_epochs == 4 and ppo.num_minibatches == 4 and ppo.gae_lambda == 0.95
    breakout = cli.learner_config(settings, "Breakout-MinAtar", 1.0, "lpg")
    assert breakout.hidden_sizes == (64, 64) and breakout.total_timesteps == 51_200
    assert cli.resolve(settings.values).values == settings.values  # config.yaml round trip


def test_groove_cli_defaults_to_the_regret_curriculum():
    groove = cli.experiment("experiments.groove", "regret")
    assert groove.resolve({}).curriculum == "regret"
    assert groove.resolve({"curriculum": "pvl"}).curriculum == "pvl"
    assert cli.experiment().resolve({}).curriculum == "dr"
    args = cli.parse_args(["es.population_size=8"], "experiments.groove", "regret")
    assert "curriculum regret, population 8 x 100" in cli.describe(args, "regret")
    assert groove_cli.CURRICULUM == "regret" and groove_cli.PROG == groove.prog


@pytest.mark.parametrize("name", ["lpg_cpu.yaml", "lpg_paper.yaml"])
def test_shipped_configs_resolve(name):
    from experiments import runs

    values = runs.load_yaml(Path(cli.__file__).parent / "configs" / name)
    settings = cli.resolve(values)
    assert "curriculum" not in values and settings.curriculum == "dr"  # each CLI's default
    assert cli.experiment("experiments.groove", "regret").resolve(values).curriculum == "regret"
    assert settings.test_tasks == cli.GRID_TASKS and settings.lifetimes[:3] == (1.0, 0.5, 2.0)
    assert settings.es.fitness_shaping == "pairwise" and settings.test_seeds >= 8
    assert "Breakout-MinAtar" in settings.minatar
    if name == "lpg_cpu.yaml":
        assert settings.cfg.lpg.env == "gridworld/small" and settings.train_updates == 64
        assert settings.es.population_size == 32
        dense = cli.learner_config(settings, "gridworld/dense", 1.0, "a2c")
        assert dict(dense.env_kwargs) == {"max_steps": 100}
    else:
        assert settings.cfg.lpg.env == "gridworld/all_shortlife" and settings.train_updates == 250
        assert settings.es.population_size == 1024 and settings.cfg.lpg.hidden == 256
        assert settings.cfg.buffer.capacity == 4000 and settings.cfg.buffer.replay_prob == 0.5
        assert settings.lifetimes == (1.0, 0.5, 2.0, 10.0)  # 10x: the paper's 2,500 updates


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, message",
    [
        (["curriculum=regrett"], "did you mean 'regret'"),
        (["curiculum=regret"], "unknown key 'curiculum'; did you mean 'curriculum'"),
        (["env=gridworld/smal"], "did you mean 'gridworld/small'"),
        (["env=CartPole-v1"], "must be a grid-world id"),
        (["test_tasks=[gridworld/dens]"], "did you mean 'gridworld/dense'"),
        (["minatar=[Breakout-MinAtr]"], "did you mean 'Breakout-MinAtar'"),
        (["es.popsize=4"], "es: unknown field 'popsize'"),
        (["buffer.capacty=4"], "buffer: unknown field 'capacty'"),
        (["inner.total_timestep=512"], "did you mean ['total_timesteps']"),
        (["lifetimes=[-1]"], "lifetimes=[-1]"),
        (["lr_grid.a2c=[]"], "lr_grid.a2c=[]"),
        (["lr_grid.sac=[0.1]"], "unknown baseline 'sac'"),
        (["ppo.update_epoch=2"], "did you mean ['update_epochs']"),
        (["test_env_kwargs={gridworld/sparse: {max_step: 5}}"], "test_env_kwargs.gridworld/sparse"),
        (["test_env_kwargs={gridworld/dense: {max_steps: 5}}"], "not among test_tasks"),
        (["test_seeds=0"], "test_seeds=0"),
    ],
)
def test_bad_input_stops_before_writing(extra, message, config_file, tmp_path, capsys):
    out = tmp_path / "bad"
    assert cli.main(["--config", str(config_file), *extra, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert not out.exists()


def test_an_occupied_out_is_refused(config_file, tmp_path, capsys):
    out = tmp_path / "taken"
    (out / "rule").mkdir(parents=True)
    argv = ["--config", str(config_file), "--out", str(out), "--no-progress"]
    assert groove_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {out}" in err
    assert sorted(p.name for p in out.iterdir()) == ["rule"]


# --------------------------------------------------------------------------- the meta-test numbers


def test_normalisation_on_a_hand_case():
    """(R - R_random) / (R_A2C - R_random): R_random 1, R_A2C 3."""
    np.testing.assert_allclose(cli.normalise([3.0, 1.0, 2.0, 5.0], 1.0, 3.0), [1, 0, 0.5, 2])
    assert np.isnan(cli.normalise([2.0, np.nan], 1.0, 3.0)[1])
    for r_random, r_a2c in ((3.0, 3.0), (3.0, 1.0), (np.nan, 3.0), (1.0, np.nan)):
        assert np.isnan(cli.normalise([2.0], r_random, r_a2c)).all()  # no normalisation
    assert "(R - R_random) / (R_A2C - R_random)" in cli.NORMALISATION
    assert "(R - R_random) / (R_A2C - R_random)" in cli.__doc__


def test_best_lr_takes_the_best_mean_over_seeds():
    finals = np.array([[1.0, 2.0], [3.0, np.nan], [2.5, 2.5], [np.nan, np.nan]])
    assert cli.best_lr(finals) == 1  # NaN seeds left out: 3.0 > 2.5 > 1.5
    assert cli.best_lr(np.array([[2.0, 2.0], [1.0, 3.0]])) == 0  # the first of ties
    assert cli.best_lr(np.full((2, 3), np.nan)) is None


def _cell(task, lifetime, per_seed, normalisable=True):
    stats = {k: {"per_seed": per_seed[k]} for k in cli.LEARNERS}
    return {"task": task, "lifetime": lifetime, "normalisable": normalisable, "normalised": stats}


def test_overall_is_the_iqm_over_tasks_and_seeds():
    from experiments import aggregate

    same = {k: [0.0, 1.0, 2.0, 3.0] for k in cli.LEARNERS}
    other = {k: [4.0, 5.0, None, 7.0] for k in cli.LEARNERS}
    cells = [
        _cell("a", 1.0, same),
        _cell("b", 1.0, other),
        _cell("c", 1.0, same, normalisable=False),  # left out
        _cell("a", 2.0, other),
    ]
    out = cli.overall(cells, (1.0, 2.0, 0.5), reps=200)
    assert out["1x"]["tasks"] == ["a", "b"] and out["0.5x"] is None
    table = np.array([[0, 4], [1, 5], [2, np.nan], [3, 7]], np.float64)  # [seeds, tasks]
    expect = aggregate.summarize(table, reps=200, seed=0)
    assert (
        out["1x"]["lpg"]["iqm"] == expect["iqm"] and out["1x"]["lpg"]["iqm_ci"] == expect["iqm_ci"]
    )
    assert out["1x"]["ppo"]["num_runs"] == 7 and out["1x"]["ppo"]["num_tasks"] == 2
    assert out["2x"]["a2c"]["iqm"] == pytest.approx(aggregate.iqm([4.0, 5.0, 7.0]))


def test_task_seed_keys_are_the_sweeps_keys():
    """The rule's agents use split(key(task_seed), S): the keys sweep.grid gives seed s."""
    from purejaxrl import sweep

    seed = cli.task_seed(0, "gridworld/dense")
    assert seed != cli.task_seed(1, "gridworld/dense") != cli.task_seed(0, "gridworld/long")
    cfg = cli.learner_config(cli.resolve(TINY), "gridworld/sparse", 1.0, "a2c")
    batch = sweep.grid(cfg, {"learning_rate": [0.1, 0.3]}, seeds=3, seed=seed)
    mine = jax.random.key_data(jax.random.split(jax.random.key(seed), 3))
    for lr in range(2):
        np.testing.assert_array_equal(jax.random.key_data(batch.keys[3 * lr : 3 * lr + 3]), mine)


def test_random_return_on_a_hand_level():
    """A 1 x 2 grid, the agent at (0, 0) next to a +1 object that ends the episode: a random
    action moves right with probability 1/5, so every episode returns 1 (unless 1,000 steps
    pass without it: probability 0.8^1000) and lasts 5 steps on average."""
    import envs
    from envs import gridworld

    env, _ = envs.make("gridworld/sparse")
    level = gridworld.make_level(
        1, 2, start=(0, 0), objects=[(0, 1, 1.0, 1.0, 0.0)], max_steps=1000
    )
    r, episodes = cli.random_return(env, level, jax.random.key(0), num_envs=64, num_steps=200)
    assert r == pytest.approx(1.0)
    assert 0.7 * 64 * 200 / 5 < episodes < 1.3 * 64 * 200 / 5
    r_none, none = cli.random_return(env, level, jax.random.key(0), num_envs=2, num_steps=0)
    assert none == 0 and math.isnan(r_none)


def test_curriculum_csv_appends_after_the_kept_generations(tmp_path):
    cli.write_curriculum(
        tmp_path, {"replay": np.array([0.0, 1.0]), "mean_score": np.array([2.0, 3.0])}
    )
    cli.write_curriculum(
        tmp_path, {"replay": np.array([0.0]), "mean_score": np.array([9.0])}, first=2, keep_upto=1
    )
    rows = read_csv(tmp_path / "curriculum.csv")
    assert rows == [
        {"generation": "1", "mean_score": "2.0", "replay": "0.0"},
        {"generation": "2", "mean_score": "9.0", "replay": "0.0"},
    ]


def test_lpo_keeps_its_public_names():
    """experiments.lpo imports the shared pieces back (its tests and users call them there)."""
    from experiments import lpo

    for name in ("parse_overrides", "deep_merge", "final_per_seed", "seed_keys", "write_fitness",
                 "read_fitness", "use_compile_cache", "fitness_rows", "Plan", "say"):  # fmt: skip
        assert getattr(lpo, name) is getattr(metacli, name), name


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~3 min cold, ~1 min with the cache
def test_run_folder_holds_every_output(run_a):
    for name in ("config.yaml", "fitness.csv", "fitness.png", "curriculum.csv", "meta_test.json",
                 "meta_test.png", "summary.json"):  # fmt: skip
        assert (run_a / name).is_file(), name
    assert (run_a / "es" / "2").is_dir()  # the checkpoint after generation 2
    config = yaml.safe_load((run_a / "config.yaml").read_text())
    assert config["curriculum"] == "regret" and config["es"]["population_size"] == 4
    assert config["lifetimes"] == [2.0] and config["test_seeds"] == 2

    rows = read_csv(run_a / "fitness.csv")
    assert [r["generation"] for r in rows] == ["1", "2"] and [r["nonfinite"] for r in rows] == [
        "0",
        "0",
    ]
    assert all(float(r["best"]) >= float(r["mean"]) for r in rows)
    curriculum = read_csv(run_a / "curriculum.csv")
    assert [r["generation"] for r in curriculum] == ["1", "2"]
    assert curriculum[0]["replay"] == "0.0" and curriculum[0]["antagonist_runs"] == "2.0"
    # generation 1 offers 2 new levels; the buffer (capacity 4) admits both
    assert curriculum[0]["admitted"] == "2.0" and curriculum[0]["buffer_size"] == "2.0"

    table = json.loads((run_a / "meta_test.json").read_text())
    assert table["learners"] == ["lpg", "a2c", "ppo"] and table["test_seeds"] == 2
    assert [(c["task"], c["lifetime"]) for c in table["cells"]] == [
        ("gridworld/sparse", 1.0), ("gridworld/sparse", 2.0)
    ]  # fmt: skip
    assert [c["num_updates"] for c in table["cells"]] == [4, 8]
    r_random = table["random"]["gridworld/sparse"]["return"]
    assert table["random"]["gridworld/sparse"]["episodes"] > 0 and -1.0 <= r_random <= 1.0
    for c in table["cells"]:
        assert c["r_random"] == r_random
        for learner in ("a2c", "ppo"):
            tuned = c["tuned"][learner]
            assert tuned["learning_rate"] in TINY_GRID[learner] and len(tuned["grid"]) == 3
        a2c = np.array(c["results"]["a2c"]["per_seed"], np.float64)
        assert c["r_a2c"] == pytest.approx(a2c.mean())
        for learner in cli.LEARNERS:
            s = c["results"][learner]
            assert len(s["per_seed"]) == 2 and s["iqm_ci"][0] <= s["iqm"] <= s["iqm_ci"][1]
            raw = np.array(s["per_seed"], np.float64)
            norm = [np.nan if x is None else x for x in c["normalised"][learner]["per_seed"]]
            if c["normalisable"]:
                expect = (raw - r_random) / (c["r_a2c"] - r_random)
                np.testing.assert_allclose(norm, expect)
            else:
                assert np.isnan(norm).all()
    assert set(table["overall"]) == {"1x", "2x"}

    summary = json.loads((run_a / "summary.json").read_text())
    assert summary["algo"] == "lpg" and summary["curriculum"] == "regret"
    assert summary["generations"] == 2 and summary["train_updates"] == 4
    assert summary["fitness"]["first_mean"] == float(rows[0]["mean"])
    assert summary["curriculum_metrics"]["antagonist_runs"]["first"] == 2.0
    assert summary["antagonist_runs"] <= summary["antagonist_runs_uncached"] == 4
    assert set(summary["meta_test"]) == {"gridworld/sparse@1x", "gridworld/sparse@2x"}
    assert "(R - R_random) / (R_A2C - R_random)" in summary["normalisation"]
    for key in ("es_compile_s", "es_run_s", "meta_test_compile_s", "meta_test_run_s"):
        assert summary["timings"][key] >= 0
    assert summary["wall_s"] > 0 and summary["sessions"][0]["mode"] == "new"


TINY_GRID = {"a2c": [0.03, 0.1, 0.3], "ppo": [0.01, 0.03, 0.1]}  # the default lr_grid


@pytest.mark.slow  # the run_a fixture
def test_saved_rule_loads_and_trains_through_the_registry(run_a):
    from experiments import runs
    from purejaxrl import checkpoint, objectives

    params, info = lpg.load(run_a / "rule")
    assert info["time_aware"] is False and info["hidden"] == 16 and info["y_size"] == 8
    assert info["trained_on"]["curriculum"] == "regret" and info["trained_on"]["generations"] == 2
    assert info["run"]["seed"] == 0
    # what `python -m experiments.train --config <an a2c config> env=gridworld/dense
    # hidden_sizes=[] prediction_size=8 objective.name=lpg objective.path=DIR/rule` builds
    spec = runs.build_spec(
        {"algo": "a2c", "env": "gridworld/dense", "hidden_sizes": [], "prediction_size": 8,
         "total_timesteps": 512, "num_envs": 4, "num_steps": 16,
         "objective": {"name": "lpg", "path": str(run_a / "rule")}}
    )  # fmt: skip
    agent = checkpoint.make_agent(spec.algo, spec.config)
    assert agent.num_updates == 8
    rule = objectives.build(dict(spec.config.objective), spec.config)  # what the agent got
    assert isinstance(rule, lpg.LPGObjective)
    for a, b in zip(jax.tree.leaves(rule.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # the run_a fixture, and a two-session run with the cached programs
def test_resume_continues_exactly(run_a, config_file, compile_cache, tmp_path):
    out = tmp_path / "b"
    one = ["--config", str(config_file), "es.num_generations=1", "lifetimes=[]"]
    assert run_cli([*one, "--out", str(out)], compile_cache, groove_cli.main) == 0
    assert len(read_csv(out / "fitness.csv")) == 1
    assert run_cli(["--resume", str(out), "es.num_generations=2"], compile_cache, cli.main) == 0
    for name in ("fitness.csv", "curriculum.csv"):
        assert (out / name).read_text() == (run_a / name).read_text(), name
    mine, _ = lpg.load(out / "rule")
    theirs, _ = lpg.load(run_a / "rule")
    for x, y in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the same rule and seed keys give the same meta-test returns
    cell = lambda folder: json.loads((folder / "meta_test.json").read_text())["cells"][0]  # noqa: E731
    assert cell(out)["results"] == cell(run_a)["results"]
    assert yaml.safe_load((out / "config.yaml").read_text())["es"]["num_generations"] == 2
    sessions = json.loads((out / "summary.json").read_text())["sessions"]
    assert [s["mode"] for s in sessions] == ["new", "resume"]
    before = snapshot(out)  # complete now: a plain resume changes nothing
    assert run_cli(["--resume", str(out)], compile_cache) == 0
    assert snapshot(out) == before


@pytest.mark.slow  # a CLI run with the ES program (cached after run_a)
def test_interrupt_leaves_a_resumable_run(
    config_file, compile_cache, tmp_path, monkeypatch, capsys
):
    original = cli.write_fitness

    def interrupt(run_dir, rows, keep_upto=None):
        original(run_dir, rows, keep_upto)
        if keep_upto is not None:  # called by on_generations, after the checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_fitness", interrupt)
    out = tmp_path / "c"
    argv = ["--config", str(config_file), "curriculum=regret", "--out", str(out)]
    assert run_cli(argv, compile_cache) == 130
    assert f"python -m experiments.lpg --resume {out}" in capsys.readouterr().err
    assert (out / "es" / "1").is_dir() and not (out / "rule").exists()
    assert len(read_csv(out / "fitness.csv")) == 1 and len(read_csv(out / "curriculum.csv")) == 1


@pytest.mark.slow  # the run_a fixture
def test_meta_test_only_reruns_the_meta_test(run_a, compile_cache, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(run_a, out)
    rule_before = snapshot(out / "rule")
    assert run_cli(["--meta-test-only", str(out), "lifetimes=[]"], compile_cache) == 0
    table = json.loads((out / "meta_test.json").read_text())
    assert [(c["task"], c["lifetime"]) for c in table["cells"]] == [("gridworld/sparse", 1.0)]
    old = json.loads((run_a / "meta_test.json").read_text())["cells"][0]
    assert table["cells"][0]["results"] == old["results"]
    assert snapshot(out / "rule") == rule_before
    assert yaml.safe_load((out / "config.yaml").read_text())["lifetimes"] == []


@pytest.mark.slow  # the run_a fixture
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume", "{a}", "es.population_size=8"], "es.population_size: the run has 4"),
        (["--resume", "{a}", "--time-aware"], "time_aware: the run has False"),
        (["--resume", "{a}", "curriculum=dr"], "curriculum: the run has 'regret'"),
        (["--resume", "{a}", "es.num_generations=1"], "past es.num_generations=1"),
        (["--meta-test-only", "{a}", "es.num_generations=3"], "only the meta-test settings"),
        (["--config", "{cfg}", "--out", "{a}"], "already holds a run"),
    ],
)
def test_bad_resume_changes_nothing(argv, message, run_a, config_file, compile_cache, capsys):
    before = snapshot(run_a)
    argv = [x.format(a=run_a, cfg=config_file) for x in argv]
    assert run_cli(argv, compile_cache) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert snapshot(run_a) == before
