"""Soft actor-critic (continuous actions): tanh-Gaussian actor, twin Q critics, learned temperature.

    cfg = sac.SACConfig(env="Pendulum-v1", total_timesteps=20_000)
    out = jax.jit(jax.vmap(sac.make_train(cfg)))(jax.random.split(jax.random.key(0), 4))

One update = one vector env step (`num_envs` transitions into the replay buffer) followed by
`grad_steps = round(utd_ratio * num_envs)` gradient steps, each on a fresh uniform batch of
`batch_size` transitions. The first `ceil(learning_starts / num_envs)` updates (env steps
`< learning_starts`) act uniformly at random in [-1, 1] and take no gradient step (a `lax.cond` on
the update counter: a real branch unbatched, a select under a vmap over seeds). The whole run is a
`lax.scan` over updates, so `jax.jit(jax.vmap(train))(keys)` is one XLA program.

A gradient step, on a batch (s, a, r, s', terminated) with alpha = exp(log_alpha):
- critics: y = r + gamma (1 - terminated) (min_i Q_targ_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s');
  loss = sum_i mean (Q_i(s, a) - y)^2. Truncated episodes bootstrap from the pre-reset s'
  (`info["final_observation"]`); only termination cuts the bootstrap.
- actor: mean(alpha log pi(a~|s) - min_i Q_i(s, a~)), a~ reparameterised, critics just updated.
- temperature (autotune_alpha): loss = -log_alpha mean(log pi(a~|s) + target_entropy), with
  target_entropy = -target_entropy_scale * action_dim.
- targets: theta_targ <- tau theta + (1 - tau) theta_targ (Polyak).
A gradient step whose losses or gradients are not finite is skipped whole (parameters, targets,
temperature and optimiser states kept) and counted in `metrics["nan_skipped"]`.

Mixture policies (`policy="pmoe"`, `num_experts` K): K tanh-squashed Gaussian experts from one
torso plus a softmax weight head (distributions.GaussianMixture). Acting and the critic's next
action pick k ~ Categorical(w) and sample that expert; the soft target uses the exact mixture
log-density. Every actor step samples one reparameterised action u_k per expert, scores each with
min_i Q_i, and `mixture_grad` (purejaxrl/pmoe.py) sets the actor loss:
- "pmoe": k* = argmax_k Q(s, a_k); loss = mean(alpha log pi_k*(a_k*) - Q(s, a_k*)) (only expert
  k* gets actor gradient) + mixture_coef * mean ||w(s) - one_hot(k*)||^2; alpha is tuned on
  log pi_k*(a_k*). That is the paper's expert density (`pmoe_log_prob="expert"`);
  `pmoe_log_prob="mixture"` uses the mixture's density log pi(a_k*) instead (still only expert k*
  gets gradient), which credits the mixture with the entropy of holding several modes.
- "gumbel": y = gumbel_softmax(logits, gumbel_temperature); f_k = alpha log pi(u_k) - Q(s, a_k)
  with the mixture density pi; loss = mean(sum_k y_k f_k).
- "score": k ~ w; f_k = alpha log pi(u_k) - Q(s, a_k); loss = mean(f_k) plus the REINFORCE term
  stop_grad(f_k - sum_j w_j f_j) log w_k for the weights.
With K = 1 (any estimator reduces to it) the mixture is the tanh-Gaussian policy.

The actor acts in [-1, 1]: actions are stored post-tanh in the buffer and reach the env through
`actor_critic.make_single_env`'s RescaleAction/ClipAction. `state.params` holds actor and critic
parameters together, so `network.apply(state.params, obs, method=network.actor)` gives the
`TanhGaussian` head's (mean, log_std) and `purejaxrl.evaluation.evaluate` works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs import spaces
from purejaxrl import config as C
from purejaxrl import loop, pmoe, replay
from purejaxrl.distributions import GaussianMixture, TanhGaussian
from purejaxrl.initializers import orthogonal, spread_expert_means, stacked_orthogonal
from purejaxrl.networks import MLP, TwinMLP

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # the SAC actor's log-std range (squashed by tanh)


@C.dataclass(frozen=True)
class SACConfig(loop.AgentConfig):
    """SAC settings. Defaults follow rejax's reference SAC (256x256 relu, lr 3e-4, tau 0.005).

    Besides loop.AgentConfig's fields (with SAC's defaults here): static buffer_size, batch_size,
    learning_starts (warm-up env steps with uniform random actions, no gradient steps), utd_ratio
    (gradient steps per env step: each update of `num_envs` transitions takes
    `round(utd_ratio * num_envs)` gradient steps, which must be >= 1), autotune_alpha,
    pmoe_log_prob (the "pmoe" entropy term: the expert's or the mixture's density); leaves tau,
    init_alpha, target_entropy_scale. learning_rate is shared by actor, critics and temperature;
    max_grad_norm clips each optimiser's global norm (inf = off).
    """

    env: str = C.static("Pendulum-v1")
    total_timesteps: int = C.static(100_000)
    num_envs: int = C.static(1)
    hidden_sizes: tuple[int, ...] = C.static((256, 256))
    activation: str = C.static("relu")
    policy: Literal["tanh_gaussian", "pmoe"] = C.static("tanh_gaussian")
    max_grad_norm: float = float("inf")
    buffer_size: int = C.static(100_000)
    batch_size: int = C.static(256)
    learning_starts: int = C.static(1000)
    utd_ratio: float = C.static(1.0)
    autotune_alpha: bool = C.static(True)
    pmoe_log_prob: Literal["expert", "mixture"] = C.static("expert")
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy_scale: float = 1.0

    def validate(self) -> None:
        super().validate()
        name, ls = type(self).__name__, self.learning_starts
        C.check_positive_int(self, "buffer_size")
        C.check_positive_int(self, "batch_size")
        if ls < 0:
            raise ValueError(f"{name}.learning_starts={ls!r}: must be a non-negative integer")
        if self.total_timesteps < self.num_envs:
            raise ValueError(
                f"{name}.total_timesteps={self.total_timesteps}: must be at least num_envs="
                f"{self.num_envs} (one vector step)"
            )
        for need, what in (
            (self.batch_size, f"be at least batch_size={self.batch_size}"),
            (self.num_envs, f"hold one vector step, num_envs={self.num_envs}"),
            (ls, f"hold the warm-up, learning_starts={ls}"),
        ):
            if self.buffer_size < need:
                raise ValueError(f"{name}.buffer_size={self.buffer_size}: must {what}")
        if ls >= self.total_timesteps:
            raise ValueError(
                f"{name}.learning_starts={ls}: must be below total_timesteps="
                f"{self.total_timesteps}, or no gradient step is ever taken"
            )
        if not self.utd_ratio > 0 or self.grad_steps < 1:
            raise ValueError(
                f"{name}.utd_ratio={self.utd_ratio!r}: round(utd_ratio * num_envs) = "
                f"round({self.utd_ratio} * {self.num_envs}) = {self.grad_steps} gradient steps "
                "per update; must be >= 1"
            )
        C.check_range(self, "tau", 0.0, 1.0, low_open=True)
        C.check_range(self, "init_alpha", 0.0, np.inf, low_open=True)
        C.check_range(self, "target_entropy_scale", -np.inf, np.inf)
        value = self.max_grad_norm
        if C.is_value(value) and not (np.all(np.asarray(value, np.float64) > 0)):
            raise ValueError(
                f"{name}.max_grad_norm={value!r}: must be > 0 (inf turns clipping off)"
            )

    @property
    def num_steps(self) -> int:
        """Env steps per env in one update: 1 (an update is one vector step), as
        OnPolicyConfig.num_steps counts them (env steps per update = num_envs * num_steps)."""
        return 1

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.num_envs

    @property
    def grad_steps(self) -> int:
        """Gradient steps per update (per vector env step of `num_envs` transitions)."""
        return int(round(self.utd_ratio * self.num_envs))

    @property
    def warmup_updates(self) -> int:
        """Updates whose env steps all or partly fall below `learning_starts`."""
        return -(-self.learning_starts // self.num_envs)


# --------------------------------------------------------------------------- network


class Actor(nn.Module):
    """obs [B, obs_dim] -> (mean [B, A], log_std [B, A]) of the pre-squash Gaussian; log_std is
    squashed into [LOG_STD_MIN, LOG_STD_MAX] by a rescaled tanh.

    With `num_experts` = K (a mixture): (logits [B, K], mean [B, K, A], log_std [B, K, A]), the
    experts' means and log-stds from one output layer, the logits from their own layer (K > 1; for
    K = 1 the logits are 0 and the parameters are the Gaussian actor's)."""

    action_dim: int
    hidden_sizes: tuple
    activation: str
    num_experts: int | None = None  # None: the plain Gaussian actor

    @nn.compact
    def __call__(self, obs):
        h = MLP(tuple(self.hidden_sizes), self.activation)(obs)
        k = 1 if self.num_experts is None else self.num_experts
        bias_init = nn.initializers.zeros
        if k > 1:  # experts start at different means (K = 1 stays the Gaussian actor)
            bias_init = spread_expert_means(k, self.action_dim, width=2 * self.action_dim)
        out = nn.Dense(k * 2 * self.action_dim, kernel_init=orthogonal(0.01), bias_init=bias_init)(
            h
        )
        if self.num_experts is not None:
            out = out.reshape(*out.shape[:-1], k, 2 * self.action_dim)
        mean, raw = jnp.split(out, 2, axis=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        if self.num_experts is None:
            return mean, log_std
        if k > 1:
            logits = nn.Dense(k, kernel_init=orthogonal(0.01), name="mixture_logits")(h)
        else:
            logits = jnp.zeros((*out.shape[:-2], 1))
        return logits, mean, log_std


class TwinQ(nn.Module):
    """(obs [B, obs_dim], action [B, A]) -> Q [2, B]: both critics as one stacked network
    (networks.TwinMLP torso and a stacked output layer): one parameter tree, one module."""

    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        torso = TwinMLP(tuple(self.hidden_sizes), self.activation)
        # Stacked weights, one plain matmul per member: on XLA:CPU the batched (einsum) form of
        # TwinMLP made the whole SAC step ~1.4x slower at 256x256, batch 256.
        h = jnp.stack([torso(x, member=0), torso(x, member=1)])  # [2, B, h]
        kernel = self.param("q_kernel", stacked_orthogonal(1.0, 2), (2, h.shape[-1], 1))
        bias = self.param("q_bias", nn.initializers.zeros, (2, 1))
        return (jnp.einsum("k...h,kho->k...o", h, kernel) + bias[:, None, :])[..., 0]


class SACNetwork(nn.Module):
    """Actor and twin critics in one parameter tree {"params": {"pi": ..., "q": ...}}.

    `actor(obs)` -> (mean, log_std) for distributions.TanhGaussian (or the mixture's
    (logits, mean, log_std) with `num_experts`); `critic(obs, action)` -> [2, B].
    """

    action_dim: int
    hidden_sizes: tuple = (256, 256)
    activation: str = "relu"
    num_experts: int | None = None

    def setup(self):
        self.pi = Actor(
            self.action_dim, tuple(self.hidden_sizes), self.activation, self.num_experts
        )
        self.q = TwinQ(tuple(self.hidden_sizes), self.activation)

    def actor(self, obs):
        return self.pi(obs)

    def critic(self, obs, action):
        return self.q(obs, action)

    def __call__(self, obs, action):
        return self.actor(obs), self.critic(obs, action)


# --------------------------------------------------------------------------- pure pieces


def td_target(reward, terminated, next_q_min, next_log_prob, alpha, gamma):
    """Soft TD target `[B]`: r + gamma (1 - terminated) (min Q_targ(s', a') - alpha log pi(a'|s')).

    Truncation is not passed in: a truncated step bootstraps like any non-terminal one.
    """
    not_done = 1.0 - terminated.astype(jnp.float32)
    return reward + gamma * not_done * (next_q_min - alpha * next_log_prob)


def polyak(online, target, tau):
    """tau * online + (1 - tau) * target, leaf by leaf."""
    return jax.tree.map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


def mixture_actor_loss(cfg, head, out, min_q, alpha, key):
    """SAC's actor loss for a mixture head (see the module docstring for the three estimators).

    out: GaussianMixture outputs (logits [B, K], mean [B, K, A], log_std [B, K, A]);
    min_q(pre-squash actions [B, n, A]) -> min_i Q_i(s, tanh u) [B, n].
    Returns (loss [], (mean log pi for the temperature [], {"weight_loss", "weight_max"})).
    """
    logits = out[0]
    u, own_log_prob = head.sample_experts(key, out)  # [B, K, A], [B, K]
    weight_loss = jnp.zeros(())
    sg = jax.lax.stop_gradient
    # The critic's backward pass runs on the one action that carries gradient, not on all K.
    q_of = lambda u_k: min_q(u_k[:, None])[:, 0]  # [B, A] -> [B]
    if cfg.mixture_grad == "pmoe":
        best = pmoe.best_expert(min_q(sg(u)))
        u_best = pmoe.select(u, best)
        if cfg.pmoe_log_prob == "expert":
            log_prob = pmoe.select(own_log_prob, best)
        else:  # the mixture's density at a_k*, differentiable in expert k*'s parameters only
            log_prob = head.log_prob(pmoe.only_expert(out, best), u_best)
        loss = jnp.mean(alpha * log_prob - q_of(u_best))
        weight_loss = pmoe.weight_regression_loss(logits, best)
        loss = loss + cfg.mixture_coef * weight_loss
    elif cfg.mixture_grad == "gumbel":
        y = pmoe.gumbel_softmax(jax.random.fold_in(key, 2), logits, cfg.gumbel_temperature)
        mixture_log_prob = jax.vmap(head.log_prob, in_axes=(None, 1), out_axes=1)(out, u)
        f = alpha * mixture_log_prob - min_q(u)  # [B, K]
        log_prob = pmoe.relaxed_choice(jax.lax.stop_gradient(y), mixture_log_prob)
        loss = jnp.mean(pmoe.relaxed_choice(y, f))
    elif cfg.mixture_grad == "score":
        chosen = head.sample_expert_index(key, out)
        mixture_log_prob = jax.vmap(head.log_prob, in_axes=(None, 1), out_axes=1)(out, u)
        f = sg(alpha * mixture_log_prob - min_q(sg(u)))  # [B, K], for the weights' term
        log_prob = pmoe.select(mixture_log_prob, chosen)
        f_chosen = alpha * log_prob - q_of(pmoe.select(u, chosen))
        loss = jnp.mean(f_chosen) + pmoe.score_function_term(logits, chosen, f)
    else:
        raise ValueError(
            f"mixture_grad={cfg.mixture_grad!r}: allowed values are {pmoe.MIXTURE_GRADS}"
        )
    weight_max = jnp.mean(jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1))
    return loss, (jnp.mean(log_prob), {"weight_loss": weight_loss, "weight_max": weight_max})


@struct.dataclass
class SACTrainState(loop.TrainState):
    """loop.TrainState plus SAC's own fields (a pytree; leading run axis under vmap).

    params: {"params": {"pi", "q"}} (SACNetwork variables); opt_state: (actor, critic, alpha)
    optimiser states; target_critic: the critic's Polyak-averaged copy; log_alpha: float32 [];
    buffer: replay.Buffer.
    """

    target_critic: Any
    log_alpha: jax.Array
    buffer: replay.Buffer


LOSS_KEYS = ("q_loss", "actor_loss", "alpha_loss", "alpha", "log_pi", "entropy", "q_mean")
MIXTURE_KEYS = ("weight_loss", "weight_max")


def make_agent(cfg: SACConfig, env=None, env_params=None, progress_fn=None, progress_every=None):
    """Builds the SAC agent for `cfg` (a loop.Agent; `train(key, env_params=None) -> TrainOutput`).

    env / env_params as in actor_critic.make_agent. progress_fn(update_step, metrics) runs on the
    host every `progress_every` updates (default ~100 calls per run); None compiles no callback.
    """
    if not isinstance(cfg, SACConfig):
        raise TypeError(f"sac.make_agent needs a SACConfig, got {type(cfg).__name__}")
    single_env, env_params = loop.make_single_env(cfg, env, env_params)
    action_space = single_env.action_space(env_params)
    if spaces.is_discrete(action_space):
        raise ValueError(
            f"{type(cfg).__name__}.env={cfg.env!r}: SAC needs a continuous (Box) action space, "
            f"got {action_space}"
        )
    env = loop.make_env(cfg, single_env, cfg.num_envs)
    action_dim = spaces.action_dim(action_space)
    is_mixture = cfg.policy == "pmoe"
    if is_mixture:
        head = GaussianMixture(action_dim, cfg.num_experts, squash=True)
    else:
        head = TanhGaussian(action_dim)
    network = SACNetwork(
        action_dim,
        tuple(cfg.hidden_sizes),
        cfg.activation,
        cfg.num_experts if is_mixture else None,
    )
    # Not optax.flatten (as the on-policy loop uses): ravelling every gradient step cost SAC
    # ~1.5x its step time on CPU.
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam())

    def init(key, env_params) -> SACTrainState:
        def learner(k_params, obs):
            action = jnp.zeros((cfg.num_envs, action_dim), jnp.float32)
            params = network.init(k_params, obs, action)
            actor, critic = params["params"]["pi"], params["params"]["q"]
            log_alpha = jnp.log(jnp.asarray(cfg.init_alpha, jnp.float32))
            example = {
                "obs": obs[0],
                "action": action[0],
                "reward": jnp.zeros((), jnp.float32),
                "next_obs": obs[0],
                "terminated": jnp.zeros((), jnp.float32),
            }
            opt_state = (optimizer.init(actor), optimizer.init(critic), optimizer.init(log_alpha))
            return dict(
                params=params,
                opt_state=opt_state,
                target_critic=critic,
                log_alpha=log_alpha,
                buffer=replay.init(example, cfg.buffer_size),
            )

        return loop.start(env, env_params, key, learner, cls=SACTrainState)

    pieces = make_losses(cfg, network, head, is_mixture)
    grad_step = make_grad_step(cfg, pieces, optimizer, -cfg.target_entropy_scale * action_dim)
    update = make_update(cfg, env, pieces.sample_action, grad_step, action_dim, is_mixture)
    parts = (cfg, env, single_env, env_params, network, head, cfg.num_updates, init, update)
    return loop.make_agent(*parts, progress_fn=progress_fn, progress_every=progress_every)


def _variables(actor, critic):
    return {"params": {"pi": actor, "q": critic}}


class Losses(NamedTuple):
    """SAC's differentiable pieces on (actor, critic) parameter trees.

    sample_action(actor, critic, key, obs [B, ...]) -> (a = tanh(u) [B, A], log pi(a|s) [B]);
    critic_grad(critic, actor, target_critic, alpha, batch, key) -> ((loss, mean Q), grads);
    actor_grad(actor, critic, alpha, obs, key) -> ((loss, (mean log pi, mixture stats)), grads).
    """

    sample_action: Callable
    critic_grad: Callable
    actor_grad: Callable


def make_losses(cfg: SACConfig, network, head, is_mixture: bool) -> Losses:
    """The critic's soft TD loss and the actor's loss (plain or mixture), with their gradients."""

    def sample_action(actor, critic, key, obs):
        """Reparameterised a = tanh(u) in (-1, 1) `[B, A]` and log pi(a|s) `[B]`."""
        out = network.apply(_variables(actor, critic), obs, method=SACNetwork.actor)
        u, log_prob = head.sample_and_log_prob(key, out)
        return jnp.tanh(u), log_prob

    def q_values(actor, critic, obs, action):
        return network.apply(_variables(actor, critic), obs, action, method=SACNetwork.critic)

    def critic_loss(critic, actor, target_critic, alpha, batch, key):
        next_action, next_log_prob = sample_action(actor, critic, key, batch["next_obs"])
        next_q = q_values(actor, target_critic, batch["next_obs"], next_action).min(axis=0)
        y = td_target(batch["reward"], batch["terminated"], next_q, next_log_prob, alpha, cfg.gamma)
        y = jax.lax.stop_gradient(y)
        q = q_values(actor, critic, batch["obs"], batch["action"])  # [2, B]
        loss = jnp.sum(jnp.mean((q - y) ** 2, axis=-1))
        return loss, jnp.mean(q)

    def actor_loss(actor, critic, alpha, obs, key):
        """(loss, (mean log pi used for the temperature, mixture metrics))."""
        if not is_mixture:
            action, log_prob = sample_action(actor, critic, key, obs)
            q = q_values(actor, critic, obs, action).min(axis=0)
            return jnp.mean(alpha * log_prob - q), (jnp.mean(log_prob), {})
        out = network.apply(_variables(actor, critic), obs, method=SACNetwork.actor)

        def min_q(pre_squash):  # [B, n, A] -> [B, n]
            b, n = pre_squash.shape[:2]
            flat_obs = jnp.broadcast_to(obs[:, None], (b, n, obs.shape[-1])).reshape(b * n, -1)
            q = q_values(actor, critic, flat_obs, jnp.tanh(pre_squash).reshape(b * n, -1))
            return q.min(axis=0).reshape(b, n)

        return mixture_actor_loss(cfg, head, out, min_q, alpha, key)

    return Losses(
        sample_action,
        jax.value_and_grad(critic_loss, has_aux=True),
        jax.value_and_grad(actor_loss, has_aux=True),
    )


def make_grad_step(cfg: SACConfig, losses: Losses, optimizer, target_entropy):
    """`grad_step(carry, (batch, key)) -> (carry, (stats, ok))`: critics, then the actor on the
    new critics, then the temperature, then the Polyak targets; carry = (params, target_critic,
    log_alpha, (actor, critic, alpha) optimiser states), kept whole when anything is not finite."""

    def apply_updates(params, grads, opt_state):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - cfg.learning_rate * u, params, updates)
        return params, opt_state

    def grad_step(carry, inputs):
        batch, key = inputs
        params, target_critic, log_alpha, opt_state = carry
        actor, critic = params["params"]["pi"], params["params"]["q"]
        opt_actor, opt_critic, opt_alpha = opt_state
        k_next, k_pi = jax.random.split(key)
        alpha = jnp.exp(log_alpha)

        (q_loss, q_mean), g_critic = losses.critic_grad(
            critic, actor, target_critic, alpha, batch, k_next
        )
        new_critic, new_opt_critic = apply_updates(critic, g_critic, opt_critic)
        (a_loss, (log_pi, mixture_stats)), g_actor = losses.actor_grad(
            actor, new_critic, alpha, batch["obs"], k_pi
        )
        new_actor, new_opt_actor = apply_updates(actor, g_actor, opt_actor)
        if cfg.autotune_alpha:
            entropy_gap = jax.lax.stop_gradient(log_pi + target_entropy)
            alpha_loss, g_alpha = jax.value_and_grad(lambda la: -la * entropy_gap)(log_alpha)
            new_log_alpha, new_opt_alpha = apply_updates(log_alpha, g_alpha, opt_alpha)
        else:
            alpha_loss, g_alpha = jnp.zeros(()), jnp.zeros(())
            new_log_alpha, new_opt_alpha = log_alpha, opt_alpha
        new_target = polyak(new_critic, target_critic, cfg.tau)

        norms = [optax.global_norm(g) for g in (g_critic, g_actor, g_alpha)]
        ok = jnp.isfinite(q_loss) & jnp.isfinite(a_loss) & jnp.isfinite(alpha_loss)
        for n in norms:
            ok = ok & jnp.isfinite(n)
        new = (_variables(new_actor, new_critic), new_target, new_log_alpha)
        new = (*new, (new_opt_actor, new_opt_critic, new_opt_alpha))
        carry = loop.keep_finite(ok, new, carry)
        stats = dict(
            q_loss=q_loss,
            actor_loss=a_loss,
            alpha_loss=alpha_loss,
            alpha=alpha,
            log_pi=log_pi,
            entropy=-log_pi,
            q_mean=q_mean,
            **mixture_stats,
        )
        stats = jax.tree.map(lambda x: jnp.where(ok, x, 0.0), stats)
        return carry, (stats, ok)

    return grad_step


def make_update(cfg: SACConfig, env, sample_action, grad_step, action_dim: int, is_mixture: bool):
    """`update(state) -> (state, metrics)`: one vector env step into the buffer (uniform random
    actions during the warm-up), then `grad_steps` gradient steps (none during the warm-up)."""
    num_envs, batch_size, grad_steps = cfg.num_envs, cfg.batch_size, cfg.grad_steps
    loss_keys = LOSS_KEYS + (MIXTURE_KEYS if is_mixture else ())

    def learn(learner, batches, key):
        """`grad_steps` gradient steps, one per batch (leaves `[grad_steps, batch_size, ...]`);
        `learner` = (params, target_critic, log_alpha, opt_state). Per-update means of the losses.
        """
        keys = jax.random.split(key, grad_steps)
        learner, (stats, ok) = jax.lax.scan(grad_step, learner, (batches, keys))
        metrics = loop.mean_where(stats, ok)
        metrics["nan_skipped"] = (grad_steps - jnp.sum(ok)).astype(jnp.int32)
        return learner, metrics

    def no_learning(learner, batches, key):
        metrics = {k: jnp.zeros((), jnp.float32) for k in loss_keys}
        metrics["alpha"] = jnp.exp(learner[2])
        metrics["nan_skipped"] = jnp.zeros((), jnp.int32)
        return learner, metrics

    def update(state: SACTrainState):
        rng, k_act, k_env, k_batch, k_learn = jax.random.split(state.rng, 5)
        warm = state.update_step < cfg.warmup_updates

        def random_action():
            return jax.random.uniform(k_act, (num_envs, action_dim), minval=-1.0, maxval=1.0)

        def policy_action():
            actor = state.params["params"]["pi"]
            critic = state.params["params"]["q"]
            return sample_action(actor, critic, k_act, state.obs)[0]

        action = jax.lax.cond(warm, random_action, policy_action)
        obs, env_state, reward, terminated, _, info = env.step(
            k_env, state.env_state, action, state.env_params
        )
        transitions = {
            "obs": state.obs,
            "action": action,
            "reward": reward.astype(jnp.float32),
            "next_obs": info["final_observation"],
            "terminated": terminated.astype(jnp.float32),
        }
        buffer = replay.add(state.buffer, transitions)
        # All of this update's batches in one gather, outside the cond: the buffer never enters
        # the branch, so XLA updates it in place instead of keeping (copying) the old one alive.
        batches = jax.tree.map(
            lambda x: x.reshape(grad_steps, batch_size, *x.shape[1:]),
            replay.sample(buffer, k_batch, grad_steps * batch_size),
        )
        learner = (state.params, state.target_critic, state.log_alpha, state.opt_state)
        learner, metrics = jax.lax.cond(warm, no_learning, learn, learner, batches, k_learn)
        params, target_critic, log_alpha, opt_state = learner

        learner = dict(params=params, target_critic=target_critic, log_alpha=log_alpha)
        envs = dict(buffer=buffer, env_state=env_state, obs=obs, rng=rng)
        return loop.finish(state, info, metrics, num_envs, opt_state=opt_state, **learner, **envs)

    return update


def make_train(cfg: SACConfig, **kwargs):
    """`train(key, env_params=None) -> TrainOutput`; kwargs: env, env_params, progress_fn,
    progress_every."""
    return make_agent(cfg, **kwargs).train
