"""Data parallel (purejaxrl/parallel.py): one run split over devices equals the one-device run.

The two-device runs happen in a child process that forces 2 host devices (XLA_FLAGS must be set
before jax starts its backend); meanwhile this process runs the same configs on one device (the
`devices=None` program, the same in either process). Tiny PPO configs (A2C runs the same loop).
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.flatten_util
import numpy as np
import pytest

from purejaxrl import a2c, losses, objectives, ppo
from tests import tiny

PPO = tiny.ppo_config(6, anneal_lr=True)
# Pendulum with the running normalisers: env-state leaves that are not per env (kept whole).
PENDULUM = dataclasses.replace(PPO, env="Pendulum-v1", normalize_obs=True, normalize_reward=True)


class TimeOrdered(objectives.ActorCritic):
    """PPO's objective on minibatches of whole env columns in time order."""

    time_ordered = True


# cartpole: PPO's flat minibatches under a vmap over 2 seeds; pendulum: minibatches of whole env
# columns (time-ordered) and the running normalisers (env-state leaves that are not per env).
CASES = {
    "cartpole": (lambda **kw: ppo.make_agent(PPO, **kw), 2),
    "pendulum": (lambda **kw: ppo.make_agent(PENDULUM, TimeOrdered(losses.ppo_clip(0.2)), **kw), 0),
}


def results(devices) -> dict:
    """Each case's metrics and final raveled params, and where its observations live."""
    got = {}
    for name, (make, seeds) in CASES.items():
        train, key = make(devices=devices).train, jax.random.key(0)
        if seeds:
            train, key = jax.vmap(train), jax.random.split(key, seeds)
        out = jax.jit(train)(key)
        got[name] = {k: np.asarray(v).tolist() for k, v in out.metrics.items()}
        ravel = lambda params: jax.flatten_util.ravel_pytree(params)[0]
        flat = jax.vmap(ravel)(out.state.params) if seeds else ravel(out.state.params)
        got[name]["params"] = np.asarray(flat).tolist()
        sharding = out.state.obs.sharding
        got[name]["split"] = [list(getattr(sharding, "spec", ())), len(sharding.device_set)]
    return got


CHILD = textwrap.dedent(
    """
    import dataclasses, json, jax
    from purejaxrl import ppo
    from tests.test_data_parallel import PPO, results
    assert jax.device_count() == 2, jax.devices()
    got = results(devices=2)
    errors = {}
    for name, cfg, devices in (
        ("indivisible", dataclasses.replace(PPO, num_envs=3, num_minibatches=1), 2),
        ("too_many", PPO, 3),
    ):
        try:
            ppo.make_agent(cfg, devices=devices)
        except ValueError as e:
            errors[name] = str(e)
    got["errors"] = errors
    print(json.dumps(got))
    """
)


@pytest.fixture(scope="module")
def runs():
    """(one device here, two devices in the child), run side by side."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        one = results(devices=None)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    return one, json.loads(out.decode().strip().splitlines()[-1])


# The child process and the one-device runs compile ~10 programs: ~100 s on this 2-core machine,
# so these run with the slow checks.
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_devices_equal_one_device(runs, case):
    one, two = runs[0][case], runs[1][case]
    seeds = CASES[case][1]
    assert two.pop("split") == [[None, "envs"] if seeds else ["envs"], 2]  # the envs are split
    assert one.pop("split")[1] == 1
    assert set(one) == set(two)
    for name in one:
        a, b = np.asarray(one[name]), np.asarray(two[name])
        assert a.shape == b.shape, name
        if name == "params":  # after every update
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{case}: params")
        else:
            # Equal up to the order of float sums (atol: the policy loss is near 0 at the first
            # epoch); over the first 4 updates, as later training may amplify that rounding.
            first = (slice(None), slice(4)) if seeds else slice(4)
            np.testing.assert_allclose(
                b[first], a[first], rtol=1e-5, atol=1e-6, err_msg=f"{case}:{name}"
            )


@pytest.mark.slow
def test_bad_device_counts_are_refused(runs):
    errors = runs[1]["errors"]
    assert "num_envs=3 must be divisible by the number of devices (2)" in errors["indivisible"]
    assert "devices=3: must be between 1 and 2" in errors["too_many"]


def test_bad_devices_are_refused_on_one_device():
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"devices={n + 1}: must be between 1 and {n}"):
        ppo.make_agent(PPO, devices=n + 1)
    with pytest.raises(ValueError, match="devices=0"):
        a2c.make_agent(a2c.A2CConfig(num_envs=4), devices=0)
    with pytest.raises(ValueError, match="devices is empty"):
        ppo.make_agent(PPO, devices=[])
    with pytest.raises(ValueError, match="not among jax.devices"):
        ppo.make_agent(PPO, devices=["cpu:7"])
    with pytest.raises(ValueError, match="listed twice"):
        ppo.make_agent(PPO, devices=jax.devices()[:1] * 2)
    with pytest.raises(TypeError, match="devices must be an int or a list"):
        ppo.make_agent(PPO, devices=2.5)
