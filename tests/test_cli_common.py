"""The bad-input cases every experiment command shares (experiments/command.py's skeleton), run
against each command's main: exit code 2, `error: ...` naming the problem, nothing written. None
compiles anything: a run folder to --resume is faked by writing its config.yaml."""

from __future__ import annotations

import importlib

import pytest
import yaml

from tests.test_lpg_experiment import TINY as LPG_TINY
from tests.test_lpo_experiment import TINY as LPO_TINY

META = {  # command -> (tiny settings, resolve, the learned object's folder)
    "lpo": (LPO_TINY, "experiments.lpo:resolve", "drift"),
    "lpg": (LPG_TINY, "experiments.lpg_settings:resolve", "rule"),
    "groove": (LPG_TINY, "experiments.lpg_settings:resolve", "rule"),
}
EVERY = [*META, "train", "sweep", "pmoe", "smoothing"]
SINGLE = {"algo": "ppo", "env": "CartPole-v1"}  # experiments.train / sweep


def main(name: str):
    return importlib.import_module(f"experiments.{name}").main


def run(name: str, argv: list[str], capsys) -> str:
    """stderr of a run that must stop on bad input (exit code 2)."""
    assert main(name)([*argv, "--no-progress"]) == 2
    return capsys.readouterr().err


def fake_run(name: str, tmp_path):
    """A run folder holding only the resolved settings of the command's tiny config."""
    values, resolve, _ = META[name]
    module, func = resolve.split(":")
    folder = tmp_path / "run"
    folder.mkdir()
    saved = getattr(importlib.import_module(module), func)(values).values
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return folder


@pytest.mark.parametrize("name", EVERY)
def test_a_bad_override_stops_before_writing(name, tmp_path, capsys):
    out, config = tmp_path / "out", tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(META[name][0] if name in META else SINGLE))
    argv = [] if name in ("pmoe", "smoothing") else ["--config", str(config)]
    err = run(name, [*argv, "tasks", "--out", str(out)], capsys)
    assert "error: " in err and "must look like key=value" in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", [*META, "train", "sweep"])
def test_resume_of_a_missing_folder_is_refused(name, tmp_path, capsys):
    err = run(name, ["--resume", str(tmp_path / "nope")], capsys)
    assert "error: --resume" in err and "no such run folder" in err, err


@pytest.mark.parametrize("name", list(META))
def test_an_unknown_key_names_its_close_match(name, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(META[name][0]))
    out = tmp_path / "out"
    err = run(name, ["--config", str(config), "test_seed=2", "--out", str(out)], capsys)
    assert "unknown key 'test_seed'; did you mean 'test_seeds'" in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", list(META))
def test_an_occupied_out_is_refused(name, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(META[name][0]))
    out = tmp_path / "taken"
    (out / META[name][2]).mkdir(parents=True)
    err = run(name, ["--config", str(config), "--out", str(out)], capsys)
    assert "already holds a run" in err and f"--resume {out}" in err, err
    assert sorted(p.name for p in out.iterdir()) == [META[name][2]]


@pytest.mark.parametrize("name", list(META))
def test_a_resume_refuses_changed_settings_and_other_flags(name, tmp_path, capsys):
    folder = fake_run(name, tmp_path)
    before = (folder / "config.yaml").read_text()
    err = run(name, ["--resume", str(folder), "es.population_size=8"], capsys)
    assert "es.population_size: the run has 2" in err or "the run has 4" in err, err
    err = run(name, ["--resume", str(folder), "--config", str(folder / "config.yaml")], capsys)
    assert "takes neither --config nor --out" in err, err
    err = run(name, ["--resume", str(folder), "--meta-test-only", str(folder)], capsys)
    assert "go apart" in err, err
    assert (folder / "config.yaml").read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("name", list(META))
def test_meta_test_only_needs_the_learned_object(name, tmp_path, capsys):
    folder = fake_run(name, tmp_path)
    err = run(name, ["--meta-test-only", str(folder)], capsys)
    artifact = META[name][2]
    assert f"no learned {artifact} ({artifact}/) there yet" in err, err
    assert f"--resume {folder}" in err
