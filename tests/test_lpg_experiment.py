"""python -m experiments.lpg / experiments.groove (meta-train an LPG rule, meta-test it against
tuned A2C and PPO) and the pieces they share with experiments.lpo (experiments/metacli.py, meta_test.py).

The default tests check settings, bad input, the normalisation and the small meta-test helpers
without compiling a training program (except one random-policy rollout). The end-to-end CLI runs
(`-m slow`) share two tiny GROOVE runs on gridworld/small with the regret curriculum, meta-tested
on gridworld/sparse at 1x and 2x with 2 seeds: ES-GROOVE (population 4, 2 generations) and
GROOVE (meta-gradient, 4 agents, K = 2, 4 meta-steps in calls of 2); compiling is most of their
time, so the module keeps jax's persistent compilation cache in pytest's cache folder (the
resumed, interrupted and meta-test-only runs load the programs the first runs compiled).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from experiments import command
from experiments import groove as groove_cli
from experiments import lpg as cli
from experiments import lpg_meta_test as M
from experiments import lpg_report as R
from experiments import lpg_settings as S
from meta import groove, lpg
from meta import lpg_meta_test as L
from tests.helpers import (
    check_bad_resume,
    cli_compile_cache,
    interrupt_after_first_generation,
    snapshot,
)

TINY = {
    "seed": 0,
    "env": "gridworld/small",
    "inner": {"total_timesteps": 256, "num_envs": 4, "num_steps": 16},
    "hidden": 16,
    "meta_optimizer": "es",
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


# The meta-gradient's tiny run: 4 updates per life, K = 2, so a life is 2 meta-steps.
TINY_MG = {
    **{k: v for k, v in TINY.items() if k not in ("meta_optimizer", "es")},
    "meta_gradient": {"num_agents": 4, "num_agent_updates": 2, "num_steps": 4,
                      "steps_per_call": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def mg_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny_mg.yaml"
    path.write_text(yaml.safe_dump(TINY_MG))
    return path


def run_cli(argv, cache, main=cli.main) -> int:
    """A CLI's main in this process (with the module's XLA_FLAGS)."""
    return main([*argv, "--no-progress", "--compile-cache", str(cache)])


@pytest.fixture(scope="module")
def run_a(config_file, compile_cache, tmp_path_factory):
    """The tiny ES-GROOVE run, through experiments.groove (curriculum regret by default)."""
    out = tmp_path_factory.mktemp("groove") / "a"
    argv = ["--config", str(config_file), "--out", str(out)]
    assert run_cli(argv, compile_cache, groove_cli.main) == 0
    return out


@pytest.fixture(scope="module")
def run_mg(mg_config_file, compile_cache, tmp_path_factory):
    """The tiny GROOVE run (meta-gradient: experiments.groove's default)."""
    out = tmp_path_factory.mktemp("groove") / "mg"
    argv = ["--config", str(mg_config_file), "--out", str(out)]
    assert run_cli(argv, compile_cache, groove_cli.main) == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- settings


def test_settings_resolve_defaults_and_lifetimes():
    settings = S.resolve({})
    assert settings.curriculum == "dr" and settings.algo == "lpg"
    assert settings.meta_optimizer == "meta_gradient" and settings.steps_per_call == 50
    assert settings.cfg.meta_gradient == lpg.MetaGradientConfig()  # meta.lpg's defaults
    assert settings.cfg.lpg.env == "gridworld/all_shortlife"
    assert settings.test.test_tasks == L.GRID_TASKS and settings.test.minatar == (
        "Breakout-MinAtar",
    )
    assert settings.test.multiples == (1.0, 0.5, 2.0) and settings.test.test_seeds == 8
    assert settings.es.fitness_shaping == "pairwise" and settings.es.sigma == 0.1
    assert settings.train_updates == 50  # meta.lpg.CPU_INNER: 8 envs x 16 steps x 50 updates
    assert settings.test.cells[:3] == [
        ("gridworld/dense", 1.0), ("gridworld/dense", 0.5), ("gridworld/dense", 2.0)
    ]  # fmt: skip
    assert settings.test.cells[-1] == ("Breakout-MinAtar", 1.0) and len(settings.test.cells) == 16
    steps = [
        settings.learner_config("gridworld/long", m, "lpg").total_timesteps for m in (0.5, 1.0, 2.0)
    ]
    assert steps == [25 * 128, 50 * 128, 100 * 128]  # updates scaled, rollout kept
    rule = settings.learner_config("gridworld/long", 1.0, "lpg")
    a2c = settings.learner_config("gridworld/long", 1.0, "a2c", lr=0.3)
    ppo = settings.learner_config("gridworld/long", 1.0, "ppo")
    assert rule.prediction_size == lpg.Y_SIZE and a2c.prediction_size == 0
    assert a2c.learning_rate == 0.3 and a2c.hidden_sizes == () and a2c.num_steps == 16
    assert ppo.update_epochs == 4 and ppo.num_minibatches == 4 and ppo.gae_lambda == 0.95
    breakout = settings.learner_config("Breakout-MinAtar", 1.0, "lpg")
    assert breakout.hidden_sizes == (64, 64) and breakout.total_timesteps == 51_200
    assert S.resolve(settings.values).values == settings.values  # config.yaml round trip


def test_groove_cli_defaults_to_the_regret_curriculum():
    groove = cli.experiment("experiments.groove", "regret")
    assert groove.resolve({}).curriculum == "regret"
    assert groove.resolve({"curriculum": "pvl"}).curriculum == "pvl"
    assert cli.experiment().resolve({}).curriculum == "dr"
    args = command.parser(groove_cli.COMMAND).parse_args(["meta_gradient.num_agents=32"])
    assert "building GROOVE meta-training" in groove_cli.COMMAND.describe(args)
    assert "curriculum regret, 32 agents x 100 meta-steps" in groove_cli.COMMAND.describe(args)
    args = command.parser(cli.COMMAND).parse_args(
        ["es.population_size=8", "--meta-optimizer", "es"]
    )
    assert "building ES-GROOVE meta-training" in groove_cli.COMMAND.describe(args)
    assert "curriculum regret, population 8 x 100" in groove_cli.COMMAND.describe(args)
    assert groove_cli.CURRICULUM == "regret" and groove_cli.PROG == groove.prog
    # describe runs before jax starts: its meta-gradient defaults are meta.lpg's
    mg = lpg.MetaGradientConfig()
    assert S.MG_DESCRIBE == {"num_agents": mg.num_agents, "num_steps": mg.num_steps}


@pytest.mark.parametrize(
    "values, optimizer, method",
    [
        ({}, "meta_gradient", "LPG (meta-gradient, curriculum dr)"),
        ({"time_aware": True}, "es", "TA-LPG (ES, curriculum dr)"),  # the TA paper's
        ({"time_aware": True, "meta_optimizer": "meta_gradient"}, "meta_gradient",
         "TA-LPG (meta-gradient, curriculum dr)"),
        ({"curriculum": "regret"}, "meta_gradient", "GROOVE"),  # GROOVE as published
        ({"curriculum": "regret", "meta_optimizer": "es"}, "es", "ES-GROOVE"),
        ({"curriculum": "regret", "time_aware": True}, "es", "ES-GROOVE (TA-LPG rule)"),
        ({"curriculum": "pvl", "meta_optimizer": "es"}, "es", "LPG (ES, curriculum pvl)"),
    ],
)  # fmt: skip
def test_meta_optimizer_defaults_to_each_methods_own(values, optimizer, method):
    settings = S.resolve(values)
    assert settings.meta_optimizer == optimizer and settings.method == method
    assert settings.cfg.meta_optimizer == optimizer  # what groove.make_meta_train runs
    assert settings.values["meta_optimizer"] == optimizer  # explicit in config.yaml
    assert S.resolve(settings.values).values == settings.values
    name = cli.experiment().run_name(settings)
    assert name.startswith(f"{settings.algo}-{'mg' if optimizer == 'meta_gradient' else 'es'}-")
    schedule = S.schedule(settings)
    if optimizer == "es":
        assert schedule.key == "es.num_generations" and schedule.shards == 16
    else:
        assert schedule.key == "meta_gradient.num_steps" and schedule.planned == 100
        assert schedule.shards is None and schedule.where == "meta_gradient/"


def test_meta_optimizer_flag_and_meta_gradient_block(tmp_path):
    args = command.parser(cli.COMMAND).parse_args(["--meta-optimizer", "es"])
    assert args.meta_optimizer == "es" and not args.compare_ta
    with pytest.raises(SystemExit):  # argparse: invalid choice
        command.parser(cli.COMMAND).parse_args(["--meta-optimizer", "ess"])
    settings = S.resolve(
        {"meta_gradient": {"num_agents": 4, "agent_chunks": 2, **command.parse_overrides(["learning_rate=3e-4"]),
                           "max_grad_norm": None, "steps_per_call": 7}}
    )  # fmt: skip
    mg = settings.cfg.meta_gradient
    assert (mg.num_agents, mg.agent_chunks, mg.max_grad_norm) == (4, 2, None)
    assert mg.learning_rate == 3e-4  # YAML 1.2: "3e-4" is a number
    assert settings.steps_per_call == 7 and settings.values["meta_gradient"]["steps_per_call"] == 7


@pytest.mark.parametrize("name", ["lpg_cpu.yaml", "lpg_paper.yaml"])
def test_shipped_configs_resolve(name):
    values = command.load_yaml(Path(cli.__file__).parent / "configs" / name)
    settings = S.resolve(values)
    assert "curriculum" not in values and settings.curriculum == "dr"  # each CLI's default
    assert cli.experiment("experiments.groove", "regret").resolve(values).curriculum == "regret"
    assert settings.test.test_tasks == L.GRID_TASKS and settings.test.multiples[:3] == (
        1.0,
        0.5,
        2.0,
    )
    assert settings.es.fitness_shaping == "pairwise" and settings.test.test_seeds >= 8
    assert "Breakout-MinAtar" in settings.test.minatar
    # meta_optimizer unset: each method's own
    assert "meta_optimizer" not in values and settings.meta_optimizer == "meta_gradient"
    assert S.resolve({**values, "time_aware": True}).meta_optimizer == "es"
    text = (Path(cli.__file__).parent / "configs" / name).read_text()
    assert "docs REFERENCES" not in text and "EmptyJackson/groove" in text
    mg = settings.cfg.meta_gradient
    assert mg.num_agent_updates == 5 and mg.learning_rate == 1e-4
    if name == "lpg_cpu.yaml":
        assert settings.cfg.lpg.env == "gridworld/small" and settings.train_updates == 64
        assert settings.es.population_size == 32
        assert mg.num_agents == 64 and mg.num_steps == 1000 and settings.steps_per_call == 50
        dense = settings.learner_config("gridworld/dense", 1.0, "a2c")
        assert dict(dense.env_kwargs) == {"max_steps": 100}
    else:
        assert settings.cfg.lpg.env == "gridworld/all_shortlife" and settings.train_updates == 250
        assert settings.es.population_size == 1024 and settings.cfg.lpg.hidden == 256
        assert settings.cfg.buffer.capacity == 4000 and settings.cfg.buffer.replay_prob == 0.5
        assert settings.test.multiples == (1.0, 0.5, 2.0, 10.0)  # 10x: the paper's 2,500 updates
        # EmptyJackson/groove: --num_agents 512 --num_mini_batches 16, K 5, Adam 1e-4 with no
        # clip (its Adam ignores --lpg_max_grad_norm), --train_steps 3e4; ES (the README's TA-LPG
        # command): population 2 x 512, sigma 0.1, --lpg_learning_rate 0.01, 2500 steps
        assert (mg.num_agents, mg.agent_chunks, mg.num_steps) == (512, 16, 30_000)
        assert mg.max_grad_norm is None and mg.stagger is False
        assert (mg.entropy_coef, mg.pi_hat_l2_coef, mg.y_entropy_coef, mg.y_hat_l2_coef) == (
            5e-2, 5e-3, 1e-3, 1e-3
        )  # fmt: skip
        inner = settings.cfg.lpg.inner_config()
        assert (inner.num_envs, inner.num_steps) == (64, 20)
        assert settings.es.sigma == 0.1 and settings.es.learning_rate == 0.01
        assert settings.es.num_generations == 2500


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
        (["es.popsize=4"], "es: ESConfig has no field 'popsize'"),
        (["buffer.capacty=4"], "buffer: BufferConfig has no field 'capacty'"),
        (["inner.total_timestep=512"], "did you mean ['total_timesteps']"),
        (["lifetimes=[-1]"], "lifetimes=[-1]"),
        (["lr_grid.a2c=[]"], "lr_grid.a2c=[]"),
        (["lr_grid.sac=[0.1]"], "unknown baseline 'sac'"),
        (["ppo.update_epoch=2"], "did you mean ['update_epochs']"),
        (["test_env_kwargs={gridworld/sparse: {max_step: 5}}"], "test_env_kwargs.gridworld/sparse"),
        (["test_env_kwargs={gridworld/dense: {max_steps: 5}}"], "not among test_tasks"),
        (["test_seeds=0"], "test_seeds=0"),
        (["meta_optimizer=meta_grad"], "did you mean 'meta_gradient'"),
        (["meta_gradient.num_agent=4"], "MetaGradientConfig has no field 'num_agent'"),
        (["meta_gradient.learning_rate=-1"], "MetaGradientConfig.learning_rate=-1"),
        (["meta_gradient.num_agents=3", "meta_gradient.agent_chunks=2"], "not divisible"),
        (["meta_gradient.steps_per_call=0"], "meta_gradient.steps_per_call=0"),
        (["meta_optimizer=meta_gradient"], "shorter than meta_gradient.num_agent_updates=5"),
    ],
)
def test_bad_input_stops_before_writing(extra, message, config_file, tmp_path, capsys):
    out = tmp_path / "bad"
    assert cli.main(["--config", str(config_file), *extra, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "where, message",
    [
        (
            "meta_gradient",
            "MetaGradientConfig has no field 'num_agent'; did you mean ['num_agents'",
        ),
        ("top", "unknown key 'meta_optimiser'; did you mean 'meta_optimizer'"),
    ],
)
@pytest.mark.parametrize("main", [cli.main, groove_cli.main])
def test_paper_config_with_an_unknown_field_stops_before_compiling(
    where, message, main, tmp_path, monkeypatch, capsys
):
    """lpg_paper.yaml with one misspelt field: `error: ...` naming it, exit code 2, nothing
    written, and nothing traced or compiled (jax.jit / lax.scan would fail the test)."""
    values = command.load_yaml(Path(cli.__file__).parent / "configs" / "lpg_paper.yaml")
    if where == "top":
        values["meta_optimiser"] = "es"
    else:
        values["meta_gradient"]["num_agent"] = values["meta_gradient"].pop("num_agents")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(values))

    def refuse(*args, **kwargs):
        raise AssertionError("something was compiled before the settings were checked")

    monkeypatch.setattr(jax, "jit", refuse)
    monkeypatch.setattr(jax.lax, "scan", refuse)
    out = tmp_path / "run"
    assert main(["--config", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert not out.exists()


def test_compare_ta_refuses_flags_that_set_what_it_sets(config_file, tmp_path, capsys):
    for flag in (["--time-aware"], ["--meta-optimizer", "es"], ["--resume", str(tmp_path)]):
        argv = ["--compare-ta", "--config", str(config_file), "--out", str(tmp_path / "c")]
        assert cli.main([*argv, *flag, "--no-progress"]) == 2
        assert "--compare-ta sets time_aware and meta_optimizer" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_compare_ta_checks_every_run_before_starting(config_file, tmp_path, capsys):
    """A setting only the meta-gradient run rejects (lifetime 4 updates < K = 5) stops the
    comparison before its first (ES) run starts."""
    out = tmp_path / "c"
    argv = ["--compare-ta", "--config", str(config_file), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 2
    assert "shorter than meta_gradient.num_agent_updates=5" in capsys.readouterr().err
    assert not out.exists()


def _meta_test_table(shift: float) -> dict:
    """A meta_test.json of one task at 1x and 2x whose rule IQM is `shift` + the cell's index."""
    stats = lambda x: {"iqm": x, "iqm_ci": [x - 1, x + 1], "mean": x}  # noqa: E731
    cells = [
        {"task": "gridworld/sparse", "lifetime": m,
         "results": {"lpg": stats(shift + i), "a2c": stats(10.0), "ppo": stats(20.0)}}
        for i, m in enumerate((1.0, 2.0))
    ]  # fmt: skip
    overall = {
        "1x": {"lpg": stats(shift), "a2c": stats(1.0), "ppo": stats(2.0)},
        "2x": None,
    }
    return {"lifetimes": [1.0, 2.0], "test_seeds": 2, "cells": cells, "overall": overall}


def test_comparison_table_of_three_runs(tmp_path):
    names = [(name, label) for name, label, _ in cli.COMPARE_TA]
    assert [n for n, _ in names] == ["ta-lpg-es", "ta-lpg-mg", "lpg-es"]
    for i, (name, _) in enumerate(names):
        (tmp_path / name).mkdir()
        command.write_json(tmp_path / name / "meta_test.json", _meta_test_table(100.0 * i))
        command.write_json(tmp_path / name / "summary.json", {"method": f"m{i}"})
    table = R.comparison(tmp_path, names)
    assert table["series"] == ["ta-lpg-es", "ta-lpg-mg", "lpg-es", "a2c", "ppo"]
    assert [table["overall"]["1x"][n]["iqm"] for n, _ in names] == [0.0, 100.0, 200.0]
    assert table["overall"]["1x"]["a2c"]["iqm"] == 1.0 and table["overall"]["2x"]["lpg-es"] is None
    assert table["cells"]["gridworld/sparse@2x"]["ta-lpg-mg"]["iqm"] == 101.0
    assert table["runs"]["lpg-es"] == {
        "label": "LPG (ES)", "folder": str(tmp_path / "lpg-es"), "method": "m2"
    }  # fmt: skip
    text = R.format_comparison(table)
    assert "TA-LPG (ES)" in text and "lifetime 1x" in text and "gridworld/sparse@2x" in text
    assert R.plot_comparison(tmp_path, table).is_file()


# --------------------------------------------------------------------------- the meta-test numbers


def test_normalisation_on_a_hand_case():
    """(R - R_random) / (R_A2C - R_random): R_random 1, R_A2C 3."""
    np.testing.assert_allclose(L.normalise([3.0, 1.0, 2.0, 5.0], 1.0, 3.0), [1, 0, 0.5, 2])
    assert np.isnan(L.normalise([2.0, np.nan], 1.0, 3.0)[1])
    for r_random, r_a2c in ((3.0, 3.0), (3.0, 1.0), (np.nan, 3.0), (1.0, np.nan)):
        assert np.isnan(L.normalise([2.0], r_random, r_a2c)).all()  # no normalisation
    assert "(R - R_random) / (R_A2C - R_random)" in M.NORMALISATION
    assert "(R - R_random) / (R_A2C - R_random)" in cli.__doc__


def test_best_lr_takes_the_best_mean_over_seeds():
    finals = np.array([[1.0, 2.0], [3.0, np.nan], [2.5, 2.5], [np.nan, np.nan]])
    assert L.best_lr(finals) == 1  # NaN seeds left out: 3.0 > 2.5 > 1.5
    assert L.best_lr(np.array([[2.0, 2.0], [1.0, 3.0]])) == 0  # the first of ties
    assert L.best_lr(np.full((2, 3), np.nan)) is None


def test_seed_devices_and_the_memo_on_hand_cases():
    from meta import meta_test

    assert [len(meta_test.seed_devices("abcd", n)) for n in (8, 6, 7)] == [4, 3, 1]
    memo, calls = {}, []
    compute = lambda: calls.append(1) or 5  # noqa: E731
    assert L.memoised(memo, "k", compute) == (5, False) and L.memoised(memo, "k", compute) == (
        5,
        True,
    )
    assert L.memoised(None, "k", compute) == (5, False) and len(calls) == 2


def _cell(task, lifetime, per_seed, normalisable=True):
    stats = {k: {"per_seed": per_seed[k]} for k in L.LEARNERS}
    return {"task": task, "lifetime": lifetime, "normalisable": normalisable, "normalised": stats}


def test_overall_is_the_iqm_over_tasks_and_seeds():
    from experiments import aggregate

    same = {k: [0.0, 1.0, 2.0, 3.0] for k in L.LEARNERS}
    other = {k: [4.0, 5.0, None, 7.0] for k in L.LEARNERS}
    cells = [
        _cell("a", 1.0, same),
        _cell("b", 1.0, other),
        _cell("c", 1.0, same, normalisable=False),  # left out
        _cell("a", 2.0, other),
    ]
    out = M.overall(cells, (1.0, 2.0, 0.5), reps=200)
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

    seed = L.task_seed(0, "gridworld/dense")
    assert seed != L.task_seed(1, "gridworld/dense") != L.task_seed(0, "gridworld/long")
    cfg = S.resolve(TINY).learner_config("gridworld/sparse", 1.0, "a2c")
    batch = sweep.grid(cfg, {"learning_rate": [0.1, 0.3]}, seeds=3, seed=seed)
    mine = L.sweep_keys(seed, 3)
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
    r, episodes = L.random_return(env, level, jax.random.key(0), num_envs=64, num_steps=200)
    assert r == pytest.approx(1.0)
    assert 0.7 * 64 * 200 / 5 < episodes < 1.3 * 64 * 200 / 5
    r_none, none = L.random_return(env, level, jax.random.key(0), num_envs=2, num_steps=0)
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
    assert [r["generation"] for r in rows] == ["1", "2"]
    # a candidate whose agent finished no episode in its last 5% of updates has a NaN fitness
    # (purejaxrl.scores.final_return): with 4 updates of 16 steps on levels of 20-100-step
    # episodes, some do; the finite ones give mean and best
    assert all(0 <= int(r["nonfinite"]) <= 4 for r in rows)
    assert all(float(r["best"]) >= float(r["mean"]) for r in rows if int(r["nonfinite"]) < 4)
    curriculum = read_csv(run_a / "curriculum.csv")
    assert [r["generation"] for r in curriculum] == ["1", "2"]
    assert curriculum[0]["replay"] == "0.0" and curriculum[0]["antagonist_runs"] == "2.0"
    # generation 1 offers 2 new levels; the buffer (capacity 4) admits those with a finite AR
    # (a pair with a NaN fitness has a NaN AR, never admitted)
    first = curriculum[0]
    assert first["admitted"] == first["buffer_size"] and float(first["admitted"]) in (0, 1, 2)

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
        for learner in L.LEARNERS:
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
    assert summary["fitness"]["first_mean"] == (float(rows[0]["mean"]) if rows[0]["mean"] else None)
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
    interrupt_after_first_generation(monkeypatch)
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
        (["--meta-test-only", "{a}", "es.num_generations=3"], "es.num_generations: the run has 2"),
    ],
)
def test_bad_resume_changes_nothing(argv, message, run_a, compile_cache, capsys):
    check_bad_resume(lambda a: run_cli(a, compile_cache), run_a, argv, message, capsys)


# --------------------------------------------------------------------------- meta-gradient end to end


@pytest.mark.slow  # the run_mg fixture: a whole CLI run, ~3 min cold, ~1 min with the cache
def test_meta_gradient_run_folder(run_mg):
    """GROOVE as published (experiments.groove's default): the rule, meta_steps.csv,
    curriculum.csv per meta-step, the checkpoint, the plots, summary.json and the meta-test."""
    for name in ("config.yaml", "meta_steps.csv", "meta_steps.png", "curriculum.csv",
                 "meta_test.json", "meta_test.png", "summary.json"):  # fmt: skip
        assert (run_mg / name).is_file(), name
    assert not (run_mg / "fitness.csv").exists() and not (run_mg / "es").exists()
    assert groove.checkpoint_steps(run_mg) == 4  # the checkpoint after the last call
    config = yaml.safe_load((run_mg / "config.yaml").read_text())
    assert config["meta_optimizer"] == "meta_gradient" and config["curriculum"] == "regret"
    assert config["meta_gradient"]["num_agents"] == 4 and config["meta_gradient"]["num_steps"] == 4

    steps = read_csv(run_mg / "meta_steps.csv")
    assert [r["meta_step"] for r in steps] == ["1", "2", "3", "4"]
    for name in ("meta_loss", "meta_pg_loss", "finished_return", "agents_restarted",
                 "rule_grad_norm", "rule_skipped", "entropy"):  # fmt: skip
        assert name in steps[0], name
    assert all(math.isfinite(float(r["meta_loss"])) and r["rule_skipped"] == "0.0" for r in steps)
    # lives of 4 updates, K = 2, staggered starts: every agent's first life ends by step 2
    assert sum(float(r["agents_restarted"]) for r in steps[:2]) == 4
    curriculum = read_csv(run_mg / "curriculum.csv")
    assert [r["meta_step"] for r in curriculum] == ["1", "2", "3", "4"]
    assert {"replay", "admitted", "buffer_size", "mean_score"} <= set(curriculum[0])
    assert "replay" not in steps[0]  # the curriculum's metrics are in curriculum.csv only

    params, info = lpg.load(run_mg / "rule")
    assert info["trained_on"]["method"] == "meta_gradient" and info["trained_on"]["meta_steps"] == 4
    assert info["trained_on"]["meta_gradient"]["num_steps"] == 4
    assert info["time_aware"] is False and info["hidden"] == 16

    table = json.loads((run_mg / "meta_test.json").read_text())
    assert [(c["task"], c["lifetime"]) for c in table["cells"]] == [
        ("gridworld/sparse", 1.0), ("gridworld/sparse", 2.0)
    ]  # fmt: skip
    for c in table["cells"]:
        assert len(c["results"]["lpg"]["per_seed"]) == 2

    summary = json.loads((run_mg / "summary.json").read_text())
    assert summary["method"] == "GROOVE" and summary["meta_optimizer"] == "meta_gradient"
    assert summary["fitness"] is None and summary["meta_training"]["meta_steps"] == 4
    assert summary["meta_training"]["num_agents"] == 4
    assert summary["curriculum_metrics"]["buffer_size"]["last"] >= 1
    assert set(summary["meta_test"]) == {"gridworld/sparse@1x", "gridworld/sparse@2x"}
    timings = summary["timings"]
    assert timings["meta_steps_run"] == 4 and timings["meta_gradient_first_call_s"] > 0
    assert timings["meta_step_s"] > 0 and summary["sessions"][0]["mode"] == "new"


def _same_rule(a: Path, b: Path) -> None:
    mine, _ = lpg.load(a / "rule")
    theirs, _ = lpg.load(b / "rule")
    for x, y in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # the run_mg fixture, and a two-session run with the cached programs
def test_meta_gradient_resume_raises_num_steps_exactly(
    run_mg, mg_config_file, compile_cache, tmp_path
):
    out = tmp_path / "b"
    one = ["--config", str(mg_config_file), "meta_gradient.num_steps=2", "lifetimes=[]"]
    assert run_cli([*one, "--out", str(out)], compile_cache, groove_cli.main) == 0
    assert len(read_csv(out / "meta_steps.csv")) == 2 and groove.checkpoint_steps(out) == 2
    argv = ["--resume", str(out), "meta_gradient.num_steps=4", "lifetimes=[2.0]"]
    assert run_cli(argv, compile_cache, groove_cli.main) == 0
    for name in ("meta_steps.csv", "curriculum.csv"):
        assert (out / name).read_text() == (run_mg / name).read_text(), name
    _same_rule(out, run_mg)
    cell = lambda folder: json.loads((folder / "meta_test.json").read_text())["cells"]  # noqa: E731
    assert [c["results"] for c in cell(out)] == [c["results"] for c in cell(run_mg)]
    assert yaml.safe_load((out / "config.yaml").read_text())["meta_gradient"]["num_steps"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert [s["mode"] for s in summary["sessions"]] == ["new", "resume"]
    assert summary["sessions"][1]["generations_before"] == 2
    before = snapshot(out)  # complete now: a plain resume changes nothing
    assert run_cli(["--resume", str(out)], compile_cache, groove_cli.main) == 0
    assert snapshot(out) == before


@pytest.mark.slow  # a CLI run with the meta-gradient program (cached after run_mg)
def test_meta_gradient_interrupt_then_resume(
    run_mg, mg_config_file, compile_cache, tmp_path, monkeypatch, capsys
):
    original = cli.write_meta_steps

    def interrupt(run_dir, metrics, first=1, keep_upto=None):
        original(run_dir, metrics, first, keep_upto)
        if keep_upto is not None:  # called by on_steps, after the checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_meta_steps", interrupt)
    out = tmp_path / "c"
    argv = ["--config", str(mg_config_file), "--out", str(out)]
    assert run_cli(argv, compile_cache, groove_cli.main) == 130
    assert f"python -m experiments.groove --resume {out}" in capsys.readouterr().err
    assert groove.checkpoint_steps(out) == 2 and not (out / "rule").exists()
    assert len(read_csv(out / "meta_steps.csv")) == 2
    monkeypatch.setattr(cli, "write_meta_steps", original)
    assert run_cli(["--resume", str(out)], compile_cache, groove_cli.main) == 0
    for name in ("meta_steps.csv", "curriculum.csv"):
        assert (out / name).read_text() == (run_mg / name).read_text(), name
    _same_rule(out, run_mg)


@pytest.mark.slow  # the run_mg fixture
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume", "{a}", "meta_gradient.num_agents=8"], "meta_gradient.num_agents: the run"),
        (["--resume", "{a}", "es.num_generations=3"], "es.num_generations: the run has"),
        (["--resume", "{a}", "meta_optimizer=es"], "meta_optimizer: the run has"),
        (["--resume", "{a}", "meta_gradient.num_steps=3"], "meta_gradient/ holds meta-step 4"),
        (["--meta-test-only", "{a}", "meta_gradient.num_steps=5"], "num_steps: the run has 4"),
    ],
)
def test_bad_meta_gradient_resume_changes_nothing(argv, message, run_mg, compile_cache, capsys):
    run = lambda a: run_cli(a, compile_cache, groove_cli.main)  # noqa: E731
    check_bad_resume(run, run_mg, argv, message, capsys)


@pytest.mark.slow  # three tiny runs (ES TA-LPG, meta-gradient TA-LPG, ES LPG) and the table
def test_compare_ta_runs_three_rules_and_one_table(mg_config_file, compile_cache, tmp_path):
    out = tmp_path / "cmp"
    argv = ["--compare-ta", "--config", str(mg_config_file), "--out", str(out),
            "es.population_size=2", "es.num_generations=1", "meta_gradient.num_steps=2"]  # fmt: skip
    assert run_cli(argv, compile_cache) == 0
    expect = {"ta-lpg-es": (True, "es"), "ta-lpg-mg": (True, "meta_gradient"),
              "lpg-es": (False, "es")}  # fmt: skip
    for name, (ta, optimizer) in expect.items():
        config = yaml.safe_load((out / name / "config.yaml").read_text())
        assert (config["time_aware"], config["meta_optimizer"]) == (ta, optimizer), name
        assert (out / name / "meta_test.json").is_file() and (out / name / "rule").is_dir()
    table = json.loads((out / "comparison.json").read_text())
    assert table["series"] == [*expect, "a2c", "ppo"] and set(table["overall"]) == {"1x", "2x"}
    assert (out / "comparison.txt").is_file() and (out / "comparison.png").is_file()
    # the baselines were tuned once: every run's meta-test has the same A2C and PPO
    tests = [json.loads((out / n / "meta_test.json").read_text()) for n in expect]
    assert all(t["cells"][0]["results"]["a2c"] == tests[0]["cells"][0]["results"]["a2c"]
               for t in tests)  # fmt: skip
    before = snapshot(out)  # complete: the same command again changes nothing
    assert run_cli(argv, compile_cache) == 0
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("comparison")} == {
        k: v for k, v in before.items() if not k.startswith("comparison")
    }
