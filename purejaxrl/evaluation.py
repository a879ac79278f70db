"""Evaluation of a trained agent: one episode per parallel env, with frozen normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs import wrappers
from purejaxrl.loop import Agent, TrainState, make_env, raw_key


def episode_horizon(env_params) -> int:
    """The env's time limit in steps (gymnax `max_steps_in_episode`, brax `episode_length`,
    multimodal `max_steps` / `horizon`)."""
    for field in ("max_steps_in_episode", "episode_length", "max_steps", "horizon"):
        value = getattr(env_params, field, None)
        if value is not None:
            return int(value)
    raise ValueError(
        f"cannot read an episode time limit from {type(env_params).__name__}; pass max_steps"
    )


def evaluate(
    agent: Agent,
    state: TrainState,
    key: jax.Array,
    num_episodes: int = 64,
    deterministic: bool = True,
    max_steps: int | None = None,
) -> jax.Array:
    """Total (unnormalised) reward of `num_episodes` episodes run in parallel -> `[num_episodes]`.

    `state` is one seed's TrainState (vmap over seeds yourself). Observation normalisation uses
    the statistics frozen in `state`; `deterministic` acts with the policy's mode, otherwise
    samples. Each env runs `max_steps` (default: the env's time limit) steps and keeps the return
    of its first finished episode; an episode unfinished by then counts its partial return.
    """
    if num_episodes <= 0:
        raise ValueError(f"num_episodes={num_episodes}: must be a positive integer")
    cfg, head, network = agent.config, agent.head, agent.network
    horizon = max_steps if max_steps is not None else episode_horizon(agent.env_params)
    obs_stats = wrappers.obs_norm_stats(state.env_state) if cfg.normalize_obs else None
    env = make_env(cfg, agent.single_env, num_episodes, train=False, obs_stats=obs_stats)
    params, env_params = state.params, state.env_params  # the params this run trained on

    def step(carry, step_key):
        env_state, obs, returns, partial, finished = carry
        act_key, env_key = jax.random.split(step_key)
        out = network.apply(params, obs, method=network.actor)
        if deterministic:
            action = head.mode(out)
        else:
            action, _ = head.sample_and_log_prob(act_key, out)
        obs, env_state, reward, _, _, info = env.step(
            env_key, env_state, head.to_env(action), env_params
        )
        partial = partial + jnp.where(finished, 0.0, reward)
        newly = info["episode_done"] & ~finished
        returns = jnp.where(newly, info["episode_return"], returns)
        return (env_state, obs, returns, partial, finished | newly), None

    reset_key, run_key = jax.random.split(raw_key(key))
    obs, env_state = env.reset(reset_key, env_params)
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    init = (env_state, obs, zeros, zeros, jnp.zeros((num_episodes,), bool))
    (_, _, returns, partial, finished), _ = jax.lax.scan(
        step, init, jax.random.split(run_key, horizon)
    )
    return jnp.where(finished, returns, partial)


def evaluate_seeds(
    agent: Agent,
    states: TrainState,
    key: jax.Array,
    num_episodes: int = 64,
    deterministic: bool = True,
) -> jax.Array:
    """`evaluate` of every seed of seed-batched `states` (leading axis S), one jitted program, keys
    `jax.random.split(key, S)` -> returns `[S, num_episodes]`."""
    num_seeds = jax.tree.leaves(states)[0].shape[0]
    run = lambda s, k: evaluate(agent, s, k, num_episodes, deterministic)  # noqa: E731
    return jax.jit(jax.vmap(run))(states, jax.random.split(key, num_seeds))
