"""Meta-training an LPG rule (`meta.lpg_rule`) by meta-gradients over a persistent population.

Oh et al.'s LPG, and with `meta.groove`'s regret curriculum GROOVE: a persistent population of
agents, each on its own level; a meta-step = K agent updates with the rule, then A2C's
-mean(log pi A) on a fresh rollout (A: GAE(0.99, 0.95) of a separate value critic) plus
regularisers on the updated agents, differentiated through the loop's own K updates; Adam 1e-4 on
the rule. Agents whose lives end score their levels and restart on levels from a curriculum
(`SampledLevels`, or a level buffer scored by regret or PVL, `meta.groove`). LPG and TA-LPG (the
TA paper's ablation). See `make_meta_gradient_train`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from meta.lpg_es import LPGConfig, level_lifetime, level_sampler, make_env
from meta.lpg_rule import objective
from purejaxrl import a2c, actor_critic, loop
from purejaxrl import config as C
from purejaxrl.gae import gae
from purejaxrl.initializers import orthogonal
from purejaxrl.networks import MLP, ActorCritic
from purejaxrl.scores import final_return


@dataclasses.dataclass(frozen=True)
class MetaGradientConfig:
    """Settings of the meta-gradient (Oh et al. 2020; the values of the public GROOVE code,
    EmptyJackson/groove, unless stated).

    num_agents: agents trained side by side, each on its own level (the code: 512; 8 by default
    here, sized for a CPU); agent_chunks: the agents' meta-gradients are computed in this many
    sequential chunks of num_agents / agent_chunks vmapped agents (the code's num_mini_batches:
    memory only, the gradient is the same mean); K = num_agent_updates (5) agent updates per
    meta-step; num_steps: meta-steps of `train`; learning_rate: Adam on the rule (1e-4);
    max_grad_norm: optional clip of the rule's gradient norm (None, as the code's default Adam:
    its `--lpg_max_grad_norm` 0.5 applies only to its SGD option); gamma, gae_lambda
    (0.99, 0.95): the meta-objective's GAE with a separate value critic (critic_learning_rate,
    Adam); normalize_advantages: those advantages normalised over each agent's rollout (as the
    code); the regularisers entropy_coef (5e-2), pi_hat_l2_coef (5e-3), y_entropy_coef (1e-3),
    y_hat_l2_coef (1e-3) (see `make_meta_gradient_train`); adam_eps_root: inside the square root
    of the agents' Adam in the differentiated updates; stagger: the first agents start at
    staggered points of their lifetimes (the code starts them all at update 0), so that resets
    spread over the meta-steps instead of all falling on the same one.
    """

    num_agents: int = 8
    agent_chunks: int = 1
    num_agent_updates: int = 5
    num_steps: int = 100
    learning_rate: float = 1e-4
    max_grad_norm: float | None = None
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    entropy_coef: float = 5e-2
    pi_hat_l2_coef: float = 5e-3
    y_entropy_coef: float = 1e-3
    y_hat_l2_coef: float = 1e-3
    critic_learning_rate: float = 1e-3
    adam_eps_root: float = 1e-8
    stagger: bool = True

    def __post_init__(self):
        C.check_types(self)
        for name in ("num_agents", "agent_chunks", "num_agent_updates", "num_steps"):
            C.check_positive_int(self, name)
        positive = ("learning_rate", "critic_learning_rate", "adam_eps_root")
        positive += () if self.max_grad_norm is None else ("max_grad_norm",)
        unit = ("gamma", "gae_lambda")
        coefs = ("entropy_coef", "pi_hat_l2_coef", "y_entropy_coef", "y_hat_l2_coef")
        for name in positive:
            C.check_range(self, name, 0.0, np.inf, low_open=True)
        for name in unit:
            C.check_range(self, name, 0.0, 1.0)
        for name in coefs:
            C.check_range(self, name, -np.inf, np.inf)
        if self.num_agents % self.agent_chunks:
            raise ValueError(
                f"MetaGradientConfig.num_agents={self.num_agents} is not divisible by "
                f"agent_chunks={self.agent_chunks}: every chunk needs the same number of agents"
            )


class _ValueCritic(nn.Module):
    """The meta-objective's own V(s): the agent's torso sizes, then Dense(1)."""

    hidden_sizes: tuple = ()
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs):
        h = MLP(self.hidden_sizes, self.activation)(obs)
        return nn.Dense(1, kernel_init=orthogonal(1.0))(h)[..., 0]


# ---- curricula of the meta-gradient: which level an agent trains on after a reset


def batch_sampler(sample: Callable) -> Callable:
    """`sample_levels(key, n) -> levels [n]` from a one-level `sample(key) -> level`."""
    return lambda key, n: jax.vmap(sample)(jax.random.split(key, n))


def masked_mean(x, mask=True):
    """Mean of `x` over `mask & isfinite(x)` (mask default: every entry); NaN when that set is
    empty (never a 0)."""
    use = mask & jnp.isfinite(x)
    total = jnp.sum(jnp.where(use, x, 0.0))
    return jnp.where(jnp.any(use), total / jnp.maximum(jnp.sum(use), 1), jnp.nan)


@dataclasses.dataclass(frozen=True, eq=False)
class SampledLevels:
    """The meta-gradient's curriculum without a buffer: every reset draws a fresh level from
    `sample_levels(key, n) -> levels [n]` (domain randomisation, or a fixed level set).

    The curriculum interface of `make_meta_gradient_train` (`meta.groove`'s curricula have it
    too, beside the ES one): `metrics` (names of the per-meta-step scalars of `reset`),
    `needs_antagonist` (bool; True: `antagonist_agent`, an `a2c` Agent trained in lockstep
    with every rule agent on its level, whose results reach `reset`), `init(key) -> state`,
    `first_levels(state, key, n, step) -> (state, levels [n], tags [n])` and `reset(state, key,
    done [A], levels [A], tags [A], results, step) -> (state, levels [A], tags [A], metrics)`:
    the levels of the agents that finished (`done`) are scored with `results` {"agent_return":
    [A], plus "antagonist_return", "pvl" [A] with an antagonist}: final returns from finished
    episodes only, NaN when none (or when the agent's life was a staggered, shortened one), and
    those agents get new levels; the other rows of `levels` and `tags` come back unchanged.
    `tags` is a per-agent pytree the curriculum keeps about each agent's level ({} here); `step`
    counts meta-steps (0 at init), so `step * n + i + 1` is a unique level id."""

    sample_levels: Callable
    metrics = ("mean_agent_return",)
    needs_antagonist = False
    antagonist_agent = None

    def init(self, key):
        del key
        return ()

    def first_levels(self, state, key, n, step):
        del step
        return state, self.sample_levels(key, n), {}

    def reset(self, state, key, done, levels, tags, results, step):
        del step
        fresh = self.sample_levels(key, done.shape[0])
        levels = jax.tree.map(lambda new, old: pick(done, new, old), fresh, levels)
        return (
            state,
            levels,
            tags,
            {"mean_agent_return": masked_mean(results["agent_return"], done)},
        )


def pick(mask, new, old):
    """`new` on the rows where `mask [A]`, else `old` (leading axis A)."""
    return jnp.where(mask.reshape(-1, *[1] * (jnp.ndim(old) - 1)), new, old)


def check_curriculum(curriculum) -> None:
    missing = [
        m for m in ("init", "first_levels", "reset") if not callable(getattr(curriculum, m, None))
    ]
    if missing or not hasattr(curriculum, "metrics"):
        raise ValueError(
            f"make_meta_gradient_train: curriculum {type(curriculum).__name__} cannot pick the "
            f"levels of agent resets (it lacks {missing or ['metrics']}); use lpg.SampledLevels "
            "or a meta.groove curriculum (groove.make_curriculum)"
        )
    if getattr(curriculum, "needs_antagonist", False) and curriculum.antagonist_agent is None:
        raise ValueError(
            f"make_meta_gradient_train: curriculum {type(curriculum).__name__} needs an "
            "antagonist but has no antagonist_agent"
        )


# ---- the trainer


@struct.dataclass
class MetaGradientState:
    """rule / rule_opt: the rule and its Adam state; agents: a TrainState batched over agents
    `[A]` (their levels are their `env_params`); critic / critic_opt: their value critics `[A]`;
    antagonists: the lockstep antagonists' TrainState `[A]` (() without); history: per agent
    `[A, N + K]` per-update metrics of its current life, indexed by update number ("agent":
    episode_return, episodes_finished; "antagonist": those and positive_advantage); lifetimes:
    `[A]` int32 updates of each agent's life; scored: `[A]` bool, False for a first life that was
    started part-way (staggered), whose return scores no level; tags: the curriculum's per-agent
    tags; curriculum: its state; step: meta-steps done."""

    rule: Any
    rule_opt: Any
    agents: Any
    critic: Any
    critic_opt: Any
    antagonists: Any
    history: Any
    lifetimes: jax.Array
    scored: jax.Array
    tags: Any
    curriculum: Any
    step: jax.Array


class MetaGradient(NamedTuple):
    """init(key) -> MetaGradientState; meta_loss(rule, state, key) -> (loss [], aux) (mean over
    agents; what `step` differentiates); step(state, key) -> (state, metrics);
    train(key, num_steps=None) -> (state, metrics `[S]`); agent: the inner agent (env, network);
    curriculum: where reset agents' levels come from."""

    config: LPGConfig
    settings: MetaGradientConfig
    agent: Any
    init: Callable
    meta_loss: Callable
    step: Callable
    train: Callable
    curriculum: Any


def _collect(agent, params, state, key):
    """A rollout `[T, N]` of the agent's policy `params` from `state`, as data (stop-gradient):
    (env_state, obs, traj, {obs, action, log_prob, reward, terminated, truncated, next_obs})."""
    params = jax.lax.stop_gradient(params)
    env_state, obs, traj, data = actor_critic.policy_rollout(
        agent.env, agent.network, agent.head, params, state, key, agent.config.num_steps
    )
    data["next_obs"] = traj.final_obs
    return env_state, obs, traj, jax.lax.stop_gradient(data)


def rule_optimizer(settings: MetaGradientConfig) -> optax.GradientTransformation:
    """The rule's optimiser: Adam(learning_rate) after a global-norm clip (max_grad_norm)."""
    tx = optax.adam(settings.learning_rate)
    if settings.max_grad_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(settings.max_grad_norm), tx)
    return tx


def stagger_offsets(lifetimes, num_agent_updates: int):
    """`[A]` int32 first update of each initial agent: agent i of A starts at about i/A of its
    lifetime, rounded down to a multiple of K (so agent 0 starts at 0)."""
    num = lifetimes.shape[0]
    frac = jnp.arange(num, dtype=jnp.float32) / num
    k = num_agent_updates
    return (jnp.floor(frac * lifetimes / k) * k).astype(jnp.int32)


def _write(history, start, values):
    """history `[H]` with `values [K]` written at `start` (one agent's per-update metrics)."""
    return jax.lax.dynamic_update_slice(history, values.astype(history.dtype), (start,))


class Setup(NamedTuple):
    """What the meta-gradient's pieces share (static, built once by `setup`): the configs, the
    agents' A2CConfig `inner` (with adam_eps_root), the env and its default level, the
    curriculum, the rule's `agent` (its network, head and checks), the lockstep `antagonist`
    (None without), the value critic and the optimisers, K, A and N, and the names of the
    per-update metrics kept in the history ("agent" [, "antagonist"]) and averaged (stats)."""

    cfg: LPGConfig
    settings: MetaGradientConfig
    inner: a2c.A2CConfig
    env: Any
    default: Any
    curriculum: Any
    agent: Any
    antagonist: Any
    critic_net: nn.Module
    critic_tx: optax.GradientTransformation
    rule_tx: optax.GradientTransformation
    num_updates: int
    K: int
    A: int
    record_names: dict
    stat_names: tuple = ("pi_hat_sq", "y_hat_sq", "loss", "kl", "nan_skipped")

    @property
    def span(self) -> int:
        """History slots: updates 0 .. N + K - 2 can be written."""
        return self.num_updates + self.K


def setup(cfg: LPGConfig, settings=None, levels=None, curriculum=None) -> Setup:
    """The `Setup` of `make_meta_gradient_train`; ValueError for bad input, before compiling."""
    s = MetaGradientConfig() if settings is None else settings
    if not isinstance(s, MetaGradientConfig):
        raise ValueError(f"settings must be a lpg.MetaGradientConfig, got {type(s).__name__}")
    inner = dataclasses.replace(cfg.inner_config(), adam_eps_root=s.adam_eps_root)
    env, default = make_env(cfg)
    if curriculum is None:
        curriculum = SampledLevels(batch_sampler(level_sampler(levels, default)))
    elif levels is not None:
        raise ValueError("make_meta_gradient_train: give levels or a curriculum, not both")
    check_curriculum(curriculum)
    template = jax.eval_shape(cfg.init_params, jax.random.key(0))  # shapes: the agent's check
    rule_objective = objective(template, cfg.kl_weight, inner.gamma)
    agent = a2c.make_agent(inner, rule_objective, env=env, env_params=default)
    num_updates, K = agent.num_updates, s.num_agent_updates
    if num_updates < K:
        raise ValueError(
            f"LPGConfig.inner: an agent's lifetime of {num_updates} updates is shorter than the "
            f"K = num_agent_updates={K} updates of one meta-step"
        )
    antagonist = curriculum.antagonist_agent if curriculum.needs_antagonist else None
    if antagonist is not None and antagonist.num_updates != num_updates:
        raise ValueError(
            f"the curriculum's antagonist runs {antagonist.num_updates} updates, the rule's "
            f"agents {num_updates}: the lockstep antagonist must have the agents' lifetime"
        )
    record_names = {"agent": ("episode_return", "episodes_finished")}
    if antagonist is not None:
        record_names["antagonist"] = ("episode_return", "episodes_finished", "positive_advantage")
    critic_net = _ValueCritic(tuple(inner.hidden_sizes), inner.activation)
    critic_tx = optax.adam(s.critic_learning_rate)
    return Setup(
        cfg, s, inner, env, default, curriculum, agent, antagonist, critic_net, critic_tx,
        rule_optimizer(s), num_updates, K, s.num_agents, record_names,
    )  # fmt: skip


def lifetime_of(su: Setup, level):
    """int32 [] updates of an agent's life on `level` (N, or the level's own L)."""
    lifetime = level_lifetime(su.cfg, level, su.num_updates)
    return jnp.int32(su.num_updates) if lifetime is None else lifetime


def agent_meta_loss(su: Setup, rule, state, critic, lifetime, key):
    """One agent: K updates, a fresh rollout, the regularised A2C loss -> (loss, aux)."""
    s, cfg, K = su.settings, su.cfg, su.K
    rule_objective = objective(
        rule, cfg.kl_weight, su.inner.gamma, lifetime if cfg.level_lifetime else None
    )
    update = a2c.make_agent(su.inner, rule_objective, env=su.env, env_params=su.default).update
    state, metrics = jax.lax.scan(lambda st, _: update(st), state, None, length=K)
    env_state, obs, _, data = _collect(su.agent, state.params, state, key)
    values = su.critic_net.apply(critic, jnp.concatenate([data["obs"], data["next_obs"]]))
    values = jax.lax.stop_gradient(values)
    T = su.inner.num_steps
    advantages, targets = gae(
        data["reward"], values[:T], values[T:], data["terminated"], data["truncated"], s.gamma,
        s.gae_lambda,
    )  # fmt: skip
    if s.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    head = su.agent.head
    out = su.agent.network.apply(state.params, data["obs"], method=ActorCritic.outputs)
    pg = -jnp.mean(head.log_prob(out["policy"], data["action"]) * advantages)
    log_y = jax.nn.log_softmax(out["prediction"])
    final_entropy = jnp.mean(head.entropy(out["policy"]))
    final_y_entropy = jnp.mean(-jnp.sum(jnp.exp(log_y) * log_y, axis=-1))
    stats = {name: jnp.mean(metrics[name]) for name in su.stat_names}
    # theta_1..theta_K: update k+1's metrics are taken at theta_k; theta_K on the fresh rollout
    stats["entropy"] = (jnp.sum(metrics["entropy"][1:]) + final_entropy) / K
    stats["y_entropy"] = (jnp.sum(metrics["y_entropy"][1:]) + final_y_entropy) / K
    stats["agent_loss"], stats["agent_kl"] = stats.pop("loss"), stats.pop("kl")
    reg = (
        -s.entropy_coef * stats["entropy"]
        + s.pi_hat_l2_coef * stats["pi_hat_sq"]
        - s.y_entropy_coef * stats["y_entropy"]
        + s.y_hat_l2_coef * stats["y_hat_sq"]
    )
    state = state.replace(env_state=env_state, obs=obs)
    record = {name: metrics[name] for name in su.record_names["agent"]}
    return pg + reg, (state, data, targets, {"meta_pg_loss": pg, **stats}, record)


def agents_loss(su: Setup, rule, agents, critic, lifetimes, keys):
    """Mean meta-loss of a batch of agents `[a]` (vmapped; `keys [a]`) and their aux."""
    losses, aux = jax.vmap(functools.partial(agent_meta_loss, su), in_axes=(None, 0, 0, 0, 0))(
        rule, agents, critic, lifetimes, keys
    )
    return jnp.mean(losses), aux


def meta_loss(su: Setup, rule, state: MetaGradientState, key):
    """(mean meta-loss over the agents [], aux): what `step` differentiates in `rule`."""
    keys = jax.random.split(key, su.A)
    return agents_loss(su, rule, state.agents, state.critic, state.lifetimes, keys)


def chunked_grad(su: Setup, rule, state: MetaGradientState, key):
    """value_and_grad of `meta_loss`, the agents split into `agent_chunks` sequential chunks
    (each agent with its own key as unchunked: the same mean loss and gradient, to float
    rounding; the chunks' aux concatenated back to `[A]`)."""
    grad_fn = jax.value_and_grad(functools.partial(agents_loss, su), has_aux=True)
    A, n = su.A, su.settings.agent_chunks
    keys = jax.random.split(key, A)
    if n == 1:
        return grad_fn(rule, state.agents, state.critic, state.lifetimes, keys)
    split = lambda x: x.reshape(n, A // n, *x.shape[1:])
    parts = jax.tree.map(split, (state.agents, state.critic, state.lifetimes, keys))
    (losses, aux), grads = jax.lax.map(lambda args: grad_fn(rule, *args), parts)
    merge = lambda x: x.reshape(A, *x.shape[2:])
    mean = lambda x: jnp.mean(x, axis=0)
    return (mean(losses), jax.tree.map(merge, aux)), jax.tree.map(mean, grads)


def critic_step(su: Setup, critic, opt, data, targets):
    """One Adam step of a value critic on its rollout's GAE targets -> (critic, opt, loss)."""

    def loss_fn(c):
        return jnp.mean((su.critic_net.apply(c, data["obs"]) - targets) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(critic)
    updates, opt = su.critic_tx.update(grads, opt, critic)
    return optax.apply_updates(critic, updates), opt, loss


def fresh(su: Setup, key, level):
    """A new agent on `level`, with a new value critic (and a new antagonist)."""
    k_agent, k_critic, k_antagonist = jax.random.split(key, 3)
    state = su.agent.init(k_agent, level)
    critic = su.critic_net.init(k_critic, state.obs)
    rival = () if su.antagonist is None else su.antagonist.init(k_antagonist, level)
    return state, critic, su.critic_tx.init(critic), rival


def init(su: Setup, key) -> MetaGradientState:
    """The first state: a fresh rule, the curriculum's first levels, staggered agents."""
    A = su.A
    k_rule, k_curriculum, k_levels, k_agents = jax.random.split(
        jax.random.key(0) if key is None else key, 4
    )
    rule = su.cfg.init_params(k_rule)
    cur = su.curriculum.init(k_curriculum)
    cur, first, tags = su.curriculum.first_levels(cur, k_levels, A, jnp.int32(0))
    agents, critic, critic_opt, rivals = jax.vmap(functools.partial(fresh, su))(
        jax.random.split(k_agents, A), first
    )
    lifetimes = jax.vmap(functools.partial(lifetime_of, su))(first)
    offsets = (
        stagger_offsets(lifetimes, su.K) if su.settings.stagger else jnp.zeros((A,), jnp.int32)
    )
    agents = agents.replace(update_step=offsets)
    if su.antagonist is not None:
        rivals = rivals.replace(update_step=offsets)
    history = {
        who: {name: jnp.zeros((A, su.span), jnp.float32) for name in names}
        for who, names in su.record_names.items()
    }
    return MetaGradientState(
        rule=rule,
        rule_opt=su.rule_tx.init(rule),
        agents=agents,
        critic=critic,
        critic_opt=critic_opt,
        antagonists=rivals,
        history=history,
        lifetimes=lifetimes,
        scored=offsets == 0,
        tags=tags,
        curriculum=cur,
        step=jnp.zeros((), jnp.int32),
    )


def _record(history, start, metrics):
    """Writes the K updates' metrics `[A, K]` at each agent's first update `start [A]`."""
    write = jax.vmap(_write)
    return {name: write(history[name], start, metrics[name]) for name in history}


def results_of(su: Setup, history, lifetimes):
    """{"agent_return" [, "antagonist_return", "pvl"]: [A]} final results of the lives in
    `history`, at each agent's update `lifetimes [A]`."""
    h = history["agent"]
    out = {"agent_return": final_return(h["episode_return"], h["episodes_finished"], lifetimes)}
    if su.antagonist is not None:
        h = history["antagonist"]
        ones = jnp.ones_like(h["positive_advantage"])
        out["antagonist_return"] = final_return(
            h["episode_return"], h["episodes_finished"], lifetimes
        )
        out["pvl"] = final_return(h["positive_advantage"], ones, lifetimes)
    return out


def update_rule(su: Setup, state: MetaGradientState, key):
    """The rule's Adam step on the meta-gradient (skipped if non-finite), the critics' step and
    the K updates' history -> (state with rule, agents, critics, antagonists and history moved
    on, stats, metrics)."""
    start = state.agents.update_step
    (loss, (agents, data, targets, stats, recorded)), grads = chunked_grad(
        su, state.rule, state, key
    )
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, rule_opt = su.rule_tx.update(grads, state.rule_opt, state.rule)
    rule = loop.keep_finite(ok, optax.apply_updates(state.rule, updates), state.rule)
    rule_opt = loop.keep_finite(ok, rule_opt, state.rule_opt)
    critic, critic_opt, critic_loss = jax.vmap(functools.partial(critic_step, su))(
        state.critic, state.critic_opt, data, targets
    )
    history = {"agent": _record(state.history["agent"], start, recorded)}
    rivals = state.antagonists
    if su.antagonist is not None:

        def k_updates(rival):
            return jax.lax.scan(lambda st, _: su.antagonist.update(st), rival, None, length=su.K)

        rivals, rival_metrics = jax.vmap(k_updates)(rivals)
        history["antagonist"] = _record(state.history["antagonist"], start, rival_metrics)
    metrics = {
        "meta_loss": loss,
        "rule_grad_norm": grad_norm,
        "rule_skipped": 1 - ok.astype(jnp.int32),
        "critic_loss": jnp.mean(critic_loss),
    }
    state = state.replace(
        rule=rule,
        rule_opt=rule_opt,
        agents=agents,
        critic=critic,
        critic_opt=critic_opt,
        antagonists=rivals,
        history=history,
    )
    return state, stats, metrics


def restart_finished(su: Setup, state: MetaGradientState, k_reset, k_fresh):
    """Lives that ended (update count >= lifetime) score their levels (the curriculum's reset,
    key `k_reset`); those agents restart on the curriculum's levels with fresh critics (and
    antagonists; key `k_fresh`) -> (state, metrics)."""
    agents = state.agents
    done = agents.update_step >= state.lifetimes
    results = results_of(su, state.history, state.lifetimes)
    results = jax.tree.map(lambda r: jnp.where(state.scored, r, jnp.nan), results)
    cur, new_levels, tags, cur_metrics = su.curriculum.reset(
        state.curriculum, k_reset, done, agents.env_params, state.tags, results, state.step + 1
    )
    new = jax.vmap(functools.partial(fresh, su))(jax.random.split(k_fresh, su.A), new_levels)
    old = (agents, state.critic, state.critic_opt, state.antagonists)
    agents, critic, critic_opt, rivals = jax.tree.map(lambda n, o: pick(done, n, o), new, old)
    history = jax.tree.map(lambda h: pick(done, jnp.zeros_like(h), h), state.history)
    lifetimes = jax.vmap(functools.partial(lifetime_of, su))(new_levels)
    metrics = {
        "agents_restarted": jnp.sum(done),
        "finished_return": masked_mean(results["agent_return"], done),
        "unscored": jnp.sum(done & ~jnp.isfinite(results["agent_return"])),
        **{name: jnp.asarray(cur_metrics[name], jnp.float32) for name in su.curriculum.metrics},
    }
    state = state.replace(
        agents=agents,
        critic=critic,
        critic_opt=critic_opt,
        antagonists=rivals,
        history=history,
        lifetimes=jnp.where(done, lifetimes, state.lifetimes),
        scored=state.scored | done,
        tags=tags,
        curriculum=cur,
        step=state.step + 1,
    )
    return state, metrics


def step(su: Setup, state: MetaGradientState, key):
    """One meta-step (see `make_meta_gradient_train`) -> (state, metrics)."""
    k_meta, k_reset, k_fresh = jax.random.split(key, 3)
    state, stats, rule_metrics = update_rule(su, state, k_meta)
    state, reset_metrics = restart_finished(su, state, k_reset, k_fresh)
    metrics = jax.tree.map(jnp.mean, stats)
    metrics.update(**rule_metrics, **reset_metrics)
    return state, metrics


def train(su: Setup, key, num_steps: int | None = None):
    """`num_steps` meta-steps (default `settings.num_steps`) from `init` -> (state, metrics [S])."""
    k_init, k_steps = jax.random.split(key)
    steps = su.settings.num_steps if num_steps is None else num_steps
    state = init(su, k_init)
    keys = jax.random.split(k_steps, steps)
    return jax.lax.scan(functools.partial(step, su), state, keys)


def make_meta_gradient_train(
    cfg: LPGConfig, settings: MetaGradientConfig | None = None, levels=None, curriculum=None
) -> MetaGradient:
    """Meta-gradient training of an LPG or TA-LPG rule over a persistent population of agents.

    A meta-step, for each of `num_agents` agents (vmapped, in `agent_chunks` sequential chunks):
    K updates of the agent with the rule (each: a rollout, the rule's targets, one gradient step
    on the LPG loss), then a fresh rollout of the updated agent, GAE(gamma, lambda) advantages A
    from the agent's value critic (a separate network trained on these rollouts by MSE to the
    GAE targets; A normalised over the rollout with `normalize_advantages`), and the meta-loss

        -mean(log pi_K(a|s) A) - 5e-2 H(pi) + 5e-3 E[pi_hat^2] - 1e-3 H(y) + 1e-3 E[||y_hat||^2]

    H(pi), H(y): the entropies of the *updated* agents theta_1..theta_K (the paper's and the
    public code's definition), averaged: theta_k's on the states of update k + 1's rollout (the
    loss metrics of update k + 1, taken at its start parameters), theta_K's on the fresh
    rollout. pi_hat, y_hat: the rule's outputs of the K updates. Its gradient in the rule's
    parameters, through the K updates, averaged over agents, takes an Adam step (after the
    optional max_grad_norm clip; a non-finite gradient is skipped and counted).

    Agents keep training across meta-steps. An agent whose life ends (its update count reaches
    its lifetime: the inner config's N updates, or with `cfg.level_lifetime` its level's own L,
    clipped to [1, N]; checked after each meta-step, so a life runs a multiple of K updates and
    is scored at update L) restarts on a level from the curriculum, with a new critic. Its final
    return (`purejaxrl.scores.final_return` at update L: finished episodes only, NaN if none)
    scores the level it leaves. With `settings.stagger`, the initial agents start part-way
    through their lives (`stagger_offsets`: update counter advanced, parameters fresh), so resets
    spread over meta-steps; such a shortened first life scores no level (NaN result).

    Levels: `curriculum` (see `SampledLevels` for the interface; `meta.groove.make_curriculum`
    gives GROOVE's regret / PVL buffer and domain randomisation), or else `levels` as for
    `level_sampler` (None: the env's default level; a batch; a function key -> level). A
    curriculum that `needs_antagonist` supplies an A2C agent that trains beside every rule agent
    on the same level for the same lifetime (same key schedule: K updates per meta-step), so its
    final return is known when the level is scored.

    TA-LPG (`cfg.time_aware`) is allowed: the rule reads each agent's n/N and log N (n/L, log L
    with level lifetimes) in every update. Jackson et al. (ICLR 2024) report that meta-gradients
    over K updates fail to learn lifetime-dependent rules; this is how to rerun that comparison.

    The K updates are the loop's own `agent.update` of an agent whose objective holds the
    (traced) rule, differentiated end to end. What is data: every rollout and the rule's inputs
    pi, y(s_t), y(s_t+1) are stop-gradient, as in the reference code; the gradient reaches the
    rule through pi_hat and y_hat in each update's loss, hence through the agent's parameters of
    later updates and the final policy's log pi. The agents' Adam has `adam_eps_root` (1e-8)
    inside its square root: a linear agent on one-hot-ish observations has exactly zero gradient
    on the weights of every observation unit that is off throughout a rollout, Adam's second
    moment there is 0, and the derivative of sqrt(v) at 0 is infinite (0 * inf = NaN).
    """
    su = setup(cfg, settings, levels, curriculum)
    bind = lambda fn: functools.partial(fn, su)
    return MetaGradient(
        cfg, su.settings, su.agent, bind(init), bind(meta_loss), bind(step), bind(train),
        su.curriculum,
    )  # fmt: skip
