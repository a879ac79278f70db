"""Raw (non-auto-resetting) adapter from a gymnax environment to the `envs.core` API.

`GymnaxEnv.step` calls gymnax's `step_env` and `is_truncated` directly, so it does *not* pay for
the reset that gymnax's own `Environment.step` computes on every step; `envs.wrappers.AutoReset`
adds exactly one reset on top. Observations are float32 (cast only where gymnax returns another
dtype), rewards float32 scalars, `terminated` / `truncated` bool scalars. The gymnax `info` is
passed through without its `"discount"` entry (that is `1 - terminated`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces as gspaces

from envs import spaces
from envs.core import Environment, map_chain


def convert_space(space) -> spaces.Discrete | spaces.Box:
    """A gymnax `Discrete` / `Box` as an `envs.spaces` object (bounds become numpy arrays)."""
    if isinstance(space, gspaces.Discrete):
        return spaces.Discrete(int(space.n))
    if isinstance(space, gspaces.Box):
        shape = tuple(int(d) for d in space.shape)
        return spaces.Box(np.asarray(space.low), np.asarray(space.high), shape)
    raise NotImplementedError(f"cannot convert gymnax space {space!r}")


def _to_bool(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if x.dtype == jnp.bool_ else x.astype(jnp.bool_)


def _to_f32(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if x.dtype == jnp.float32 and not x.weak_type else x.astype(jnp.float32)


class GymnaxEnv(Environment):
    """A gymnax env behind the `envs.core.Environment` API, without auto-reset.

    After a step that ends an episode the returned state is terminal; stepping it again is
    undefined (wrap in `AutoReset`, as `envs.make` does).
    """

    def __init__(self, env, env_id: str, default_params: Any = None):
        self._env = env
        self._name = env_id
        self._default_params = env.default_params if default_params is None else default_params

    @property
    def gymnax_env(self):
        return self._env

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_params(self):
        return self._default_params

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
        obs, state = self._env.reset_env(key, params)
        return _to_f32(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any):
        obs, state, reward, terminated, info = self._env.step_env(key, state, action, params)
        truncated = self._env.is_truncated(state, params)
        info = {k: v for k, v in info.items() if k != "discount"}
        return _to_f32(obs), state, _to_f32(reward), _to_bool(terminated), _to_bool(truncated), info

    def _space(self, fn, params):
        # Spaces are computed eagerly even when called inside jit (gymnax builds them with jnp).
        with jax.ensure_compile_time_eval():
            try:
                return convert_space(fn(params))
            except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
                # Traced params (e.g. vmapped env parameters): spaces are static, use the defaults.
                return convert_space(fn(self._default_params))

    def observation_space(self, params: Any) -> spaces.Box:
        space = self._space(self._env.observation_space, params)
        if isinstance(space, spaces.Discrete):  # e.g. FrozenLake: the cell index, as float32
            return spaces.Box(0.0, float(space.n - 1), ())
        return space

    def action_space(self, params: Any):
        return self._space(self._env.action_space, params)

    def __repr__(self) -> str:
        return f"GymnaxEnv({self._name!r})"

    def with_transition_gradients(self) -> GymnaxEnv:
        """A copy whose transitions are differentiable (gymnax >= 1.0 detaches observations and
        states by default). Raises ValueError for a gymnax env without differentiable dynamics."""
        if not self._env.supports_transition_gradients:
            raise ValueError(
                f"env {self._name!r}: gymnax does not implement differentiable transitions for it"
            )
        return GymnaxEnv(self._env.with_transition_gradients(), self._name, self._default_params)


def with_transition_gradients(env):
    """`env` (any wrapper chain) with every gymnax env in it made differentiable; other envs
    (brax, envs.multimodal) are pure JAX and differentiable as they are. The wrappers are
    shallow-copied; `env` itself is unchanged. Raises ValueError when a gymnax env cannot be."""
    return map_chain(
        env, lambda e: e.with_transition_gradients() if isinstance(e, GymnaxEnv) else e
    )
