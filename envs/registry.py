"""`envs.make(id, **overrides)`: one entry point for gymnax, brax and our own envs."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from envs import gridworld, multimodal
from envs.core import Environment, check_override_keys

# factory(**overrides) -> (raw env without auto-reset, env_params); the table is `_REGISTRY`
# at the end of this module.
Factory = Callable[..., tuple[Environment, Any]]

GYMNAX_IDS = (
    # classic control
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    # MinAtar
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    # bsuite (MNISTBandit-bsuite is left out: it downloads MNIST at construction)
    "Catch-bsuite",
    "DeepSea-bsuite",
    "MemoryChain-bsuite",
    "UmbrellaChain-bsuite",
    "DiscountingChain-bsuite",
    "SimpleBandit-bsuite",
    # misc
    "FourRooms-misc",
    "MetaMaze-misc",
    "PointRobot-misc",
    "BernoulliBandit-misc",
    "GaussianBandit-misc",
    "Reacher-misc",
    "Swimmer-misc",
    "Pong-misc",
    "FrozenLake-misc",
)

BRAX_NAMES = (
    "ant",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_pendulum",
    "inverted_double_pendulum",
    "pusher",
    "reacher",
    "swimmer",
    "walker2d",
)

# Default brax physics backend. Measured on 2 CPU cores (16 envs, jitted random rollout, SPS):
#   inverted_pendulum: generalized ~45k, positional ~44k, spring ~170k, mjx ~34k
#   hopper:            generalized ~7.4k, positional ~15-25k, spring ~63k, mjx ~3.8k
# The default is brax's own, "generalized", so results compare with other libraries and papers.
# "spring" is 4-8x faster on CPU but the least physically accurate (soft contacts): ask for it
# with backend="spring" (the CPU-sized configs in experiments/configs do, and say so).
# swimmer only supports "generalized".
DEFAULT_BRAX_BACKEND = "generalized"
_BRAX_ONLY_GENERALIZED = ("swimmer",)


def register(env_id: str, factory: Factory) -> None:
    """Registers `factory(**overrides) -> (raw_env, env_params)`; `make` adds auto-reset.

    The raw env must not auto-reset (`envs.make` wraps it in `AutoReset`).
    """
    if env_id in _REGISTRY:
        raise ValueError(f"env id {env_id!r} is already registered")
    _REGISTRY[env_id] = factory


def registered() -> list[str]:
    """All known env ids."""
    return list(_REGISTRY)


def _unknown_id_error(env_id: str) -> ValueError:
    ids = registered()
    lower = {i.lower(): i for i in ids}
    matches = difflib.get_close_matches(env_id.lower(), list(lower), n=5, cutoff=0.6)
    matches += [k for k in lower if env_id.lower() in k and k not in matches and env_id]
    suggestions = [lower[m] for m in matches[:5]]
    msg = f"unknown env id {env_id!r}."
    if suggestions:
        msg += f" Did you mean: {', '.join(suggestions)}?"
    msg += f" Known ids: {', '.join(ids)}"
    return ValueError(msg)


def check_id(env_id: str) -> None:
    """ValueError with close matches and the known ids unless `env_id` is registered (builds
    nothing: cheap for brax ids too)."""
    if not isinstance(env_id, str) or env_id not in _REGISTRY:
        raise _unknown_id_error(str(env_id))


def make_raw(env_id: str, **overrides) -> tuple[Environment, Any]:
    """The env without `AutoReset` (its episodes end in a terminal state), and its params."""
    check_id(env_id)
    return _REGISTRY[env_id](**overrides)


def make(env_id: str, **overrides) -> tuple[Environment, Any]:
    """`(env, env_params)` for a registered id; the env auto-resets (`envs.wrappers.AutoReset`).

    gymnax ids: overrides set `EnvParams` fields (e.g. `max_steps_in_episode=200`) or constructor
    arguments (e.g. MinAtar `use_minimal_action_set`); `flatten=True` (default) flattens non-1-D
    observations (MinAtar's `[10, 10, C]` images) to 1-D, `flatten=False` keeps them.
    brax ids (`brax/<name>`): `episode_length` (default 1000, the truncation limit), `backend`
    (default brax's own `"generalized"`, see DEFAULT_BRAX_BACKEND; `"spring"` is 4-8x faster on
    CPU), other keywords go to the brax env class.
    An unknown id or override key raises `ValueError`.
    """
    from envs.wrappers import AutoReset

    env, params = make_raw(env_id, **overrides)
    return AutoReset(env), params


def _init_kwargs(cls) -> list[str]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return []
    return [
        n
        for n, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    ]


# ---------------------------------------------------------------------------------------------
# gymnax


def _gymnax_factory(env_id: str):
    def factory(flatten: bool = True, **overrides):
        from gymnax import registration

        from envs.gymnax_env import GymnaxEnv
        from envs.wrappers import FlattenObservation

        cls = registration._registry[env_id]
        ctor_keys = _init_kwargs(cls)
        # Params fields need an instance to know the params class; build with ctor kwargs first.
        ctor = {k: v for k, v in overrides.items() if k in ctor_keys}
        rest = {k: v for k, v in overrides.items() if k not in ctor_keys}
        genv = cls(**ctor)
        params = genv.default_params
        fields = [f.name for f in dataclasses.fields(params)]
        check_override_keys(env_id, rest, fields + ctor_keys + ["flatten"])
        if rest:
            params = params.replace(**rest)
        env: Environment = GymnaxEnv(genv, env_id, default_params=params)
        if flatten and len(env.observation_space(params).shape) != 1:
            env = FlattenObservation(env)
        return env, params

    return factory


# ---------------------------------------------------------------------------------------------
# brax


def _brax_factory(name: str):
    env_id = f"brax/{name}"

    def factory(episode_length: int = 1000, backend: str | None = None, **kwargs):
        from brax import envs as brax_envs
        from brax.envs.base import PipelineEnv

        from envs.brax_env import BRAX_BACKENDS, BraxEnv

        cls = brax_envs._envs[name]
        valid = set(_init_kwargs(cls)) | set(_init_kwargs(PipelineEnv)) - {"sys", "kwargs"}
        valid |= {"episode_length", "backend"}
        check_override_keys(env_id, kwargs, sorted(valid - {"kwargs"}))
        if backend is None:
            backend = "generalized" if name in _BRAX_ONLY_GENERALIZED else DEFAULT_BRAX_BACKEND
        if backend not in BRAX_BACKENDS:
            raise ValueError(f"backend must be one of {BRAX_BACKENDS}, got {backend!r}")
        if name in _BRAX_ONLY_GENERALIZED and backend != "generalized":
            raise ValueError(f"{env_id} only supports backend='generalized', got {backend!r}")
        if int(episode_length) < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        env = BraxEnv(cls(backend=backend, **kwargs), env_id, int(episode_length))
        return env, env.default_params

    return factory


# ---------------------------------------------------------------------------------------------
# the registry: every built-in id in this one table (`register` adds more at run time)

_REGISTRY: dict[str, Factory] = {
    **{env_id: _gymnax_factory(env_id) for env_id in GYMNAX_IDS},
    **{f"brax/{name}": _brax_factory(name) for name in BRAX_NAMES},
    **{env_id: functools.partial(multimodal.make, env_id) for env_id in multimodal.IDS},
    **{env_id: functools.partial(gridworld.make, env_id) for env_id in gridworld.IDS},
}
