"""One functional env API over gymnax and brax (and our own JAX envs), plus wrappers.

    import envs
    env, env_params = envs.make("CartPole-v1")          # auto-resetting single env
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)
    env = envs.VecEnv(envs.EpisodeStatistics(env), num_envs=16)

See `envs.core` for the API contract and `envs.wrappers` for the wrappers.
"""

from envs import gridworld, spaces
from envs.core import Environment, Wrapper
from envs.registry import check_id, make, make_raw, register, registered
from envs.wrappers import (
    AutoReset,
    ClipAction,
    EpisodeStatistics,
    FlattenObservation,
    FrameStack,
    NormalizeObservation,
    NormalizeReward,
    ObservationNoise,
    RescaleAction,
    RunningMeanStd,
    VecEnv,
    obs_norm_stats,
    replace_obs_norm_stats,
    reward_norm_stats,
)

__all__ = [
    "AutoReset",
    "ClipAction",
    "Environment",
    "EpisodeStatistics",
    "FlattenObservation",
    "FrameStack",
    "NormalizeObservation",
    "NormalizeReward",
    "ObservationNoise",
    "RescaleAction",
    "RunningMeanStd",
    "VecEnv",
    "Wrapper",
    "make",
    "make_raw",
    "obs_norm_stats",
    "register",
    "registered",
    "check_id",
    "gridworld",
    "replace_obs_norm_stats",
    "reward_norm_stats",
    "spaces",
]
