"""Env-only random-action rollouts: the SPS ceiling of an env on this machine.

    fn = random_rollout(env, params, num_envs=16, num_steps=128 * 98)  # jitted: key -> reward
    seconds, compile_s = time_rollout(fn)  # compile excluded; SPS = 16 * 128 * 98 / seconds

`python -m envs.benchmark [ENV_ID ...]` prints our stack (`VecEnv(EpisodeStatistics(make(id)))`)
next to raw gymnax (`vmap(env.step)`, gymnax's own auto-reset) for gymnax ids.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from envs import spaces
from envs.core import Environment
from envs.wrappers import EpisodeStatistics, VecEnv


def sample_actions(space, key: jax.Array, num_envs: int) -> jax.Array:
    """`num_envs` uniform random actions from a per-env space, in one random call."""
    if isinstance(space, spaces.Discrete):
        return jax.random.randint(key, (num_envs,), 0, space.n, dtype=jnp.int32)
    lo = jnp.where(jnp.isfinite(space.low), space.low, -1.0)
    hi = jnp.where(jnp.isfinite(space.high), space.high, 1.0)
    return jax.random.uniform(key, (num_envs, *space.shape), jnp.float32, lo, hi)


def _checksum(reward, info):
    """What the speed benchmark sums: every reward and finished length (keeps the env work live)."""
    return reward.sum() + info["episode_length"].sum()


def random_rollout(
    env: Environment,
    params,
    num_envs: int = 16,
    num_steps: int = 128 * 98,
    measure: Callable | None = None,
) -> Callable[[jax.Array], Any]:
    """A jitted `fn(key) -> total` of `num_steps` steps of `num_envs` envs, random actions.

    `env` is a single (unvectorised) auto-resetting env, e.g. from `envs.make`; it is run as
    `VecEnv(EpisodeStatistics(env), num_envs)` (the stack the training loops use) inside one
    `lax.scan`. `measure(reward [N], info) -> pytree` is summed over the steps (default: the
    rewards plus the finished episodes' lengths, a checksum for the speed benchmark).
    """
    measure = measure or _checksum
    venv = VecEnv(EpisodeStatistics(env), num_envs)
    space = env.action_space(params)

    def first_measure(key):
        _, state = venv.reset(key, params)
        _, _, reward, _, _, info = venv.step(
            key, state, sample_actions(space, key, num_envs), params
        )
        return measure(reward, info)

    shapes = jax.eval_shape(first_measure, jax.random.key(0))
    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    def rollout(key):
        key, key_reset = jax.random.split(key)
        _, state = venv.reset(key_reset, params)

        def body(carry, _):
            state, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = sample_actions(space, key_act, num_envs)
            _, state, reward, _, _, info = venv.step(key_step, state, action, params)
            total = jax.tree.map(jnp.add, total, measure(reward, info))
            return (state, key, total), None

        (_, _, total), _ = jax.lax.scan(body, (state, key, zero), None, num_steps)
        return total

    return jax.jit(rollout)


def gymnax_random_rollout(
    gymnax_env, params, num_envs: int = 16, num_steps: int = 128 * 98
) -> Callable[[jax.Array], jax.Array]:
    """The same rollout through raw gymnax: `vmap(gymnax_env.step)` (gymnax's auto-reset)."""
    from envs.gymnax_env import convert_space

    space = convert_space(gymnax_env.action_space(params))
    reset = jax.vmap(gymnax_env.reset, in_axes=(0, None))
    step = jax.vmap(gymnax_env.step, in_axes=(0, 0, 0, None))

    def rollout(key):
        key, key_reset = jax.random.split(key)
        _, state = reset(jax.random.split(key_reset, num_envs), params)

        def body(carry, _):
            state, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = sample_actions(space, key_act, num_envs)
            _, state, reward, _, _, _ = step(
                jax.random.split(key_step, num_envs), state, action, params
            )
            total = total + reward.sum()
            return (state, key, total), None

        (_, _, total), _ = jax.lax.scan(body, (state, key, jnp.zeros(())), None, num_steps)
        return total

    return jax.jit(rollout)


def time_rollout(fn, key: jax.Array | None = None, repeats: int = 3) -> tuple[float, float]:
    """`(best seconds per call, compile seconds)` of a jitted rollout; compile excluded."""
    key = jax.random.key(0) if key is None else key
    t0 = time.perf_counter()
    compiled = fn.lower(key).compile()
    compile_s = time.perf_counter() - t0
    compiled(key).block_until_ready()
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        compiled(jax.random.fold_in(key, i)).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best, compile_s


def main(argv: list[str] | None = None) -> None:
    import gymnax

    from envs.registry import make

    ids = argv or ["CartPole-v1", "Pendulum-v1"]
    num_envs, num_steps = 16, 128 * 98
    for env_id in ids:
        env, params = make(env_id)
        sec, comp = time_rollout(random_rollout(env, params, num_envs, num_steps))
        sps = num_envs * num_steps / sec
        line = f"{env_id:28s} envs stack: {sps:>12,.0f} SPS (compile {comp:.1f}s)"
        if not env_id.startswith("brax/"):
            genv, gparams = gymnax.make(env_id)
            gsec, gcomp = time_rollout(gymnax_random_rollout(genv, gparams, num_envs, num_steps))
            gsps = num_envs * num_steps / gsec
            line += f" | raw gymnax: {gsps:>12,.0f} SPS (compile {gcomp:.1f}s)"
            line += f" | ratio {gsec / sec:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
