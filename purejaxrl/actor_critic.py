"""The on-policy actor-critic loop shared by PPO, A2C and every objective plugged into it.

One update reads top to bottom:

    collect   rollout of `num_steps` x `num_envs` with the current policy, then the critic's values
              of every observation and of every pre-reset next observation (one batched call);
    targets   `objective.targets(rollout)`: GAE advantages and return targets, or anything else an
              objective computes once per update (purejaxrl/objectives.py);
    epochs    `update_epochs` x `num_minibatches` gradient steps on `objective.loss`, minibatches
              a flat shuffle over time x envs, or whole env columns in time order when the
              objective asks (`time_ordered`, for trajectory-level objectives);
    finish    episode metrics and the next TrainState (purejaxrl/loop.py).

The whole run is `lax.scan` over updates inside `train(key, env_params=None)`, so
`jax.jit(jax.vmap(train))(keys)` is one XLA program; env params are inputs (kept in the state).
`make_agent(..., devices=n)` splits one run's envs and minibatches over n devices (sharding
constraints only; purejaxrl/parallel.py).
Any minibatch whose loss or gradient is not finite is skipped (parameters and optimiser state
kept) and counted in `metrics["nan_skipped"]`.

The objective is chosen by `make_agent(cfg, objective=...)`, by the config's `objective` spec
(a registered name, objectives.REGISTRY), or by the algorithm (PPO: GAE + clipped surrogate; A2C:
GAE + policy gradient). Mixture policies (`policy="pmoe"`, K > 1 experts) plug in by wrapping the
objective (purejaxrl/pmoe.py: a Q head scores the experts' proposals once per update and the
estimator routes the gradient); the loop itself has no mixture code.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from envs import spaces
from purejaxrl import config as C
from purejaxrl import loop, objectives, parallel, pmoe
from purejaxrl.distributions import HEADS, GaussianMixture, make_head
from purejaxrl.loop import (  # noqa: F401  (re-exported: the on-policy API's names)
    Agent,
    TrainOutput,
    TrainState,
    episode_metrics,
    make_env,
    make_single_env,
    raw_key,
    scan_updates,
)
from purejaxrl.networks import ActorCritic
from purejaxrl.rollout import rollout


@C.dataclass(frozen=True)
class OnPolicyConfig(loop.AgentConfig):
    """Fields every on-policy actor-critic config shares (PPO, A2C), besides loop.AgentConfig's.

    Static (shape-setting): num_steps, layer_norm, shared_torso, anneal_lr, normalize_advantages,
    normalize_reward, prediction_size (width m of an extra prediction head y(s) whose logits reach
    the objective; 0: none), objective (a registered objective's spec {"name": ..., **options},
    objectives.REGISTRY, frozen; () = the algorithm's).
    Leaves (vmappable): gae_lambda, ent_coef, vf_coef, init_log_std, adam_eps_root (Adam's
    sqrt(v + eps_root): 0, optax's default, for training; > 0 to differentiate through updates,
    as meta-gradients do: d sqrt(v)/dv is infinite at v = 0).
    """

    num_steps: int = C.static(128)
    layer_norm: bool = C.static(False)
    shared_torso: bool = C.static(False)
    anneal_lr: bool = C.static(False)
    normalize_advantages: bool = C.static(True)
    normalize_reward: bool = C.static(False)
    prediction_size: int = C.static(0)
    objective: tuple[tuple[str, Any], ...] = C.static(())
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    init_log_std: float = 0.0
    adam_eps_root: float = 0.0

    def validate(self) -> None:
        super().validate()
        C.check_positive_int(self, "num_steps")
        if self.total_timesteps < self.num_envs * self.num_steps:
            raise ValueError(
                f"{type(self).__name__}.total_timesteps={self.total_timesteps}: must be at least "
                f"one rollout, num_envs * num_steps = {self.num_envs * self.num_steps}"
            )
        C.check_choice(self, "policy", ("auto", *HEADS))
        if self.prediction_size < 0:
            raise ValueError(
                f"{type(self).__name__}.prediction_size={self.prediction_size}: must be >= 0"
            )
        C.check_range(self, "gae_lambda", 0.0, 1.0)
        C.check_range(self, "max_grad_norm", 0.0, np.inf, low_open=True)
        C.check_range(self, "ent_coef", 0.0, np.inf)
        C.check_range(self, "vf_coef", 0.0, np.inf)
        C.check_range(self, "adam_eps_root", 0.0, np.inf)

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)

    # PPO's clipping (PPOConfig overrides both); the objectives read them.
    @property
    def surrogate_clip(self) -> float:
        """The clip range of the "ppo_clip" objective when its spec gives none (PPO: clip_eps)."""
        return 0.2

    @property
    def value_clip(self) -> float | None:
        """The value loss's clip range, None for the unclipped loss (PPO's clip_value_loss)."""
        return None


def resolve_policy(cfg, action_space) -> str:
    if cfg.policy != "auto":
        return cfg.policy
    return "categorical" if spaces.is_discrete(action_space) else "gaussian"


def resolve_objective(cfg, objective, default) -> objectives.Objective:
    """The objective to train with: `objective` (an Objective, or a per-sample policy loss
    function, wrapped in GAE + value loss), else the config's `objective` spec, else `default`."""
    if objective is None:
        return objectives.build(cfg.objective, cfg) if cfg.objective else default
    if isinstance(objective, objectives.Objective):
        return objective
    if callable(objective):
        return objectives.actor_critic(cfg, objective)
    raise TypeError(f"objective must be an Objective or a policy-loss function, got {objective!r}")


def make_network(cfg, action_space, head) -> ActorCritic:
    is_mixture = isinstance(head, GaussianMixture)
    return ActorCritic(
        action_dim=spaces.action_dim(action_space),
        head_kind="categorical" if head.discrete else ("mixture" if is_mixture else "gaussian"),
        num_experts=cfg.num_experts,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        layer_norm=cfg.layer_norm,
        shared=cfg.shared_torso,
        init_log_std=cfg.init_log_std,
        prediction_size=cfg.prediction_size,
    )


def policy_rollout(env, network, head, params, state, key, num_steps: int):
    """`num_steps` steps of every env with the policy `params`, from `state`'s envs:
    (env_state, obs, traj, data), data the rollout's `[T, N]` obs, action, log_prob, reward,
    terminated and truncated (purejaxrl/objectives.py; the loop adds the values)."""

    def act(k, obs):
        out = network.apply(params, obs, method=ActorCritic.actor)
        action, log_prob = head.sample_and_log_prob(k, out)
        return action, log_prob, head.to_env(action)

    env_state, obs, traj = rollout(
        env, state.env_params, act, state.env_state, state.obs, key, num_steps
    )
    data = {
        "obs": traj.obs,
        "action": traj.action,
        "log_prob": traj.log_prob,
        "reward": traj.reward,
        "terminated": traj.terminated,
        "truncated": traj.truncated,
    }
    return env_state, obs, traj, data


def make_agent(
    cfg: OnPolicyConfig,
    objective,
    env=None,
    env_params=None,
    progress_fn=None,
    progress_every=None,
    devices=None,
    epochs: int = 1,
    num_minibatches: int = 1,
):
    """Builds the on-policy agent for `cfg` trained on `objective` (see `resolve_objective`),
    `epochs` passes of `num_minibatches` minibatches over each rollout (PPO's; A2C: 1 and 1).

    env / env_params: a custom single env, or params replacing the defaults of `envs.make(cfg.env)`
    (must have their structure). progress_fn(update_step, metrics) runs on the host every
    `progress_every` updates (default ~100 calls per run); None compiles no callback.
    devices: None (one device), an int n (the first n of `jax.devices()`) or a list of devices
    to split the envs and every minibatch over, data parallel (purejaxrl/parallel.py).
    """
    single_env, env_params = make_single_env(cfg, env, env_params)
    vec_env = lambda n: make_env(cfg, single_env, n, normalize_reward=cfg.normalize_reward)
    env = vec_env(cfg.num_envs)
    action_space = env.action_space(env_params)
    head = make_head(resolve_policy(cfg, action_space), action_space, cfg.num_experts)
    network = make_network(cfg, action_space, head)
    objective = pmoe.plug_into_objective(objective, cfg, head)
    objective.check(cfg)
    if objective.time_ordered and cfg.num_envs % num_minibatches:
        raise ValueError(
            f"{type(cfg).__name__}.num_minibatches={num_minibatches}: time-ordered minibatches "
            f"split the {cfg.num_envs} envs into whole columns; num_envs must be divisible by it"
        )
    # Data parallel: constraints that split the envs and each minibatch over the devices; with
    # devices=None none is traced and the program is the one-device one.
    split = (
        None if devices is None else parallel.EnvSplit(devices, cfg.num_envs, type(cfg).__name__)
    )
    # Clipping and Adam run on the parameters raveled into one vector (see `make_sgd`); the
    # optimiser state is the one `optax.flatten` of the same chain would hold.
    optimizer = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.scale_by_adam(eps=1e-5, eps_root=cfg.adam_eps_root),
    )

    def init(key, env_params) -> TrainState:
        def learner(k_params, obs):
            params = network.init(k_params, obs, method=ActorCritic.init_all)
            flat = jax.flatten_util.ravel_pytree(params)[0]
            return {"params": params, "opt_state": optimizer.init(flat)}

        return loop.start(env, env_params, key, learner)

    shape = (cfg.num_envs, cfg.num_steps, epochs, num_minibatches)
    update = make_update(cfg, env, network, head, objective, optimizer, shape, split)
    if split is not None:
        init, update = split.wrap(init, update, parallel.env_leaves(vec_env, env_params, shape[0]))
    parts = (cfg, env, single_env, env_params, network, head, cfg.num_updates, init, update)
    return loop.make_agent(*parts, progress_fn=progress_fn, progress_every=progress_every)


def make_sgd(network, objective, optimizer, context, shape, split):
    """`sgd(unravel, carry, data, perm_keys, step_keys) -> (carry, (stats [E, M, k], ok [E, M]))`:
    `epochs` passes over `data`, each reshuffled (perm_keys `[E]`) into minibatches with one
    gradient step each (step_keys `[E, M]`); carry = (flat params, opt_state, lr, progress). Also
    returns `stat_names`, the rows of the stats (filled at trace time)."""
    num_envs, num_steps, _, num_minibatches = shape
    batch_size = num_envs * num_steps
    spread = (lambda tree, axis: tree) if split is None else split.split

    def epoch_batches(data, key):
        """One epoch's `num_minibatches` minibatches of `data`, freshly shuffled: flat
        `[M, B / M, ...]` (data already flat `[B, ...]`), or env columns `[M, T, N / M, ...]`."""
        if objective.time_ordered:
            perm = loop.shuffle(key, num_envs).reshape(num_minibatches, -1)
            return spread(jax.tree.map(lambda x: jnp.moveaxis(x[:, perm], 1, 0), data), 2)
        perm = loop.shuffle(key, batch_size).reshape(num_minibatches, -1)
        return spread(jax.tree.map(lambda x: x[perm], data), 1)

    def loss_fn(flat, unravel, batch, progress, key):
        params = unravel(flat)
        outputs = network.apply(params, batch["obs"], method=ActorCritic.outputs)
        return objective.loss(outputs, batch, context(params, progress, key))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    stat_names: list[str] = []

    def sgd_step(unravel, carry, inputs):
        """One gradient step on the raveled parameters `flat` `[P]` (`unravel` rebuilds the
        pytree; one vector: the gradient, its clipping, Adam and the skip are a few fused
        kernels, not a set per leaf); skipped when the loss or gradient is not finite. Its stats
        leave as one vector `[k]` (names sorted), zero when skipped."""
        flat, opt_state, lr, progress = carry
        batch, key = inputs
        (loss, aux), grads = grad_fn(flat, unravel, batch, progress, key)
        grad_norm = optax.global_norm(grads)  # the same expression the clip computes: shared
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, opt_state, flat)
        flat = jnp.where(ok, flat - lr * updates, flat)
        opt_state = loop.keep_finite(ok, new_opt_state, opt_state)
        stats = {"loss": loss, "grad_norm": grad_norm, **aux}
        stat_names[:] = sorted(stats)  # at trace time: the rows of the stacked stats
        vector = jnp.stack([jnp.asarray(stats[k], jnp.float32) for k in stat_names])
        return (flat, opt_state, lr, progress), (jnp.where(ok, vector, 0.0), ok)

    def sgd(unravel, carry, data, perm_keys, step_keys):
        def epoch(carry, keys):
            step = functools.partial(sgd_step, unravel)
            return jax.lax.scan(step, carry, (epoch_batches(data, keys[0]), keys[1]))

        return jax.lax.scan(epoch, carry, (perm_keys, step_keys))

    return sgd, stat_names


def make_update(cfg, env, network, head, objective, optimizer, shape, split):
    """`update(state) -> (state, metrics)`: collect a rollout, the objective's targets, then
    `epochs` x `num_minibatches` gradient steps (shape = (num_envs, num_steps, epochs,
    num_minibatches)); `split` (parallel.EnvSplit or None) places the data over devices."""
    num_envs, num_steps, epochs, num_minibatches = shape
    batch_size, num_updates = num_envs * num_steps, cfg.num_updates
    whole = (lambda tree: tree) if split is None else split.replicate

    def context(params, progress, key):
        apply = lambda *args, method=None: network.apply(params, *args, method=method)
        return objectives.Context(head, apply, progress, num_updates, key)

    sgd, stat_names = make_sgd(network, objective, optimizer, context, shape, split)

    def collect(state, key):
        """Rollout `[T, N]` dict (see objectives) with values; the envs' new state and obs."""
        env_state, obs, traj, data = policy_rollout(
            env, network, head, state.params, state, key, num_steps
        )
        # Values of every observation and every pre-reset next observation: one batched call.
        both = jnp.concatenate([traj.obs, traj.final_obs], axis=0)
        values = network.apply(state.params, both, method=ActorCritic.critic)
        data.update(value=values[:num_steps], next_value=values[num_steps:])
        if objective.needs_next_obs:  # opt-in (LPG's y(s_t+1)): other objectives' data unchanged
            data["next_obs"] = traj.final_obs
        return env_state, obs, traj, data

    def update(state: TrainState):
        rng, k_roll, k_perm = jax.random.split(state.rng, 3)
        progress = state.update_step / num_updates
        lr = (
            cfg.learning_rate * jnp.maximum(1.0 - progress, 0.0)
            if cfg.anneal_lr
            else cfg.learning_rate
        )
        env_state, obs, traj, data = collect(state, k_roll)
        k_targets, k_steps = jax.random.split(jax.random.fold_in(k_perm, 1))
        data.update(objective.targets(data, context(state.params, progress, k_targets)))
        if not objective.time_ordered:  # flat once; each epoch gathers its minibatches
            data = jax.tree.map(lambda x: x.reshape((batch_size, *x.shape[2:])), data)
        data = whole(data)  # data parallel: every device gathers its minibatch shares from it
        perm_keys = jax.random.split(k_perm, epochs)
        step_keys = jax.random.split(k_steps, epochs * num_minibatches)
        step_keys = step_keys.reshape(epochs, num_minibatches, *step_keys.shape[1:])
        flat, unravel = jax.flatten_util.ravel_pytree(state.params)
        carry = (flat, state.opt_state, lr, progress)
        (flat, opt_state, _, _), (stats, ok) = sgd(unravel, carry, data, perm_keys, step_keys)
        params = unravel(flat)
        stats = dict(zip(stat_names, stats.reshape(-1, len(stat_names)).T, strict=True))
        metrics = loop.mean_where(stats, ok.reshape(-1))
        metrics.update(
            nan_skipped=ok.size - jnp.sum(ok), learning_rate=jnp.asarray(lr, jnp.float32)
        )
        info = {"episode_done": traj.episode_done, "episode_return": traj.episode_return}
        info["episode_length"] = traj.episode_length
        new = dict(params=params, opt_state=opt_state, env_state=env_state, obs=obs, rng=rng)
        return loop.finish(state, info, metrics, batch_size, **new)

    return update
