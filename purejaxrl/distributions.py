"""Policy heads: the map from network outputs to an action distribution, chosen by config.

A head is a small frozen object with pure methods. The network's actor produces `out`, the head's
parameters for a batch of observations:

- `Categorical`: `out` = logits `[..., n]`; actions int32 `[...]`.
- `Gaussian`: `out` = (mean `[..., d]`, log_std `[..., d]`) with a state-independent log-std;
  actions are the raw Gaussian sample `[..., d]` (the env wrapper clips them to the box).
- `TanhGaussian`: `out` = (mean, log_std) of the pre-squash Gaussian; the stored action is the
  pre-squash sample `u` (so log-probs never need `atanh`), the env receives `tanh(u)` in (-1, 1).
  log pi(tanh(u)) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2).

- `GaussianMixture`: `out` = (logits `[..., K]`, mean `[..., K, d]`, log_std `[..., K, d]`), K
  diagonal Gaussian experts mixed by softmax(logits); with `squash`, tanh-squashed like
  `TanhGaussian` (stored actions pre-squash). Acting picks expert k ~ Categorical(softmax(logits))
  and samples from it.

`to_env(action)` maps a stored action to what the env receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import distrax
import jax
import jax.numpy as jnp


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


def _gaussian_log_prob(z_or_eps, log_std):
    """Diagonal Gaussian log-density from the standardised point `(x - mean) / std`, summed over d."""
    return jnp.sum(-0.5 * z_or_eps**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


@dataclass(frozen=True)
class GaussianMixture:
    """K diagonal Gaussian experts, pi(a|s) = sum_k w_k(s) N(a; mu_k(s), sigma_k(s)).

    `out` = (logits [..., K], mean [..., K, d], log_std [..., K, d]); weights w = softmax(logits).
    With `squash`, actions are tanh-squashed per expert: the stored action is the pre-squash `u`
    `[..., d]` and log pi(tanh u) = log sum_k w_k N(u; mu_k, sigma_k) - sum_i log(1 - tanh(u_i)^2)
    (the Jacobian is the same for every expert, so it comes out of the sum).

    With K = 1 every method returns the `Gaussian` / `TanhGaussian` head's numbers bit for bit
    (same key use, same formulas), so a one-expert mixture is the unimodal policy.
    """

    d: int
    num_experts: int
    squash: bool = False
    discrete = False

    def weights(self, out):
        return jax.nn.softmax(out[0], axis=-1)

    def expert_log_probs(self, out, action):
        """log N(action; mu_k, sigma_k) of every expert `[..., K]` (no tanh term), action `[..., d]`."""
        _, mean, log_std = out
        z = (action[..., None, :] - mean) * jnp.exp(-log_std)
        return _gaussian_log_prob(z, log_std)

    def _mix(self, out, expert_log_probs, action):
        log_w = jax.nn.log_softmax(out[0], axis=-1)
        logp = jax.nn.logsumexp(log_w + expert_log_probs, axis=-1)
        return logp - tanh_log_det_jacobian(action) if self.squash else logp

    def log_prob(self, out, action):
        """Exact mixture log-likelihood `[...]` of stored (pre-squash) actions `[..., d]`."""
        return self._mix(out, self.expert_log_probs(out, action), action)

    def sample_experts(self, key, out):
        """One reparameterised sample per expert: (u `[..., K, d]`, log N_k(u_k) `[..., K]`, with
        the tanh term when squashed): each expert's own density at its own sample."""
        _, mean, log_std = out
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        u = mean + jnp.exp(log_std) * eps
        logp = _gaussian_log_prob(eps, log_std)
        if self.squash:
            logp = logp - tanh_log_det_jacobian(u)
        return u, logp

    def sample_expert_index(self, key, out):
        """k ~ Categorical(w) `[...]` int32 (key folded so it never reuses the Gaussian noise)."""
        return jax.random.categorical(jax.random.fold_in(key, 1), out[0], axis=-1)

    def sample_and_log_prob(self, key, out):
        """Acting: k ~ Categorical(w), u ~ N(mu_k, sigma_k); returns (u `[..., d]`, log pi(u) `[...]`)."""
        _, mean, log_std = out
        k = self.sample_expert_index(key, out)
        pick = lambda x: jnp.take_along_axis(x, k[..., None, None], axis=-2)[..., 0, :]
        mean_k, log_std_k = pick(mean), pick(log_std)
        eps = jax.random.normal(key, mean_k.shape, mean_k.dtype)
        u = mean_k + jnp.exp(log_std_k) * eps
        # The chosen expert's density from eps itself (as Gaussian does), the others from u.
        chosen = jax.nn.one_hot(k, self.num_experts, dtype=bool)
        lp = jnp.where(chosen, _gaussian_log_prob(eps, log_std_k)[..., None], 0.0)
        lp = jnp.where(chosen, lp, self.expert_log_probs(out, u))
        return u, self._mix(out, lp, u)

    def entropy(self, out):
        """H(w) + sum_k w_k H(N_k): an upper bound on the mixture's entropy, exact when the experts do
        not overlap and for K = 1 (the mixture entropy has no closed form). Pre-squash when squashed."""
        _, _, log_std = out
        log_w = jax.nn.log_softmax(out[0], axis=-1)
        w = jnp.exp(log_w)
        expert_h = jnp.sum(log_std + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e), axis=-1)
        return jnp.sum(w * expert_h, axis=-1) - jnp.sum(w * log_w, axis=-1)

    def mode(self, out):
        """The mean of the most probable expert `[..., d]` (deterministic evaluation)."""
        k = jnp.argmax(out[0], axis=-1)
        return jnp.take_along_axis(out[1], k[..., None, None], axis=-2)[..., 0, :]

    def to_env(self, action):
        return jnp.tanh(action) if self.squash else action

    def dist(self, out) -> distrax.Distribution:
        """The distrax equivalent (for plotting and checks): MixtureSameFamily of diagonal Gaussians,
        tanh-transformed when squashed (distrax then computes log-probs through atanh)."""
        logits, mean, log_std = out
        mix = distrax.MixtureSameFamily(
            distrax.Categorical(logits=logits),
            distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
        )
        if self.squash:
            return distrax.Transformed(mix, distrax.Block(distrax.Tanh(), ndims=1))
        return mix


HEADS = ("categorical", "gaussian", "tanh_gaussian", "pmoe")


def make_head(kind: str, action_space, num_experts: int = 1, squash: bool = False):
    """Builds the head `kind` for an `envs.spaces` action space; raises ValueError on a mismatch.

    `num_experts` and `squash` (tanh) apply to kind="pmoe" only."""
    from envs import spaces

    discrete = spaces.is_discrete(action_space)
    if kind == "categorical":
        if not discrete:
            raise ValueError(
                f"policy='categorical' needs a discrete action space, got {action_space}; "
                "use policy='gaussian' or 'tanh_gaussian'"
            )
        return Categorical(action_space.n)
    if kind in ("gaussian", "tanh_gaussian", "pmoe"):
        if discrete:
            raise ValueError(
                f"policy={kind!r} needs a continuous (Box) action space, got {action_space}; "
                "use policy='categorical'"
            )
        if kind == "pmoe":
            return GaussianMixture(spaces.action_dim(action_space), num_experts, squash)
        cls = Gaussian if kind == "gaussian" else TanhGaussian
        return cls(spaces.action_dim(action_space))
    raise ValueError(f"policy={kind!r}: allowed values are {list(HEADS)} (or 'auto')")
