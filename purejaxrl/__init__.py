"""Agents: networks, policy heads, rollout, GAE, losses, PPO and A2C, checkpoints.

Import the algorithm modules directly: `from purejaxrl import ppo, a2c`.
"""
