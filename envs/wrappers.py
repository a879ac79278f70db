"""Small, composable, pure wrappers over the `envs.core` API.

All state lives in the env-state pytree, so every wrapper works under `jax.jit`, `lax.scan` and
`jax.vmap` (e.g. a vmap over seeds on top of a `VecEnv`). Stateful wrappers keep the wrapped env's
state in `state.env_state` of their own flax.struct dataclass; stateless wrappers (`AutoReset`,
`VecEnv`, `ClipAction`, `RescaleAction`, `FlattenObservation`, `ObservationNoise`) pass the inner
state through.

Wrappers that look at observations or rewards work both below and above `VecEnv`: they infer the
leading batch axes from the per-env observation space, so e.g. `NormalizeObservation(VecEnv(...))`
shares its statistics across the envs while `VecEnv(NormalizeObservation(...))` keeps one set per
env.

The usual stack (what `envs.make` returns is `AutoReset(raw)`):

    env, params = envs.make("Pendulum-v1")
    env = VecEnv(EpisodeStatistics(env), num_envs=16)
    env = NormalizeReward(NormalizeObservation(env), gamma=0.99)   # optional, on top
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import spaces
from envs.core import Environment, Wrapper

# ---------------------------------------------------------------------------------------------
# helpers


def _select(pred: jax.Array, on_true: jax.Array, on_false: jax.Array) -> jax.Array:
    """`pred ? on_true : on_false` where `pred` has the leading (batch) shape of the operands."""
    on_true = jnp.asarray(on_true)
    on_false = jnp.asarray(on_false)
    if on_true.dtype != on_false.dtype:
        on_true = on_true.astype(on_false.dtype)
    if pred.ndim == 0 or pred.shape == on_false.shape:
        return jax.lax.select(pred, on_true, on_false)
    pred = pred.reshape(pred.shape + (1,) * (on_false.ndim - pred.ndim))
    return jnp.where(pred, on_true, on_false)


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leaf-wise `_select` over two pytrees of the same structure."""
    return jax.tree.map(lambda t, f: _select(pred, t, f), on_true, on_false)


def _obs_ndim(env: Environment) -> int:
    return len(env.observation_space(env.default_params).shape)


def _batch_shape(obs: jax.Array, obs_ndim: int) -> tuple[int, ...]:
    return tuple(obs.shape[: obs.ndim - obs_ndim])


# ---------------------------------------------------------------------------------------------
# auto-reset and episode statistics


class AutoReset(Wrapper):
    """Resets on `terminated | truncated` with a fresh key split from the step key.

    The returned `obs` / `state` then belong to the new episode, and
    `info["final_observation"]` holds the observation the episode ended on (equal to `obs` on
    steps that do not end an episode). Exactly one reset is computed per step (selected in with
    `lax.select`; no Python branching).

    Speed: when the wrapped env's step provably ignores its key (checked once per argument
    signature by tracing it: e.g. CartPole, Pendulum, brax), the step key goes to the reset as is
    and no split is paid for; otherwise it is split into a step key and a reset key.
    """

    def __init__(self, env: Environment):
        super().__init__(env)
        self._uses_key_cache: dict[Any, bool] = {}

    def _step_uses_key(self, key, state, action, params) -> bool:
        leaves, treedef = jax.tree.flatten((key, state, action, params))
        sig = (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
        try:
            hash(sig)
        except TypeError:
            sig = None
        if sig is not None and sig in self._uses_key_cache:
            return self._uses_key_cache[sig]
        try:
            jaxpr = jax.make_jaxpr(lambda k: self.env.step(k, state, action, params))(key).jaxpr
            key_var = jaxpr.invars[0]
            used = any(v is key_var for eqn in jaxpr.eqns for v in eqn.invars) or any(
                v is key_var for v in jaxpr.outvars
            )
        except Exception:  # anything unexpected: be safe and split
            used = True
        if sig is not None:
            self._uses_key_cache[sig] = used
        return used

    def step(self, key, state, action, params):
        if self._step_uses_key(key, state, action, params):
            key_step, key_reset = jax.random.split(key)
        else:
            key_step = key_reset = key  # the step ignores its key
        obs, state, reward, terminated, truncated, info = self.env.step(
            key_step, state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        obs_reset, state_reset = self.env.reset(key_reset, params)
        state = tree_select(done, state_reset, state)
        new_obs = tree_select(done, obs_reset, obs)
        info = {**info, "final_observation": obs}
        return new_obs, state, reward, terminated, truncated, info


@struct.dataclass
class EpisodeStatisticsState:
    env_state: Any
    episode_return: jax.Array  # running return of the current episode (float32)
    episode_length: jax.Array  # running length of the current episode (int32)


class EpisodeStatistics(Wrapper):
    """Tracks the running episode return and length.

    Adds to `info`: `"episode_done"` (bool, `terminated | truncated`), `"episode_return"` (float32)
    and `"episode_length"` (int32): the finished episode's totals where `episode_done`, 0
    elsewhere. Sums the reward as returned by the wrapped env, so put it *inside* any reward
    normaliser to log raw returns.
    """

    def __init__(self, env: Environment):
        super().__init__(env)
        self._obs_ndim = _obs_ndim(env)

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        shape = _batch_shape(obs, self._obs_ndim)
        state = EpisodeStatisticsState(
            env_state=env_state,
            episode_return=jnp.zeros(shape, jnp.float32),
            episode_length=jnp.zeros(shape, jnp.int32),
        )
        return obs, state

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        ret = state.episode_return + reward
        length = state.episode_length + 1
        zero_f = jnp.zeros_like(ret)
        zero_i = jnp.zeros_like(length)
        info = {
            **info,
            "episode_done": done,
            "episode_return": _select(done, ret, zero_f),
            "episode_length": _select(done, length, zero_i),
        }
        state = EpisodeStatisticsState(
            env_state=env_state,
            episode_return=_select(done, zero_f, ret),
            episode_length=_select(done, zero_i, length),
        )
        return obs, state, reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------
# vectorisation


class VecEnv(Wrapper):
    """`num_envs` copies of `env` under `jax.vmap`; `params` are shared (not batched).

    `reset(key, params)` and `step(key, state, actions, params)` split `key` into `num_envs` keys;
    every output (obs, state, reward, terminated, truncated, info) gets a leading `[num_envs]`
    axis. Spaces stay per-env.
    """

    def __init__(self, env: Environment, num_envs: int):
        super().__init__(env)
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self._reset = jax.vmap(env.reset, in_axes=(0, None))
        self._step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def reset(self, key, params):
        return self._reset(jax.random.split(key, self.num_envs), params)

    def step(self, key, state, action, params):
        return self._step(jax.random.split(key, self.num_envs), state, action, params)


# ---------------------------------------------------------------------------------------------
# actions


class ClipAction(Wrapper):
    """Clips continuous actions to the action `Box` (discrete actions pass through)."""

    def step(self, key, state, action, params):
        space = self.env.action_space(params)
        if isinstance(space, spaces.Box):
            action = jnp.clip(action, space.low, space.high)
        return self.env.step(key, state, action, params)


class RescaleAction(Wrapper):
    """The agent acts in `[low, high]`, mapped affinely onto the env's (finite) action bounds."""

    def __init__(self, env: Environment, low: float = -1.0, high: float = 1.0):
        super().__init__(env)
        space = env.action_space(env.default_params)
        if not isinstance(space, spaces.Box) or not space.bounded:
            raise ValueError(f"RescaleAction needs a bounded Box action space, got {space!r}")
        if not high > low:
            raise ValueError(f"RescaleAction needs high > low, got low={low}, high={high}")
        self.low = float(low)
        self.high = float(high)

    def _affine(self, params):
        space = self.env.action_space(params)
        scale = (space.high - space.low) / (self.high - self.low)
        offset = space.low - self.low * scale
        return scale.astype(np.float32), offset.astype(np.float32)

    def step(self, key, state, action, params):
        scale, offset = self._affine(params)
        return self.env.step(key, state, action * scale + offset, params)

    def action_space(self, params) -> spaces.Box:
        shape = self.env.action_space(params).shape
        return spaces.Box(self.low, self.high, shape)


# ---------------------------------------------------------------------------------------------
# observations


class FlattenObservation(Wrapper):
    """Flattens each per-env observation to 1-D (also `info["final_observation"]`)."""

    def __init__(self, env: Environment):
        super().__init__(env)
        self._obs_ndim = _obs_ndim(env)

    def _flat(self, obs):
        return obs.reshape(_batch_shape(obs, self._obs_ndim) + (-1,))

    def reset(self, key, params):
        obs, state = self.env.reset(key, params)
        return self._flat(obs), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        if "final_observation" in info:
            info = {**info, "final_observation": self._flat(info["final_observation"])}
        return self._flat(obs), state, reward, terminated, truncated, info

    def observation_space(self, params) -> spaces.Box:
        space = self.env.observation_space(params)
        size = int(np.prod(space.shape))
        return spaces.Box(space.low.reshape(-1), space.high.reshape(-1), (size,))


@struct.dataclass
class RunningMeanStd:
    """Running mean / (population) variance over `count` samples (Chan et al. parallel update)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array  # float32 scalar

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> RunningMeanStd:
        return cls(
            mean=jnp.zeros(shape, jnp.float32),
            var=jnp.ones(shape, jnp.float32),
            count=jnp.zeros((), jnp.float32),
        )

    def update(self, x: jax.Array, batch_ndim: int) -> RunningMeanStd:
        """Merges the samples `x[b_0, ..., b_{batch_ndim-1}]` (trailing axes: the stat shape)."""
        if batch_ndim == 0:
            batch_mean, batch_var, n = x, jnp.zeros_like(x), 1.0
        else:
            axes = tuple(range(batch_ndim))
            batch_mean = jnp.mean(x, axis=axes)
            batch_var = jnp.mean(jnp.square(x - batch_mean), axis=axes)
            n = float(np.prod(x.shape[:batch_ndim]))
        total = self.count + n
        delta = batch_mean - self.mean
        w = n / total
        mean = self.mean + delta * w
        m2 = self.var * self.count + batch_var * n + jnp.square(delta) * self.count * w
        return RunningMeanStd(mean=mean, var=m2 / total, count=total)


@struct.dataclass
class NormalizeObservationState:
    env_state: Any
    stats: RunningMeanStd


class NormalizeObservation(Wrapper):
    """`obs -> clip((obs - mean) / sqrt(var + epsilon), -clip, clip)` with running statistics.

    The statistics are updated (when `update=True`) with every observation the wrapper returns:
    the reset observations and each step's observation (after auto-reset, i.e. not the
    `final_observation`s), pooled over all leading batch axes; `info["final_observation"]` is
    normalised with the same (just updated) statistics as `obs`. `stats` sets the statistics a
    reset starts from (default: mean 0, var 1, count 0), so an evaluation env can reuse frozen
    training statistics:

        stats = obs_norm_stats(train_env_state)
        eval_env = NormalizeObservation(env, update=False, stats=stats)
    """

    def __init__(
        self,
        env: Environment,
        epsilon: float = 1e-8,
        clip: float | None = 10.0,
        update: bool = True,
        stats: RunningMeanStd | None = None,
    ):
        super().__init__(env)
        self.epsilon = epsilon
        self.clip = clip
        self.update = bool(update)
        self._obs_shape = tuple(env.observation_space(env.default_params).shape)
        self._init_stats = stats

    def normalize(self, obs: jax.Array, stats: RunningMeanStd) -> jax.Array:
        out = (obs - stats.mean) * jax.lax.rsqrt(stats.var + self.epsilon)
        if self.clip is not None:
            out = jnp.clip(out, -self.clip, self.clip)
        return out

    def _update(self, stats: RunningMeanStd, obs: jax.Array) -> RunningMeanStd:
        if not self.update:
            return stats
        return stats.update(obs, obs.ndim - len(self._obs_shape))

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        stats = self._init_stats
        if stats is None:
            stats = RunningMeanStd.create(self._obs_shape)
        stats = self._update(stats, obs)
        return self.normalize(obs, stats), NormalizeObservationState(env_state, stats)

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        stats = self._update(state.stats, obs)
        if "final_observation" in info:
            info = {**info, "final_observation": self.normalize(info["final_observation"], stats)}
        state = NormalizeObservationState(env_state, stats)
        return self.normalize(obs, stats), state, reward, terminated, truncated, info


def _find_state(state: Any, cls: type) -> Any:
    node = state
    while not isinstance(node, cls):
        if not hasattr(node, "env_state"):
            raise ValueError(f"no {cls.__name__} in this env state")
        node = node.env_state
    return node


def obs_norm_stats(state: Any) -> RunningMeanStd:
    """The `NormalizeObservation` statistics in an env state (outermost one if nested).

    Leading axes are those of the state (e.g. `[num_envs]` if the normaliser sits inside a
    `VecEnv`, `[seeds]` under a vmap over seeds).
    """
    return _find_state(state, NormalizeObservationState).stats


def replace_obs_norm_stats(state: Any, stats: RunningMeanStd) -> Any:
    """A copy of `state` whose (outermost) `NormalizeObservation` statistics are `stats`."""
    if isinstance(state, NormalizeObservationState):
        return state.replace(stats=stats)
    if not hasattr(state, "env_state"):
        raise ValueError("no NormalizeObservationState in this env state")
    return state.replace(env_state=replace_obs_norm_stats(state.env_state, stats))


# ---------------------------------------------------------------------------------------------
# rewards


@struct.dataclass
class NormalizeRewardState:
    env_state: Any
    discounted_return: jax.Array  # per env: sum_k gamma^k r_{t-k} within the current episode
    stats: RunningMeanStd  # running statistics of `discounted_return` (scalar)


class NormalizeReward(Wrapper):
    """Scales rewards by the running std of the discounted return (as gymnasium's NormalizeReward).

    Per env: `G <- gamma * G + r`; the running variance is updated with every `G` (pooled over
    all envs), the returned reward is `clip(r / sqrt(var + epsilon), -clip, clip)`, and `G` is
    reset to 0 after a step with `terminated | truncated`. `gamma` may be a tracer (sweeps).
    """

    def __init__(
        self,
        env: Environment,
        gamma: float = 0.99,
        epsilon: float = 1e-8,
        clip: float | None = 10.0,
        update: bool = True,
        stats: RunningMeanStd | None = None,
    ):
        super().__init__(env)
        self.gamma = gamma
        self.epsilon = epsilon
        self.clip = clip
        self.update = bool(update)
        self._obs_ndim = _obs_ndim(env)
        self._init_stats = stats

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        ret = jnp.zeros(_batch_shape(obs, self._obs_ndim), jnp.float32)
        stats = self._init_stats if self._init_stats is not None else RunningMeanStd.create()
        return obs, NormalizeRewardState(env_state, ret, stats)

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        ret = state.discounted_return * self.gamma + reward
        stats = state.stats.update(ret, ret.ndim) if self.update else state.stats
        scaled = reward * jax.lax.rsqrt(stats.var + self.epsilon)
        if self.clip is not None:
            scaled = jnp.clip(scaled, -self.clip, self.clip)
        done = jnp.logical_or(terminated, truncated)
        ret = _select(done, jnp.zeros_like(ret), ret)
        state = NormalizeRewardState(env_state, ret, stats)
        return obs, state, scaled, terminated, truncated, info


def reward_norm_stats(state: Any) -> RunningMeanStd:
    """The `NormalizeReward` statistics (of the discounted return) in an env state."""
    return _find_state(state, NormalizeRewardState).stats


# ---------------------------------------------------------------------------------------------
# policy smoothing (Kumar et al., ICLR 2022): noisy observations and frame stacking

_NOISE_SALT = 0x6E6F6973  # fold_in data for the noise key; far above any split count in use


class ObservationNoise(Wrapper):
    """Adds i.i.d. `N(0, sigma^2 I)` noise to every observation the agent sees.

    Noised: the reset observation, each step's observation (after auto-reset, so also a new
    episode's first observation) and `info["final_observation"]`. On steps that do not end an
    episode the final observation gets the *same* noise as `obs` (so the envs.core contract
    `final_observation == obs` still holds); where `terminated | truncated` it gets an independent
    draw. A truncated episode therefore bootstraps from a noisy final observation, consistent with
    an agent that only ever sees noisy observations.

    `sigma` (float, in observation units) may be a tracer: under `jax.vmap` over sigmas the
    draws are shared (common random numbers) and only their scale differs. The noise key is
    `fold_in(key, const)` and the wrapped env receives `key` itself, so the wrapped env's
    randomness is untouched and `sigma == 0` returns exactly the unwrapped env's outputs (a
    select, bit for bit). Works below or above `VecEnv` (each obs element gets its own draw).
    The observation space becomes unbounded (Gaussian noise leaves any box); its shape is kept.
    Non-float observations are cast to float32.
    """

    def __init__(self, env: Environment, sigma: float | jax.Array):
        super().__init__(env)
        self.sigma = sigma

    def _noise(self, key, obs, num_draws: int):
        """(`obs` as float, `num_draws` independent noise draws `[num_draws, *obs.shape]`)."""
        obs = jnp.asarray(obs)
        if not jnp.issubdtype(obs.dtype, jnp.floating):
            obs = obs.astype(jnp.float32)
        key = jax.random.fold_in(key, _NOISE_SALT)
        eps = jax.random.normal(key, (num_draws, *obs.shape), obs.dtype)
        return obs, jnp.asarray(self.sigma, obs.dtype) * eps

    def _add(self, obs, noise):
        return jnp.where(jnp.asarray(self.sigma) == 0, obs, obs + noise)

    def reset(self, key, params):
        obs, state = self.env.reset(key, params)
        obs, noise = self._noise(key, obs, 1)
        return self._add(obs, noise[0]), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        obs, noise = self._noise(key, obs, 2)
        if "final_observation" in info:
            final = jnp.asarray(info["final_observation"], obs.dtype)
            done = jnp.logical_or(terminated, truncated)
            info = {
                **info,
                "final_observation": self._add(final, _select(done, noise[1], noise[0])),
            }
        return self._add(obs, noise[0]), state, reward, terminated, truncated, info

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, tuple(self.env.observation_space(params).shape))


@struct.dataclass
class FrameStackState:
    env_state: Any
    frames: jax.Array  # [*batch, num_frames, obs_size]: the last observations, oldest first


class FrameStack(Wrapper):
    """The observation is the last `num_frames` observations, flattened and concatenated.

    Per env: `[num_frames * obs_size]` (oldest first, `obs_size` = the flat size of one
    observation). A reset fills the stack with the first observation. Over an auto-resetting env
    (one that returns `info["final_observation"]`), a step that ends an episode returns a fresh
    stack of the new episode's first observation as `obs`, and `info["final_observation"]` is the
    old stack shifted by the episode's final observation. Without `final_observation` in `info`
    the stack just shifts (the caller resets). Put it above `ObservationNoise` so each frame
    carries its own noise, as in Kumar et al. Works below or above `VecEnv`.
    """

    def __init__(self, env: Environment, num_frames: int):
        super().__init__(env)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int | np.integer):
            raise ValueError(f"FrameStack: num_frames={num_frames!r} must be a positive integer")
        if num_frames < 1:
            raise ValueError(f"FrameStack: num_frames={num_frames!r} must be a positive integer")
        self.num_frames = int(num_frames)
        self._obs_ndim = _obs_ndim(env)

    def _frame(self, obs):
        """One observation -> `[*batch, 1, obs_size]`."""
        batch = _batch_shape(obs, self._obs_ndim)
        return obs.reshape(batch + (1, -1))

    def _flat(self, frames):
        return frames.reshape(frames.shape[:-2] + (-1,))

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        frame = self._frame(obs)
        frames = jnp.repeat(frame, self.num_frames, axis=-2)
        return self._flat(frames), FrameStackState(env_state, frames)

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = self.env.step(
            key, state.env_state, action, params
        )
        kept = state.frames[..., 1:, :]
        frames = jnp.concatenate([kept, self._frame(obs).astype(kept.dtype)], axis=-2)
        if "final_observation" in info:
            final_frame = self._frame(info["final_observation"]).astype(kept.dtype)
            final_frames = jnp.concatenate([kept, final_frame], axis=-2)
            fresh = jnp.repeat(self._frame(obs).astype(kept.dtype), self.num_frames, axis=-2)
            frames = _select(jnp.logical_or(terminated, truncated), fresh, frames)
            info = {**info, "final_observation": self._flat(final_frames)}
        return (
            self._flat(frames),
            FrameStackState(env_state, frames),
            reward,
            terminated,
            truncated,
            info,
        )

    def observation_space(self, params) -> spaces.Box:
        space = self.env.observation_space(params)
        low = np.tile(np.asarray(space.low).reshape(-1), self.num_frames)
        high = np.tile(np.asarray(space.high).reshape(-1), self.num_frames)
        return spaces.Box(low, high, (low.size,), space.dtype)


__all__ = [
    "AutoReset",
    "ClipAction",
    "EpisodeStatistics",
    "EpisodeStatisticsState",
    "FlattenObservation",
    "FrameStack",
    "FrameStackState",
    "NormalizeObservation",
    "NormalizeObservationState",
    "NormalizeReward",
    "NormalizeRewardState",
    "ObservationNoise",
    "RescaleAction",
    "RunningMeanStd",
    "VecEnv",
    "obs_norm_stats",
    "replace_obs_norm_stats",
    "reward_norm_stats",
    "tree_select",
]
