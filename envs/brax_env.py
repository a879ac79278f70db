"""Raw (non-auto-resetting) adapter from a brax environment to the `envs.core` API.

In brax 0.14 an env's `State.done` is pure *termination* (e.g. hopper unhealthy, the pendulum
falling over); the time limit only appears when brax's own `EpisodeWrapper` is applied, which we
do not use. `BraxEnv` keeps its own step counter: `truncated = time >= params.episode_length`,
`terminated = brax_state.done`. Both can be true on the same step. Brax steps are deterministic, so
the step key is unused. `info` is empty (brax per-step metrics stay in
`state.brax_state.metrics`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import spaces
from envs.core import Environment

BRAX_BACKENDS = ("generalized", "positional", "spring", "mjx")


@struct.dataclass
class BraxEnvParams:
    """`episode_length`: the time limit (truncation) in env steps."""

    episode_length: int = 1000


@struct.dataclass
class BraxEnvState:
    brax_state: object
    time: jax.Array


class BraxEnv(Environment):
    """A brax `Env` behind the `envs.core.Environment` API, without auto-reset."""

    def __init__(self, brax_env, env_id: str, episode_length: int = 1000):
        self._env = brax_env
        self._name = env_id
        self._default_params = BraxEnvParams(episode_length=episode_length)
        obs = jax.eval_shape(brax_env.reset, jax.random.key(0)).obs
        if not hasattr(obs, "shape"):
            raise NotImplementedError(f"{env_id}: dict observations are not supported")
        self._obs_shape = tuple(int(d) for d in obs.shape)
        self._action_size = int(brax_env.action_size)

    @property
    def brax_env(self):
        return self._env

    @property
    def backend(self) -> str:
        return self._env.backend

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_params(self) -> BraxEnvParams:
        return self._default_params

    def reset(self, key: jax.Array, params: BraxEnvParams):
        s = self._env.reset(key)
        s = s.replace(
            reward=jnp.asarray(s.reward, jnp.float32), done=jnp.asarray(s.done, jnp.float32)
        )
        return s.obs, BraxEnvState(brax_state=s, time=jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: BraxEnvState, action: jax.Array, params: BraxEnvParams):
        del key  # brax dynamics are deterministic
        s = self._env.step(state.brax_state, action)
        reward = jnp.asarray(s.reward, jnp.float32)
        done = jnp.asarray(s.done, jnp.float32)
        s = s.replace(reward=reward, done=done)
        time = state.time + 1
        terminated = done > 0.5
        truncated = time >= params.episode_length
        return s.obs, BraxEnvState(brax_state=s, time=time), reward, terminated, truncated, {}

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, self._obs_shape)

    def action_space(self, params) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self._action_size,))

    def __repr__(self) -> str:
        return f"BraxEnv({self._name!r}, backend={self.backend!r})"
