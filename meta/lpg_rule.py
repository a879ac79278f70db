"""The LPG rule: its network, the agent objective it defines, and save / load.

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

Save / load: `save(path, params, info)` / `load(path, y_size=None)` (orbax + SHA-256 manifest,
meta/saved.py, as for LPO drifts). `build_lpg` builds the objective "lpg" (registered by
meta/objectives.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meta import saved
from purejaxrl import actor_critic, objectives
from purejaxrl import config as C
from purejaxrl.networks import ActorCritic

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
    shape = RuleShape(y_size, hidden, time_aware, EMBED)
    for name in ("y_size", "hidden"):
        C.check_positive_int(shape, name)
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
        if not isinstance(cfg, actor_critic.OnPolicyConfig):
            raise ValueError(f"the LPG objective needs an on-policy agent (A2C, PPO), not {name}")
        size = cfg.prediction_size
        if size != m:
            raise ValueError(
                f"{name}.prediction_size={size}: the LPG rule's y width is {m}; the agent's "
                f"prediction head must match it (set prediction_size={m})"
            )
        if cfg.policy not in ("auto", "categorical"):
            raise ValueError(
                f"{name}.policy={cfg.policy!r}: LPG reads pi(a|s), the probability of the taken "
                "action; it needs a categorical policy"
            )

    def targets(self, rollout, ctx):
        """{"pi_hat": `[T, N]`, "log_y_hat": `[T, N, m]`} from the rule over the whole rollout.

        Not stop-gradient: they enter `loss` as batch data, constants for the agent's gradient
        (the loop differentiates in the agent's parameters only), and the meta-gradient reaches
        the rule through them."""
        if not ctx.head.discrete:
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
    record.update(shape._asdict(), format=FORMAT)
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


def build_lpg(cfg, path=None, kl_weight=KL_WEIGHT) -> LPGObjective:
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
