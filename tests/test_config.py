"""Config validation messages: ranges are printed the way `check_range` checks them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from purejaxrl import ppo, sac

PPO = ppo.PPOConfig(
    env="CartPole-v1",
    total_timesteps=64,
    num_envs=4,
    num_steps=8,
    num_minibatches=2,
    hidden_sizes=(16, 16),
)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("learning_rate", float("inf"), "PPOConfig.learning_rate=inf: must lie in (0, inf)"),
        ("learning_rate", 0.0, "PPOConfig.learning_rate=0.0: must lie in (0, inf)"),
        ("learning_rate", float("nan"), "PPOConfig.learning_rate=nan: must lie in (0, inf)"),
        ("gamma", 1.5, "PPOConfig.gamma=1.5: must lie in [0, 1]"),
        ("ent_coef", -1, "PPOConfig.ent_coef=-1: must lie in [0, inf)"),
        ("ent_coef", float("inf"), "PPOConfig.ent_coef=inf: must lie in [0, inf)"),
    ],
)
def test_range_messages_show_the_checked_interval(field, value, expected):
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        ppo.make_train(dataclasses.replace(PPO, **{field: value}))


def test_a_range_with_two_infinite_bounds_is_open_on_both_sides():
    cfg = sac.SACConfig(
        env="Pendulum-v1",
        total_timesteps=2048,
        learning_starts=64,
        target_entropy_scale=float("inf"),
    )
    with pytest.raises(ValueError, match=re.escape("must lie in (-inf, inf)")):
        sac.make_train(cfg)


@pytest.mark.parametrize("field, value", [("gamma", 1.0), ("gamma", 0.0), ("ent_coef", 0.0)])
def test_closed_bounds_are_accepted(field, value):
    ppo.make_train(dataclasses.replace(PPO, **{field: value}))  # no error
