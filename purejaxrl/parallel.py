"""Data parallel: one on-policy run whose envs are split over several devices.

`ppo.make_agent(cfg, devices=2)` (or a list of devices) builds the same program as one device,
with sharding constraints that tell XLA's SPMD partitioner (GSPMD) how to split it:

    envs       the envs' state and observations `[N, ...]` are split over the devices along the env
               axis, so each device steps and acts in its N / D envs; the rollout, the critic's
               values and GAE (per env, along time) stay on the device that holds the env;
    rollout    flattened to `[B, ...]` and gathered on every device once per update (an all-gather
               of the batch: a few floats per step);
    minibatch  the permutation is the one-device run's (same key, same global composition); each
               minibatch `[B / M, ...]` is split over the devices, each computes the loss terms and
               the gradient of its share, and XLA all-reduces every batch-level sum (the loss's
               means, the advantage normalisation's mean and std, the weight gradients);
    learner    params, optimiser state, the clip, Adam and the metrics are replicated: every device
               takes the same step.

So a run over D devices computes what the one-device run computes, up to the order of float sums
(the objective needs no change: any batch-level statistic becomes an all-reduce). With `devices`
None the agent is built exactly as before (no constraint is traced). Random draws: with
`jax_threefry_partitionable` (jax's default) a sharded draw equals the one-device draw.

A vmap over seeds on top (`jax.jit(jax.vmap(agent.train))(keys)`) keeps the env axis split and
runs the seeds side by side on every device.

Cost: every minibatch step waits on collectives (with PPO's objective three all-reduces in a row:
the advantage normalisation's mean, its variance, then the gradients and the loss's statistics,
combined by XLA into one), so data parallel pays off when a minibatch's forward and backward pass
is long next to a collective. On a 2-core CPU with forced host devices it is not (measured
for the reference PPO config, 16 envs x 128 steps, 64x64: one all-reduce costs ~60 us on this
machine, a one-device minibatch step ~100-190 us, and two devices ran at 0.2-0.6x the one-device
speed); large dots already use both cores on one device. Meant for accelerators (brax with
thousands of envs on several GPUs).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "envs"
KEY = jax.ShapeDtypeStruct((2,), np.uint32)  # a raw key's shape, for shape-only traces


def resolve_devices(devices=None) -> list:
    """`devices`: None (all of `jax.devices()`), an int n (the first n) or a sequence of distinct
    devices among them (data parallel runs, sweeps, ES populations)."""
    available = jax.devices()
    hint = (
        f"{len(available)} device(s) exist ({available[0].platform}); on CPU, "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N (set before jax starts) makes N"
    )
    if devices is None:
        return list(available)
    if isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: must be between 1 and {len(available)}; {hint}")
        return list(available[:devices])
    try:
        devices = list(devices)
    except TypeError:
        raise TypeError(f"devices must be an int or a list of devices, got {devices!r}") from None
    if not devices:
        raise ValueError("devices is empty")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices={devices}: a device is listed twice")
    missing = [d for d in devices if d not in available]
    if missing:
        raise ValueError(f"devices={devices}: {missing} not among jax.devices(); {hint}")
    return devices


class EnvSplit:
    """The sharding constraints of a run whose `num_envs` envs are split over `devices`."""

    def __init__(self, devices, num_envs: int, where: str = "make_agent"):
        self.devices = resolve_devices(devices)
        count = len(self.devices)
        if num_envs % count:
            raise ValueError(
                f"{where}: num_envs={num_envs} must be divisible by the number of devices "
                f"({count}): each device steps num_envs / devices envs"
            )
        self.mesh = Mesh(np.asarray(self.devices), (AXIS,))

    def split(self, tree, axis: int = 0):
        """Every leaf of `tree` split over the devices along `axis`."""
        spec = PartitionSpec(*([None] * axis), AXIS)
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, spec))

    def replicate(self, tree):
        """Every leaf of `tree` whole on every device."""
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec()))

    def state(self, state, env_axis):
        """A TrainState with its env-axis leaves split (`env_axis`: bools over `state.env_state`,
        see `env_leaves`), `obs` split and everything else replicated."""
        env_state = jax.tree.map(
            lambda x, split: self.split(x) if split else self.replicate(x),
            state.env_state,
            env_axis,
        )
        rest = {
            name: self.replicate(getattr(state, name))
            for name in ("params", "opt_state", "env_params", "rng")
        }
        return state.replace(env_state=env_state, obs=self.split(state.obs), **rest)

    def wrap(self, init, update, env_axis):
        """`init` and `update` whose states carry this layout (a constraint on entry and exit, so
        the scan over updates keeps the envs where they are)."""

        def split_init(key, env_params):
            return self.state(init(key, env_params), env_axis)

        def split_update(state):
            state, metrics = update(self.state(state, env_axis))
            return self.state(state, env_axis), self.replicate(metrics)

        return split_init, split_update


def env_leaves(make_env, env_params, num_envs: int):
    """Bools over the vectorised env's state: True for the leaves with a leading env axis.

    `make_env(n)` builds the training env on n envs; the leaves whose leading size follows n
    (found from the shapes of two resets, nothing runs) are per env; the others (running
    normalisation statistics) are shared by all envs."""

    def shapes(n):
        env = make_env(n)
        return jax.eval_shape(lambda k: env.reset(k, env_params)[1], KEY)

    one, two = shapes(num_envs), shapes(2 * num_envs)
    return jax.tree.map(
        lambda a, b: a.ndim > 0 and a.shape[0] == num_envs and b.shape[0] == 2 * num_envs, one, two
    )
