"""The run skeleton (experiments/command.py): a new command written on it in under 60 lines gets
bad-input errors (exit 2, nothing written), atomic outputs and resume."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import command as C


# ---- a whole experiment command on the skeleton (the "Welford mean of a random walk" command)
def _plan(args) -> C.Plan:
    run_dir, values, mode = C.start(args, lambda v: "walk", may_change=("steps",))
    steps, seed = values.get("steps", 10), values.get("seed", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    done = len(C.read_json(run_dir / "summary.json").get("walk", []))
    plan = C.Plan(run_dir, mode, not args.no_progress)
    plan.values, plan.steps, plan.seed, plan.start = values, steps, seed, done
    if done >= steps:
        plan.done = f"{run_dir} is complete ({done} of {steps} steps)"
    return plan


def _execute(plan) -> dict:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    C.write_yaml(plan.run_dir / "config.yaml", plan.values)
    walk = list(C.read_json(plan.run_dir / "summary.json").get("walk", []))
    rng = np.random.default_rng(plan.seed)
    steps = rng.normal(size=plan.steps).cumsum()  # the same walk on every resume
    for i in range(plan.start, plan.steps):
        walk.append(float(steps[i]))
        if i == plan.interrupt_at:
            raise KeyboardInterrupt
        C.write_json(plan.run_dir / "summary.json", {"walk": walk, "mean": float(np.mean(walk))})
    C.write_csv(plan.run_dir / "walk.csv", ["step", "x"], enumerate(walk))
    return C.read_json(plan.run_dir / "summary.json")


WALK = C.Command(
    prog="tests.walk",
    description="a random walk, resumable",
    plan=lambda args: _with_interrupt(_plan(args), args),
    execute=_execute,
    report=lambda plan, summary: f"mean {summary['mean']:.3f}",
    arguments=lambda p: p.add_argument("--interrupt-at", type=int, default=-1),
)


def _with_interrupt(plan, args):
    plan.interrupt_at = args.interrupt_at
    return plan


# ---- end of the command (44 lines)


def test_a_new_command_gets_bad_input_errors_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert C.run(WALK, ["steps=0", "--out", str(out)]) == C.EXIT_BAD_INPUT
    assert "steps=0: must be a positive integer" in capsys.readouterr().err
    assert C.run(WALK, ["steps", "--out", str(out)]) == C.EXIT_BAD_INPUT
    assert "must look like key=value" in capsys.readouterr().err
    assert C.run(WALK, ["--config", str(tmp_path / "nope.yaml")]) == C.EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert C.run(WALK, ["--resume", str(tmp_path / "nope")]) == C.EXIT_BAD_INPUT
    assert "no such run folder" in capsys.readouterr().err
    assert not out.exists()


def test_a_new_command_resumes_exactly_and_refuses_changed_settings(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert C.run(WALK, ["steps=8", "seed=3", "--out", str(full)]) == C.EXIT_OK
    expected = C.read_json(full / "summary.json")
    assert len(expected["walk"]) == 8
    assert C.run(WALK, ["steps=8", "seed=3", "--out", str(full)]) == C.EXIT_BAD_INPUT
    assert "already holds a run" in capsys.readouterr().err

    code = C.run(WALK, ["steps=8", "seed=3", "--out", str(part), "--interrupt-at", "5"])
    assert code == C.EXIT_INTERRUPTED
    assert f"python -m tests.walk --resume {part}" in capsys.readouterr().err
    assert len(C.read_json(part / "summary.json")["walk"]) == 5  # the last complete write
    assert C.run(WALK, ["--resume", str(part), "seed=4"]) == C.EXIT_BAD_INPUT
    assert "seed: the run has 3, given 4" in capsys.readouterr().err
    assert C.run(WALK, ["--resume", str(part)]) == C.EXIT_OK
    assert C.read_json(part / "summary.json") == expected
    assert (part / "walk.csv").read_text() == (full / "walk.csv").read_text()
    assert C.run(WALK, ["--resume", str(part)]) == C.EXIT_OK
    assert "is complete (8 of 8 steps)" in capsys.readouterr().err
    assert C.run(WALK, ["--resume", str(part), "steps=10"]) == C.EXIT_OK  # steps may change
    assert len(C.read_json(part / "summary.json")["walk"]) == 10


def test_outputs_are_atomic_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = C.write_json(tmp_path / "summary.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert C.read_json(path) == {"a": 1.5, "b": [0, 1]}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(C.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        C.write_json(path, {"a": 2})
    assert C.read_json(path) == {"a": 1.5, "b": [0, 1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.json.tmp", "summary.json"]


def test_overrides_nest_on_dots_and_merge_key_by_key():
    over = C.parse_overrides(["es.sigma=0.1", "es.lr=1e-2", "tasks=[a, b]", "name=x y"])
    assert over == {"es": {"sigma": 0.1, "lr": 1e-2}, "tasks": ["a", "b"], "name": "x y"}
    merged = C.merge({"es": {"sigma": 0.03, "pop": 8}, "seed": 1}, over)
    assert merged["es"] == {"sigma": 0.1, "pop": 8, "lr": 1e-2} and merged["seed"] == 1
    with pytest.raises(ValueError, match="a.b: the run has 1, given 2"):
        C.check_unchanged({"a": {"b": 1}}, {"a": {"b": 2}}, may_change=("c",))
    C.check_unchanged({"a": {"b": 1}}, {"a": {"b": 2}}, may_change=("a",))
