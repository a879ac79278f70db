"""The on-policy actor-critic training loop shared by PPO and A2C (and learned policy losses).

One update = rollout (`num_steps` x `num_envs`) -> values of every observation and of every final
observation in one batched critic call -> GAE -> `update_epochs` x `num_minibatches` gradient steps
on `policy_loss + vf_coef * value_loss - ent_coef * entropy`. The whole run is `lax.scan` over
updates inside `train(key)`, so `jax.jit(jax.vmap(train))(keys)` is one XLA program.

Any minibatch whose loss or gradient is not finite is skipped (parameters and optimiser state kept)
and counted in `metrics["nan_skipped"]`.

With `policy="pmoe"` and `num_experts` K > 1 the policy is a Gaussian mixture (PMOE). An action-
value Q(s, a) = V(s) + A(h(s), a) scores one reparameterised proposal per expert: A is a one-hidden-
layer head (`params["params"]["mixture_q"]`) on the critic's last hidden features h, trained on the
GAE return targets with weight `vf_coef`; h and V are held constant in its loss (no gradient from it
reaches the critic or the actor). Proposals are drawn and scored once per update, by the update-
start policy and Q (the scores are constants of every minibatch loss), and `mixture_grad` decides
how the mixture is credited (purejaxrl/pmoe.py): "pmoe" sends the surrogate's gradient through the
best-scoring expert only and regresses the weights onto one_hot(k*); "gumbel" and "score" send the
surrogate's gradient to every expert and train the weights to raise the (batch normalised) Q of the
chosen expert's proposal, by Gumbel-softmax relaxation or by REINFORCE. The probability ratio always
uses the exact mixture likelihood. K = 1 is the Gaussian policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

import envs
from envs import spaces, wrappers
from purejaxrl import config as C
from purejaxrl import pmoe
from purejaxrl.distributions import HEADS, GaussianMixture, make_head
from purejaxrl.gae import gae
from purejaxrl.losses import value_loss
from purejaxrl.networks import ACTIVATIONS, ActorCritic
from purejaxrl.rollout import rollout


@struct.dataclass
class TrainState:
    """Everything a run carries between updates (a pytree; leading seed axis under vmap)."""

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array  # [num_envs, obs_dim]
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
    """The pieces `make_agent` builds; `train(key)` is the one-program run."""

    config: Any
    env: Any  # the vectorised training env
    single_env: Any  # one env with the agent's action wrappers and EpisodeStatistics
    env_params: Any
    network: ActorCritic
    head: Any
    num_updates: int
    init: Callable[[jax.Array], TrainState]
    update: Callable[[TrainState], tuple[TrainState, dict]]
    run: Callable[..., TrainOutput]  # run(state, num_updates) -> TrainOutput
    train: Callable[[jax.Array], TrainOutput]


def raw_key(key: jax.Array) -> jax.Array:
    """Accepts typed (`jax.random.key`) or raw (`PRNGKey`) keys; returns a raw uint32 key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def scan_updates(update, state, num_updates: int, progress_fn=None, progress_every: int = 1):
    """`lax.scan` of `update(state) -> (state, metrics)` for `num_updates` steps -> TrainOutput.

    With `progress_fn`, calls it on the host every `progress_every` updates and at the last one
    (`jax.debug.callback` inside a `lax.cond` on the unbatched scan index, so under a vmap over
    seeds it stays a cond).
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


def _q_of_action(network, obs, action):
    """Touches every parameter of a mixture ActorCritic (for `init`): Q(obs, action) `[B]`."""
    _, value, features = network.with_features(obs)
    return network.action_value(features, value, action)


def validate(cfg) -> None:
    """Raises ValueError naming the first bad field; numeric leaves only when concrete."""
    for field in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches"):
        if hasattr(cfg, field):
            C.check_positive_int(cfg, field)
    minibatches = getattr(cfg, "num_minibatches", 1)
    batch = cfg.num_envs * cfg.num_steps
    if batch % minibatches:
        raise ValueError(
            f"{type(cfg).__name__}.num_minibatches={minibatches}: num_envs * num_steps = "
            f"{cfg.num_envs} * {cfg.num_steps} = {batch} must be divisible by num_minibatches"
        )
    if cfg.total_timesteps < cfg.num_envs * cfg.num_steps:
        raise ValueError(
            f"{type(cfg).__name__}.total_timesteps={cfg.total_timesteps}: must be at least one "
            f"rollout, num_envs * num_steps = {cfg.num_envs * cfg.num_steps}"
        )
    C.check_hidden_sizes(cfg)
    C.check_choice(cfg, "activation", ACTIVATIONS)
    C.check_choice(cfg, "policy", ("auto", *HEADS))
    pmoe.check_mixture_fields(cfg)
    C.check_range(cfg, "gamma", 0.0, 1.0)
    C.check_range(cfg, "gae_lambda", 0.0, 1.0)
    C.check_range(cfg, "learning_rate", 0.0, np.inf, low_open=True)
    C.check_range(cfg, "max_grad_norm", 0.0, np.inf, low_open=True)
    C.check_range(cfg, "ent_coef", 0.0, np.inf)
    C.check_range(cfg, "vf_coef", 0.0, np.inf)
    if hasattr(cfg, "clip_eps"):
        C.check_range(cfg, "clip_eps", 0.0, np.inf, low_open=True)
    C.check_range(cfg, "obs_noise_sigma", 0.0, np.inf)
    C.check_positive_int(cfg, "frame_stack")


def make_single_env(cfg, env=None, env_params=None):
    """One env as the agent sees it: the agent acts in [-1, 1] on continuous action spaces.

    make(cfg.env) [-> RescaleAction -> ClipAction] [-> ObservationNoise(obs_noise_sigma)]
    [-> FrameStack(frame_stack)] -> EpisodeStatistics. Pass `env`/`env_params` to use a custom
    single env (it must auto-reset and follow envs.core's API). The noise wrapper is left out
    when `obs_noise_sigma` is a concrete 0 (a tracer always gets it: sigma = 0 is then exact),
    the frame stack when `frame_stack` is 1. Evaluation reuses this env, so it sees the same noise.
    """
    if env is None:
        env, env_params = envs.make(cfg.env, **dict(cfg.env_kwargs))
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


def make_env(cfg, single_env, num_envs: int, train: bool = True, obs_stats=None):
    """Vectorises `single_env` and adds the normalisers the config asks for.

    Training: VecEnv -> [NormalizeObservation] -> [NormalizeReward(gamma)].
    Evaluation (`train=False`): VecEnv -> [NormalizeObservation frozen at `obs_stats`].
    """
    env = wrappers.VecEnv(single_env, num_envs)
    if cfg.normalize_obs:
        env = wrappers.NormalizeObservation(env, update=train, stats=obs_stats)
    if cfg.normalize_reward and train:
        env = wrappers.NormalizeReward(env, gamma=cfg.gamma)
    return env


def resolve_policy(cfg, action_space) -> str:
    if cfg.policy != "auto":
        return cfg.policy
    return "categorical" if spaces.is_discrete(action_space) else "gaussian"


def make_agent(cfg, policy_loss, env=None, env_params=None, progress_fn=None, progress_every=None):
    """Builds the on-policy agent for `cfg` with the pluggable `policy_loss` (see purejaxrl.losses).

    progress_fn(update_step [seeds...], metrics: dict) runs on the host every `progress_every`
    updates (default: ~100 calls per run) through `jax.debug.callback`; None compiles no callback.
    """
    validate(cfg)
    single_env, env_params = make_single_env(cfg, env, env_params)
    env = make_env(cfg, single_env, cfg.num_envs)
    action_space = env.action_space(env_params)
    head = make_head(resolve_policy(cfg, action_space), action_space, cfg.num_experts)
    is_mixture = isinstance(head, GaussianMixture)
    network = ActorCritic(
        action_dim=spaces.action_dim(action_space),
        head_kind="categorical" if head.discrete else ("mixture" if is_mixture else "gaussian"),
        num_experts=cfg.num_experts,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        layer_norm=cfg.layer_norm,
        shared=cfg.shared_torso,
        init_log_std=cfg.init_log_std,
    )
    # A mixture of K > 1 experts needs a critic of actions to score each expert's proposal.
    use_q = is_mixture and cfg.num_experts > 1
    num_envs, num_steps = cfg.num_envs, cfg.num_steps
    batch_size = num_envs * num_steps
    num_updates = cfg.total_timesteps // batch_size
    epochs = getattr(cfg, "update_epochs", 1)
    num_minibatches = getattr(cfg, "num_minibatches", 1)
    minibatch_size = batch_size // num_minibatches
    value_clip = cfg.clip_eps if getattr(cfg, "clip_value_loss", False) else None
    # Flattened: clipping and Adam run on one vector instead of one kernel set per leaf.
    optimizer = optax.flatten(
        optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam(eps=1e-5))
    )
    if progress_every is None:
        progress_every = max(1, num_updates // 100)

    def init(key) -> TrainState:
        key = raw_key(key)
        k_params, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = env.reset(k_env, env_params)
        if use_q:  # every parameter, the Q head's included
            actions = jnp.zeros((num_envs, spaces.action_dim(action_space)))
            params = network.init(k_params, obs, actions, method=_q_of_action)
        else:
            params = network.init(k_params, obs)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            env_state=env_state,
            obs=obs,
            rng=k_run,
            update_step=jnp.zeros((), jnp.int32),
            last_return=jnp.zeros((), jnp.float32),
            last_length=jnp.zeros((), jnp.float32),
        )

    def act(params, key, obs):
        out = network.apply(params, obs, method=network.actor)
        action, log_prob = head.sample_and_log_prob(key, out)
        return action, log_prob, head.to_env(action)

    def score_proposals(params, key, obs):
        """Q(s, u_k) of one reparameterised proposal per expert `[B, K]` for observations `[B, ...]`,
        from the given (update-start) parameters: constants of the minibatch losses."""
        out, value, features = network.apply(params, obs, method=network.with_features)
        proposals, _ = head.sample_experts(key, out)  # [B, K, d]
        actions = head.to_env(proposals)
        return network.apply(params, features, value, actions, method=network.action_value)

    def mixture_terms(params, out, values, features, batch):
        """K > 1 experts: (head outputs for the surrogate, extra loss, aux metrics); see the top."""
        action = head.to_env(batch["action"])
        q_taken = network.apply(params, features, values, action, method=network.action_value)
        q_loss = 0.5 * jnp.mean((q_taken - batch["targets"]) ** 2)
        scores = batch["scores"]
        logits = out[0]
        if cfg.mixture_grad == "pmoe":
            best = pmoe.best_expert(scores)
            surrogate_out = pmoe.only_expert(out, best)
            weight_loss = pmoe.weight_regression_loss(logits, best)
        else:
            surrogate_out = pmoe.frozen_weights(out)
            scale = scores.std() + 1e-8
            center = scores.mean()
            if cfg.mixture_grad == "gumbel":
                y = pmoe.gumbel_softmax(batch["key"], logits, cfg.gumbel_temperature)
                weight_loss = -jnp.mean(pmoe.relaxed_choice(y, (scores - center) / scale))
            else:
                chosen = head.sample_expert_index(batch["key"], out)
                weight_loss = -pmoe.score_function_term(logits, chosen, (scores - center) / scale)
        extra = cfg.vf_coef * q_loss + cfg.mixture_coef * weight_loss
        aux = {
            "q_loss": q_loss,
            "weight_loss": weight_loss,
            "weight_max": jnp.mean(jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)),
        }
        return surrogate_out, extra, aux

    def loss_fn(params, batch, progress):
        extra, mixture_aux = 0.0, {}
        if use_q:
            out, values, features = network.apply(
                params, batch["obs"], method=network.with_features
            )
            surrogate_out, extra, mixture_aux = mixture_terms(params, out, values, features, batch)
        else:
            out, values = network.apply(params, batch["obs"])
            surrogate_out = out
        log_prob = head.log_prob(surrogate_out, batch["action"])
        entropy = head.entropy(out)
        advantages = batch["advantages"]
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss, aux = policy_loss(
            log_prob - batch["log_prob"], advantages, progress, {"entropy": entropy}
        )
        v_loss = value_loss(values, batch["values"], batch["targets"], value_clip)
        ent = jnp.mean(entropy)
        total = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent + extra
        aux = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, **aux, **mixture_aux}
        return total, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def sgd_step(carry, batch):
        params, opt_state, lr, progress = carry
        (loss, aux), grads = grad_fn(params, batch, progress)
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        params, opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
        stats = {"loss": loss, "grad_norm": grad_norm, **aux}
        stats = jax.tree.map(lambda x: jnp.where(ok, x, 0.0), stats)
        return (params, opt_state, lr, progress), (stats, ok)

    def update(state: TrainState):
        rng, k_roll, k_perm = jax.random.split(state.rng, 3)
        progress = state.update_step / num_updates
        lr = cfg.learning_rate * (1.0 - progress) if cfg.anneal_lr else cfg.learning_rate
        env_state, obs, traj = rollout(
            env,
            env_params,
            lambda k, o: act(state.params, k, o),
            state.env_state,
            state.obs,
            k_roll,
            num_steps,
        )
        # Values of every observation and every pre-reset next observation: one batched call each.
        both = jnp.concatenate([traj.obs, traj.final_obs], axis=0)
        both_values = network.apply(state.params, both, method=network.critic)
        values, next_values = both_values[:num_steps], both_values[num_steps:]
        advantages, targets = gae(
            traj.reward,
            values,
            next_values,
            traj.terminated,
            traj.truncated,
            cfg.gamma,
            cfg.gae_lambda,
        )
        flat = lambda x: x.reshape((batch_size, *x.shape[2:]))
        data = {
            "obs": flat(traj.obs),
            "action": flat(traj.action),
            "log_prob": flat(traj.log_prob),
            "values": flat(values),
            "targets": flat(targets),
            "advantages": flat(advantages),
        }
        # All epochs' shuffles at once: [epochs * minibatches, minibatch_size] indices.
        perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(
            jax.random.split(k_perm, epochs)
        ).reshape(epochs * num_minibatches, minibatch_size)
        if use_q:  # proposals scored once per update, by the update-start policy and Q
            k_score, k_choice = jax.random.split(jax.random.fold_in(k_perm, 1))
            data["scores"] = score_proposals(state.params, k_score, data["obs"])
        minibatches = jax.tree.map(lambda x: x[perms], data)
        if use_q:
            minibatches["key"] = jax.random.split(k_choice, epochs * num_minibatches)
        (params, opt_state, _, _), (stats, ok) = jax.lax.scan(
            sgd_step, (state.params, state.opt_state, lr, progress), minibatches
        )
        num_ok = jnp.sum(ok)
        metrics = {k: jnp.sum(v) / jnp.maximum(num_ok, 1) for k, v in stats.items()}

        last_return, last_length, count = episode_metrics(
            traj.episode_done, traj.episode_return, traj.episode_length, state
        )
        update_step = state.update_step + 1
        metrics.update(
            episode_return=last_return,
            episode_length=last_length,
            episodes_finished=count,
            env_steps=update_step * batch_size,
            nan_skipped=ok.size - num_ok,
            learning_rate=jnp.asarray(lr, jnp.float32),
        )
        new_state = TrainState(
            params=params,
            opt_state=opt_state,
            env_state=env_state,
            obs=obs,
            rng=rng,
            update_step=update_step,
            last_return=last_return.astype(jnp.float32),
            last_length=last_length.astype(jnp.float32),
        )
        return new_state, metrics

    def run(state: TrainState, num_updates: int = num_updates) -> TrainOutput:
        return scan_updates(update, state, num_updates, progress_fn, progress_every)

    def train(key) -> TrainOutput:
        return run(init(key), num_updates)

    return Agent(
        config=cfg,
        env=env,
        single_env=single_env,
        env_params=env_params,
        network=network,
        head=head,
        num_updates=num_updates,
        init=init,
        update=update,
        run=run,
        train=train,
    )


@C.dataclass(frozen=True)
class OnPolicyConfig:
    """Fields every on-policy actor-critic config shares (PPO, A2C).

    Static (shape-setting): env, env_kwargs, sizes, counts, network and head choices, switches,
    frame_stack (the policy sees the last `frame_stack` observations, concatenated).
    Leaves (vmappable): learning_rate, gamma, gae_lambda, ent_coef, vf_coef, max_grad_norm,
    init_log_std, gumbel_temperature, mixture_coef, obs_noise_sigma (std of the Gaussian noise
    added to every observation in training and evaluation: policy smoothing, Kumar et al. 2022).
    """

    env: str = C.static("CartPole-v1")
    env_kwargs: tuple = C.static(
        ()
    )  # frozen kwargs for envs.make, e.g. (("max_steps_in_episode", 200),)
    total_timesteps: int = C.static(1_000_000)
    num_envs: int = C.static(16)
    num_steps: int = C.static(128)
    hidden_sizes: tuple = C.static((64, 64))
    activation: str = C.static("tanh")
    layer_norm: bool = C.static(False)
    shared_torso: bool = C.static(False)
    policy: str = C.static("auto")  # auto | categorical | gaussian | tanh_gaussian | pmoe
    num_experts: int = C.static(1)  # mixture experts K (policy="pmoe")
    mixture_grad: str = C.static("pmoe")  # pmoe | gumbel | score (purejaxrl/pmoe.py)
    anneal_lr: bool = C.static(False)
    normalize_advantages: bool = C.static(True)
    normalize_obs: bool = C.static(False)
    normalize_reward: bool = C.static(False)
    frame_stack: int = C.static(1)  # observations stacked (envs.wrappers.FrameStack)
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    init_log_std: float = 0.0
    gumbel_temperature: float = 0.5  # mixture_grad="gumbel"
    mixture_coef: float = 1.0  # weight of the mixing weights' loss
    obs_noise_sigma: float = 0.0  # observation noise std (envs.wrappers.ObservationNoise)

    def __post_init__(self):
        if not isinstance(self.env_kwargs, tuple):
            object.__setattr__(self, "env_kwargs", C.freeze_mapping(self.env_kwargs))
        if isinstance(self.hidden_sizes, list):
            object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)
