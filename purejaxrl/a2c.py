"""Synchronous advantage actor-critic (A2C): one gradient step per rollout on the shared loop.

Same rollout, GAE and losses as PPO; the policy loss is the plain policy gradient
(`losses.policy_gradient`) and there is one epoch of one minibatch.
"""

from __future__ import annotations

from purejaxrl import actor_critic, losses, objectives
from purejaxrl import config as C


@C.dataclass(frozen=True)
class A2CConfig(actor_critic.OnPolicyConfig):
    """A2C defaults: short n-step rollouts over many envs, one update each, RMSprop-free Adam."""

    num_envs: int = C.static(16)
    num_steps: int = C.static(8)
    learning_rate: float = 7e-4
    gae_lambda: float = 1.0
    ent_coef: float = 0.01


def make_agent(cfg: A2CConfig, objective=None, **kwargs) -> actor_critic.Agent:
    """The A2C agent; `objective` and kwargs (env, env_params, progress_fn, progress_every,
    devices) as in `ppo.make_agent` (default objective: GAE + policy gradient)."""
    if not isinstance(cfg, A2CConfig):
        raise TypeError(f"a2c.make_agent needs an A2CConfig, got {type(cfg).__name__}")
    default = objectives.actor_critic(cfg, losses.policy_gradient())
    objective = actor_critic.resolve_objective(cfg, objective, default)
    return actor_critic.make_agent(cfg, objective, **kwargs)


def make_train(cfg: A2CConfig, objective=None, **kwargs):
    """`train(key, env_params=None) -> TrainOutput`; see `make_agent`."""
    return make_agent(cfg, objective, **kwargs).train
