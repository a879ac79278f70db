"""python -m experiments.lpo (meta-train LPO, meta-test the drift) and meta.lpo_train's fitness.

One tiny CLI run (CartPole-v1, population 2, 2 generations, 2 meta-test seeds, held-out
Catch-bsuite) is shared by the module. Compiling is most of the time (a tiny PPO program takes
~5-15 s to compile on 2 loaded cores), so the module keeps jax's persistent compilation cache in
pytest's cache folder (.pytest_cache/, or a temporary folder without the cache plugin): the
resumed, interrupted and library runs load the programs the first run compiled (the same
programs: the learned drift is an argument, not a constant), and a second session of the module
compiles nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from experiments import lpo as cli
from meta import lpo, lpo_train
from meta import meta_test as M
from tests.helpers import (
    check_bad_resume,
    cli_compile_cache,
    interrupt_after_first_generation,
    snapshot,
)

TINY_INNER = {
    "total_timesteps": 256,
    "num_envs": 4,
    "num_steps": 16,
    "update_epochs": 1,
    "num_minibatches": 1,
    "hidden_sizes": [8],
    "learning_rate": 1e-3,
}
TINY = {
    "seed": 0,
    "tasks": ["CartPole-v1"],
    "inner": TINY_INNER,
    "ppo_init": True,
    "hidden": 8,
    "baseline_seeds": 2,
    "es": {"population_size": 2, "num_generations": 2, "generations_per_call": 1},
    "held_out": ["Catch-bsuite"],
    "horizons": [],
    "compare": ["ppo_clip"],
    "bootstrap": 200,
}


@pytest.fixture(scope="module")
def compile_cache(request, tmp_path_factory):
    """The module's compile cache and XLA_FLAGS (tests/helpers.cli_compile_cache)."""
    yield from cli_compile_cache(request, tmp_path_factory, "experiments-lpo-jax-cache")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run_cli(argv, cache) -> int:
    """cli.main in this process (with the module's XLA_FLAGS, which it leaves as they are)."""
    return cli.main([*argv, "--no-progress", "--compile-cache", str(cache)])


@pytest.fixture(scope="module")
def run_a(config_file, compile_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lpo") / "a"
    assert (
        run_cli(["--config", str(config_file), "test_seeds=2", "--out", str(out)], compile_cache)
        == 0
    )
    return out


# --------------------------------------------------------------------------- the run folder


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~100 s
def test_run_folder_holds_every_output(run_a):
    for name in ("config.yaml", "baselines.json", "fitness.csv", "fitness.png", "drift.png",
                 "meta_test.json", "meta_test.png", "summary.json"):  # fmt: skip
        assert (run_a / name).is_file(), name
    assert (run_a / "es" / "2").is_dir()  # the checkpoint after generation 2
    config = yaml.safe_load((run_a / "config.yaml").read_text())
    assert config["tasks"] == ["CartPole-v1"] and config["test_seeds"] == 2
    assert config["es"]["population_size"] == 2 and config["es"]["strategy"] == "open_es"

    with (run_a / "fitness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["generation"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["mean"])) and float(r["best"]) >= float(r["mean"]) for r in rows)
    assert [r["nonfinite"] for r in rows] == ["0", "0"]

    baselines = json.loads((run_a / "baselines.json").read_text())["baselines"]
    assert set(baselines) == {"CartPole-v1"}
    assert baselines["CartPole-v1"]["ppo"] > baselines["CartPole-v1"]["low"] > 0

    table = json.loads((run_a / "meta_test.json").read_text())
    assert table["objectives"] == ["learned", "ppo_clip"] and table["test_seeds"] == 2
    cells = {(c["task"], c["horizon"], c["kind"]) for c in table["cells"]}
    assert cells == {("CartPole-v1", 1.0, "train"), ("Catch-bsuite", 1.0, "held_out")}
    assert table["programs"] == 4
    for c in table["cells"]:
        for objective in ("learned", "ppo_clip"):
            s = c["results"][objective]
            assert len(s["per_seed"]) == 2 and s["num_runs"] == 2
            assert s["iqm_ci"][0] <= s["iqm"] <= s["iqm_ci"][1]
        assert 0.0 <= c["p_improvement_learned_over"]["ppo_clip"] <= 1.0

    summary = json.loads((run_a / "summary.json").read_text())
    assert summary["algo"] == "lpo" and summary["generations"] == 2
    assert summary["fitness"]["first_mean"] == float(rows[0]["mean"])
    assert summary["fitness"]["last_best"] == float(rows[1]["best"])
    assert summary["baselines"] == baselines
    assert set(summary["meta_test"]) == {"CartPole-v1@1x", "Catch-bsuite@1x"}
    for key in (
        "baselines_s",
        "es_compile_s",
        "es_run_s",
        "meta_test_compile_s",
        "meta_test_run_s",
    ):
        assert summary["timings"][key] >= 0
    assert summary["wall_s"] > 0 and summary["sessions"][0]["mode"] == "new"


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~100 s
def test_saved_drift_loads_and_trains_through_the_registry(run_a):
    from experiments import runs
    from purejaxrl import checkpoint, objectives, ppo

    runs.register_objectives()  # meta's objectives in the registry, as experiments.train does
    params, info = lpo.load(run_a / "drift")
    assert info["time_aware"] is False and info["ppo_init"] is True and info["hidden"] == 8
    assert info["trained_on"]["tasks"] == ["CartPole-v1"]
    assert info["trained_on"]["generations"] == 2
    assert jax.tree.leaves(params)[0].shape == (8, 8)
    cfg = ppo.PPOConfig(env="CartPole-v1", **{**TINY_INNER, "hidden_sizes": (8,)})
    objective = objectives.build({"name": "lpo", "path": str(run_a / "drift")}, cfg)
    assert isinstance(objective, objectives.ActorCritic)
    # what `python -m experiments.train ... objective.name=lpo objective.path=DIR/drift` builds
    spec = runs.build_spec(
        {"algo": "ppo", "env": "CartPole-v1", **TINY_INNER,
         "objective": {"name": "lpo", "path": str(run_a / "drift")}}
    )  # fmt: skip
    agent = checkpoint.make_agent(spec.algo, spec.config)
    assert agent.num_updates == 4


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~100 s
def test_resume_continues_exactly(run_a, config_file, compile_cache, tmp_path):
    out = tmp_path / "b"
    one = ["--config", str(config_file), "test_seeds=2", "es.num_generations=1"]
    short = ["held_out=[]", "compare=[]"]  # a shorter meta-test (test settings may change)
    assert run_cli([*one, *short, "--out", str(out)], compile_cache) == 0
    assert len((out / "fitness.csv").read_text().splitlines()) == 2
    assert run_cli(["--resume", str(out), "es.num_generations=2"], compile_cache) == 0
    assert (out / "fitness.csv").read_text() == (run_a / "fitness.csv").read_text()
    mine, _ = lpo.load(out / "drift")
    theirs, _ = lpo.load(run_a / "drift")
    for x, y in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the same drift and seed keys give the same meta-test returns
    cell = lambda folder: json.loads((folder / "meta_test.json").read_text())["cells"][0]  # noqa: E731
    assert (
        cell(out)["results"]["learned"]["per_seed"] == cell(run_a)["results"]["learned"]["per_seed"]
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["es"]["num_generations"] == 2
    assert [s["mode"] for s in json.loads((out / "summary.json").read_text())["sessions"]] == [
        "new",
        "resume",
    ]
    # complete now: a plain resume changes nothing
    before = snapshot(out)
    assert run_cli(["--resume", str(out)], compile_cache) == 0
    assert snapshot(out) == before


@pytest.mark.slow  # a CLI run with a compile, ~30 s
def test_interrupt_leaves_a_resumable_run(
    config_file, compile_cache, tmp_path, monkeypatch, capsys
):
    interrupt_after_first_generation(monkeypatch)
    out = tmp_path / "c"
    argv = ["--config", str(config_file), "test_seeds=2", "--out", str(out)]
    assert run_cli(argv, compile_cache) == 130
    assert f"--resume {out}" in capsys.readouterr().err
    assert (out / "es" / "1").is_dir() and not (out / "drift").exists()
    assert len((out / "fitness.csv").read_text().splitlines()) == 2  # header + generation 1


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~100 s
def test_meta_test_only_reruns_the_meta_test(run_a, compile_cache, tmp_path):
    import shutil

    out = tmp_path / "m"
    shutil.copytree(run_a, out)
    drift_before = snapshot(out / "drift")
    assert run_cli(["--meta-test-only", str(out), "held_out=[]"], compile_cache) == 0
    table = json.loads((out / "meta_test.json").read_text())
    assert [c["task"] for c in table["cells"]] == ["CartPole-v1"]
    old = json.loads((run_a / "meta_test.json").read_text())["cells"][0]
    assert table["cells"][0]["results"] == old["results"]
    assert snapshot(out / "drift") == drift_before
    assert yaml.safe_load((out / "config.yaml").read_text())["held_out"] == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, message",
    [
        (["tasks=[CartPol-v1]"], "did you mean 'CartPole-v1'"),
        (["held_out=[Catch-bsuit]"], "did you mean 'Catch-bsuite'"),
        (["populaton_size=4"], "unknown key 'populaton_size'"),
        (["es.popsize=4"], "es: ESConfig has no field 'popsize'"),
        (["inner.total_timestep=512"], "did you mean ['total_timesteps']"),
        (["horizons=[-1]"], "horizons=[-1]"),
        (["compare=[ppo_clp]"], "did you mean 'ppo_clip'"),
        (["test_seeds=0"], "test_seeds=0"),
        (["held_out=[CartPole-v1]"], "training tasks too"),
    ],
)
def test_bad_input_stops_before_writing(
    extra, message, config_file, compile_cache, tmp_path, capsys
):
    out = tmp_path / "bad"
    assert run_cli(["--config", str(config_file), *extra, "--out", str(out)], compile_cache) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert not out.exists()


@pytest.mark.slow  # the run_a fixture: a whole CLI run, ~100 s
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume", "{a}", "es.population_size=4"], "es.population_size: the run has 2"),
        (["--resume", "{a}", "--time-aware"], "time_aware: the run has False"),
        (["--resume", "{a}", "es.num_generations=1"], "past es.num_generations=1"),
        (["--meta-test-only", "{a}", "es.num_generations=3"], "es.num_generations: the run has 2"),
    ],
)
def test_bad_resume_changes_nothing(argv, message, run_a, compile_cache, capsys):
    check_bad_resume(lambda a: run_cli(a, compile_cache), run_a, argv, message, capsys)


def cell_config(settings, task: str, horizon: float):
    """The PPOConfig of the meta-test cell (task, horizon)."""
    return {(t, h): cfg for t, h, cfg in settings.test.cells(settings.cfg)}[task, horizon]


def test_settings_resolve_defaults_and_horizons():
    settings = cli.resolve({"tasks": ["CartPole-v1"], "held_out": ["Catch-bsuite"]})
    assert settings.test.test_seeds == 8 and settings.test.multiples == (1.0, 0.5, 2.0)
    assert settings.test.objectives == ("learned", "ppo_clip", "dpo", "mdpo")
    assert [(t, h) for t, h, _ in settings.test.cells(settings.cfg)] == [
        ("CartPole-v1", 1.0), ("CartPole-v1", 0.5), ("CartPole-v1", 2.0), ("Catch-bsuite", 1.0)
    ]  # fmt: skip
    base = settings.cfg.inner_config("CartPole-v1")  # lpo_train.CPU_INNER: 125 updates of 512
    assert base.total_timesteps == 64_000
    steps = [cell_config(settings, "CartPole-v1", h).total_timesteps for h in (0.5, 2.0)]
    assert steps == [62 * 512, 250 * 512]
    assert cli.resolve(settings.values).values == settings.values  # config.yaml round trip
    held = cli.resolve(
        {"held_out": ["Catch-bsuite"], "held_out_inner": {"Catch-bsuite": {"num_envs": 4}}}
    )
    assert cell_config(held, "Catch-bsuite", 1.0).num_envs == 4


@pytest.mark.parametrize("name", ["lpo_cpu.yaml", "lpo_minatar.yaml"])
def test_shipped_configs_resolve(name):
    from experiments import command

    settings = cli.resolve(command.load_yaml(Path(cli.__file__).parent / "configs" / name))
    assert settings.test.test_seeds >= 8 and settings.test.horizons == (0.5, 2.0)
    assert settings.test.objectives == ("learned", "ppo_clip", "dpo", "mdpo")
    assert settings.test.held_out
    if name == "lpo_cpu.yaml":
        assert settings.cfg.tasks == ("CartPole-v1", "Acrobot-v1")
        assert settings.cfg.es.population_size == 16
    else:
        assert settings.cfg.es.population_size == 64 and settings.cfg.es.num_generations == 800
        assert settings.cfg.inner_config("Breakout-MinAtar").total_timesteps == 10_000_000
        assert cell_config(settings, "brax/ant", 1.0).policy == "gaussian"


def test_every_objective_builds_its_meta_test_program():
    """dpo and mdpo (left out of the tiny run to save compiles) trace into a program."""
    from purejaxrl import sweep

    settings = cli.resolve({**TINY, "compare": ["ppo_clip", "dpo", "mdpo"]})
    cfg = cell_config(settings, "CartPole-v1", 1.0)
    sharding = sweep.run_sharding(jax.devices()[:1])
    keys = M.seed_keys(0, "CartPole-v1", 2)
    params = lpo.init_params(jax.random.key(0), hidden=8)
    for objective in settings.test.objectives:
        make_train = M.lpo_trainer(objective, cfg, time_aware=False, ppo_init=True)
        shapes = jax.eval_shape(M.program(make_train, sharding), params, keys)
        assert shapes["episode_return"].shape == (2, 4), objective


# --------------------------------------------------------------------------- meta.lpo_train


# The tiny run's own settings: its baseline and meta-test programs are loaded, not compiled.
LIB = cli.resolve(TINY)
LIB_CFG = LIB.cfg  # tasks=("CartPole-v1",), inner = CPU_INNER + TINY_INNER, ppo_init, hidden 8


@pytest.fixture(scope="module")
def baselines(compile_cache):
    return lpo_train.compute_baselines(LIB_CFG, jax.random.key(1))


def test_ppo_initialised_zero_drift_scores_about_one(baselines):
    """With ppo_init the drift is relu(ppo_drift + net - 1e-4): a zero net is PPO-clip's drift
    less 1e-4 where that is positive, whose gradient is PPO-clip's except where 0 < ppo_drift <
    1e-4. Trained on the keys the baseline used, it ends where PPO-clip does, so its normalised
    score (R - R_low) / (R_ppo - R_low), the fitness of one task, is ~1."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 2)  # compute_baselines'
    key_data = np.asarray(jax.random.key_data(keys))
    cfg = cell_config(LIB, "CartPole-v1", 1.0)
    make_train = M.lpo_trainer("learned", cfg, LIB_CFG.time_aware, LIB_CFG.ppo_init)
    zero = jax.tree.map(jnp.zeros_like, lpo.init_params(jax.random.key(0), hidden=8))
    final, *_ = M.finals(make_train, zero, key_data, jax.devices())  # as cli.meta_test
    b = baselines["CartPole-v1"]
    score = lpo_train.normalized_return(final.mean(), b)
    assert abs(score - 1.0) < 0.05, (final, b)


def test_fitness_vmapped_over_the_population_equals_one_by_one(baselines):
    fitness = lpo_train.make_fitness(LIB_CFG, baselines)
    init = lpo.init_params(jax.random.key(0), hidden=8)
    noise = jax.tree.map(lambda x: 0.5 * jax.random.normal(jax.random.key(2), (2, *x.shape)), init)
    population = jax.tree.map(lambda x, n: x[None] + n, init, noise)
    keys = jax.random.split(jax.random.key(3), 2)
    together = np.asarray(jax.jit(jax.vmap(fitness))(population, keys))
    single = jax.jit(fitness)
    alone = [
        float(single(jax.tree.map(lambda x, i=i: x[i], population), keys[i])) for i in range(2)
    ]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert together[0] != together[1]  # two candidates, two fitness values


def test_given_baselines_are_reused(baselines):
    seen = []
    meta_train = lpo_train.make_meta_train(
        dataclasses.replace(LIB_CFG, es=dataclasses.replace(LIB_CFG.es, num_generations=1))
    )
    with pytest.raises(ValueError, match="lack the tasks"):
        meta_train(jax.random.key(0), baselines={}, on_baselines=seen.append)
    assert seen == []


def test_ta_lpo_drift_plot_has_its_change_over_training(tmp_path):
    settings = cli.resolve({**TINY, "time_aware": True})
    params = lpo.init_params(jax.random.key(0), time_aware=True, hidden=8)
    r, a = cli.DRIFT_GRID
    d0, d1 = (cli.drift_grid(lambda x, y, p=p: lpo.drift(params, x, y, p, True)) for p in (0, 1))
    assert d0.shape == (len(a), len(r)) and (d0 >= 0).all()
    assert not np.allclose(d0, d1)  # the drift sees n/N
    one = np.argmin(np.abs(r - 1.0))
    assert np.abs(d1[:, one]).max() < 1e-3  # ~0 at r = 1 (the grid's r is within 0.5% of 1)
    assert cli.plot_drift(tmp_path, settings, params).stat().st_size > 10_000
