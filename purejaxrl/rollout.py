"""The one rollout function every on-policy agent uses: `lax.scan` of act -> env.step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Transition(NamedTuple):
    """One step of a vectorised rollout; after `rollout` every field is `[T, N, ...]`.

    final_obs: the observation reached after the step, *before* auto-reset (equals the next
    observation unless the episode ended): the one to bootstrap from on truncation.
    episode_done / episode_return / episode_length: from envs' EpisodeStatistics wrapper.
    """

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    episode_done: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


ActFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def rollout(
    env,
    env_params,
    act: ActFn,
    env_state: Any,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    unroll: int = 1,
):
    """Steps a vectorised env `num_steps` times with `act(key, obs) -> (action, log_prob, env_action)`.

    Returns `(env_state, obs, transitions)` with transitions stacked `[num_steps, N, ...]`.
    """

    def step(carry, step_key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(step_key)
        action, log_prob, env_action = act(act_key, obs)
        next_obs, env_state, reward, terminated, truncated, info = env.step(
            env_key, env_state, env_action, env_params
        )
        transition = Transition(
            obs=obs,
            action=action,
            log_prob=log_prob,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=info["final_observation"],
            episode_done=info["episode_done"],
            episode_return=info["episode_return"],
            episode_length=info["episode_length"],
        )
        return (env_state, next_obs), transition

    (env_state, obs), transitions = jax.lax.scan(
        step, (env_state, obs), jax.random.split(key, num_steps), unroll=unroll
    )
    return env_state, obs, transitions
