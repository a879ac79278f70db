"""The scaffolding every training loop shares (the on-policy actor-critic loop and SAC).

A run is `train(key, env_params=None) -> TrainOutput`: `init` builds a `TrainState`, `run` scans
`update(state) -> (state, metrics)` over updates. This module holds the pieces around the
algorithm-specific update:

- `TrainState`: parameters, optimiser state, the envs' state and their `env_params`, the run's key,
  the update counter and the carried-forward episode statistics. Env params live in the state, so
  `jax.vmap(agent.train)(keys, params_batch)` trains each run on its own env params (pole lengths,
  grid-world levels) in one program, and a checkpoint resumes on the params it was trained on.
- `start(...)`: the env reset and the common fields of a fresh state.
- `finish(...)`: the episode metrics of an update and the common fields of the next state.
- `keep_finite(...)` / `mean_where(...)`: skip a gradient step whose loss or gradient is not finite.
- `scan_updates(...)`: `lax.scan` over updates with a throttled host progress callback.
- `Agent`: what `make_agent` returns (same fields for every algorithm).
- `make_single_env` / `make_env`: the env as the agent sees it, single and vectorised.
- `AgentConfig`: the config fields every agent shares (on-policy and SAC), checked at construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import envs
from envs import spaces, wrappers
from purejaxrl import config as C
from purejaxrl import pmoe
from purejaxrl.networks import ACTIVATIONS


@C.dataclass(frozen=True)
class AgentConfig:
    """Fields every agent config shares (actor_critic.OnPolicyConfig: PPO, A2C; sac.SACConfig),
    with the on-policy defaults. Validated at construction (`validate`, extended by subclasses).

    Static (shape-setting): env, env_kwargs (frozen kwargs for envs.make, e.g.
    (("max_steps_in_episode", 200),)), total_timesteps, num_envs, hidden_sizes, activation,
    policy (the head), num_experts (mixture experts K, policy="pmoe"), mixture_grad (pmoe | gumbel |
    score, purejaxrl/pmoe.py), normalize_obs, frame_stack (the policy sees the last `frame_stack`
    observations, concatenated: envs.wrappers.FrameStack).
    Leaves (vmappable): learning_rate, gamma, max_grad_norm, gumbel_temperature
    (mixture_grad="gumbel"), mixture_coef (weight of the mixing weights' loss), obs_noise_sigma
    (std of the Gaussian noise added to every observation in training and evaluation: policy
    smoothing, Kumar et al. 2022; envs.wrappers.ObservationNoise).
    """

    env: str = C.static("CartPole-v1")
    env_kwargs: tuple[tuple[str, Any], ...] = C.static(())
    total_timesteps: int = C.static(1_000_000)
    num_envs: int = C.static(16)
    hidden_sizes: tuple[int, ...] = C.static((64, 64))
    activation: str = C.static("tanh")
    policy: str = C.static("auto")
    num_experts: int = C.static(1)
    mixture_grad: str = C.static("pmoe")
    normalize_obs: bool = C.static(False)
    frame_stack: int = C.static(1)
    learning_rate: float = 3e-4
    gamma: float = 0.99
    max_grad_norm: float = 0.5
    gumbel_temperature: float = 0.5
    mixture_coef: float = 1.0
    obs_noise_sigma: float = 0.0

    def __post_init__(self):
        C.freeze_fields(self)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad field; numeric leaves only when concrete."""
        C.check_types(self)
        for field in ("total_timesteps", "num_envs", "frame_stack"):
            C.check_positive_int(self, field)
        C.check_hidden_sizes(self)
        C.check_choice(self, "activation", ACTIVATIONS)
        pmoe.check_mixture_fields(self)
        C.check_range(self, "learning_rate", 0.0, np.inf, low_open=True)
        C.check_range(self, "gamma", 0.0, 1.0)
        C.check_range(self, "obs_noise_sigma", 0.0, np.inf)


@struct.dataclass
class TrainState:
    """Everything a run carries between updates (a pytree; leading run axis under vmap).

    params / opt_state: the learner's; algorithms may subclass to add fields (SAC: target critic,
    temperature, replay buffer). env_params: the env's params for this run.
    """

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: Any
    rng: jax.Array  # raw uint32 key [2]
    update_step: jax.Array  # int32 []: updates done so far
    last_return: jax.Array  # float32 []: the carried-forward episode_return metric
    last_length: jax.Array  # float32 []


@struct.dataclass
class TrainOutput:
    """`state`: final TrainState; `metrics`: dict of per-update scalars, each `[num_updates]`."""

    state: TrainState
    metrics: dict


class Agent(NamedTuple):
    """The pieces `make_agent` builds; `train(key, env_params=None)` is the one-program run.

    init(key, env_params=None) -> TrainState; update(state) -> (state, metrics);
    run(state, num_updates) -> TrainOutput (continues from any state); env_params: the defaults
    `init` uses when given None.
    """

    config: Any
    env: Any  # the vectorised training env
    single_env: Any  # one env with the agent's action wrappers and EpisodeStatistics
    env_params: Any
    network: Any
    head: Any
    num_updates: int
    init: Callable[..., TrainState]
    update: Callable[[TrainState], tuple[TrainState, dict]]
    run: Callable[..., TrainOutput]
    train: Callable[..., TrainOutput]


def raw_key(key: jax.Array) -> jax.Array:
    """Accepts typed (`jax.random.key`) or raw (`PRNGKey`) keys; returns a raw uint32 key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def start(env, env_params, key, learner: Callable[[jax.Array, jax.Array], dict], cls=TrainState):
    """A fresh `cls` state: key -> (params, env reset, run key) split as every agent does.

    learner(params_key, first_obs) -> dict of the learner's fields (params, opt_state, ...).
    """
    k_params, k_env, k_run = jax.random.split(raw_key(key), 3)
    obs, env_state = env.reset(k_env, env_params)
    return cls(
        **learner(k_params, obs),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        rng=k_run,
        update_step=jnp.zeros((), jnp.int32),
        last_return=jnp.zeros((), jnp.float32),
        last_length=jnp.zeros((), jnp.float32),
    )


def episode_metrics(done, episode_return, episode_length, state):
    """Mean return and length `[]` of the episodes finished in this update (`done`, any shape),
    carried forward from `state.last_return` / `state.last_length` when none finished; and the
    number finished. Non-finite returns are left out."""
    finished = done & jnp.isfinite(episode_return)
    count = jnp.sum(finished)
    mean_of = lambda x: jnp.sum(jnp.where(finished, x, 0.0)) / jnp.maximum(count, 1)
    last_return = jnp.where(count > 0, mean_of(episode_return), state.last_return)
    last_length = jnp.where(count > 0, mean_of(episode_length), state.last_length)
    return last_return, last_length, count


def finish(state, info, metrics: dict, steps_per_update: int, **changes):
    """The next state and the update's metrics, after an update that stepped the envs.

    info: the env's EpisodeStatistics fields (`episode_done`, `episode_return`, `episode_length`,
    any shape); changes: the fields the update replaced (params, env_state, obs, rng, ...).
    Adds episode_return / episode_length (carried forward), episodes_finished and env_steps.
    """
    last_return, last_length, count = episode_metrics(
        info["episode_done"], info["episode_return"], info["episode_length"], state
    )
    update_step = state.update_step + 1
    metrics = dict(
        metrics,
        episode_return=last_return,
        episode_length=last_length,
        episodes_finished=count,
        env_steps=update_step * steps_per_update,
    )
    new_state = state.replace(
        **changes,
        update_step=update_step,
        last_return=last_return.astype(jnp.float32),
        last_length=last_length.astype(jnp.float32),
    )
    return new_state, metrics


def shuffle(key, n: int) -> jax.Array:
    """A uniformly random permutation of range(n), int32 `[n]`.

    For n <= 2^16 by one sort of uint32 words `random bits << b | index` (b = bits of n - 1):
    the random high bits order the words and the index rides in the low bits. Equal random bits
    (about n^2 / 2^(33 - b) pairs per call: ~1 at n = 2048) keep their index order, a negligible
    bias for minibatching. `jax.random.permutation` sorts twice with a payload, which cost a
    quarter of PPO's update time on CPU (reference config); larger n falls back to it.
    """
    b = max(1, (n - 1).bit_length())
    if b > 16:
        return jax.random.permutation(key, n).astype(jnp.int32)
    words = (jax.random.bits(key, (n,), jnp.uint32) << b) | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(words) & jnp.uint32((1 << b) - 1)).astype(jnp.int32)


def keep_finite(ok, new, old):
    """`new` where `ok` (a scalar bool), else `old`, leaf by leaf: a skipped gradient step."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def mean_where(stats: dict, ok: jax.Array) -> dict:
    """Per-step stats `[S]` averaged over the steps where `ok` `[S]` (0 where none); stats of
    skipped steps must already be zeroed."""
    num_ok = jnp.sum(ok)
    return {k: jnp.sum(v) / jnp.maximum(num_ok, 1) for k, v in stats.items()}


def scan_updates(update, state, num_updates: int, progress_fn=None, progress_every: int = 1):
    """`lax.scan` of `update(state) -> (state, metrics)` for `num_updates` steps -> TrainOutput.

    With `progress_fn`, calls it on the host every `progress_every` updates and at the last one
    (`jax.debug.callback` inside a `lax.cond` on the unbatched scan index, so under a vmap over
    runs it stays a cond).
    """

    def body(state, i):
        state, metrics = update(state)
        if progress_fn is not None:
            report = ((i + 1) % progress_every == 0) | (i + 1 == num_updates)
            jax.lax.cond(
                report,
                lambda: jax.debug.callback(progress_fn, state.update_step, metrics),
                lambda: None,
            )
        return state, metrics

    state, metrics = jax.lax.scan(body, state, jnp.arange(num_updates))
    return TrainOutput(state=state, metrics=metrics)


def make_agent(
    config,
    env,
    single_env,
    env_params,
    network,
    head,
    num_updates: int,
    init,
    update,
    progress_fn=None,
    progress_every: int | None = None,
) -> Agent:
    """Assembles an Agent from `init(key, env_params)` and `update(state)`.

    progress_fn(update_step, metrics) runs on the host every `progress_every` updates (default
    ~100 calls per run) through `jax.debug.callback`; None compiles no callback.
    """
    progress_every = progress_every or max(1, num_updates // 100)

    def init_state(key, env_params=None):
        return init(key, default_params if env_params is None else env_params)

    def run(state, num_updates: int = num_updates) -> TrainOutput:
        return scan_updates(update, state, num_updates, progress_fn, progress_every)

    def train(key, env_params=None) -> TrainOutput:
        return run(init_state(key, env_params), num_updates)

    default_params = env_params
    return Agent(
        config=config,
        env=env,
        single_env=single_env,
        env_params=env_params,
        network=network,
        head=head,
        num_updates=num_updates,
        init=init_state,
        update=update,
        run=run,
        train=train,
    )


# --------------------------------------------------------------------------- envs


def _check_params_fit(cfg, default, given) -> None:
    """ValueError unless `given` has the pytree structure of the env's default params."""
    want, got = jax.tree.structure(default), jax.tree.structure(given)
    if want != got:
        raise ValueError(
            f"{type(cfg).__name__}.env={cfg.env!r}: env_params of type {type(given).__name__} do "
            f"not fit this env's params ({type(default).__name__}); pass params made by "
            f"envs.make({cfg.env!r}) (e.g. dataclasses.replace(default, ...)), or pass env= too"
        )


def make_single_env(cfg, env=None, env_params=None):
    """One env as the agent sees it, and its default params.

    make(cfg.env) [-> RescaleAction -> ClipAction] [-> ObservationNoise(obs_noise_sigma)]
    [-> FrameStack(frame_stack)] -> EpisodeStatistics. Pass `env` (and optionally `env_params`)
    for a custom single env (it must auto-reset and follow envs.core's API); `env_params` alone
    replaces the defaults of `envs.make(cfg.env)` and must have their structure. The noise wrapper
    is left out when `obs_noise_sigma` is a concrete 0 (a tracer always gets it: sigma = 0 is then
    exact), the frame stack when `frame_stack` is 1. Evaluation reuses this env.
    """
    if env is None:
        env, default = envs.make(cfg.env, **dict(cfg.env_kwargs))
        if env_params is not None:
            _check_params_fit(cfg, default, env_params)
        else:
            env_params = default
    elif env_params is None:
        env_params = env.default_params
    space = env.action_space(env_params)
    if not spaces.is_discrete(space):
        if space.bounded and not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
            env = wrappers.RescaleAction(env, -1.0, 1.0)
        env = wrappers.ClipAction(env)
    sigma = cfg.obs_noise_sigma
    if not C.is_concrete(sigma) or np.any(np.asarray(sigma) != 0):
        env = wrappers.ObservationNoise(env, sigma)
    if cfg.frame_stack > 1:
        env = wrappers.FrameStack(env, cfg.frame_stack)
    return wrappers.EpisodeStatistics(env), env_params


def make_env(
    cfg, single_env, num_envs: int, train: bool = True, obs_stats=None, normalize_reward=False
):
    """Vectorises `single_env` and adds the normalisers the config asks for.

    Training: VecEnv -> [NormalizeObservation] -> [NormalizeReward(gamma), if `normalize_reward`].
    Evaluation (`train=False`): VecEnv -> [NormalizeObservation frozen at `obs_stats`].
    """
    env = wrappers.VecEnv(single_env, num_envs)
    if cfg.normalize_obs:
        env = wrappers.NormalizeObservation(env, update=train, stats=obs_stats)
    if normalize_reward and train:
        env = wrappers.NormalizeReward(env, gamma=cfg.gamma)
    return env
