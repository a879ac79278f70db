"""The functional environment API shared by every env and wrapper in this package.

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

`terminated` (a true terminal state: do not bootstrap) and `truncated` (a time limit: bootstrap
from the value of `info["final_observation"]`) are separate bool scalars (float32-castable). Envs
made by `envs.make` auto-reset: after a step with `terminated | truncated`, `obs` and `state`
already belong to the next episode and `info["final_observation"]` holds the observation the
episode ended on (it equals `obs` on other steps).
Every `info` has the same keys on every step (so `lax.scan` can stack it).
"""

from __future__ import annotations

import copy
from typing import Any

import jax


class Environment:
    """Base class: subclasses implement `reset`, `step`, the spaces and `default_params`."""

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any):
        raise NotImplementedError

    def observation_space(self, params: Any):
        raise NotImplementedError

    def action_space(self, params: Any):
        raise NotImplementedError

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def unwrapped(self) -> Environment:
        return self


class Wrapper(Environment):
    """Delegates everything to `self.env`; subclasses override what they change."""

    def __init__(self, env: Environment):
        self.env = env

    def reset(self, key, params):
        return self.env.reset(key, params)

    def step(self, key, state, action, params):
        return self.env.step(key, state, action, params)

    def observation_space(self, params):
        return self.env.observation_space(params)

    def action_space(self, params):
        return self.env.action_space(params)

    @property
    def default_params(self):
        return self.env.default_params

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def unwrapped(self) -> Environment:
        return self.env.unwrapped

    def __getattr__(self, attr):
        # Only called when normal lookup fails: expose the wrapped env's extras.
        if attr == "env":
            raise AttributeError(attr)
        return getattr(self.env, attr)


def map_chain(env: Environment, fn) -> Environment:
    """`env`'s wrapper chain rebuilt bottom-up with `fn(node) -> node` applied to every node (the
    base env first; each wrapper after its inner env was mapped). A wrapper whose inner env
    changed is shallow-copied; `env` itself is never modified. `fn` may drop a wrapper by returning
    its (mapped) `.env`."""
    if isinstance(env, Wrapper):
        inner = map_chain(env.env, fn)
        if inner is not env.env:
            env = copy.copy(env)
            env.env = inner
    return fn(env)


def check_override_keys(env_id: str, overrides: dict, valid: list[str]) -> None:
    """ValueError naming every override key of `env_id` that is not in `valid`."""
    bad = [k for k in overrides if k not in valid]
    if bad:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, bad))} for {env_id!r}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
