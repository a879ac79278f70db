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
from meta import objectives as meta_objectives
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


def test_learned_objectives_are_registered_by_one_explicit_call_not_by_imports():
    """Importing meta's modules leaves purejaxrl's registry alone; meta.objectives.register()
    adds exactly its LEARNED table (a fresh process: this one may have registered them)."""
    script = (
        "import meta.lpo, meta.lpg, purejaxrl.objectives as o\n"
        "assert sorted(o.REGISTRY) == ['policy_gradient', 'ppo_clip'], sorted(o.REGISTRY)\n"
        "from meta import objectives\n"
        "objectives.register(); objectives.register()\n"
        "print(sorted(o.REGISTRY))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == str(
        ["dpo", "lpg", "lpo", "mdpo", "policy_gradient", "ppo_clip"]
    )


def test_registered_objectives_build_from_specs(tmp_path):
    meta_objectives.register()
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


def test_lpo_config_holds_a_typed_inner_ppo_config():
    """A mapping of PPOConfig fields (as YAML gives) becomes the same PPOConfig as one given typed;
    bad fields and types are refused naming the field."""
    task_inner = {"CartPole-v1": {"num_steps": 16}}
    cfg = lpo.LPOConfig(tasks=("CartPole-v1",), inner={"num_envs": 4, "hidden_sizes": [8]},
                        task_inner=task_inner)  # fmt: skip
    typed = ppo.PPOConfig(num_envs=4, hidden_sizes=(8,))
    assert cfg.inner == typed and cfg == lpo.LPOConfig(
        tasks=("CartPole-v1",), inner=typed, task_inner=task_inner
    )
    inner = cfg.inner_config("CartPole-v1")
    assert (inner.env, inner.num_envs, inner.num_steps, inner.hidden_sizes) == (
        "CartPole-v1", 4, 16, (8,)
    )  # fmt: skip
    assert cfg.inner_config("Acrobot-v1", {"num_envs": 2}).num_envs == 2
    for kwargs, match in [
        (dict(inner={"num_env": 4}), r"LPOConfig.inner: PPOConfig has no field 'num_env'"),
        (dict(inner=3), r"LPOConfig.inner: expected PPOConfig \| Mapping, got int 3"),
        (dict(inner={"num_envs": 0}), r"PPOConfig.num_envs=0: must be a positive integer"),
        (dict(hidden=0), r"LPOConfig.hidden=0: must be a positive integer"),
        (dict(baseline_seeds=1.5), r"LPOConfig.baseline_seeds: expected int, got float"),
        (dict(es={"population_size": 4}), r"LPOConfig.es: expected ESConfig, got dict"),
    ]:
        with pytest.raises(ValueError, match=match):
            lpo.LPOConfig(tasks=("CartPole-v1",), **kwargs)


# --------------------------------------------------------------------------- meta-training scores

U = 20  # updates of the hand-made inner runs below (final window: ceil(5% of 20) = the last one)


def hand_run(final=0.1, first_finish=5, first=-0.3):
    """Metrics `[U]` of an inner run: the placeholder 0 until update `first_finish` (None: no
    episode ever finishes), `first` there, then rising linearly to `final` at the last update."""
    if first_finish is None:
        return {"episode_return": jnp.zeros(U), "episodes_finished": jnp.zeros(U, jnp.int32)}
    ret = np.zeros(U, np.float32)
    ret[first_finish:] = np.linspace(first, final, U - first_finish)
    finished = (np.arange(U) >= first_finish).astype(np.int32)
    return {"episode_return": jnp.asarray(ret), "episodes_finished": jnp.asarray(finished)}


def fake_inner_runs(monkeypatch, runs):
    """lpo_train.inner_train returns the hand-made metrics `runs[env id]` (no training)."""
    from types import SimpleNamespace

    from meta import lpo_train

    monkeypatch.setattr(
        lpo_train,
        "inner_train",
        lambda cfg, loss: lambda key: SimpleNamespace(metrics=runs[cfg.env]),
    )


def test_lpo_fitness_normalisation_on_a_task_with_returns_below_one(monkeypatch):
    """Catch-like returns: R = 0.1 with R_ppo = 0.4 and R_low = -0.2 scores (0.1 + 0.2) / 0.6 =
    0.5 (the old max(R_ppo - R_low, 1.0) floor made it 0.3); on a second task with returns in
    the hundreds, R = 300 with R_ppo = 500, R_low = 20 scores 280 / 480; fitness is their mean."""
    from meta import lpo_train

    fake_inner_runs(
        monkeypatch,
        {"Catch-bsuite": hand_run(final=0.1), "CartPole-v1": hand_run(final=300.0, first=20.0)},
    )
    cfg = lpo.LPOConfig(tasks=("Catch-bsuite", "CartPole-v1"), hidden=8)
    baselines = {"Catch-bsuite": {"ppo": 0.4, "low": -0.2}, "CartPole-v1": {"ppo": 500, "low": 20}}
    assert lpo_train.normalized_return(0.1, baselines["Catch-bsuite"]) == pytest.approx(0.5)
    params = lpo.init_params(jax.random.key(0), hidden=8)
    fitness = lpo_train.make_fitness(cfg, baselines)(params, jax.random.key(1))
    assert float(fitness) == pytest.approx((0.5 + 280 / 480) / 2, rel=1e-6)
    raw = lpo_train.make_fitness(cfg, None)(params, jax.random.key(1))  # normalize=False
    assert float(raw) == pytest.approx((0.1 + 300.0) / 2, rel=1e-6)


def test_lpo_fitness_of_a_run_without_a_finished_episode_is_nan_not_zero(monkeypatch):
    """The placeholder 0 of a run that finished no episode is never read: the task's return,
    and so the candidate's fitness over all tasks, is NaN (before: (0 - R_low) / ..., here 0.2
    / 0.6 = 1/3, a middling score for a run that measured nothing)."""
    from meta import lpo_train

    fake_inner_runs(
        monkeypatch, {"Catch-bsuite": hand_run(first_finish=None), "CartPole-v1": hand_run()}
    )
    cfg = lpo.LPOConfig(tasks=("Catch-bsuite", "CartPole-v1"), hidden=8)
    baselines = {
        "Catch-bsuite": {"ppo": 0.4, "low": -0.2},
        "CartPole-v1": {"ppo": 0.4, "low": -0.2},
    }
    params = lpo.init_params(jax.random.key(0), hidden=8)
    for b in (baselines, None):
        assert np.isnan(float(lpo_train.make_fitness(cfg, b)(params, jax.random.key(1))))
    # finished episodes only in the last update: that update's return is the final return
    late = hand_run(first_finish=U - 1, first=0.1)
    fake_inner_runs(monkeypatch, {"Catch-bsuite": late, "CartPole-v1": late})
    fitness = lpo_train.make_fitness(cfg, baselines)(params, jax.random.key(1))
    assert float(fitness) == pytest.approx(0.5, rel=1e-6)


def test_no_finished_episode_gives_nan_fitness_ranked_worst_and_counted_by_es():
    """A real inner PPO run on Pendulum-v1 (episodes of 200 steps, no termination) of 2 updates
    x 8 steps per env finishes no episode, so its fitness is NaN: es.evolve keeps NaN in
    `fitness`, counts it in `nonfinite`, gives it the worst finite fitness of its generation
    for the update and never makes it best. Half the population (the members of each mirrored
    pair with a larger first weight) runs it; the other half has a finite fitness."""
    import envs
    from meta import es, lpo_train

    inner = {"total_timesteps": 32, "num_envs": 2, "num_steps": 8, "update_epochs": 1,
             "num_minibatches": 1, "hidden_sizes": [8], "policy": "gaussian"}  # fmt: skip
    cfg = lpo.LPOConfig(tasks=("Pendulum-v1",), inner=inner, hidden=8, normalize=False)
    c = cfg.inner_config("Pendulum-v1")
    steps_per_env = c.total_timesteps // c.num_envs
    assert steps_per_env < envs.make("Pendulum-v1")[1].max_steps_in_episode  # guaranteed
    run_fitness = lpo_train.make_fitness(cfg, None)
    init = lpo.init_params(jax.random.key(0), hidden=8)
    w0 = float(init["params"]["Dense_0"]["kernel"][0, 0])

    def fitness(params, key):
        w = params["params"]["Dense_0"]["kernel"][0, 0]
        return jnp.where(w > w0, run_fitness(params, key), -1.0 - (w - w0) ** 2)

    es_cfg = es.ESConfig(population_size=4, sigma=0.1, num_generations=1)
    out = es.evolve(fitness, init, es_cfg, jax.random.key(2), progress=False)
    nan = np.isnan(out.fitness[0])
    np.testing.assert_array_equal(nan[:2], ~nan[2:])  # one member of each mirrored pair
    assert not np.any(out.fitness[0] == 0.0)  # never the placeholder 0
    np.testing.assert_array_equal(out.nonfinite, [2])
    clean, bad = es.replace_nonfinite(jnp.asarray(out.fitness[0]))
    assert int(bad) == 2
    np.testing.assert_array_equal(np.asarray(clean)[nan], np.min(out.fitness[0][~nan]))
    assert out.best_fitness == np.max(out.fitness[0][~nan])  # a NaN candidate is never best


def test_baselines_must_show_ppo_beating_r_low():
    from meta import lpo_train

    tasks = ("Catch-bsuite",)
    lpo_train.check_baselines(tasks, {"Catch-bsuite": {"ppo": 0.4, "low": -0.2}})
    lpo_train.check_baselines(tasks, {"Catch-bsuite": {"ppo": 1e7 + 20.0, "low": 1e7}})
    refused = [
        (0.4, 0.4),  # PPO no better than R_low
        (-0.3, -0.2),  # PPO worse
        (5e-7, 0.0),  # within the margin 1e-6 * max(1, |R_ppo|, |R_low|) = 1e-6
        (1e7 + 5.0, 1e7),  # within the relative margin 1e-6 * 1e7 = 10
        (float("nan"), 0.0),
        (0.4, float("-inf")),
    ]
    for ppo_return, low in refused:
        with pytest.raises(ValueError, match=r"task Catch-bsuite: .*R_ppo=.* R_low="):
            lpo_train.check_baselines(tasks, {"Catch-bsuite": {"ppo": ppo_return, "low": low}})
    with pytest.raises(ValueError, match=r"R_ppo=0\.4 does not beat .* R_low=0\.4"):
        lpo_train.check_baselines(tasks, {"Catch-bsuite": {"ppo": 0.4, "low": 0.4}})
    with pytest.raises(ValueError, match=r"lack the tasks \['Catch-bsuite'\]"):
        lpo_train.check_baselines(tasks, {})
    cfg = lpo.LPOConfig(tasks=tasks, hidden=8)
    with pytest.raises(ValueError, match="task Catch-bsuite"):  # make_fitness checks them too
        lpo_train.make_fitness(cfg, {"Catch-bsuite": {"ppo": 0.1, "low": 0.2}})


class _ESCompiled(Exception):
    """Raised by the stubbed ES compile: the config was accepted and the ES was reached."""


def test_meta_train_refuses_given_baselines_before_the_es_compiles(monkeypatch):
    from meta import lpo_train

    def evolve(*args, **kwargs):
        raise _ESCompiled

    monkeypatch.setattr(lpo_train.es, "evolve", evolve)
    cfg = lpo.LPOConfig(tasks=("Catch-bsuite", "CartPole-v1"), hidden=8)
    seen = []
    bad = {"Catch-bsuite": {"ppo": 0.4, "low": -0.2}, "CartPole-v1": {"ppo": 20.0, "low": 22.5}}
    with pytest.raises(ValueError, match=r"task CartPole-v1: .*R_ppo=20 .*R_low=22\.5"):
        lpo.make_meta_train(cfg)(jax.random.key(0), baselines=bad, on_baselines=seen.append)
    assert seen == []
    good = {**bad, "CartPole-v1": {"ppo": 200.0, "low": 22.5}}
    with pytest.raises(_ESCompiled):  # accepted: on to the ES
        lpo.make_meta_train(cfg)(jax.random.key(0), baselines=good, on_baselines=seen.append)
    assert seen == [good]


def fake_ppo(monkeypatch, run_of_seed):
    """ppo.make_agent(cfg).train(key).metrics = run_of_seed(key) (no training)."""
    from types import SimpleNamespace

    from meta import lpo_train

    agent = SimpleNamespace(train=lambda key: SimpleNamespace(metrics=run_of_seed(key)))
    monkeypatch.setattr(lpo_train.ppo, "make_agent", lambda cfg, *a: agent)


def test_baselines_from_finished_episodes_only_and_refused_without_one(monkeypatch):
    from meta import lpo_train

    cfg = lpo.LPOConfig(tasks=("Catch-bsuite",), hidden=8, baseline_seeds=3)
    key = jax.random.key(4)
    seed_keys = jax.random.key_data(jax.random.split(jax.random.fold_in(key, 0), 3))
    late, early = (
        hand_run(0.9, first_finish=8, first=-0.5),
        hand_run(0.6, first_finish=2, first=0.1),
    )

    def run_of_seed(k):  # seed 1 finishes its first episodes later, at another return
        is_one = jnp.all(jax.random.key_data(k) == seed_keys[1])
        return jax.tree.map(lambda a, b: jnp.where(is_one, a, b), late, early)

    fake_ppo(monkeypatch, run_of_seed)
    b = lpo_train.compute_baselines(cfg, key)["Catch-bsuite"]
    assert b["low"] == pytest.approx((0.1 + 0.1 - 0.5) / 3, rel=1e-6)  # never the placeholder 0
    assert b["ppo"] == pytest.approx((0.6 + 0.6 + 0.9) / 3, rel=1e-6)
    np.testing.assert_allclose(
        lpo_train.first_returns(np.stack([late["episode_return"], np.zeros(U)]),
                                np.stack([late["episodes_finished"], np.zeros(U)])),
        [-0.5, np.nan], rtol=1e-6,
    )  # fmt: skip

    def one_seed_never_finishes(k):
        never = jnp.all(jax.random.key_data(k) == seed_keys[2])
        return jax.tree.map(lambda a, b: jnp.where(never, a, b), hand_run(first_finish=None), early)

    fake_ppo(monkeypatch, one_seed_never_finishes)
    with pytest.raises(ValueError, match=r"task Catch-bsuite: PPO-clip seed\(s\) \[2\] of 3"):
        lpo_train.compute_baselines(cfg, key)
    fake_ppo(monkeypatch, lambda k: hand_run(0.1, first=0.3))  # PPO ends below R_low
    with pytest.raises(ValueError, match=r"task Catch-bsuite: .*R_ppo=0\.1 does not beat"):
        lpo_train.compute_baselines(cfg, key)


def test_registry_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"did you mean \['dpo'"):
        objectives.build({"name": "dpp"}, CFG)
    with pytest.raises(ValueError, match=r"did you mean \['mdpo'"):
        objectives.build({"name": "mdp0"}, CFG)
    with pytest.raises(ValueError, match="'lpo': needs either path=.* or shipped=.*lpo-cpu"):
        objectives.build({"name": "lpo"}, CFG)
    with pytest.raises(ValueError, match="needs either"):
        objectives.build({"name": "lpo", "path": str(tmp_path), "shipped": "lpo-cpu"}, CFG)
    with pytest.raises(ValueError, match="no shipped drift 'lpo-cp'; did you mean 'lpo-cpu'"):
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
