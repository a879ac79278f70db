"""MLP actor-critic networks (flax.linen), with orthogonal initialisation.

`ActorCritic.actor(obs [B, obs_dim]) -> head outputs`, `ActorCritic.critic(obs) -> value [B]`,
`ActorCritic(obs) -> (head outputs, value)`.

With separate torsos (the default) the actor and critic MLPs are held as one stacked network:
the first layer is a single [obs_dim, 2 * hidden] matmul and the later layers are one batched
matmul over the two members, so a joint forward pass costs the kernels of one MLP. `actor` and
`critic` alone use only their own member's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from purejaxrl.initializers import orthogonal, spread_expert_means, stacked_orthogonal

ACTIVATIONS = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "silu": nn.silu,
}


class MLP(nn.Module):
    """Dense -> [LayerNorm] -> activation, for each hidden size; orthogonal(sqrt 2) init."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = nn.Dense(size, kernel_init=orthogonal(np.sqrt(2.0)))(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        return x


class TwinMLP(nn.Module):
    """Two MLPs of the same sizes on the same input, as stacked weights.

    `__call__(x [B, d], member=None)` -> [2, B, h] (both) or [B, h] (member 0 or 1).
    """

    hidden_sizes: Sequence[int]
    activation: str = "tanh"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x, member: int | None = None):
        act = ACTIVATIONS[self.activation]
        if not self.hidden_sizes and member is None:  # no layers: both members see the input
            return jnp.broadcast_to(x, (2, *x.shape))
        for i, size in enumerate(self.hidden_sizes):
            fan_in = x.shape[-1]
            kernel = self.param(
                f"kernel_{i}", stacked_orthogonal(np.sqrt(2.0), 2), (2, fan_in, size)
            )
            bias = self.param(f"bias_{i}", nn.initializers.zeros, (2, size))
            if member is not None:
                x = x @ kernel[member] + bias[member]
            elif i == 0:
                # One matmul for both members: [B, d] @ [d, 2h] -> [2, B, h].
                both = jnp.concatenate([kernel[0], kernel[1]], axis=-1)
                x = jnp.moveaxis((x @ both).reshape(*x.shape[:-1], 2, size), -2, 0)
                x = x + bias.reshape(2, *([1] * (x.ndim - 2)), size)
            else:
                x = jnp.einsum("k...h,khg->k...g", x, kernel)
                x = x + bias.reshape(2, *([1] * (x.ndim - 2)), size)
            if self.layer_norm:
                scale = self.param(f"ln_scale_{i}", nn.initializers.ones, (2, size))
                offset = self.param(f"ln_bias_{i}", nn.initializers.zeros, (2, size))
                mean = x.mean(-1, keepdims=True)
                var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
                x = (x - mean) * jax.lax.rsqrt(var + 1e-6)
                if member is not None:
                    x = x * scale[member] + offset[member]
                else:
                    shape = (2, *([1] * (x.ndim - 2)), size)
                    x = x * scale.reshape(shape) + offset.reshape(shape)
            x = act(x)
        return x


class ActorCritic(nn.Module):
    """Policy head outputs and a scalar value from (separate or shared) MLP torsos.

    head_kind: "categorical" -> logits [..., action_dim];
               "gaussian" -> (mean, log_std), each [..., action_dim], log_std a
               state-independent parameter initialised to `init_log_std`;
               "mixture" -> (logits [..., K], mean [..., K, action_dim], log_std [..., K, action_dim])
               for `num_experts` = K Gaussian experts (distributions.GaussianMixture): means from
               one output layer, a state-independent log-std per expert, mixing logits from their
               own linear layer (none for K = 1: logits 0, so one expert is the Gaussian head).
    A mixture with K > 1 also holds `mixture_q`, the advantage head of the action-value
    Q(s, a) = V(s) + A(h(s), a) that scores the experts' proposals (`with_features`, `action_value`).
    prediction_size m > 0 adds a prediction head on the actor's features: logits `[..., m]` of a
    categorical prediction vector y(s) (LPG's), in `outputs(obs)["prediction"]`.
    """

    action_dim: int
    head_kind: str
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    layer_norm: bool = False
    shared: bool = False
    init_log_std: float = 0.0
    num_experts: int = 1
    prediction_size: int = 0

    def setup(self):
        torso_cls = MLP if self.shared else TwinMLP
        self.torso = torso_cls(tuple(self.hidden_sizes), self.activation, self.layer_norm)
        experts = self.num_experts if self.head_kind == "mixture" else 1
        bias_init = nn.initializers.zeros
        if experts > 1:  # experts start at different means (K = 1 stays the Gaussian head)
            bias_init = spread_expert_means(experts, self.action_dim)
        self.policy_out = nn.Dense(
            experts * self.action_dim, kernel_init=orthogonal(0.01), bias_init=bias_init
        )
        self.value_out = nn.Dense(1, kernel_init=orthogonal(1.0))
        if self.head_kind != "categorical":
            shape = (
                (experts, self.action_dim) if self.head_kind == "mixture" else (self.action_dim,)
            )
            self.log_std = self.param(
                "log_std", lambda _, shape: jnp.full(shape, self.init_log_std), shape
            )
        if self.head_kind == "mixture" and experts > 1:
            self.mixture_logits = nn.Dense(experts, kernel_init=orthogonal(0.01))
            self.mixture_q = AdvantageHead(self.hidden_sizes[-1], self.activation)
        if self.prediction_size:
            self.prediction_out = nn.Dense(self.prediction_size, kernel_init=orthogonal(0.01))

    def _policy(self, h):
        out = self.policy_out(h)
        if self.head_kind == "categorical":
            return out
        if self.head_kind == "mixture":
            k = self.num_experts
            mean = out.reshape(*out.shape[:-1], k, self.action_dim)
            logits = self.mixture_logits(h) if k > 1 else jnp.zeros((*out.shape[:-1], 1))
            return logits, mean, jnp.broadcast_to(self.log_std, mean.shape)
        return out, jnp.broadcast_to(self.log_std, out.shape)

    def actor(self, obs):
        return self._policy(self.torso(obs) if self.shared else self.torso(obs, member=0))

    def critic(self, obs):
        h = self.torso(obs) if self.shared else self.torso(obs, member=1)
        return self.value_out(h)[..., 0]

    def __call__(self, obs):
        out, value, _ = self.with_features(obs)
        return out, value

    def with_features(self, obs):
        """(head outputs, value [B], critic features [B, hidden_sizes[-1]])."""
        out = self.outputs(obs)
        return out["policy"], out["value"], out["features"]

    def outputs(self, obs):
        """Everything the network says about `obs [B, obs_dim]`, as objectives see it: {"policy":
        head outputs, "value": [B], "features": critic features [B, hidden_sizes[-1]],
        "prediction": logits [B, m] (prediction_size m > 0 only)}."""
        h = self.torso(obs)
        h_actor, h_critic = (h, h) if self.shared else (h[0], h[1])
        out = {"policy": self._policy(h_actor), "value": self.value_out(h_critic)[..., 0]}
        out["features"] = h_critic
        if self.prediction_size:
            out["prediction"] = self.prediction_out(h_actor)
        return out

    def init_all(self, obs):
        """`outputs(obs)`, also touching the mixture's Q head: `network.init(key, obs,
        method=ActorCritic.init_all)` creates every parameter."""
        out = self.outputs(obs)
        if self.head_kind == "mixture" and self.num_experts > 1:
            action = jnp.zeros((*out["value"].shape, self.action_dim))
            self.action_value(out["features"], out["value"], action)
        return out

    def action_value(self, features, value, action):
        """Mixture critic Q(s, a) = V(s) + A(features(s), a) from `with_features`' critic features
        `[B, H]` and value `[B]`; action `[B, d]` -> `[B]`, or `[B, K, d]` (one per expert) -> `[B, K]`.

        Only the advantage head A learns from Q's loss: the features and V are held constant, so
        no gradient of it reaches the critic. Ranking a state's actions by Q is ranking by A."""
        features, value = jax.lax.stop_gradient((features, value))
        if action.ndim == features.ndim + 1:
            features = jnp.broadcast_to(
                features[..., None, :], (*action.shape[:-1], features.shape[-1])
            )
            value = value[..., None]
        return value + self.mixture_q(features, action)


class AdvantageHead(nn.Module):
    """A(h, a): one hidden layer on concat(features h [..., H], action [..., d]) -> [...]."""

    hidden_size: int = 64
    activation: str = "tanh"

    @nn.compact
    def __call__(self, features, action):
        x = MLP((self.hidden_size,), self.activation)(jnp.concatenate([features, action], -1))
        return nn.Dense(1, kernel_init=orthogonal(1.0))(x)[..., 0]
