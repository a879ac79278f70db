"""Proximal policy optimisation (clipped surrogate) on the shared actor-critic loop.

cfg = ppo.PPOConfig(env="Pendulum-v1", total_timesteps=200_000)
out = jax.jit(jax.vmap(ppo.make_train(cfg)))(jax.random.split(jax.random.key(0), 4))
out = jax.jit(ppo.make_train(cfg, devices=2))(jax.random.key(0))  # one run on two devices
"""

from __future__ import annotations

import numpy as np

from purejaxrl import actor_critic, losses, objectives
from purejaxrl import config as C


@C.dataclass(frozen=True)
class PPOConfig(actor_critic.OnPolicyConfig):
    """PPO: `update_epochs` passes of `num_minibatches` minibatches over each rollout.

    clip_eps (leaf) clips the probability ratio and, with clip_value_loss, the value change.
    """

    update_epochs: int = C.static(10)
    num_minibatches: int = C.static(8)
    clip_value_loss: bool = C.static(False)
    clip_eps: float = 0.2

    def validate(self) -> None:
        super().validate()
        C.check_positive_int(self, "update_epochs")
        C.check_positive_int(self, "num_minibatches")
        batch = self.num_envs * self.num_steps
        if batch % self.num_minibatches:
            raise ValueError(
                f"{type(self).__name__}.num_minibatches={self.num_minibatches}: num_envs * "
                f"num_steps = {self.num_envs} * {self.num_steps} = {batch} must be divisible "
                "by num_minibatches"
            )
        C.check_range(self, "clip_eps", 0.0, np.inf, low_open=True)

    @property
    def surrogate_clip(self) -> float:
        return self.clip_eps

    @property
    def value_clip(self) -> float | None:
        return self.clip_eps if self.clip_value_loss else None


def make_agent(cfg: PPOConfig, objective=None, **kwargs) -> actor_critic.Agent:
    """The PPO agent. `objective` replaces GAE + clipped surrogate: an objectives.Objective, or a
    per-sample policy loss (e.g. a learned drift) used with GAE and the value loss; else the
    config's `objective` spec. kwargs: env, env_params, progress_fn, progress_every, devices (an
    int n or a list: the envs and every minibatch split over n devices, data parallel; the same
    numbers as one device up to float rounding, see purejaxrl/parallel.py)."""
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"ppo.make_agent needs a PPOConfig, got {type(cfg).__name__}")
    default = objectives.actor_critic(cfg, losses.ppo_clip(cfg.clip_eps))
    objective = actor_critic.resolve_objective(cfg, objective, default)
    sgd = dict(epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches)
    return actor_critic.make_agent(cfg, objective, **sgd, **kwargs)


def make_train(cfg: PPOConfig, objective=None, **kwargs):
    """`train(key, env_params=None) -> TrainOutput`; see `make_agent`."""
    return make_agent(cfg, objective, **kwargs).train
