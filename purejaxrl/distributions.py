"""Policy heads: the map from network outputs to an action distribution, chosen by config.

A head is a small frozen object with pure methods. The network's actor produces `out`, the head's
parameters for a batch of observations:

- `Categorical`: `out` = logits `[..., n]`; actions int32 `[...]`.
- `Gaussian`: `out` = (mean `[..., d]`, log_std `[..., d]`) with a state-independent log-std;
  actions are the raw Gaussian sample `[..., d]` (the env wrapper clips them to the box).
- `TanhGaussian`: `out` = (mean, log_std) of the pre-squash Gaussian; the stored action is the
  pre-squash sample `u` (so log-probs never need `atanh`), the env receives `tanh(u)` in (-1, 1).
  log pi(tanh(u)) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2).

`to_env(action)` maps a stored action to what the env receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import distrax
import jax
import jax.numpy as jnp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def tanh_log_det_jacobian(u: jax.Array) -> jax.Array:
    """sum_i log(d tanh(u_i) / d u_i) over the last axis, stable for large |u|."""
    return jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


@dataclass(frozen=True)
class Categorical:
    """Discrete actions: softmax over `n` logits."""

    n: int
    discrete = True

    def dist(self, out) -> distrax.Categorical:
        return distrax.Categorical(logits=out)

    def sample_and_log_prob(self, key, out):
        action = jax.random.categorical(key, out)
        return action, self.log_prob(out, action)

    def log_prob(self, out, action):
        logp = jax.nn.log_softmax(out)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self, out):
        return self.dist(out).entropy()

    def mode(self, out):
        return jnp.argmax(out, axis=-1)

    def to_env(self, action):
        return action


@dataclass(frozen=True)
class Gaussian:
    """Diagonal Gaussian over `d` action dimensions; log-std is a learned state-independent vector."""

    d: int
    discrete = False

    def dist(self, out) -> distrax.MultivariateNormalDiag:
        mean, log_std = out
        return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))

    def sample_and_log_prob(self, key, out):
        mean, log_std = out
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        action = mean + jnp.exp(log_std) * eps
        logp = jnp.sum(-0.5 * eps**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)
        return action, logp

    def log_prob(self, out, action):
        mean, log_std = out
        z = (action - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)

    def entropy(self, out):
        _, log_std = out
        return jnp.sum(log_std + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e), axis=-1)

    def mode(self, out):
        return out[0]

    def to_env(self, action):
        return action


@dataclass(frozen=True)
class TanhGaussian(Gaussian):
    """Gaussian squashed by tanh into (-1, 1); stored actions are pre-squash samples `u`."""

    def sample_and_log_prob(self, key, out):
        u, logp_u = super().sample_and_log_prob(key, out)
        return u, logp_u - tanh_log_det_jacobian(u)

    def log_prob(self, out, action):
        return super().log_prob(out, action) - tanh_log_det_jacobian(action)

    def entropy(self, out):
        """Entropy of the pre-squash Gaussian: the squashed entropy has no closed form."""
        return super().entropy(out)

    def to_env(self, action):
        return jnp.tanh(action)


HEADS = ("categorical", "gaussian", "tanh_gaussian")


def make_head(kind: str, action_space):
    """Builds the head `kind` for an `envs.spaces` action space; raises ValueError on a mismatch."""
    from envs import spaces

    discrete = spaces.is_discrete(action_space)
    if kind == "categorical":
        if not discrete:
            raise ValueError(
                f"policy='categorical' needs a discrete action space, got {action_space}; "
                "use policy='gaussian' or 'tanh_gaussian'"
            )
        return Categorical(action_space.n)
    if kind in ("gaussian", "tanh_gaussian"):
        if discrete:
            raise ValueError(
                f"policy={kind!r} needs a continuous (Box) action space, got {action_space}; "
                "use policy='categorical'"
            )
        cls = Gaussian if kind == "gaussian" else TanhGaussian
        return cls(spaces.action_dim(action_space))
    raise ValueError(f"policy={kind!r}: allowed values are {list(HEADS)} (or 'auto')")
