"""Agents: networks, policy heads, rollout, GAE, losses, PPO and A2C, checkpoints."""

from purejaxrl.actor_critic import TrainOutput, TrainState

__all__ = ["TrainOutput", "TrainState"]
