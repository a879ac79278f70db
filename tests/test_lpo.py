"""meta.lpo: LPO / TA-LPO drift functions, closed-form DPO and on-policy MDPO as per-sample policy
losses; saving and loading a drift; the "lpo", "dpo" and "mdpo" objectives by config and CLI."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from meta import lpo
from purejaxrl import losses, objectives, ppo

ROOT = Path(__file__).resolve().parents[1]
CFG = ppo.PPOConfig(env="CartPole-v1", num_envs=4, num_steps=8, hidden_sizes=(8, 8))


def samples(n=256, seed=0, scale=0.4):
    """log-ratios and advantages `[n]` with some r = 1 exactly."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    log_ratio = scale * jax.random.normal(k1, (n,))
    log_ratio = log_ratio.at[:8].set(0.0)
    return log_ratio, jax.random.normal(k2, (n,))


def zero_params(time_aware=False):
    return jax.tree.map(jnp.zeros_like, lpo.init_params(jax.random.key(0), time_aware))


# --------------------------------------------------------------------------- features and drift


def test_features_on_hand_computed_cases():
    log_ratio = jnp.array([0.0, np.log(2.0), np.log(0.5)])
    adv = jnp.array([3.0, -2.0, 0.5])
    x = np.asarray(lpo.features(log_ratio, adv))
    l2, lh = np.log(2.0), np.log(0.5)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [l2, l2**2, -1.0, 1.0, -2 * l2, -2 * l2**2, 2.0, -2.0],
            [lh, lh**2, 0.5, 0.25, 0.5 * lh, 0.5 * lh**2, 0.25, 0.125],
        ]
    )
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)
    ta = np.asarray(lpo.features(log_ratio, adv, progress=0.25))
    assert ta.shape == (3, 16)
    np.testing.assert_allclose(ta, np.concatenate([expected, 0.25 * expected], 1), rtol=1e-6)
    per_sample = np.asarray(lpo.features(log_ratio, adv, progress=jnp.array([0.0, 0.5, 1.0])))
    np.testing.assert_allclose(per_sample[:, 8:], expected * [[0.0], [0.5], [1.0]], rtol=1e-6)


@pytest.mark.parametrize("time_aware", [False, True])
@pytest.mark.parametrize("ppo_init", [False, True])
def test_drift_is_nonnegative_and_zero_at_ratio_one_for_random_params(time_aware, ppo_init):
    log_ratio, adv = samples()
    progress = 0.7 if time_aware else None
    for seed in range(3):
        params = lpo.init_params(jax.random.key(seed), time_aware)
        params = jax.tree.map(lambda w: 3.0 * w, params)  # large outputs: relu matters
        d = np.asarray(lpo.drift(params, log_ratio, adv, progress, ppo_init=ppo_init))
        assert d.shape == log_ratio.shape
        assert np.all(d >= 0.0)
        assert np.all(d[:8] == 0.0)  # r = 1
        assert np.any(d[8:] > 0.0)  # not trivially zero


def test_params_and_features_must_agree():
    log_ratio, adv = samples(8)
    with pytest.raises(ValueError, match="ta-lpo-16"):
        lpo.drift(lpo.init_params(jax.random.key(0), True), log_ratio, adv)  # no progress
    with pytest.raises(ValueError, match="time_aware=True"):
        lpo.learned_loss(lpo.init_params(jax.random.key(0)), time_aware=True)


def test_ppo_initialised_drift_with_zero_net_is_ppo_clips_drift():
    log_ratio, adv = samples(512)
    r = np.exp(np.asarray(log_ratio))
    ppo_drift = np.maximum((r - np.clip(r, 0.8, 1.2)) * np.asarray(adv), 0.0)
    assert np.mean(ppo_drift > 0) > 0.2  # the clipped region is exercised
    for time_aware in (False, True):
        progress = 0.5 if time_aware else None
        d = lpo.drift(zero_params(time_aware), log_ratio, adv, progress, ppo_init=True)
        np.testing.assert_allclose(d, ppo_drift, atol=1.01e-4)  # the 1e-4 offset
        assert np.all(np.asarray(lpo.drift(zero_params(time_aware), log_ratio, adv, progress)) == 0)


def test_ppo_initialised_loss_with_zero_net_has_ppo_clips_gradient():
    log_ratio, adv = samples(512, seed=1)
    r = np.exp(np.asarray(log_ratio))
    gap = (r - np.clip(r, 0.8, 1.2)) * np.asarray(adv)
    assert not np.any((gap > 0) & (gap < 1e-4))  # where the 1e-4 offset would change the slope
    extras = {}
    for time_aware in (False, True):
        learned = lpo.learned_loss(zero_params(time_aware), time_aware, ppo_init=True)
        g_learned = jax.grad(lambda lr, f=learned: f(lr, adv, 0.3, extras)[0])(log_ratio)
        g_ppo = jax.grad(lambda lr: losses.ppo_clip(0.2)(lr, adv, 0.3, extras)[0])(log_ratio)
        np.testing.assert_allclose(g_learned, g_ppo, rtol=1e-6, atol=1e-9)
        assert np.count_nonzero(g_ppo) < log_ratio.size  # clipped samples have zero gradient
        value = learned(log_ratio, adv, 0.3, extras)[0]
        np.testing.assert_allclose(
            value, losses.ppo_clip(0.2)(log_ratio, adv, 0.3, extras)[0], atol=2e-4
        )


def test_ta_lpo_can_express_a_schedule():
    """Hand-set TA-LPO params: one hidden unit reads (n/N) (1 - r)^2, so the drift at a fixed
    (r, A) grows with training progress (a trust region that tightens over training), while an LPO
    net cannot depend on n/N at all."""
    params = zero_params(time_aware=True)
    w1 = params["params"]["Dense_0"]["kernel"].at[8 + 3, 0].set(10.0)  # (n/N) * (1 - r)^2
    w2 = params["params"]["Dense_1"]["kernel"].at[0, 0].set(1.0)
    params = {"params": {"Dense_0": {"kernel": w1}, "Dense_1": {"kernel": w2}}}
    log_ratio, adv = jnp.log(jnp.array([1.3, 0.7])), jnp.array([1.0, -1.0])
    progress = np.linspace(0.0, 1.0, 6)
    d = np.stack([np.asarray(lpo.drift(params, log_ratio, adv, p)) for p in progress])
    np.testing.assert_array_equal(d[0], 0.0)  # no drift at the start
    assert np.all(np.diff(d, axis=0) > 0)  # strictly growing with n/N
    np.testing.assert_allclose(d[-1], np.tanh(10 * 0.09) - 1e-4, rtol=1e-5)
    # ... and the loss reads progress from the loop when time-aware
    loss = lpo.learned_loss(params, time_aware=True)
    assert loss(log_ratio, adv, 1.0, {})[0] > loss(log_ratio, adv, 0.0, {})[0]


# --------------------------------------------------------------------------- DPO and MDPO


def test_dpo_matches_the_closed_form():
    log_ratio, adv = samples(512, seed=2, scale=0.6)
    lr, a = np.asarray(log_ratio, np.float64), np.asarray(adv, np.float64)
    r = np.exp(lr)
    for alpha, beta in ((2.0, 0.6), (0.5, 1.5)):
        pos = (r - 1) * a
        neg = lr * a
        d = np.where(
            a >= 0,
            np.maximum(pos - alpha * np.tanh(pos / alpha), 0),
            np.maximum(neg - beta * np.tanh(neg / beta), 0),
        )
        value, aux = lpo.dpo(alpha, beta)(log_ratio, adv, 0.5, {})
        np.testing.assert_allclose(value, -np.mean(r * a - d), rtol=1e-5)
        np.testing.assert_allclose(aux["drift"], d.mean(), rtol=1e-5)
        np.testing.assert_allclose(lpo.dpo_drift(log_ratio, adv, alpha, beta), d, atol=1e-6)
    assert np.all(np.asarray(lpo.dpo_drift(log_ratio, adv))[:8] == 0)


def test_mdpo_matches_its_formula_and_floors_the_step_size():
    log_ratio, adv = samples(512, seed=3)
    lr, a = np.asarray(log_ratio, np.float64), np.asarray(adv, np.float64)
    r = np.exp(lr)
    kl = r * lr - r + 1  # per-sample estimator of KL(pi || pi_old) on samples from pi_old
    assert np.all(kl >= 0) and np.all(kl[:8] == 0)
    loss = lpo.mdpo()  # step_size 1, floor 0.05, annealed
    for progress, t in ((0.0, 1.0), (0.5, 0.5), (0.9, 0.1), (0.99, 0.05), (1.0, 0.05)):
        value, aux = loss(log_ratio, adv, progress, {})
        np.testing.assert_allclose(value, -np.mean(r * a - kl / t), rtol=1e-5)
        np.testing.assert_allclose(aux["mdpo_step_size"], t, rtol=1e-6)
        np.testing.assert_allclose(aux["kl"], kl.mean(), rtol=1e-5)
    grad = jax.grad(lambda x: loss(x, adv, 1.0, {})[0])(log_ratio)
    assert np.all(np.isfinite(grad))
    fixed, _ = lpo.mdpo(step_size=0.3, anneal=False)(log_ratio, adv, 0.9, {})
    np.testing.assert_allclose(fixed, -np.mean(r * a - kl / 0.3), rtol=1e-5)
    # the drift's slope is zero at r = 1: near the old policy MDPO's gradient is the plain r A one
    g0 = jax.grad(lambda x: loss(x, adv[:8], 0.2, {})[0])(log_ratio[:8])
    np.testing.assert_allclose(g0, -adv[:8] / 8, rtol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: lpo.dpo(alpha=0.0), "alpha"),
        (lambda: lpo.dpo(beta=-1.0), "beta"),
        (lambda: lpo.mdpo(min_step_size=0.0), "min_step_size"),
        (lambda: lpo.mdpo(step_size=float("nan")), "step_size"),
    ],
)
def test_bad_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_losses_take_traced_hyperparameters():
    log_ratio, adv = samples(16)
    values = jax.vmap(lambda alpha: lpo.dpo(alpha)(log_ratio, adv, 0.0, {})[0])(
        jnp.array([1.0, 2.0])
    )
    assert values.shape == (2,)
    values = jax.vmap(lambda t: lpo.mdpo(t)(log_ratio, adv, 0.5, {})[0])(jnp.array([0.5, 1.0]))
    assert values.shape == (2,)
    population = jax.vmap(lambda k: lpo.init_params(k, True))(
        jax.random.split(jax.random.key(0), 3)
    )
    values = jax.vmap(lambda p: lpo.learned_loss(p, True)(log_ratio, adv, 0.5, {})[0])(population)
    assert values.shape == (3,) and np.all(np.isfinite(values))


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("time_aware", [False, True])
def test_save_load_round_trip(tmp_path, time_aware):
    params = lpo.init_params(jax.random.key(4), time_aware)
    trained_on = {"envs": ["CartPole-v1"], "generations": 3, "population": 8}
    path = lpo.save(tmp_path / "drift", params, {"ppo_init": True, "trained_on": trained_on})
    loaded, info = lpo.load(path, time_aware=time_aware)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert info["features"] == ("ta-lpo-16" if time_aware else "lpo-8")
    assert info["time_aware"] is time_aware and info["ppo_init"] is True
    assert info["trained_on"] == trained_on
    assert lpo.load(path)[1] == info  # time_aware=None: whatever was saved
    # saving again replaces the saved drift
    lpo.save(path, jax.tree.map(lambda w: w + 1.0, params), {"trained_on": {"note": "v2"}})
    again, info2 = lpo.load(path)
    np.testing.assert_allclose(
        again["params"]["Dense_1"]["kernel"], params["params"]["Dense_1"]["kernel"] + 1
    )
    assert info2["trained_on"] == {"note": "v2"} and info2["ppo_init"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift"]  # no temporary folders left


def test_loading_with_other_features_names_them(tmp_path):
    path = lpo.save(tmp_path / "lpo8", lpo.init_params(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"lpo-8 features \(time_aware=False\).*ta-lpo-16"):
        lpo.load(path, time_aware=True)
    path = lpo.save(tmp_path / "ta", lpo.init_params(jax.random.key(0), True))
    with pytest.raises(ValueError, match="ta-lpo-16"):
        lpo.load(path, time_aware=False)


def test_missing_and_corrupt_drifts_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no saved drift"):
        lpo.load(tmp_path / "nothing")
    path = lpo.save(tmp_path / "drift", lpo.init_params(jax.random.key(0)))
    data = max(
        (f for f in (path / "params").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
    )
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt saved drift.*fails its checksum"):
        lpo.load(path)
    data.unlink()
    with pytest.raises(ValueError, match="corrupt saved drift.*is missing"):
        lpo.load(path)
    (path / lpo.MANIFEST).unlink()
    with pytest.raises(ValueError, match="holds no saved drift"):
        lpo.load(path)
    other = tmp_path / "notes"
    other.mkdir()
    with pytest.raises(ValueError, match="not a saved drift; not overwriting"):
        lpo.save(other, lpo.init_params(jax.random.key(0)))
    with pytest.raises(ValueError, match="time_aware"):
        lpo.save(tmp_path / "x", lpo.init_params(jax.random.key(0)), {"time_aware": True})


# --------------------------------------------------------------------------- registry and CLI


def test_registered_objectives_build_from_specs(tmp_path):
    log_ratio, adv = samples(64)
    dpo = objectives.build({"name": "dpo"}, CFG)
    assert isinstance(dpo, objectives.ActorCritic) and dpo.gamma == CFG.gamma
    np.testing.assert_allclose(
        dpo.policy_loss(log_ratio, adv, 0.0, {})[0], lpo.dpo()(log_ratio, adv, 0.0, {})[0]
    )
    custom = objectives.build({"name": "dpo", "alpha": 1.0, "beta": 0.3}, CFG)
    np.testing.assert_allclose(
        custom.policy_loss(log_ratio, adv, 0.0, {})[0],
        lpo.dpo(1.0, 0.3)(log_ratio, adv, 0.0, {})[0],
    )
    mdpo = objectives.build({"name": "mdpo", "min_step_size": 0.2}, CFG)
    np.testing.assert_allclose(
        mdpo.policy_loss(log_ratio, adv, 0.9, {})[0],
        lpo.mdpo(min_step_size=0.2)(log_ratio, adv, 0.9, {})[0],
    )
    params = lpo.init_params(jax.random.key(5), time_aware=True)
    path = lpo.save(tmp_path / "ta", params, {"ppo_init": True})
    learned = objectives.build({"name": "lpo", "path": str(path)}, CFG)
    np.testing.assert_allclose(
        learned.policy_loss(log_ratio, adv, 0.4, {})[0],
        lpo.learned_loss(params, True, True)(log_ratio, adv, 0.4, {})[0],
    )


def test_shipped_drifts_load_and_build():
    """The drifts in meta/learned pass their manifests, have the features their names say, and
    are zero at r = 1; `objective: {name: lpo, shipped: ...}` builds the same loss."""
    assert {"lpo-cpu", "ta-lpo-cpu"} <= set(lpo.shipped())
    log_ratio, adv = samples(64)
    for name, time_aware in (("lpo-cpu", False), ("ta-lpo-cpu", True)):
        params, info = lpo.load(lpo.shipped_path(name), time_aware=time_aware)
        assert info["trained_on"]["tasks"] == ["CartPole-v1", "Acrobot-v1"]
        assert info["trained_on"]["generations"] == 100
        progress = 0.3 if time_aware else None
        at_one = lpo.drift(params, jnp.zeros(8), jnp.linspace(-2, 2, 8), progress)
        np.testing.assert_array_equal(at_one, 0.0)
        built = objectives.build({"name": "lpo", "shipped": name}, CFG)
        np.testing.assert_allclose(
            built.policy_loss(log_ratio, adv, 0.3, {})[0],
            lpo.learned_loss(params, time_aware, info["ppo_init"])(log_ratio, adv, 0.3, {})[0],
        )


def test_lpo_config_refuses_unknown_tasks_with_a_hint():
    with pytest.raises(
        ValueError, match="LPOConfig.tasks: unknown env id 'CartPol-v1'. Did you mean: CartPole-v1"
    ):
        lpo.LPOConfig(tasks=("CartPol-v1",))


def test_registry_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"did you mean \['dpo'"):
        objectives.build({"name": "dpp"}, CFG)
    with pytest.raises(ValueError, match=r"did you mean \['mdpo'"):
        objectives.build({"name": "mdp0"}, CFG)
    with pytest.raises(ValueError, match="'lpo': needs either path=.* or shipped=.*lpo-cpu"):
        objectives.build({"name": "lpo"}, CFG)
    with pytest.raises(ValueError, match="needs either"):
        objectives.build({"name": "lpo", "path": str(tmp_path), "shipped": "lpo-cpu"}, CFG)
    with pytest.raises(ValueError, match="no shipped drift 'lpo-cp' \\(did you mean 'lpo-cpu'"):
        objectives.build({"name": "lpo", "shipped": "lpo-cp"}, CFG)
    with pytest.raises(ValueError, match="'lpo': no saved drift"):
        objectives.build({"name": "lpo", "path": str(tmp_path / "missing")}, CFG)
    with pytest.raises(ValueError, match="gamma"):
        objectives.build({"name": "dpo", "gamma": 0.5}, CFG)  # not an option of dpo
    with pytest.raises(ValueError, match="alpha"):
        objectives.build({"name": "dpo", "alpha": -1.0}, CFG)


def test_runs_registers_the_objectives_without_slowing_train_startup():
    """build_spec imports meta.lpo (so the CLI knows "dpo"); importing experiments.train does not."""
    code = (
        "import sys; from experiments import runs, train; assert 'meta.lpo' not in sys.modules; "
        "runs.build_spec({'algo': 'ppo', 'env': 'CartPole-v1', 'objective': {'name': 'mdpo'}}); "
        "from purejaxrl import objectives; print(sorted({'lpo', 'dpo', 'mdpo', 'lpg'} & set(objectives.REGISTRY)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "['dpo', 'lpg', 'lpo', 'mdpo']", proc.stderr


@pytest.mark.slow  # a CLI subprocess, ~45 s
def test_train_cli_runs_dpo(tmp_path):
    """A tiny `python -m experiments.train ... objective.name=dpo` (one compile)."""
    spec = {
        "algo": "ppo",
        "env": "CartPole-v1",
        "total_timesteps": 3 * 4 * 8,
        "num_envs": 4,
        "num_steps": 8,
        "update_epochs": 1,
        "num_minibatches": 2,
        "hidden_sizes": [8, 8],
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train", "--config", str(config), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--no-progress", "objective.name=dpo", "objective.alpha=1.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["objective"] == {"name": "dpo", "alpha": 1.5}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["final_return_per_seed"]) == 1
    assert "drift" in (out / "metrics.csv").read_text().splitlines()[0]
    # experiments.evaluate rebuilds the agent from config.yaml: it knows "dpo" too
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", str(out), "--episodes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "evaluation.json").is_file()
