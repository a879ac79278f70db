"""The settings of experiments.lpg / experiments.groove: a YAML mapping mapped onto the typed meta
configs (meta.groove.GrooveConfig over meta.lpg.LPGConfig, MetaGradientConfig, meta.es.ESConfig,
meta.level_buffer.BufferConfig), which validate their fields, and the meta-test's settings
(docs/experiments.md, section experiments.lpg)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments import command, metacli
from purejaxrl import config as C

MG_RESUMABLE = ("meta_gradient.num_steps", "meta_gradient.steps_per_call")
MG_DESCRIBE = {"num_agents": 8, "num_steps": 100}  # lpg.MetaGradientConfig's (no jax import)
GRID_TASKS = ("gridworld/dense", "gridworld/sparse", "gridworld/long", "gridworld/longer",
              "gridworld/long_dense")  # fmt: skip
LEARNERS = ("lpg", "a2c", "ppo")  # the rule's agents, then the tuned baselines
BASELINES = ("a2c", "ppo")
LPG_KEYS = ("env", "env_kwargs", "inner", "time_aware", "y_size", "hidden", "kl_weight",
            "level_lifetime", "meta_optimizer", "meta_gradient", "es", "curriculum", "buffer",
            "antagonist")  # fmt: skip


def _env_kwargs(key: str, value) -> dict:
    return {t: command.mapping(f"{key}.{t}", k) for t, k in command.mapping(key, value).items()}


def lr_grid(name: str, value) -> dict[str, tuple[float, ...]]:
    """{a2c: (lr, ...), ppo: (lr, ...)}: both baselines, each a non-empty list of rates > 0."""
    grid = command.mapping(name, value)
    command.choices(name, list(grid), BASELINES, "baseline")
    out = {algo: tuple(command.numbers(f"{name}.{algo}", grid.get(algo))) for algo in BASELINES}
    for algo, rates in out.items():
        if not rates:
            raise ValueError(f"{name}.{algo}={grid.get(algo)!r}: give at least one rate > 0")
    return out


MINATAR_INNER = {"hidden_sizes": [64, 64], "num_envs": 16, "num_steps": 16,
                 "total_timesteps": 16 * 16 * 200, "learning_rate": 3e-3}  # fmt: skip
TEST = {  # the meta-test's settings: key -> (default, check(key, value) -> resolved value)
    "test_tasks": (GRID_TASKS, lambda k, v: command.task_list(k, v, "gridworld/")),
    "test_env_kwargs": ({}, _env_kwargs),  # {env id: {envs.make override: value}}
    "lifetimes": ((0.5, 2.0), command.multiples),  # resolved: 1.0 first
    "minatar": (("Breakout-MinAtar",), lambda k, v: command.task_list(k, v, "-MinAtar")),
    "minatar_inner": (MINATAR_INNER, command.mapping),  # A2CConfig fields over `inner`
    "lr_grid": ({"a2c": [0.03, 0.1, 0.3], "ppo": [0.01, 0.03, 0.1]}, lr_grid),
    "minatar_lr_grid": ({"a2c": [1e-3, 3e-3, 1e-2], "ppo": [3e-4, 1e-3, 3e-3]}, lr_grid),
    "ppo": ({"update_epochs": 4, "num_minibatches": 4}, command.mapping),  # PPO baseline's fields
    "random_steps": (2000, command.positive),
    "test_seeds": (8, command.positive),
    "bootstrap": (2000, command.positive),
}
TEST_KEYS = tuple(TEST)
KEYS = ("seed", *LPG_KEYS, *TEST_KEYS)
ES_DEFAULTS = {"population_size": 16, "num_generations": 100, "sigma": 0.1,
               "learning_rate": 0.01, "fitness_shaping": "pairwise"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (config.yaml), the GrooveConfig of the meta-training and
    the meta-test settings (`TEST`; docs/experiments.md)."""

    values: dict
    cfg: Any  # meta.groove.GrooveConfig
    seed: int
    steps_per_call: int  # meta-gradient: meta-steps per jitted call and checkpoint
    test_tasks: tuple[str, ...]
    test_env_kwargs: dict
    lifetimes: tuple[float, ...]
    minatar: tuple[str, ...]
    minatar_inner: dict
    lr_grid: dict
    minatar_lr_grid: dict
    ppo: dict
    random_steps: int
    test_seeds: int
    bootstrap: int

    es = property(lambda self: self.cfg.lpg.es)
    time_aware = property(lambda self: self.cfg.lpg.time_aware)
    algo = property(lambda self: "ta-lpg" if self.cfg.lpg.time_aware else "lpg")
    curriculum = property(lambda self: self.cfg.score)
    meta_optimizer = property(lambda self: self.cfg.meta_optimizer)
    meta_gradient = property(lambda self: self.cfg.meta_optimizer == "meta_gradient")
    train_updates = property(lambda self: int(self.cfg.lpg.inner.num_updates))  # U of a life

    @property
    def method(self) -> str:
        return method_name(self.time_aware, self.meta_optimizer, self.curriculum)

    @property
    def cells(self) -> list[tuple[str, float]]:
        """(task, lifetime multiple) of the meta-test: grid worlds x lifetimes, MinAtar at 1x."""
        grid = [(t, m) for t in self.test_tasks for m in self.lifetimes]
        return grid + [(t, 1.0) for t in self.minatar]


def method_name(time_aware: bool, optimizer: str, curriculum: str) -> str:
    """GROOVE / ES-GROOVE (regret curriculum; "(TA-LPG rule)" when time-aware), else "LPG" /
    "TA-LPG" with the meta-optimiser and curriculum."""
    if curriculum == "regret":
        name = "GROOVE" if optimizer == "meta_gradient" else "ES-GROOVE"
        return f"{name} (TA-LPG rule)" if time_aware else name
    opt = "meta-gradient" if optimizer == "meta_gradient" else "ES"
    return f"{'TA-LPG' if time_aware else 'LPG'} ({opt}, curriculum {curriculum})"


def defaults(curriculum: str = "dr") -> dict[str, Any]:
    """Every key's default: LPGConfig's (inner: its CPU_INNER), GrooveConfig's (meta_gradient
    with steps_per_call 50), meta_optimizer None (es if time_aware, else meta_gradient)."""
    from meta import groove, lpg

    fields = {k: command.field_default(lpg.LPGConfig, k) for k in LPG_KEYS[3:8]}
    mg, buffer = (
        command.field_default(groove.GrooveConfig, k) for k in ("meta_gradient", "buffer")
    )
    return {"seed": 0, "env": "gridworld/all_shortlife", "env_kwargs": {},
            "inner": command.plain(lpg.CPU_INNER), **fields, "meta_optimizer": None,
            "meta_gradient": {**dataclasses.asdict(mg), "steps_per_call": 50},
            "es": dict(ES_DEFAULTS), "curriculum": curriculum,
            "buffer": dataclasses.asdict(buffer), "antagonist": {},
            **command.plain({k: default for k, (default, _) in TEST.items()})}  # fmt: skip


def groove_config(v: Mapping[str, Any]):
    """(GrooveConfig, steps_per_call) of the merged settings `v`; the configs validate."""
    from meta import es, groove, level_buffer, lpg

    env = v["env"]
    if not isinstance(env, str) or not env.startswith("gridworld/"):
        raise ValueError(f"env={env!r}: must be a grid-world id (gridworld/<distribution>)")
    command.task_list("env", [env])  # the close match of a misspelt id
    fields = {k: v[k] for k in LPG_KEYS[:8]}  # LPGConfig's: env ... level_lifetime
    rule = C.from_dict(lpg.LPGConfig, {**fields, "es": command.typed("es", es.ESConfig, v["es"])})
    C.check_range(rule, "kl_weight", 0.0, math.inf, low_open=True)
    mg = command.mapping("meta_gradient", v["meta_gradient"])
    steps = command.as_int("meta_gradient.steps_per_call", mg.pop("steps_per_call", 50), 1)
    optimizer = v["meta_optimizer"]
    if optimizer is None:  # the method's own: es for TA-LPG (the TA paper's), else meta_gradient
        optimizer = "es" if rule.time_aware else "meta_gradient"
    cfg = groove.GrooveConfig(
        lpg=rule,
        score=v["curriculum"],
        meta_optimizer=optimizer,
        meta_gradient=command.typed("meta_gradient", lpg.MetaGradientConfig, mg),
        buffer=command.typed("buffer", level_buffer.BufferConfig, v["buffer"]),
        antagonist=command.mapping("antagonist", v["antagonist"]),
    )
    return cfg, steps


def resolve(values: Mapping[str, Any], curriculum: str = "dr") -> Settings:
    """Settings from a mapping (defaults filled in, `curriculum` the default curriculum);
    ValueError naming the key on bad input."""
    command.check_keys(values, KEYS)
    v = command.merge(defaults(curriculum), values)
    cfg, steps_per_call = groove_config(v)
    test = {k: check(k, v[k]) for k, (_, check) in TEST.items()}
    if not test["test_tasks"] and not test["minatar"]:
        raise ValueError("test_tasks, minatar: give at least one meta-test task")
    command.within("test_env_kwargs", test["test_env_kwargs"], "test_tasks", test["test_tasks"])
    mg = {**dataclasses.asdict(cfg.meta_gradient), "steps_per_call": steps_per_call}
    resolved = {**v, "kl_weight": cfg.lpg.kl_weight, "meta_optimizer": cfg.meta_optimizer,
                "meta_gradient": mg, "es": dataclasses.asdict(cfg.lpg.es),
                "buffer": dataclasses.asdict(cfg.buffer), **test,
                "lifetimes": test["lifetimes"][1:]}  # fmt: skip
    settings = Settings(
        values=command.plain({k: resolved[k] for k in KEYS}),
        cfg=cfg,
        seed=command.as_int("seed", v["seed"], 0),
        steps_per_call=steps_per_call,
        **test,
    )
    for task in settings.test_tasks:  # unknown envs.make overrides fail now
        test_env(settings, task)
    for task, m in settings.cells:  # validates every meta-test config now
        for learner in LEARNERS:
            learner_config(settings, task, m, learner)
    return settings


def test_env(settings: Settings, task: str):
    """(env, env_params) of a meta-test task, built on the host (a grid world's level must be
    concrete: agents get it as an argument, never build it inside a trace)."""
    import envs

    try:
        return envs.make(task, **settings.test_env_kwargs.get(task, {}))
    except ValueError as e:
        raise ValueError(f"test_env_kwargs.{task}: {e}") from None


def learner_config(settings: Settings, task: str, lifetime: float, learner: str, lr=None):
    """The config of one meta-test run on `task` (docs/experiments.md): an A2CConfig for "lpg"
    (with the rule's prediction head) and "a2c", a PPOConfig for "ppo"; learning rate `lr` (None:
    the fields'); `lifetime` x the meta-trained updates (`meta.meta_test.scaled`)."""
    from meta import lpg
    from meta import meta_test as M
    from purejaxrl import a2c, ppo

    fields = dict(settings.values["inner"])
    if task in settings.minatar:
        fields.update(settings.minatar_inner)
    if lr is not None:
        fields["learning_rate"] = float(lr)
    env_kwargs = settings.test_env_kwargs.get(task, {})
    try:
        if learner == "lpg":
            y_size = settings.cfg.lpg.y_size
            cfg = lpg.LPGConfig(env=task, env_kwargs=env_kwargs, inner=fields, y_size=y_size).inner
        else:
            cls, extra = (a2c.A2CConfig, {}) if learner == "a2c" else (ppo.PPOConfig, settings.ppo)
            cfg = C.from_dict(cls, {**fields, **extra, "env": task, "env_kwargs": env_kwargs})
    except (TypeError, ValueError) as e:
        raise ValueError(f"the {learner} config of the meta-test on {task}: {e}") from None
    return M.scaled(cfg, lifetime)


def describe(args, curriculum: str = "dr") -> str | None:
    """The first status line, from the YAML and overrides alone (no jax import)."""
    values = metacli.unresolved(args)
    if values is None:
        return None
    ta = args.time_aware or values.get("time_aware") is True
    opt = args.meta_optimizer or values.get("meta_optimizer") or ("es" if ta else "meta_gradient")
    score, env = values.get("curriculum", curriculum), values.get("env", "gridworld/all_shortlife")
    if args.compare_ta:
        return (f"building the TA comparison (ES TA-LPG, meta-gradient TA-LPG, ES LPG) on {env} "
                f"(curriculum {score}) ...")  # fmt: skip
    name = method_name(ta, opt, score).split(", curriculum")[0] + ("" if score == "regret" else ")")
    if opt == "meta_gradient":
        mg = values.get("meta_gradient")
        mg = {**MG_DESCRIBE, **(mg if isinstance(mg, Mapping) else {})}
        size = f"{mg['num_agents']} agents x {mg['num_steps']} meta-steps"
    else:
        size = metacli.describe_es(values, ES_DEFAULTS)
    return f"building {name} meta-training on {env} (curriculum {score}, {size}) ..."


def schedule(settings: Settings) -> metacli.Schedule:
    """ES: `metacli.es_schedule`; meta-gradient: meta_gradient.num_steps meta-steps,
    checkpointed in DIR/meta_gradient every meta_gradient.steps_per_call."""
    if not settings.meta_gradient:
        return metacli.es_schedule(settings)
    steps = settings.cfg.meta_gradient.num_steps
    return metacli.Schedule(steps, "meta_gradient.num_steps", "meta-step", "meta_gradient/",
                            done_meta_steps, MG_RESUMABLE, None)  # fmt: skip


def done_meta_steps(run_dir: Path) -> int:
    """The meta-steps of the meta-gradient checkpoint in DIR/meta_gradient (0 if none);
    ValueError if it is damaged."""
    from meta import groove

    return groove.checkpoint_steps(run_dir)


def run_name(s: Settings) -> str:
    env = s.cfg.lpg.env.split("/", 1)[1]
    return f"{s.algo}-{'mg' if s.meta_gradient else 'es'}-{s.curriculum}-{env}"
