"""Monte-Carlo evaluation of a smoothed policy (policy smoothing, Kumar, Levine, Feizi, ICLR 2022).

The smoothed policy acts, at every step t, on `obs_t + N(0, sigma^2 I)`: fresh i.i.d. Gaussian noise
on each raw observation (observation units), added before frame stacking and before the frozen
observation normalisation, exactly where `envs.wrappers.ObservationNoise` sits in the agent's single
env (make -> [action wrappers] -> ObservationNoise -> FrameStack -> EpisodeStatistics). Here the
noise is drawn by the evaluator instead of by the env, so an attacker (purejaxrl/robust/attack.py)
can perturb the clean observation before the noise: the agent's env is rebuilt without
ObservationNoise and FrameStack, and the frame buffer (of noisy, possibly perturbed frames) is kept
here, in FrameStack's layout (flattened frames, oldest first).

    returns = smoothed_returns(agent, state, key, sigma=0.2, num_episodes=10_000)  # [10_000]

Every episode runs `max_steps` steps (default: the env's time limit) in one `lax.scan` over steps,
batched over episodes; each keeps the total reward of its first episode (a partial return if it
did not finish), as `purejaxrl.evaluation.evaluate` does. With sigma = 0 and the same key the
returns are `evaluate`'s (same reset keys, same env keys).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import wrappers
from envs.core import map_chain
from purejaxrl.evaluation import episode_horizon
from purejaxrl.loop import Agent, raw_key

# ------------------------------------------------------------------------------ validation


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def check_nonnegative(name: str, value) -> None:
    """`value` a finite number >= 0 (skipped for tracers)."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0 or not np.isfinite(arr) or arr < 0:
        raise ValueError(f"{name}={value!r}: must be a finite number >= 0")


def check_max_steps(max_steps) -> None:
    if max_steps is not None:
        check_positive_int("max_steps", max_steps)


# ------------------------------------------------------------------------------ the smoothed agent


# The observation wrappers the evaluator replaces by its own noise and frame buffer.
_OBSERVATION_WRAPPERS = (wrappers.ObservationNoise, wrappers.FrameStack)


def clean_single_env(agent: Agent):
    """The agent's single env without ObservationNoise and FrameStack: make -> [action wrappers]
    -> EpisodeStatistics, so its observations are clean raw frames `[*obs_shape]`."""
    env = agent.single_env
    if isinstance(env, wrappers.EpisodeStatistics):
        env = env.env
    drop = lambda e: e.env if isinstance(e, _OBSERVATION_WRAPPERS) else e
    return wrappers.EpisodeStatistics(map_chain(env, drop))


def stack_frames(frames: jax.Array, frame_shape: tuple, stacked_shape: tuple) -> jax.Array:
    """`frames [..., k, *frame_shape]` (oldest first) -> the policy's observation `[..., *stacked_shape]`.

    envs.wrappers.FrameStack's layout: each frame flattened, concatenated oldest first,
    `[k * prod(frame_shape)]`; without a frame stack (k = 1, `stacked_shape == frame_shape`) the
    frame itself.
    """
    frame_shape, stacked_shape = tuple(frame_shape), tuple(stacked_shape)
    k = frames.shape[-len(frame_shape) - 1]
    batch = frames.shape[: frames.ndim - len(frame_shape) - 1]
    if k == 1 and stacked_shape == frame_shape:
        return frames.reshape(*batch, *frame_shape)
    size = k * math.prod(frame_shape)
    if stacked_shape != (size,):
        raise ValueError(
            f"cannot map {k} frames of shape {frame_shape} onto the agent's observation shape "
            f"{stacked_shape}: FrameStack gives {(size,)}"
        )
    return frames.reshape(*batch, size)


class Smoothing(NamedTuple):
    """The pure pieces of one trained agent's smoothed policy (shared with attack.py).

    env: the clean single env (no noise, no frame stack); obs `[*obs_shape]` are raw frames.
    push(frames [k, *obs_shape], frame [*obs_shape], first []) -> frames: appends the newest frame
    (dropping the oldest), or fills all k slots with it on an episode's first step.
    features(frames [..., k, *obs_shape]) -> policy input `[..., *input_shape]`: stacked as
    FrameStack stacks, then normalised with the statistics frozen in the TrainState.
    actor(x [..., *input_shape]) -> head outputs (the agent's network and parameters).
    """

    env: Any
    env_params: Any
    obs_shape: tuple
    num_frames: int
    push: Callable
    features: Callable
    actor: Callable


def make_smoothing(agent: Agent, state) -> Smoothing:
    """The smoothed policy's pieces for `agent` at the (one seed's) TrainState `state`."""
    cfg, network = agent.config, agent.network
    num_frames = cfg.frame_stack  # loop.AgentConfig: a positive int
    # Shapes from the agent's (concrete) default params; dynamics from the run's own params.
    env, env_params = clean_single_env(agent), state.env_params
    obs_shape = tuple(env.observation_space(agent.env_params).shape)
    stacked_shape = tuple(agent.single_env.observation_space(agent.env_params).shape)
    stack_frames(jnp.zeros((num_frames, *obs_shape)), obs_shape, stacked_shape)  # checks layout
    if cfg.normalize_obs:
        stats = wrappers.obs_norm_stats(state.env_state)
        normaliser = wrappers.NormalizeObservation(agent.single_env, update=False, stats=stats)
        normalise = lambda x: normaliser.normalize(x, stats)
    else:
        normalise = lambda x: x

    def push(frames, frame, first):
        pushed = jnp.concatenate([frames[1:], frame[None]], axis=0)
        return jnp.where(first, jnp.broadcast_to(frame, frames.shape), pushed)

    def features(frames):
        return normalise(stack_frames(frames, obs_shape, stacked_shape))

    def actor(x):
        return network.apply(state.params, x, method=network.actor)

    return Smoothing(env, env_params, obs_shape, num_frames, push, features, actor)


# ------------------------------------------------------------------------------ the episode loop

# perturb(obs [n, *obs_shape], frames [n, k, *obs_shape], first [n], active [n], carry, key,
#         env_state [n, ...]) -> (eps [n, *obs_shape], carry): the attacker's move before the
#   noise (it sees the true env state: a white-box adversary); None: no attacker.
Perturb = Callable[..., tuple[jax.Array, Any]]


def run_episodes(
    agent: Agent,
    smoothing: Smoothing,
    key: jax.Array,
    sigma,
    num_episodes: int,
    horizon: int,
    deterministic: bool = True,
    perturb: Perturb | None = None,
    perturb_carry: Any = None,
):
    """`num_episodes` smoothed episodes of `horizon` steps -> (returns `[n]`, final perturb_carry).

    Each step: eps = perturb(clean obs, ...) (0 without an attacker); frame = obs + eps + sigma z,
    z ~ N(0, I) fresh; frames <- push(frames, frame); the policy acts on features(frames) (mode if
    `deterministic`, else a sample); `active` is False once an episode's first episode is over.
    Keys: as `evaluate` (reset_key, run_key = split(key); per step act_key, env_key =
    split(step_key)); the noise uses fold_in(act_key, 1), the attacker fold_in(act_key, 2).
    """
    head, s = agent.head, smoothing
    venv = wrappers.VecEnv(s.env, num_episodes)
    push = jax.vmap(s.push)

    def step(carry, step_key):
        env_state, obs, frames, first, returns, partial, finished, extra = carry
        act_key, env_key = jax.random.split(step_key)
        if perturb is None:
            eps = jnp.zeros_like(obs)
        else:
            eps, extra = perturb(
                obs, frames, first, ~finished, extra, jax.random.fold_in(act_key, 2), env_state
            )
        noise = sigma * jax.random.normal(jax.random.fold_in(act_key, 1), obs.shape, obs.dtype)
        frames = push(frames, obs + eps + noise, first)
        out = s.actor(s.features(frames))
        if deterministic:
            action = head.mode(out)
        else:
            action, _ = head.sample_and_log_prob(act_key, out)
        obs, env_state, reward, _, _, info = venv.step(
            env_key, env_state, head.to_env(action), s.env_params
        )
        partial = partial + jnp.where(finished, 0.0, reward)
        newly = info["episode_done"] & ~finished
        returns = jnp.where(newly, info["episode_return"], returns)
        carry = (env_state, obs, frames, info["episode_done"], returns, partial, finished | newly)
        return (*carry, extra), None

    reset_key, run_key = jax.random.split(raw_key(key))
    obs, env_state = venv.reset(reset_key, s.env_params)
    frames = jnp.zeros((num_episodes, s.num_frames, *s.obs_shape), obs.dtype)
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    first = jnp.ones((num_episodes,), bool)
    init = (env_state, obs, frames, first, zeros, zeros, ~first, perturb_carry)
    final, _ = jax.lax.scan(step, init, jax.random.split(run_key, horizon))
    returns, partial, finished, extra = final[4:]
    return jnp.where(finished, returns, partial), extra


# ------------------------------------------------------------------------------ public API

_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 16


def cached(agent: Agent, settings: tuple, build: Callable[[], Callable]) -> Callable:
    """One compiled function per (agent, settings): repeated calls (e.g. over sigmas) reuse it."""
    entry_key = (id(agent), settings)
    entry = _CACHE.get(entry_key)
    if entry is not None and entry[0] is agent:
        _CACHE.move_to_end(entry_key)
        return entry[1]
    fn = build()
    _CACHE[entry_key] = (agent, fn)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def resolve_horizon(agent: Agent, max_steps) -> int:
    return int(max_steps) if max_steps is not None else episode_horizon(agent.env_params)


def make_smoothed_returns(
    agent: Agent, num_episodes: int, deterministic: bool = True, max_steps: int | None = None
):
    """jitted `fn(state, key, sigma) -> [num_episodes]` (sigma traced: one compile for all)."""
    check_positive_int("num_episodes", num_episodes)
    check_max_steps(max_steps)
    horizon = resolve_horizon(agent, max_steps)

    def fn(state, key, sigma):
        smoothing = make_smoothing(agent, state)
        sigma = jnp.asarray(sigma, jnp.float32)
        returns, _ = run_episodes(
            agent, smoothing, key, sigma, num_episodes, horizon, deterministic
        )
        return returns

    return jax.jit(fn)


def smoothed_returns(
    agent: Agent,
    state,
    key: jax.Array,
    sigma: float,
    num_episodes: int,
    deterministic: bool = True,
    max_steps: int | None = None,
) -> jax.Array:
    """Total rewards `[num_episodes]` of the smoothed policy: at every step it acts on
    `obs + N(0, sigma^2 I)` (raw observation units, before frame stacking and the frozen
    normalisation), with its mode if `deterministic` (the paper's policies), else a sample.

    `state` is one seed's TrainState. One jitted call for all episodes; the compiled function is
    cached per (agent, num_episodes, deterministic, max_steps), sigma is traced. Raises ValueError
    for sigma < 0 (sigma = 0 is the undefended policy), num_episodes <= 0 or max_steps <= 0.
    """
    check_nonnegative("sigma", sigma)
    sizes = (num_episodes, bool(deterministic), max_steps)
    fn = cached(agent, ("smoothed_returns", *sizes), lambda: make_smoothed_returns(agent, *sizes))
    return fn(state, key, sigma)
