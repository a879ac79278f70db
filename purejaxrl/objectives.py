"""Objectives of the on-policy loop: what the update minimises, given a rollout.

The loop (purejaxrl/actor_critic.py) runs rollout -> targets -> objective -> optimiser step:

1. `rollout`: a dict of `[T, N, ...]` arrays, T = num_steps, N = num_envs:
     obs `[T, N, *obs]`, action `[T, N(, d)]`, log_prob (behaviour policy's log pi(a|s)),
     reward, terminated, truncated (bool), value V(s_t), next_value V(s'_t) of the observation
     reached *before* any auto-reset (bootstrap target on truncation), all `[T, N]`; and, only
     for an objective with `needs_next_obs = True`, next_obs `[T, N, *obs]`: those observations.
2. `objective.targets(rollout, ctx) -> dict` of extra `[T, N, ...]` arrays computed once per
   update with the update-start parameters (GAE advantages and return targets, ...).
3. The loop splits rollout + targets into minibatches: a flat shuffle over T x N (leaves `[B, ...]`)
   or, when `objective.time_ordered`, whole env columns in time order (leaves `[T, n, ...]`).
4. `objective.loss(outputs, batch, ctx) -> (loss [], metrics: dict of [])`, differentiated in
   the parameters. `outputs` is the network on `batch["obs"]`: "policy" (the head's parameters),
   "value" `[...]`, "features" (the critic's last hidden layer), and "prediction" (logits
   `[..., m]` of the extra prediction head y(s), when the config has `prediction_size` m > 0).

`Context` carries what is not data: the policy head (log_prob / entropy / sample), `apply`
(the network applied with the parameters in use, for objectives that need more of it), progress
n/N `[]`, the number of updates N, and a key (per minibatch in `loss`).

An objective is a small frozen object; its hyper-parameters may be tracers (swept with vmap).
`ActorCritic(policy_loss, ...)` is "GAE + any per-sample policy loss" (PPO-clip, A2C's policy
gradient, learned drift functions). A registry maps names to builders so configs and the CLI
select objectives: `objective=(("name", "ppo_clip"),)` in a config, `objective: {name: ...}` in
YAML; other packages `register` theirs.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from purejaxrl import losses
from purejaxrl.config import close_match
from purejaxrl.gae import gae


class Context(NamedTuple):
    """What an objective may use besides the data (not a pytree; built inside the update)."""

    head: Any  # distributions head: log_prob(out, a), entropy(out), sample_and_log_prob, ...
    apply: Callable[..., Any]  # apply(*args, method=...): the network with the current params
    progress: Any  # n/N in [0, 1], float32 []
    num_updates: int  # N
    key: Any  # raw PRNG key


@dataclasses.dataclass(frozen=True)
class Objective(abc.ABC):
    """Base class: no targets, flat minibatches. Subclasses define `loss`."""

    time_ordered = False  # True: minibatches of whole env columns `[T, n, ...]` in time order
    needs_next_obs = False  # True: the rollout also holds "next_obs" (pre-reset s'_t) `[T, N, ...]`

    def targets(self, rollout: dict, ctx: Context) -> dict:
        return {}

    @abc.abstractmethod
    def loss(self, outputs: dict, batch: dict, ctx: Context):
        """(loss [], metrics: dict of []) for one minibatch; see the module docstring."""

    def check(self, cfg) -> None:
        """ValueError if the objective cannot run with `cfg` (e.g. needs a prediction head)."""
        del cfg  # the base objectives run with any on-policy config


def normalize(x):
    """(x - mean) / (std + 1e-8) over all of x."""
    return (x - x.mean()) / (x.std() + 1e-8)


@dataclasses.dataclass(frozen=True)
class ActorCritic(Objective):
    """GAE targets, then policy_loss + vf_coef * value loss - ent_coef * entropy.

    policy_loss(log_ratio [B], advantages [B], progress [], extras) -> (loss [], aux): see
    purejaxrl.losses for the signature and the extras it sees. With `value_clip`, PPO's clipped
    value loss. Hyper-parameters may be tracers.
    """

    policy_loss: Callable
    gamma: Any = 0.99
    gae_lambda: Any = 0.95
    vf_coef: Any = 0.5
    ent_coef: Any = 0.0
    normalize_advantages: bool = True
    value_clip: Any = None

    def targets(self, rollout, ctx):
        advantages, targets = gae(
            rollout["reward"],
            rollout["value"],
            rollout["next_value"],
            rollout["terminated"],
            rollout["truncated"],
            self.gamma,
            self.gae_lambda,
        )
        return {"advantages": advantages, "targets": targets}

    def loss(self, outputs, batch, ctx):
        policy, values = outputs["policy"], outputs["value"]
        log_ratio = ctx.head.log_prob(policy, batch["action"]) - batch["log_prob"]
        entropy = ctx.head.entropy(policy)
        raw = batch["advantages"]
        advantages = normalize(raw) if self.normalize_advantages else raw
        extras = {
            "entropy": entropy,
            "raw_advantages": raw,
            "value": values,
            "old_value": batch["value"],
            "target": batch["targets"],
            "num_updates": ctx.num_updates,
        }
        pg_loss, aux = self.policy_loss(log_ratio, advantages, ctx.progress, extras)
        v_loss = losses.value_loss(values, batch["value"], batch["targets"], self.value_clip)
        ent = jnp.mean(entropy)
        total = pg_loss + self.vf_coef * v_loss - self.ent_coef * ent
        return total, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, **aux}


def actor_critic(cfg, policy_loss) -> ActorCritic:
    """`ActorCritic` with the on-policy config's gamma, gae_lambda, vf_coef, ent_coef, advantage
    normalisation and value clipping (`cfg.value_clip`: PPO's clip_value_loss)."""
    return ActorCritic(
        policy_loss=policy_loss,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        vf_coef=cfg.vf_coef,
        ent_coef=cfg.ent_coef,
        normalize_advantages=cfg.normalize_advantages,
        value_clip=cfg.value_clip,
    )


# --------------------------------------------------------------------------- registry


def _ppo_clip(cfg, clip_eps=None) -> ActorCritic:
    """GAE + PPO's clipped surrogate (clip_eps defaults to the config's `surrogate_clip`)."""
    eps = cfg.surrogate_clip if clip_eps is None else clip_eps
    return actor_critic(cfg, losses.ppo_clip(eps))


def _policy_gradient(cfg) -> ActorCritic:
    """GAE + the plain policy gradient (A2C's)."""
    return actor_critic(cfg, losses.policy_gradient())


# name -> builder(cfg, **options) -> Objective: this package's objectives; the learned ones
# (meta: lpo, dpo, mdpo, lpg) are added by `register` (purejaxrl imports nothing from meta).
REGISTRY: dict[str, Callable[..., Objective]] = {
    "ppo_clip": _ppo_clip,
    "policy_gradient": _policy_gradient,
}


def register(name: str, builder: Callable[..., Objective]) -> None:
    """Makes `name` selectable by config (`objective=(("name", name), ...)`) and the CLI."""
    if name in REGISTRY and REGISTRY[name] is not builder:
        raise ValueError(f"objective {name!r} is already registered")
    REGISTRY[name] = builder


def build(spec: Mapping[str, Any] | tuple, cfg) -> Objective:
    """The objective a config's `objective` spec names: {"name": ..., **options}."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(
            f"{type(cfg).__name__}.objective: unknown objective {name!r}"
            f"{close_match(name, sorted(REGISTRY), n=3)}; registered: {sorted(REGISTRY)}"
        )
    try:
        return REGISTRY[name](cfg, **spec)
    except TypeError as e:
        raise ValueError(f"{type(cfg).__name__}.objective {name!r}: {e}") from None
