"""Config validation: every config checks its fields at construction (types, ranges, choices);
ranges are printed the way `check_range` checks them; tracers and jax's placeholders pass."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purejaxrl
from purejaxrl import a2c, loop, ppo, sac
from purejaxrl import config as C

PPO = ppo.PPOConfig(
    env="CartPole-v1",
    total_timesteps=64,
    num_envs=4,
    num_steps=8,
    num_minibatches=2,
    hidden_sizes=(16, 16),
)


def _config_classes() -> list[type]:
    """Every config class in purejaxrl (a frozen config dataclass named *Config)."""
    found = {}
    for info in pkgutil.walk_packages(purejaxrl.__path__, "purejaxrl."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__name__.endswith("Config"):
                if dataclasses.is_dataclass(obj) and obj.__module__.startswith("purejaxrl"):
                    found[obj.__qualname__] = obj
    return sorted(found.values(), key=lambda c: c.__name__)


CONFIGS = _config_classes()


def test_the_config_classes_are_found():
    names = {c.__name__ for c in CONFIGS}
    assert {"AgentConfig", "OnPolicyConfig", "PPOConfig", "A2CConfig", "SACConfig"} <= names


def _wrong_value(tp):
    """A value of the wrong type for annotation `tp`."""
    return 3 if tp is str or typing.get_origin(tp) is typing.Literal else "x"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_rejects_an_unknown_field_naming_it(cls):
    with pytest.raises(
        ValueError, match=r"no field 'learnig_rate'; did you mean \['learning_rate'"
    ):
        C.from_dict(cls, {"learnig_rate": 1e-3})
    with pytest.raises(TypeError, match="bogus"):
        cls(bogus=1)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_rejects_a_wrong_type_in_every_field_naming_it(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{f.name}\b"):
            cls(**{f.name: _wrong_value(hints[f.name])})


def test_type_messages_name_class_field_expected_and_given():
    with pytest.raises(
        ValueError, match=re.escape("PPOConfig.num_envs: expected int, got str '16'")
    ):
        ppo.PPOConfig(num_envs="16")
    with pytest.raises(
        ValueError, match=re.escape("PPOConfig.layer_norm: expected bool, got int 1")
    ):
        ppo.PPOConfig(layer_norm=1)
    with pytest.raises(ValueError, match=r"A2CConfig\.num_steps: expected int, got bool True"):
        a2c.A2CConfig(num_steps=True)  # bools are not ints
    with pytest.raises(ValueError, match=r"hidden_sizes: expected tuple\[int, \.\.\.\]"):
        ppo.PPOConfig(hidden_sizes=(16, 16.0))
    with pytest.raises(ValueError, match="expected one of.*did you mean 'mixture'"):
        sac.SACConfig(pmoe_log_prob="mixtur")


def test_ints_numpy_scalars_and_arrays_pass_for_numbers():
    cfg = ppo.PPOConfig(learning_rate=1, gamma=np.float32(0.9), num_envs=np.int64(16))
    assert cfg.learning_rate == 1
    batch = dataclasses.replace(cfg, learning_rate=jnp.array([1e-3, 3e-4]))  # a sweep's [R] leaf
    assert batch.learning_rate.shape == (2,)
    with pytest.raises(ValueError, match="learning_rate: expected float"):
        dataclasses.replace(cfg, learning_rate=np.array([True]))


def test_lists_and_dicts_are_frozen():
    cfg = C.from_dict(ppo.PPOConfig, {"hidden_sizes": [8, 8], "env_kwargs": {"b": 1, "a": [2]}})
    assert cfg.hidden_sizes == (8, 8) and cfg.env_kwargs == (("a", (2,)), ("b", 1))
    assert C.to_dict(cfg)["env_kwargs"] == {"a": [2], "b": 1}


def test_tracers_and_placeholders_are_not_validated():
    def lr_of(lr):
        return dataclasses.replace(PPO, learning_rate=lr).learning_rate * 2

    assert np.allclose(jax.vmap(lr_of)(jnp.array([-1.0, 1.0])), [-2.0, 2.0])  # traced: unchecked
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), PPO, dataclasses.replace(PPO, gamma=0.5))
    assert stacked.gamma.shape == (2,)
    axes = jax.tree.map(lambda _: None, PPO).replace(gamma=0)  # an in_axes tree: None leaves
    gammas = dataclasses.replace(PPO, gamma=jnp.array([0.5, 0.9]))
    out = jax.vmap(lambda c: c.gamma * c.learning_rate, in_axes=(axes,))(gammas)
    assert out.shape == (2,)
    shapes = jax.eval_shape(lambda c: c, sac.SACConfig())
    assert isinstance(shapes.tau, jax.ShapeDtypeStruct)


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
        dataclasses.replace(PPO, **{field: value})


def test_a_range_with_two_infinite_bounds_is_open_on_both_sides():
    with pytest.raises(ValueError, match=re.escape("must lie in (-inf, inf)")):
        sac.SACConfig(total_timesteps=2048, learning_starts=64, target_entropy_scale=float("inf"))


@pytest.mark.parametrize("field, value", [("gamma", 1.0), ("gamma", 0.0), ("ent_coef", 0.0)])
def test_closed_bounds_are_accepted(field, value):
    ppo.make_train(dataclasses.replace(PPO, **{field: value}))  # no error


def test_the_base_config_is_shared_and_validated():
    assert issubclass(sac.SACConfig, loop.AgentConfig) and issubclass(
        ppo.PPOConfig, loop.AgentConfig
    )
    with pytest.raises(ValueError, match="AgentConfig.frame_stack"):
        loop.AgentConfig(frame_stack=0)
    assert sac.SACConfig().num_steps == 1 and sac.SACConfig(num_envs=4).num_updates == 25_000


def _meta_config_classes() -> list[type]:
    """The meta-learning configs: the same rules hold for them (checked at construction)."""
    from meta import es, groove, level_buffer, lpg, lpg_meta_test, lpo_train, meta_test

    return [
        es.ESConfig,
        level_buffer.BufferConfig,
        lpg.LPGConfig,
        lpg.MetaGradientConfig,
        groove.GrooveConfig,
        lpo_train.LPOConfig,
        meta_test.LPOTestConfig,
        lpg_meta_test.LPGTestConfig,
    ]


@pytest.mark.parametrize("cls", _meta_config_classes(), ids=lambda c: c.__name__)
def test_every_meta_config_rejects_unknown_fields_and_wrong_types_naming_them(cls):
    hints = typing.get_type_hints(cls)
    first = dataclasses.fields(cls)[0].name
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    with pytest.raises(ValueError, match=rf"no field '{typo}'; did you mean \['{first}'"):
        C.from_dict(cls, {typo: 1})
    for f in dataclasses.fields(cls):  # "ESConfig (strategy='open_es').sigma" names it too
        with pytest.raises(ValueError, match=rf"{cls.__name__}( \([^)]*\))?\.{f.name}\b"):
            cls(**{f.name: _wrong_value(hints[f.name])})


def test_from_dict_takes_a_whole_float_on_an_int_field_as_that_int():
    """YAML 1.1 reads 1.0e+6 as a float: every config built from a mapping takes it."""
    cfg = C.from_dict(ppo.PPOConfig, {"total_timesteps": 1024.0, "num_envs": 4.0, "gamma": 1.0})
    assert cfg.total_timesteps == 1024 and type(cfg.total_timesteps) is int
    assert type(cfg.num_envs) is int and type(cfg.gamma) is float
    with pytest.raises(ValueError, match="num_envs"):
        C.from_dict(ppo.PPOConfig, {"num_envs": 4.5})
