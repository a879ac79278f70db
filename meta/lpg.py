"""LPG and TA-LPG: a learned update rule for the on-policy loop, meta-trained with ES or meta-gradients.

Learned Policy Gradient (Oh et al. 2020, arXiv 2007.08794) replaces the agent's loss by a network
that reads a whole rollout and says, for every step, how to change the policy and what the agent's
prediction vector y(s) should be:

    inputs per step t:  r_t, d_t (terminated), gamma, pi(a_t|s_t), y(s_t), y(s_t+1)
    backward GRU over the rollout, reset at episode ends   ->   pi_hat_t (a scalar), y_hat_t (softmax m)
    agent loss:  mean(log pi(a_t|s_t) * pi_hat_t) + 0.5 KL(y(s_t) || y_hat_t)

y is a categorical vector of width m (8) that the agent predicts with its network's prediction head
(`prediction_size = m` in the config): the rule decides what it means. TA-LPG (Jackson et al., ICLR
2024, arXiv 2402.05828) also feeds n/N (the fraction of the agent's updates done) and log N (N its
number of updates), so the rule can change over the agent's lifetime.

The network (`LPGNet`, `init_params`, `apply`; public code: EmptyJackson/groove):

- each of y(s_t) and y(s_t+1) (probabilities `[m]`) is embedded by one shared MLP m -> 16 -> 1;
  the y(s_t+1) embedding is zeroed where the episode terminated at t (no future beyond a terminal);
- per step the core sees [r, terminated, gamma, pi(a|s), (n/N, log N), e(y_t), e(y_t+1)];
- the core is a GRU (width 256) run backwards in time over the T steps of each env column (the
  columns are a batch). **Reset convention:** a step t at which the episode ended (terminated or
  truncated; `ended_t`) starts a fresh zero carry going backwards, so pi_hat_t and y_hat_t depend
  on the inputs of steps t..e only, e the first step >= t with `ended_e` (or T - 1): what happens
  after an episode's last step never reaches its outputs. The last step of a rollout also starts
  from a zero carry (nothing is known beyond it but y(s_T), which enters as its y(s_t+1)). On a
  truncation the y(s_t+1) embedding is kept: s_t+1 is the pre-reset observation, a real state to
  bootstrap from (the project keeps termination and truncation apart; the reference code has one
  `done` for both);
- pi_hat = Dense(1)(relu(h)), y_hat = softmax(Dense(m)(relu(h))).

The agent side (`objective(params)` -> `LPGObjective`, for `a2c.make_agent(cfg, objective=...)`,
also the registered objective "lpg" with option `path`): `targets` runs the rule once per update
over the whole `[T, N]` rollout with the update-start parameters (y(s_t+1) from the pre-reset next
observations, which the loop adds for objectives that set `needs_next_obs`); its inputs pi, y(s_t),
y(s_t+1) are data (stop-gradient). pi_hat and log y_hat are then batch data of `loss`: constants
for the agent's gradient (the loop differentiates the loss in the agent's parameters only), and
left differentiable in the rule's parameters, which is the path of the meta-gradient.

Meta-training:

- ES (`make_meta_train(LPGConfig(...), levels)`): fitness of a rule = final return (finished
  episodes only, `purejaxrl.scores`) of an A2C agent trained with it for its whole lifetime on a
  level (env params) drawn from the candidate's key, so the two members of an antithetic pair
  (same key in `meta.es.evolve`) meet the same level and agent seed. LPG and TA-LPG (the TA
  paper's method).
- Meta-gradient (`make_meta_gradient_train`; Oh et al.'s LPG, and with `meta.groove`'s regret
  curriculum GROOVE): a persistent population of agents, each on its own level; a meta-step =
  K agent updates with the rule, then A2C's -mean(log pi A) on a fresh rollout (A: GAE(0.99,
  0.95) of a separate value critic) plus regularisers on the updated agents, differentiated
  through the loop's own K updates; Adam 1e-4 on the rule. Agents whose lives end score
  their levels and restart on levels from a curriculum. LPG and TA-LPG (the TA paper's ablation).

Levels: `levels` is None (the env's default params), a batch of env params (a pytree whose leaves
have one leading axis [L]; one is drawn uniformly per key) or a function `sample_levels(key) ->
level`; the meta-gradient also takes a `curriculum` (a level buffer scored by regret or PVL,
`meta.groove`). Any env whose params are a pytree works, e.g. `envs.make("gridworld/dense")`'s
levels.

Save / load: `save(path, params, info)` / `load(path, y_size=None)` (orbax + SHA-256 manifest,
meta/saved.py, as for LPO drifts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

import envs
from meta import es, saved
from purejaxrl import a2c, actor_critic, checkpoint, loop, objectives
from purejaxrl import config as C
from purejaxrl.gae import gae
from purejaxrl.initializers import orthogonal
from purejaxrl.networks import MLP, ActorCritic
from purejaxrl.scores import final_return

Y_SIZE = 8  # width m of the categorical prediction vector y
HIDDEN = 256  # width of the backward GRU
EMBED = 16  # hidden width of the shared y-embedding MLP (m -> 16 -> 1)
KL_WEIGHT = 0.5  # agent loss: mean(log pi * pi_hat) + KL_WEIGHT * KL(y || y_hat)
NUM_STEP_FEATURES = 4  # r, terminated, gamma, pi(a|s)
NUM_TIME_FEATURES = 2  # TA-LPG: n/N, log N
FORMAT = "lpg/1"

# --------------------------------------------------------------------------- the network


def step_features(reward, terminated, gamma, pi, progress=None, num_updates=None):
    """The scalar inputs of every step `[T, N, 4]` = [r, terminated, gamma, pi(a|s)]; with
    `progress` (n/N, `[]`) and `num_updates` (N), TA-LPG's `[T, N, 6]` = [..., n/N, log N].

    reward, pi `[T, N]` float; terminated `[T, N]` bool; gamma a scalar (may be traced)."""
    reward = jnp.asarray(reward, jnp.float32)
    columns = [
        reward,
        jnp.asarray(terminated, jnp.float32),
        jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), reward.shape),
        jnp.asarray(pi, jnp.float32),
    ]
    if (progress is None) != (num_updates is None):
        raise ValueError(
            "lpg.step_features: give both progress (n/N) and num_updates (N), or neither"
        )
    if progress is not None:
        log_n = jnp.log(jnp.asarray(num_updates, jnp.float32))
        columns.append(jnp.broadcast_to(jnp.asarray(progress, jnp.float32), reward.shape))
        columns.append(jnp.broadcast_to(log_n, reward.shape))
    return jnp.stack(columns, axis=-1)


class _Embed(nn.Module):
    """The shared y embedding: Dense(width) -> relu -> Dense(1), `[..., m]` -> `[..., 1]`."""

    width: int = EMBED

    @nn.compact
    def __call__(self, y):
        h = nn.relu(nn.Dense(self.width, name="hidden")(y))
        return nn.Dense(1, name="out")(h)


class _BackwardStep(nn.Module):
    """One step of the backward core: reset the carry where the episode ended, then a GRU cell."""

    hidden: int

    @nn.compact
    def __call__(self, carry, inputs):
        x, ended = inputs  # [N, F], [N]
        carry = jnp.where(ended[..., None], jnp.zeros_like(carry), carry)
        carry, h = nn.GRUCell(self.hidden, name="gru")(carry, x)
        return carry, h


class LPGNet(nn.Module):
    """The LPG rule: `(features [T, N, F], y, y_next [T, N, m] probabilities, terminated, ended
    [T, N] bool) -> (pi_hat [T, N], log y_hat [T, N, m])`; see the module docstring. F is 4
    (LPG) or 6 (TA-LPG), from `step_features`."""

    y_size: int = Y_SIZE
    hidden: int = HIDDEN
    embed: int = EMBED

    @nn.compact
    def __call__(self, features, y, y_next, terminated, ended):
        embed = _Embed(self.embed, name="embed")  # one MLP for both y vectors
        e_now = embed(y)
        e_next = jnp.where(terminated[..., None], 0.0, embed(y_next))
        x = jnp.concatenate([features, e_now, e_next], axis=-1)
        core = nn.scan(
            _BackwardStep,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            reverse=True,  # outputs stay in time order; step T-1 is processed first
        )(self.hidden, name="core")
        carry = jnp.zeros((*x.shape[1:-1], self.hidden), x.dtype)
        _, h = core(carry, (x, ended))
        h = nn.relu(h)
        pi_hat = nn.Dense(1, name="pi_out")(h)[..., 0]
        log_y_hat = jax.nn.log_softmax(nn.Dense(self.y_size, name="y_out")(h))
        return pi_hat, log_y_hat


class RuleShape(NamedTuple):
    """What a rule's parameters fix: y width m, GRU width, time-aware inputs, embedding width."""

    y_size: int
    hidden: int
    time_aware: bool
    embed: int


def init_params(key, time_aware: bool = False, y_size: int = Y_SIZE, hidden: int = HIDDEN):
    """Flax params of a fresh rule (LPG; TA-LPG with `time_aware`)."""
    for name, value in (("y_size", y_size), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"lpg.init_params: {name}={value!r} must be a positive integer")
    num_features = NUM_STEP_FEATURES + (NUM_TIME_FEATURES if time_aware else 0)
    return _initializer(num_features, int(y_size), int(hidden))(key)


@functools.lru_cache(maxsize=16)
def _initializer(num_features: int, y_size: int, hidden: int):
    """The jitted `init(key) -> params` of one rule shape (compiled once, not run op by op)."""
    net = LPGNet(y_size, hidden)

    def init(key):
        f = jnp.zeros((1, 1, num_features), jnp.float32)
        y = jnp.full((1, 1, y_size), 1.0 / y_size, jnp.float32)
        done = jnp.zeros((1, 1), bool)
        return net.init(key, f, y, y, done, done)

    return jax.jit(init)


def describe(params) -> RuleShape:
    """The `RuleShape` of rule params (works on tracers and ShapeDtypeStructs); ValueError if
    they are not LPG params as `init_params` makes them."""
    try:
        p = params["params"]
        y_in, y_size = np.shape(p["y_out"]["kernel"])
        in_width, hidden = np.shape(p["core"]["gru"]["ir"]["kernel"])
        embed = np.shape(p["embed"]["hidden"]["kernel"])[1]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            "LPG params must be flax params {'params': {'embed', 'core', 'pi_out', 'y_out'}} as "
            "lpg.init_params makes them"
        ) from None
    num_features = in_width - 2  # the two y embeddings
    if num_features not in (NUM_STEP_FEATURES, NUM_STEP_FEATURES + NUM_TIME_FEATURES):
        raise ValueError(f"LPG params take {num_features} step features; LPG takes 4, TA-LPG 6")
    return RuleShape(int(y_size), int(hidden), num_features > NUM_STEP_FEATURES, int(embed))


def forward(
    params,
    reward,
    terminated,
    pi,
    y,
    y_next,
    *,
    truncated=None,
    gamma=0.99,
    progress=None,
    num_updates=None,
):
    """(pi_hat `[T, N]`, log y_hat `[T, N, m]`): `apply` with y_hat as log-probabilities."""
    shape = describe(params)
    if shape.time_aware and (progress is None or num_updates is None):
        raise ValueError("TA-LPG params need progress (n/N) and num_updates (N)")
    if not shape.time_aware and (progress is not None or num_updates is not None):
        raise ValueError("LPG params (not time-aware) take no progress / num_updates")
    terminated = jnp.asarray(terminated, bool)
    ended = terminated if truncated is None else terminated | jnp.asarray(truncated, bool)
    features = step_features(reward, terminated, gamma, pi, progress, num_updates)
    net = LPGNet(shape.y_size, shape.hidden, shape.embed)
    return net.apply(params, features, y, y_next, terminated, ended)


def apply(params, reward, terminated, pi, y, y_next, **kwargs):
    """The rule on a rollout: (pi_hat `[T, N]`, y_hat `[T, N, m]` probabilities).

    reward `[T, N]`; terminated `[T, N]` bool (d_t: s_t+1 is terminal); pi `[T, N]` = pi(a_t|s_t)
    of the taken actions; y, y_next `[T, N, m]` = y(s_t), y(s_t+1) as probabilities (s_t+1 the
    pre-reset next observation). Keywords: truncated `[T, N]` bool (time-limit ends: the carry is
    reset there too, the y(s_t+1) embedding kept), gamma (default 0.99), and for TA-LPG params
    progress (n/N) and num_updates (N). Time runs along axis 0; the N columns are independent.
    """
    pi_hat, log_y_hat = forward(params, reward, terminated, pi, y, y_next, **kwargs)
    return pi_hat, jnp.exp(log_y_hat)


# --------------------------------------------------------------------------- agent objective


@dataclasses.dataclass(frozen=True)
class LPGObjective(objectives.Objective):
    """The agent's loss under an LPG rule: mean(log pi(a|s) pi_hat) + kl_weight KL(y || y_hat).

    params: the rule (may be traced: an ES candidate, or differentiated by the meta-gradient);
    kl_weight (0.5) and gamma (the rule's gamma input) may be traced. lifetime: None (TA-LPG
    sees n/N and log N of the agent's config) or the agent's lifetime L in updates (may be
    traced, e.g. a grid-world level's): TA-LPG then sees min(n/L, 1) and log L, n the updates
    done (`lifetime_features`). Needs a categorical policy
    and a prediction head of the rule's width (`prediction_size = m`). Metrics: policy_loss, kl,
    entropy (policy), y_entropy, pi_hat_sq (mean pi_hat^2), y_hat_sq (mean ||y_hat||^2).
    """

    params: Any
    kl_weight: Any = KL_WEIGHT
    gamma: Any = 0.99
    lifetime: Any = None

    needs_next_obs = True

    @property
    def shape(self) -> RuleShape:
        return describe(self.params)

    def check(self, cfg) -> None:
        name, m = type(cfg).__name__, self.shape.y_size
        size = getattr(cfg, "prediction_size", 0)
        if size != m:
            raise ValueError(
                f"{name}.prediction_size={size}: the LPG rule's y width is {m}; the agent's "
                f"prediction head must match it (set prediction_size={m})"
            )
        if getattr(cfg, "policy", "auto") not in ("auto", "categorical"):
            raise ValueError(
                f"{name}.policy={cfg.policy!r}: LPG reads pi(a|s), the probability of the taken "
                "action; it needs a categorical policy"
            )

    def targets(self, rollout, ctx):
        """{"pi_hat": `[T, N]`, "log_y_hat": `[T, N, m]`} from the rule over the whole rollout.

        Not stop-gradient: they enter `loss` as batch data, constants for the agent's gradient
        (the loop differentiates in the agent's parameters only), and the meta-gradient reaches
        the rule through them."""
        if not getattr(ctx.head, "discrete", False):
            raise ValueError("the LPG objective needs a categorical policy (discrete actions)")
        num_steps = rollout["obs"].shape[0]
        both = jnp.concatenate([rollout["obs"], rollout["next_obs"]], axis=0)
        y_both = jax.nn.softmax(ctx.apply(both, method=ActorCritic.outputs)["prediction"])
        pi = jnp.exp(rollout["log_prob"])  # the behaviour policy is the update-start policy
        pi, y, y_next = jax.lax.stop_gradient((pi, y_both[:num_steps], y_both[num_steps:]))
        time = {}
        if self.shape.time_aware:
            progress, num_updates = lifetime_features(ctx, self.lifetime)
            time = {"progress": progress, "num_updates": num_updates}
        pi_hat, log_y_hat = forward(
            self.params,
            rollout["reward"],
            rollout["terminated"],
            pi,
            y,
            y_next,
            truncated=rollout["truncated"],
            gamma=self.gamma,
            **time,
        )
        return {"pi_hat": pi_hat, "log_y_hat": log_y_hat}

    def loss(self, outputs, batch, ctx):
        policy = outputs["policy"]
        log_pi = ctx.head.log_prob(policy, batch["action"])
        pi_hat, log_y_hat = batch["pi_hat"], batch["log_y_hat"]
        policy_loss = jnp.mean(log_pi * pi_hat)
        log_y = jax.nn.log_softmax(outputs["prediction"])
        y = jnp.exp(log_y)
        kl = jnp.mean(jnp.sum(y * (log_y - log_y_hat), axis=-1))
        total = policy_loss + self.kl_weight * kl
        metrics = {
            "policy_loss": policy_loss,
            "kl": kl,
            "entropy": jnp.mean(ctx.head.entropy(policy)),
            "y_entropy": jnp.mean(-jnp.sum(y * log_y, axis=-1)),
            "pi_hat_sq": jnp.mean(pi_hat**2),
            "y_hat_sq": jnp.mean(jnp.sum(jnp.exp(2.0 * log_y_hat), axis=-1)),
        }
        return total, metrics


def lifetime_features(ctx, lifetime=None):
    """(progress, num_updates) TA-LPG sees: the loop's (n/N, N), or with a `lifetime` L (updates;
    may be traced): (min(n/L, 1), L), n = the updates done (n/N * N)."""
    if lifetime is None:
        return ctx.progress, ctx.num_updates
    lifetime = jnp.maximum(jnp.asarray(lifetime, jnp.float32), 1.0)
    done = jnp.round(ctx.progress * ctx.num_updates)
    return jnp.minimum(done / lifetime, 1.0), lifetime


def objective(params, kl_weight=KL_WEIGHT, gamma=0.99, lifetime=None) -> LPGObjective:
    """The agent-side objective of the rule `params` (see `LPGObjective`)."""
    describe(params)  # refuses anything but LPG params, before any compile
    return LPGObjective(params=params, kl_weight=kl_weight, gamma=gamma, lifetime=lifetime)


# --------------------------------------------------------------------------- save / load

_REQUIRED_INFO = {"format", "y_size", "hidden", "time_aware", "embed", "shapes", "digest"}
_KIND = saved.Kind("LPG rule", "lpg.save")


def save(path, params, info: Mapping[str, Any] | None = None) -> Path:
    """Writes the rule `params` and its info (JSON) to the folder `path` with orbax; returns it.

    `info` may hold "trained_on" (free-form; default {}) and other JSON values; "y_size",
    "hidden", "time_aware" and "embed" are taken from the params (ValueError if `info` says
    otherwise). As `meta.lpo.save` (meta/saved.py): written beside `path`, given a SHA-256
    manifest of every file, then moved into place; an existing saved rule at `path` is replaced,
    any other existing path refused.
    """
    path = Path(path).absolute()
    shape = describe(params)
    record = {"trained_on": {}, **dict(info or {})}
    for key, value in shape._asdict().items():
        if key in record and record[key] != value:
            raise ValueError(
                f"lpg.save: info[{key!r}]={record[key]!r}, but the params have {value!r}"
            )
    params = jax.device_get(params)
    record.update(shape._asdict(), format=FORMAT, shapes=checkpoint.shapes(params))
    record.update(digest=checkpoint.digest(params))
    return saved.write(path, params, record, _KIND)


def load(path, y_size: int | None = None, time_aware: bool | None = None):
    """(params, info) of the rule saved at `path` (see `save`).

    y_size / time_aware (None: whatever was saved) must match the saved rule, else ValueError
    naming both (an agent's prediction head must have the rule's y width). A missing folder, a
    file missing or altered since the save, or contents that fail their digest raise
    CheckpointError (a ValueError) saying which.
    """
    path = Path(path).absolute()
    info = saved.read_info(path, _KIND, _REQUIRED_INFO, FORMAT)
    if y_size is not None and int(y_size) != info["y_size"]:
        raise ValueError(
            f"the LPG rule at {path} predicts y of width {info['y_size']}, but y_size={y_size} "
            f"was asked for (an agent with prediction_size={y_size})"
        )
    if time_aware is not None and bool(time_aware) != info["time_aware"]:
        raise ValueError(
            f"the LPG rule at {path} has time_aware={info['time_aware']}, but "
            f"time_aware={bool(time_aware)} was asked for"
        )
    shape = RuleShape(int(info["y_size"]), int(info["hidden"]), bool(info["time_aware"]), 0)
    abstract = jax.eval_shape(
        lambda key: init_params(key, shape.time_aware, shape.y_size, shape.hidden),
        jax.random.key(0),
    )
    params = saved.read_params(path, _KIND, abstract, info)
    return params, info


def _build_lpg(cfg, path=None, kl_weight=KL_WEIGHT) -> LPGObjective:
    """The rule saved at `path` (relative to the working directory), loaded now, for an agent
    whose prediction_size must be the rule's y width; gamma input = the config's gamma."""
    where = f"{type(cfg).__name__}.objective 'lpg'"
    if path is None:
        raise ValueError(f"{where}: needs path=<folder of a rule saved with meta.lpg.save>")
    try:
        params, _ = load(path, y_size=cfg.prediction_size)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return objective(params, kl_weight=kl_weight, gamma=cfg.gamma)


objectives.register("lpg", _build_lpg)


# --------------------------------------------------------------------------- meta-training: ES

# CPU-sized inner A2C: a linear ("tabular") agent, 8 envs x 16 steps x 50 updates = 6,400 steps.
CPU_INNER = {
    "total_timesteps": 8 * 16 * 50,
    "num_envs": 8,
    "num_steps": 16,
    "learning_rate": 0.1,
    "hidden_sizes": (),
    "shared_torso": True,
    "gamma": 0.99,
}


@dataclasses.dataclass(frozen=True)
class LPGConfig:
    """env (+ env_kwargs): the env whose levels the agents train on; inner: A2CConfig fields of
    every agent (prediction_size is set to y_size); time_aware: TA-LPG; y_size, hidden: the rule's
    y width and GRU width; kl_weight: the agent loss's KL weight; es: the ES settings (default:
    OpenES, population 16, sigma 0.1 and learning rate 0.01 as the public GROOVE code's TA-LPG
    command (its README, April 2023: the ES learning rate is 1e-2, once misreported as 1e-4),
    without its decay of the rate by 0.999 per step to 1e-5, which our ESConfig does not
    express; one level per antithetic pair);
    level_lifetime: honour each level's own lifetime L (its `lifetime` field, in updates, e.g.
    the grid worlds' `gridworld/all_randlife`): agents still run the inner config's N updates
    (a static shape), but TA-LPG sees n/L and log L, and the fitness is the final return at
    update L (`purejaxrl.scores.final_return(..., lifetime=L)`); L is clipped to [1, N]."""

    env: str = "Catch-bsuite"
    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inner: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(CPU_INNER))
    time_aware: bool = False
    y_size: int = Y_SIZE
    hidden: int = HIDDEN
    kl_weight: float = KL_WEIGHT
    level_lifetime: bool = False
    es: es.ESConfig = dataclasses.field(
        default_factory=lambda: es.ESConfig(
            population_size=16, num_generations=100, sigma=0.1, learning_rate=0.01
        )
    )

    def __post_init__(self):
        try:
            envs.check_id(self.env)
        except ValueError as e:
            raise ValueError(f"LPGConfig.env: {e}") from None
        for name in ("y_size", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"LPGConfig.{name}={value!r}: must be a positive integer")
        if not isinstance(self.es, es.ESConfig):
            raise ValueError(f"LPGConfig.es must be an es.ESConfig, got {type(self.es).__name__}")
        self.inner_config()  # builds and validates the inner config now

    def inner_config(self) -> a2c.A2CConfig:
        """The agents' A2CConfig (validated)."""
        fields = {
            **dict(self.inner),
            "env": self.env,
            "env_kwargs": dict(self.env_kwargs),
            "prediction_size": self.y_size,
        }
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        cfg = C.from_dict(a2c.A2CConfig, fields)
        actor_critic.validate(cfg)
        return cfg

    def init_params(self, key):
        return init_params(key, self.time_aware, self.y_size, self.hidden)


def make_env(cfg: LPGConfig):
    """(env, default level) of `cfg.env`, built once, outside any trace (the agents inside the
    jitted fitness get this env: `envs.make` of a grid world validates its concrete default
    level, which a traced call cannot)."""
    return envs.make(cfg.env, **dict(cfg.env_kwargs))


def level_sampler(levels, default=None) -> Callable[[jax.Array], Any]:
    """`sample(key) -> level` from `levels`: None (always `default`), a batch of env params (a
    pytree whose leaves share one leading axis [L]; uniform draw) or a function key -> level."""
    if levels is None:
        if default is None:
            raise ValueError("level_sampler: levels=None needs the default level")
        return lambda key: default
    if callable(levels):
        return levels
    leaves = jax.tree.leaves(levels)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            "levels: a batch of env params needs one leading axis [L] > 0 on every leaf (got "
            f"leading sizes {sorted(map(str, sizes))}); or pass a function sample_levels(key)"
        )
    (num,) = sizes
    levels = jax.tree.map(jnp.asarray, levels)
    return lambda key: jax.tree.map(lambda x: x[jax.random.randint(key, (), 0, num)], levels)


def make_level_fitness(cfg: LPGConfig):
    """fitness(params, key, level) -> scalar: the final return (mean episode return of the last
    5% of updates, as meta.lpo) of an A2C agent (seed `key`) trained for its lifetime with the
    rule `params` on `level` (env params). Non-finite (NaN) when any of the agent's updates was
    skipped for a non-finite loss or gradient: es.evolve then gives the candidate the worst
    fitness of its generation and never keeps it as best."""
    inner = cfg.inner_config()
    env, default = make_env(cfg)

    def fitness(params, key, level):
        lifetime = level_lifetime(cfg, level, inner.num_updates)
        rule_objective = objective(params, cfg.kl_weight, inner.gamma, lifetime)
        agent = a2c.make_agent(inner, rule_objective, env=env, env_params=default)
        out = agent.train(key, level)
        m = out.metrics
        score = final_return(m["episode_return"], m["episodes_finished"], lifetime)
        clean = (jnp.sum(out.metrics["nan_skipped"]) == 0) & jnp.isfinite(score)
        return jnp.where(clean, score, jnp.nan)

    return fitness


def level_lifetime(cfg: LPGConfig, level, num_updates: int):
    """A level's lifetime clipped to [1, num_updates] (int32 []) when `cfg.level_lifetime`, else
    None; ValueError if the level has no `lifetime` field."""
    if not cfg.level_lifetime:
        return None
    if not hasattr(level, "lifetime"):
        raise ValueError(
            f"LPGConfig.level_lifetime=True: the levels of {cfg.env} ({type(level).__name__}) "
            "have no `lifetime` field"
        )
    return jnp.clip(jnp.asarray(level.lifetime, jnp.int32), 1, num_updates)


def make_fitness(cfg: LPGConfig, levels=None):
    """fitness(params, key) -> scalar: `make_level_fitness(cfg)` on the level drawn from `key`
    (k_level, k_agent = split(key); `levels` as `level_sampler`'s)."""
    on_level = make_level_fitness(cfg)
    sample = level_sampler(levels, make_env(cfg)[1])

    def fitness(params, key):
        k_level, k_agent = jax.random.split(key)
        return on_level(params, k_agent, sample(k_level))

    return fitness


@dataclasses.dataclass
class MetaOutput:
    """params: the learned rule (ES mean); best_params: the candidate with the highest fitness
    over all generations, each fitness measured on its own key-drawn level and agent seed (so a
    lucky draw, not a comparison on common levels: `params` is the rule to use); es:
    es.ESOutput; info: what `save` records (trained_on)."""

    params: Any
    best_params: Any
    es: es.ESOutput
    info: dict


def make_meta_train(cfg: LPGConfig, levels=None):
    """`meta_train(key, *, init=None, **evolve_kwargs) -> MetaOutput`: ES over rules (LPG or
    TA-LPG) from `init` (default `cfg.init_params(k_init)`), a generation = ask -> population x
    whole agent lifetimes (vmapped, sharded over devices) -> tell; `evolve_kwargs` as
    es.evolve's (devices, progress, checkpoint_dir, resume, on_generations). The candidates'
    fitness function (`make_fitness(cfg, levels)`) is `meta_train.fitness`."""
    fitness = make_fitness(cfg, levels)

    def meta_train(key, *, init=None, **evolve_kwargs) -> MetaOutput:
        k_init, k_es = jax.random.split(key)
        init = cfg.init_params(k_init) if init is None else init
        out = es.evolve(fitness, init, cfg.es, k_es, **evolve_kwargs)
        source = "default" if levels is None else ("sampler" if callable(levels) else "set")
        info = {
            "trained_on": {
                "method": "es",
                "env": cfg.env,
                "levels": source,
                "inner": C.to_dict(cfg.inner_config()),
                "es": dataclasses.asdict(cfg.es),
                "generations": int(out.fitness.shape[0]),
                "final_mean_fitness": float(out.mean_fitness[-1]),
            }
        }
        return MetaOutput(out.mean_params, out.best_params, out, info)

    meta_train.fitness = fitness
    return meta_train


# --------------------------------------------------------------------------- meta-gradient


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
        for name in ("num_agents", "agent_chunks", "num_agent_updates", "num_steps"):
            C.check_positive_int(self, name)
        for name in ("learning_rate", "critic_learning_rate", "adam_eps_root"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"MetaGradientConfig.{name}={value!r}: must be a number > 0")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value <= 1):
                raise ValueError(f"MetaGradientConfig.{name}={value!r}: must be in [0, 1]")
        for name in ("entropy_coef", "pi_hat_l2_coef", "y_entropy_coef", "y_hat_l2_coef"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value)):
                raise ValueError(f"MetaGradientConfig.{name}={value!r}: must be a finite number")
        g = self.max_grad_norm
        if g is not None and not (_is_number(g) and math.isfinite(g) and g > 0):
            raise ValueError(f"MetaGradientConfig.max_grad_norm={g!r}: must be > 0 or None")
        if self.num_agents % self.agent_chunks:
            raise ValueError(
                f"MetaGradientConfig.num_agents={self.num_agents} is not divisible by "
                f"agent_chunks={self.agent_chunks}: every chunk needs the same number of agents"
            )


def _is_number(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


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


def _masked_mean(x, mask):
    """Mean of `x [n]` over `mask & isfinite(x)`; NaN when that set is empty (never a 0)."""
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
        levels = jax.tree.map(lambda new, old: _pick(done, new, old), fresh, levels)
        return (
            state,
            levels,
            tags,
            {"mean_agent_return": _masked_mean(results["agent_return"], done)},
        )


def _pick(mask, new, old):
    """`new` on the rows where `mask [A]`, else `old` (leading axis A)."""
    return jnp.where(mask.reshape(-1, *[1] * (jnp.ndim(old) - 1)), new, old)


def _check_mg_curriculum(curriculum) -> None:
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
    s = MetaGradientConfig() if settings is None else settings
    if not isinstance(s, MetaGradientConfig):
        raise ValueError(f"settings must be a lpg.MetaGradientConfig, got {type(s).__name__}")
    inner = dataclasses.replace(cfg.inner_config(), adam_eps_root=s.adam_eps_root)
    env, default = make_env(cfg)
    if curriculum is None:
        curriculum = SampledLevels(batch_sampler(level_sampler(levels, default)))
    elif levels is not None:
        raise ValueError("make_meta_gradient_train: give levels or a curriculum, not both")
    _check_mg_curriculum(curriculum)

    def rule_agent(rule, lifetime=None):
        """The inner agent whose objective is the rule `rule` (traced or not)."""
        rule_objective = objective(rule, cfg.kl_weight, inner.gamma, lifetime)
        return a2c.make_agent(inner, rule_objective, env=env, env_params=default)

    template = jax.eval_shape(cfg.init_params, jax.random.key(0))  # shapes: the agent's check
    agent = rule_agent(template)
    num_updates, K, A = agent.num_updates, s.num_agent_updates, s.num_agents
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
    network, head = agent.network, agent.head
    critic_net = _ValueCritic(tuple(inner.hidden_sizes), inner.activation)
    critic_tx = optax.adam(s.critic_learning_rate)
    rule_tx = rule_optimizer(s)
    span = num_updates + K  # history slots: updates 0 .. N + K - 2 can be written
    record_names = {"agent": ("episode_return", "episodes_finished")}
    if antagonist is not None:
        record_names["antagonist"] = ("episode_return", "episodes_finished", "positive_advantage")
    stat_names = ("pi_hat_sq", "y_hat_sq", "loss", "kl", "nan_skipped")

    def lifetime_of(level):
        lifetime = level_lifetime(cfg, level, num_updates)
        return jnp.int32(num_updates) if lifetime is None else lifetime

    def agent_meta_loss(rule, state, critic, lifetime, key):
        """One agent: K updates, a fresh rollout, the regularised A2C loss -> (loss, aux)."""
        update = rule_agent(rule, lifetime if cfg.level_lifetime else None).update
        state, metrics = jax.lax.scan(lambda st, _: update(st), state, None, length=K)
        env_state, obs, _, data = _collect(agent, state.params, state, key)
        values = critic_net.apply(critic, jnp.concatenate([data["obs"], data["next_obs"]]))
        values = jax.lax.stop_gradient(values)
        T = inner.num_steps
        advantages, targets = gae(
            data["reward"],
            values[:T],
            values[T:],
            data["terminated"],
            data["truncated"],
            s.gamma,
            s.gae_lambda,
        )
        if s.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        out = network.apply(state.params, data["obs"], method=ActorCritic.outputs)
        pg = -jnp.mean(head.log_prob(out["policy"], data["action"]) * advantages)
        log_y = jax.nn.log_softmax(out["prediction"])
        final_entropy = jnp.mean(head.entropy(out["policy"]))
        final_y_entropy = jnp.mean(-jnp.sum(jnp.exp(log_y) * log_y, axis=-1))
        stats = {name: jnp.mean(metrics[name]) for name in stat_names}
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
        record = {name: metrics[name] for name in record_names["agent"]}
        return pg + reg, (state, data, targets, {"meta_pg_loss": pg, **stats}, record)

    def agents_loss(rule, agents, critic, lifetimes, keys):
        """Mean meta-loss of a batch of agents `[a]` (vmapped; `keys [a]`) and their aux."""
        losses, aux = jax.vmap(agent_meta_loss, in_axes=(None, 0, 0, 0, 0))(
            rule, agents, critic, lifetimes, keys
        )
        return jnp.mean(losses), aux

    def meta_loss(rule, state: MetaGradientState, key):
        keys = jax.random.split(key, A)
        return agents_loss(rule, state.agents, state.critic, state.lifetimes, keys)

    def chunked_grad(rule, state: MetaGradientState, key):
        """value_and_grad of `meta_loss`, the agents split into `agent_chunks` sequential chunks
        (each agent with its own key as unchunked: the same mean loss and gradient, to float
        rounding; the chunks' aux concatenated back to `[A]`)."""
        grad_fn = jax.value_and_grad(agents_loss, has_aux=True)
        keys = jax.random.split(key, A)
        n = s.agent_chunks
        if n == 1:
            return grad_fn(rule, state.agents, state.critic, state.lifetimes, keys)
        split = lambda x: x.reshape(n, A // n, *x.shape[1:])
        parts = jax.tree.map(split, (state.agents, state.critic, state.lifetimes, keys))
        (losses, aux), grads = jax.lax.map(lambda args: grad_fn(rule, *args), parts)
        merge = lambda x: x.reshape(A, *x.shape[2:])
        mean = lambda x: jnp.mean(x, axis=0)
        return (mean(losses), jax.tree.map(merge, aux)), jax.tree.map(mean, grads)

    def critic_step(critic, opt, data, targets):
        def loss_fn(c):
            return jnp.mean((critic_net.apply(c, data["obs"]) - targets) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(critic)
        updates, opt = critic_tx.update(grads, opt, critic)
        return optax.apply_updates(critic, updates), opt, loss

    def fresh(key, level):
        """A new agent on `level`, with a new value critic (and a new antagonist)."""
        k_agent, k_critic, k_antagonist = jax.random.split(key, 3)
        state = agent.init(k_agent, level)
        critic = critic_net.init(k_critic, state.obs)
        rival = () if antagonist is None else antagonist.init(k_antagonist, level)
        return state, critic, critic_tx.init(critic), rival

    def empty_history():
        return {
            who: {name: jnp.zeros((A, span), jnp.float32) for name in names}
            for who, names in record_names.items()
        }

    def init(key) -> MetaGradientState:
        k_rule, k_curriculum, k_levels, k_agents = jax.random.split(
            jax.random.key(0) if key is None else key, 4
        )
        rule = cfg.init_params(k_rule)
        cur = curriculum.init(k_curriculum)
        cur, first, tags = curriculum.first_levels(cur, k_levels, A, jnp.int32(0))
        agents, critic, critic_opt, rivals = jax.vmap(fresh)(jax.random.split(k_agents, A), first)
        lifetimes = jax.vmap(lifetime_of)(first)
        offsets = stagger_offsets(lifetimes, K) if s.stagger else jnp.zeros((A,), jnp.int32)
        agents = agents.replace(update_step=offsets)
        if antagonist is not None:
            rivals = rivals.replace(update_step=offsets)
        return MetaGradientState(
            rule=rule,
            rule_opt=rule_tx.init(rule),
            agents=agents,
            critic=critic,
            critic_opt=critic_opt,
            antagonists=rivals,
            history=empty_history(),
            lifetimes=lifetimes,
            scored=offsets == 0,
            tags=tags,
            curriculum=cur,
            step=jnp.zeros((), jnp.int32),
        )

    def record(history, start, metrics):
        """Writes the K updates' metrics `[A, K]` at each agent's first update `start [A]`."""
        write = jax.vmap(_write)
        return {name: write(history[name], start, metrics[name]) for name in history}

    def train_antagonists(rivals):
        def k_updates(state):
            return jax.lax.scan(lambda st, _: antagonist.update(st), state, None, length=K)

        return jax.vmap(k_updates)(rivals)

    def results_of(history, lifetimes):
        h = history["agent"]
        out = {"agent_return": final_return(h["episode_return"], h["episodes_finished"], lifetimes)}
        if antagonist is not None:
            h = history["antagonist"]
            ones = jnp.ones_like(h["positive_advantage"])
            out["antagonist_return"] = final_return(
                h["episode_return"], h["episodes_finished"], lifetimes
            )
            out["pvl"] = final_return(h["positive_advantage"], ones, lifetimes)
        return out

    def step(state: MetaGradientState, key):
        """One meta-step (see `make_meta_gradient_train`) -> (state, metrics)."""
        k_meta, k_reset, k_fresh = jax.random.split(key, 3)
        start = state.agents.update_step
        (loss, (agents, data, targets, stats, recorded)), grads = chunked_grad(
            state.rule, state, k_meta
        )
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, rule_opt = rule_tx.update(grads, state.rule_opt, state.rule)
        rule = loop.keep_finite(ok, optax.apply_updates(state.rule, updates), state.rule)
        rule_opt = loop.keep_finite(ok, rule_opt, state.rule_opt)
        critic, critic_opt, critic_loss = jax.vmap(critic_step)(
            state.critic, state.critic_opt, data, targets
        )
        history = {"agent": record(state.history["agent"], start, recorded)}
        rivals = state.antagonists
        if antagonist is not None:
            rivals, rival_metrics = train_antagonists(rivals)
            history["antagonist"] = record(state.history["antagonist"], start, rival_metrics)
        # lives that ended score their levels; those agents restart on the curriculum's levels
        done = agents.update_step >= state.lifetimes
        results = results_of(history, state.lifetimes)
        results = jax.tree.map(lambda r: jnp.where(state.scored, r, jnp.nan), results)
        cur, new_levels, tags, cur_metrics = curriculum.reset(
            state.curriculum, k_reset, done, agents.env_params, state.tags, results, state.step + 1
        )
        new = jax.vmap(fresh)(jax.random.split(k_fresh, A), new_levels)
        agents, critic, critic_opt, rivals = jax.tree.map(
            lambda n, o: _pick(done, n, o), new, (agents, critic, critic_opt, rivals)
        )
        history = jax.tree.map(lambda h: _pick(done, jnp.zeros_like(h), h), history)
        lifetimes = jnp.where(done, jax.vmap(lifetime_of)(new_levels), state.lifetimes)
        metrics = jax.tree.map(jnp.mean, stats)
        metrics.update(
            meta_loss=loss,
            rule_grad_norm=grad_norm,
            rule_skipped=1 - ok.astype(jnp.int32),
            critic_loss=jnp.mean(critic_loss),
            agents_restarted=jnp.sum(done),
            finished_return=_masked_mean(results["agent_return"], done),
            unscored=jnp.sum(done & ~jnp.isfinite(results["agent_return"])),
            **{name: jnp.asarray(cur_metrics[name], jnp.float32) for name in curriculum.metrics},
        )
        new_state = MetaGradientState(
            rule=rule,
            rule_opt=rule_opt,
            agents=agents,
            critic=critic,
            critic_opt=critic_opt,
            antagonists=rivals,
            history=history,
            lifetimes=lifetimes,
            scored=state.scored | done,
            tags=tags,
            curriculum=cur,
            step=state.step + 1,
        )
        return new_state, metrics

    def train(key, num_steps: int | None = None):
        k_init, k_steps = jax.random.split(key)
        steps = s.num_steps if num_steps is None else num_steps
        state = init(k_init)
        keys = jax.random.split(k_steps, steps)
        return jax.lax.scan(step, state, keys)

    return MetaGradient(cfg, s, agent, init, meta_loss, step, train, curriculum)
