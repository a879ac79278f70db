"""purejaxrl.sweep: batches (grid, random), bad input, and sweep rows equal separate runs.

One tiny PPO CartPole config (10 updates of 4 envs x 8 steps); each sweep program compiles once
per module (fixtures). The multi-device checks run in a child process that forces 4 host devices.
"""

import dataclasses
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxrl import losses, objectives, ppo, sweep
from tests import tiny
from tests.helpers import run_with_host_devices

CFG = tiny.ppo_config(10, num_steps=8)
RTOL, ATOL = 1e-5, 1e-6  # a swept value is an input of the program, not a folded constant


@jax.jit
def separate(learning_rate, ent_coef, key, env_params):
    """One run alone (not vmapped), compiled once for all the values given as arguments."""
    cfg = dataclasses.replace(CFG, learning_rate=learning_rate, ent_coef=ent_coef)
    return ppo.make_agent(cfg).train(key, env_params).metrics


def default_params():
    return jax.tree.map(jnp.asarray, ppo.make_agent(CFG).env_params)


# --------------------------------------------------------------------------- batches


def test_grid_enumerates_every_combination_times_seeds():
    space = {"learning_rate": [1e-4, 3e-4, 1e-3], "ent_coef": [0.0, 0.01]}
    b = sweep.grid(CFG, space, seeds=4, seed=7)
    assert b.num_runs == 3 * 2 * 4
    combos = [(lr, ec) for lr in space["learning_rate"] for ec in space["ent_coef"]]
    for r, row in enumerate(b.runs):
        assert row["run"] == r and row["config"] == r // 4 and row["seed"] == r % 4
        assert (row["learning_rate"], row["ent_coef"]) == pytest.approx(combos[r // 4])
    assert b.values["learning_rate"].dtype == np.float64  # as given; float32 in the program
    assert b.config.learning_rate.dtype == jnp.float32
    assert b.config.learning_rate.shape == (24,) and b.config.gamma == CFG.gamma
    want = jax.random.split(jax.random.key(7), 4)
    np.testing.assert_array_equal(
        jax.random.key_data(b.keys), jax.random.key_data(want)[np.tile(np.arange(4), 6)]
    )


def test_random_draws_within_bounds_and_from_lists():
    space = {
        "learning_rate": sweep.log_uniform(1e-5, 1e-2),
        "gamma": sweep.uniform(0.9, 0.999),
        "clip_eps": [0.1, 0.2, 0.3],
    }
    b = sweep.random(CFG, space, num=200, seeds=2, key=jax.random.key(3))
    assert b.num_runs == 400
    lr = b.values["learning_rate"][::2]
    assert np.all((lr >= 1e-5) & (lr <= 1e-2))
    # log-uniform: about half the draws below the geometric midpoint sqrt(1e-5 * 1e-2)
    assert 0.35 < np.mean(lr < np.sqrt(1e-7)) < 0.65
    assert np.all((b.values["gamma"] >= 0.9) & (b.values["gamma"] <= 0.999))
    assert set(np.round(b.values["clip_eps"], 6)) == {0.1, 0.2, 0.3}
    np.testing.assert_array_equal(b.values["gamma"][::2], b.values["gamma"][1::2])  # seeds share
    again = sweep.random(CFG, space, num=200, seeds=2, key=jax.random.key(3))
    np.testing.assert_array_equal(again.values["learning_rate"], b.values["learning_rate"])
    other = sweep.random(CFG, space, num=200, seeds=2, key=4)
    assert not np.array_equal(other.values["learning_rate"], b.values["learning_rate"])


@pytest.mark.parametrize(
    "space, kwargs, match",
    [
        ({"learnig_rate": [1e-3]}, {}, r"no field 'learnig_rate'; did you mean \['learning_rate'"),
        ({"env_params.lenght": [0.5]}, {}, r"no env param 'lenght'; did you mean"),
        ({"learning_rate": []}, {}, "empty list"),
        ({"learning_rate": ["fast"]}, {}, "must be a number"),
        ({"learning_rate": 3e-4}, {}, "must be a list"),
        ({"learning_rate": [-1.0]}, {}, r"learning_rate=-1.0: must lie in \(0, inf\)"),
        ({"num_envs": [4.5]}, {}, "num_envs: expected int, got float 4.5"),
        ({"hidden_sizes": [[16, 0]]}, {}, "tuple of positive integers"),
        ({"env_kwargs": [{}]}, {}, "cannot be swept"),
        ({"learning_rate": [1e-3]}, {"seeds": 0}, "seeds=0"),
    ],
)
def test_grid_refuses_bad_input(space, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweep.grid(CFG, space, **{"seeds": 2, **kwargs})


def test_grid_reads_an_integral_float_as_the_int_it_sets():
    """YAML reads 1e5 as a float; for an int field it is that int (4.5 is refused, above)."""
    batch = sweep.grid(CFG, {"num_envs": [4.0, 8]}, seeds=1)
    assert [type(v) for v in batch.values["num_envs"]] == [int, int]
    assert list(batch.values["num_envs"]) == [4, 8]


@pytest.mark.parametrize(
    "space, match",
    [
        ({"learning_rate": sweep.log_uniform(0.0, 1e-3)}, "log-uniform bounds must be positive"),
        ({"learning_rate": sweep.log_uniform(-1e-3, 1e-3)}, "must be positive"),
        ({"gamma": sweep.uniform(0.99, 0.9)}, "low <= high"),
        ({"num_envs": sweep.uniform(2, 8)}, "static"),
    ],
)
def test_random_refuses_bad_ranges(space, match):
    with pytest.raises(ValueError, match=match):
        sweep.random(CFG, space, num=4, seeds=1, key=0)


def test_grid_refuses_ranges_and_run_refuses_bad_chunk_and_devices():
    with pytest.raises(ValueError, match="grid takes lists"):
        sweep.grid(CFG, {"gamma": sweep.uniform(0.9, 0.99)}, seeds=1)
    b = sweep.grid(CFG, {"learning_rate": [1e-3]}, seeds=1)
    with pytest.raises(ValueError, match="chunk=0"):
        sweep.run(b, ppo.make_agent, chunk=0, progress=False)
    with pytest.raises(
        ValueError, match=r"devices=9: must be between 1 and \d+; \d+ device\(s\) exist"
    ):
        sweep.run(b, ppo.make_agent, devices=9, progress=False)


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def lr_sweep():
    b = sweep.grid(CFG, {"learning_rate": [3e-4, 3e-3]}, seeds=2)
    return b, sweep.run(b, ppo.make_agent, progress=False)


def test_sweep_rows_equal_separate_runs(lr_sweep):
    b, res = lr_sweep
    assert res.programs == 1 and len(res.runs) == 4
    assert res.metrics["episode_return"].shape == (4, 10)
    keys = b.keys
    for r, row in enumerate(res.runs):
        want = separate(row["learning_rate"], CFG.ent_coef, keys[r], default_params())
        for name in ("episode_return", "loss", "grad_norm", "env_steps"):
            np.testing.assert_allclose(
                res.metrics[name][r], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{r}:{name}"
            )
        assert row["diverged"] is False
    assert res.env_steps == 4 * 320 and res.sps > 0 and res.compile_s > 0
    # the two learning rates train differently, the two seeds of one configuration too
    assert not np.allclose(res.metrics["loss"][0], res.metrics["loss"][2])
    assert not np.allclose(res.metrics["loss"][0], res.metrics["loss"][1])


def test_chunks_compile_once_and_equal_one_call(lr_sweep, monkeypatch):
    b, res = lr_sweep
    calls = []
    chunked = sweep.run(
        b, ppo.make_agent, chunk=3, progress=lambda done, total: calls.append((done, total))
    )
    for name, value in res.metrics.items():
        np.testing.assert_allclose(chunked.metrics[name], value, rtol=RTOL, atol=ATOL)
    assert calls[-1] == (40, 40)  # 4 runs x 10 updates
    assert chunked.programs == 1


def test_resume_skips_done_chunks_and_reports_new_ones(lr_sweep):
    b, res = lr_sweep
    seen = {}
    stored = {0: {k: v[:3] for k, v in res.metrics.items()}}
    again = sweep.run(
        b, ppo.make_agent, chunk=3, progress=False, done=stored,
        on_chunk=lambda i, c, m: seen.update({i: c.index.tolist()}),
    )  # fmt: skip
    assert seen == {1: [3]}
    for name, value in res.metrics.items():
        np.testing.assert_allclose(again.metrics[name], value, rtol=RTOL, atol=ATOL)


def alone_with(cfg):
    """A single run of `cfg` with ent_coef as an argument: one compile for all its values."""

    @jax.jit
    def alone(ent_coef, key):
        return ppo.make_agent(dataclasses.replace(cfg, ent_coef=ent_coef)).train(key).metrics

    return alone


def test_static_fields_make_one_program_per_value():
    notes = []
    cfg = dataclasses.replace(CFG, total_timesteps=160)
    b = sweep.grid(cfg, {"hidden_sizes": [[8], [16, 16]], "ent_coef": [0.0, 0.05]}, seeds=1)
    res = sweep.run(b, ppo.make_agent, progress=False, log=notes.append, keep_state=True)
    assert res.programs == 2 and "2 programs" in notes[0]
    assert [row["hidden_sizes"] for row in res.runs] == [[8], [8], [16, 16], [16, 16]]
    for hidden in ([8], [16, 16]):
        alone = alone_with(dataclasses.replace(cfg, hidden_sizes=tuple(hidden)))
        for r, row in enumerate(res.runs):
            if row["hidden_sizes"] != hidden:
                continue
            want = alone(row["ent_coef"], b.keys[r])
            np.testing.assert_allclose(res.metrics["loss"][r], want["loss"], rtol=RTOL, atol=ATOL)
    assert isinstance(res.final_state, list) and len(res.final_state) == 2
    assert res.final_state[0].update_step.tolist() == [5, 5]


def test_env_params_are_swept_as_inputs():
    b = sweep.grid(CFG, {"env_params.length": [0.25, 1.0]}, seeds=1)
    res = sweep.run(b, ppo.make_agent, progress=False)
    for r, length in enumerate([0.25, 1.0]):
        params = dataclasses.replace(default_params(), length=jnp.float32(length))
        want = separate(CFG.learning_rate, CFG.ent_coef, b.keys[r], params)
        np.testing.assert_allclose(
            res.metrics["episode_length"][r], want["episode_length"], rtol=RTOL, atol=ATOL
        )
    assert not np.allclose(res.metrics["loss"][0], res.metrics["loss"][1])


def nan_above(threshold):
    """make_agent whose policy loss is NaN when ent_coef > threshold (a traced comparison)."""

    def make_agent(cfg, **kwargs):
        clip = losses.ppo_clip(cfg.clip_eps)

        def loss(log_ratio, advantages, progress, extras):
            value, aux = clip(log_ratio, advantages, progress, extras)
            return jnp.where(cfg.ent_coef > threshold, jnp.nan, value), aux

        return ppo.make_agent(cfg, objectives.actor_critic(cfg, loss), **kwargs)

    return make_agent


def test_a_run_that_meets_nan_is_marked_and_the_sweep_goes_on():
    b = sweep.grid(CFG, {"ent_coef": [0.0, 0.5]}, seeds=1)
    with pytest.warns(UserWarning, match="1 of 2 runs met non-finite values"):
        res = sweep.run(b, nan_above(0.1), progress=False)
    assert [row["diverged"] for row in res.runs] == [False, True]
    assert np.all(res.metrics["nan_skipped"][1] > 0) and np.all(res.metrics["nan_skipped"][0] == 0)


# --------------------------------------------------------------------------- devices

CHILD = textwrap.dedent(
    """
    import json, dataclasses, jax, numpy as np
    from purejaxrl import ppo, sweep
    from tests.test_sweep import CFG
    assert jax.device_count() == 4, jax.devices()
    b = sweep.grid(CFG, {"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3], "gamma": [0.9, 0.99]},
                   seeds=1)
    sharded = sweep.run(b, ppo.make_agent, progress=False)
    one = sweep.run(b, ppo.make_agent, devices=1, progress=False)
    chunked = sweep.run(b, ppo.make_agent, devices=4, chunk=3, progress=False)
    print(json.dumps({
        "runs": len(sharded.runs),
        "sharded": sharded.metrics["loss"].tolist(),
        "one": one.metrics["loss"].tolist(),
        "chunked": chunked.metrics["loss"].tolist(),
        "returns": [sharded.metrics["episode_return"].tolist(),
                    one.metrics["episode_return"].tolist()],
    }))
    """
)


@pytest.mark.slow  # a fresh 4-device process, ~60 s
def test_sharded_over_four_devices_equals_one_device_and_pads_uneven_runs():
    got = run_with_host_devices(CHILD, 4, timeout=900)
    assert got["runs"] == 10  # 10 runs over 4 devices: padded to 12, padding dropped
    sharded, one, chunked = (np.asarray(got[k]) for k in ("sharded", "one", "chunked"))
    assert sharded.shape == one.shape == (10, 10)
    # Equal over the first updates; later, float rounding of a differently partitioned program
    # may grow as training amplifies it.
    np.testing.assert_allclose(sharded[:, :5], one[:, :5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked[:, :5], one[:, :5], rtol=1e-5, atol=1e-6)
    returns_sharded, returns_one = (np.asarray(x) for x in got["returns"])
    np.testing.assert_allclose(returns_sharded[:, :5], returns_one[:, :5], rtol=1e-5, atol=1e-5)


def test_a_thousand_run_sweep_keeps_a_few_megabytes_of_metrics():
    """Metrics are per-update scalars: 1,000 runs of the reference PPO config (200k steps, 97
    updates) give `[1000, 97]` arrays, a few MB in all (shapes only: nothing is compiled)."""
    cfg = ppo.PPOConfig(env="CartPole-v1", total_timesteps=200_000, num_envs=16, num_steps=128)
    batch = sweep.grid(cfg, {"learning_rate": list(np.geomspace(1e-4, 1e-2, 250))}, seeds=4)
    assert batch.num_runs == 1000

    def metrics(learning_rate, key):
        agent = ppo.make_agent(dataclasses.replace(cfg, learning_rate=learning_rate))
        return agent.train(key).metrics

    lrs = batch.values["learning_rate"].astype(np.float32)
    shapes = jax.eval_shape(jax.vmap(metrics), lrs, batch.keys)
    assert {s.shape for s in shapes.values()} == {(1000, 97)}
    megabytes = sum(np.prod(s.shape) * s.dtype.itemsize for s in shapes.values()) / 2**20
    assert megabytes < 8, megabytes
