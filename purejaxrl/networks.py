"""MLP actor-critic networks (flax.linen), with orthogonal initialisation.

`ActorCritic.actor(obs [..., obs_dim]) -> head outputs`, `ActorCritic.critic(obs) -> value [...]`.
The torso is separate for actor and critic by default (`shared=False`) or shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

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
            x = nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        return x


class ActorCritic(nn.Module):
    """Policy head outputs and a scalar value from (separate or shared) MLP torsos.

    head_kind: "categorical" -> logits [..., action_dim];
               "gaussian" / "tanh_gaussian" -> (mean, log_std), each [..., action_dim],
               log_std a state-independent parameter initialised to `init_log_std`.
    """

    action_dim: int
    head_kind: str
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    layer_norm: bool = False
    shared: bool = False
    init_log_std: float = 0.0

    def setup(self):
        self.actor_torso = MLP(self.hidden_sizes, self.activation, self.layer_norm)
        if not self.shared:
            self.critic_torso = MLP(self.hidden_sizes, self.activation, self.layer_norm)
        self.policy_out = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01))
        self.value_out = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))
        if self.head_kind != "categorical":
            self.log_std = self.param(
                "log_std", lambda _, shape: jnp.full(shape, self.init_log_std), (self.action_dim,)
            )

    def actor(self, obs):
        out = self.policy_out(self.actor_torso(obs))
        if self.head_kind == "categorical":
            return out
        return out, jnp.broadcast_to(self.log_std, out.shape)

    def critic(self, obs):
        torso = self.actor_torso if self.shared else self.critic_torso
        return self.value_out(torso(obs))[..., 0]

    def __call__(self, obs):
        return self.actor(obs), self.critic(obs)
