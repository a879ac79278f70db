"""experiments/smoothing.py: train, certify and attack smoothed PPO into a complete run folder."""

from __future__ import annotations

import json
import math

import pytest

from experiments import smoothing

TINY = [
    "--envs", "CartPole-v1", "--sigmas", "0.2", "--budgets", "0.2", "1.0", "--steps", "8192",
    "--certify-episodes", "200", "--attack-episodes", "4", "--noise-draws", "4",
    "--attack-steps", "5", "--no-progress", "hidden_sizes=[16,16]", "update_epochs=2",
]  # fmt: skip


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


# A whole CLI run (train, certify, attack; ~30 s CPU): with the slow checks. Its parts
# are checked in test_attack.py, test_certify.py and test_smoothing_wrappers.py.
@pytest.mark.slow
def test_smoothing_experiment_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    assert smoothing.main(TINY + ["--out", str(out)]) == 0
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "certificate_CartPole-v1.png",
        "thresholds_CartPole-v1.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {"final_return_mean", "final_return_per_seed", "sps", "compile_s", "wall_s"} <= set(
        summary
    )
    entry = summary["results"]["CartPole-v1"]
    assert entry["horizon"] == 200 and entry["low"] == 0.0
    r = entry["smoothed"]["sigma=0.2"]
    undefended = entry["undefended"]
    for run in (r, undefended):
        assert (out / run["train"]["checkpoint"]).is_dir()
        assert len(run["attacked_return_mean"]) == 2 and _finite(run["attacked_return_mean"])
        assert run["attacked_episodes"] == 4
        assert run["attack_s_per_episode"] > 0 and run["train"]["sps"] > 0
        assert 0 <= run["clean_return_mean"] <= 200
        lo, hi = run["clean_return_mean_ci"]
        assert lo <= run["clean_return_mean"] <= hi
        lo, hi = run["clean_return_iqm_ci"]
        assert 0 <= lo <= run["clean_return_iqm"] <= hi <= 200
        assert len(run["attacked_return_iqm"]) == len(run["attacked_return_iqm_ci"]) == 2
        for (lo, hi), mean in zip(
            run["attacked_return_mean_ci"], run["attacked_return_mean"], strict=True
        ):
            assert lo <= mean <= hi
    assert r["clean_episodes"] == 200 and r["certify_s"] > 0
    bounds = r["certified_expected_reward"]
    assert len(bounds) == 2 and _finite(bounds)
    # The clean lower confidence bound lies below the clean mean; bounds fall with the budget.
    assert r["certified_clean_lower_bound"] <= r["clean_return_mean"]
    assert 0 <= bounds[1] <= bounds[0] <= r["certified_clean_lower_bound"]
    assert len(r["threshold_bound"]) == 3 and len(r["threshold_bound"][0]) == 200
    # Each budget's mean spent l2 norm stays within it.
    for b, spent in zip(summary["budgets"], r["attacked_spent_budget_mean"], strict=True):
        assert spent <= b + 1e-5
    check = summary["certificate_check"]
    assert check["bound_below_attacked_everywhere"] == (not check["violations"])
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "env,sigma,update,env_steps,episode_return,episode_length"


@pytest.mark.slow  # ~60 s
def test_pendulum_reports_the_strongest_attack_setting(tmp_path):
    """Continuous actions: every (objective, step size) setting is run and kept; the reported
    attacked return per budget is the lowest setting mean."""
    out = tmp_path / "pend"
    argv = [
        "--envs", "Pendulum-v1", "--sigmas", "0.2", "--budgets", "0.5", "--steps", "4096",
        "--certify-episodes", "200", "--attack-episodes", "3", "--noise-draws", "2",
        "--attack-steps", "3", "--lookahead", "2", "--no-progress", "--out", str(out),
        "hidden_sizes=[16,16]", "update_epochs=1", "num_minibatches=4",
    ]  # fmt: skip
    assert smoothing.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attack"]["Pendulum-v1"]["objectives"] == ["lookahead", "log_prob"]
    for r in (summary["results"]["Pendulum-v1"]["smoothed"]["sigma=0.2"],
              summary["results"]["Pendulum-v1"]["undefended"]):  # fmt: skip
        settings = r["attack_settings"]
        assert [(p["objective"], p["step_size"]) for p in settings] == [
            (objective, step) for objective in ("lookahead", "log_prob")
            for step in (0.005, 0.01, 0.02)
        ]  # fmt: skip
        lowest = min(p["attacked_return_mean"][0] for p in settings)
        assert r["attacked_return_mean"] == [lowest] and _finite(r["attacked_return_mean"])
        assert r["attacked_spent_budget_mean"][0] <= 0.5 + 1e-5
        assert r["attacked_strongest_setting"][0]["objective"] in ("lookahead", "log_prob")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sigmas", "0"], "--sigmas: 0: must be > 0"),
        (["--sigmas", "-0.2"], "--sigmas: -0.2: must be > 0"),
        (["--sigmas", "0.2", "0.2"], "repeated value"),
        (["--budgets", "-0.1"], ">= 0"),
        (["--budgets", "nan"], "--budgets: nan"),
        (["--alpha", "1.5"], "(0, 1)"),
        (["--alpha", "0"], "(0, 1)"),
        (["--attack-episodes", "0"], "--attack-episodes"),
        (["--certify-episodes", "10"], "need at least 12"),
        (["--envs", "Acrobot-v1"], "invalid choice"),
        (["--method", "wilson"], "invalid choice"),
        (["obs_noise_sigma=0.3"], "set by the experiment"),
        (["learning_rat=0.1"], "unknown key"),
        (["--objectives", "lookahead"], "lookahead"),
        (["--objectives", "worst"], "invalid choice"),
        (["--step-sizes", "0"], "--step-sizes"),
        (["--lookahead", "0"], "--lookahead"),
    ],
)
def test_smoothing_experiment_rejects_bad_input(tmp_path, capsys, extra, message):
    """argparse refuses a bad choice or number, plan() the rest: exit 2, nothing written."""
    out = tmp_path / "bad"
    argv = ["--envs", "CartPole-v1", "--no-progress", "--out", str(out), *extra]
    try:
        code = smoothing.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err
    assert not out.exists()
