"""The settings of experiments.lpg / experiments.groove: a YAML mapping mapped onto the typed meta
configs (meta.groove.GrooveConfig over meta.lpg.LPGConfig, MetaGradientConfig, meta.es.ESConfig,
meta.level_buffer.BufferConfig), which validate their fields, and the meta-test's settings
(docs/experiments.md, section experiments.lpg)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from experiments import command, metacli
from purejaxrl import config as C

MG_RESUMABLE = ("meta_gradient.num_steps", "meta_gradient.steps_per_call")
MG_DESCRIBE = {"num_agents": 8, "num_steps": 100}  # lpg.MetaGradientConfig's (no jax import)
LPG_KEYS = ("env", "env_kwargs", "inner", "time_aware", "y_size", "hidden", "kl_weight",
            "level_lifetime", "meta_optimizer", "meta_gradient", "es", "curriculum", "buffer",
            "antagonist")  # fmt: skip
ES_DEFAULTS = {"population_size": 16, "num_generations": 100, "sigma": 0.1,
               "learning_rate": 0.01, "fitness_shaping": "pairwise"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (config.yaml), the GrooveConfig of the meta-training and
    the meta-test's meta.lpg_meta_test.LPGTestConfig (docs/experiments.md)."""

    values: dict
    cfg: Any  # meta.groove.GrooveConfig
    test: Any  # meta.lpg_meta_test.LPGTestConfig
    seed: int
    steps_per_call: int  # meta-gradient: meta-steps per jitted call and checkpoint

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

    def learner_config(self, task: str, lifetime: float, learner: str, lr=None):
        """`LPGTestConfig.learner_config` of this run's rule (its `inner` and y_size)."""
        inner, y_size = self.values["inner"], self.cfg.lpg.y_size
        return self.test.learner_config(inner, y_size, task, lifetime, learner, lr)


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
    with steps_per_call 50), meta_optimizer None (es if time_aware, else meta_gradient) and
    LPGTestConfig's."""
    from meta import groove, lpg, lpg_meta_test

    fields = {k: command.field_default(lpg.LPGConfig, k) for k in LPG_KEYS[3:8]}
    mg = command.field_default(groove.GrooveConfig, "meta_gradient")
    buffer = command.field_default(groove.GrooveConfig, "buffer")
    return {"seed": 0, "env": "gridworld/all_shortlife", "env_kwargs": {},
            "inner": command.plain(lpg.CPU_INNER), **fields, "meta_optimizer": None,
            "meta_gradient": {**dataclasses.asdict(mg), "steps_per_call": 50},
            "es": dict(ES_DEFAULTS), "curriculum": curriculum,
            "buffer": dataclasses.asdict(buffer), "antagonist": {},
            **command.plain(dataclasses.asdict(lpg_meta_test.LPGTestConfig()))}  # fmt: skip


def groove_config(v: Mapping[str, Any]):
    """(GrooveConfig, steps_per_call) of the merged settings `v`; the configs validate."""
    from meta import es, groove, level_buffer, lpg, meta_test

    env = v["env"]
    if not isinstance(env, str) or not env.startswith("gridworld/"):
        raise ValueError(f"env={env!r}: must be a grid-world id (gridworld/<distribution>)")
    meta_test.names("env", [env], meta_test.env_ids())  # the close match of a misspelt id
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
    from meta import lpg_meta_test

    test_keys = [f.name for f in dataclasses.fields(lpg_meta_test.LPGTestConfig)]
    command.check_keys(values, ("seed", *LPG_KEYS, *test_keys))
    v = command.merge(defaults(curriculum), values)
    cfg, steps_per_call = groove_config(v)
    test = C.from_dict(lpg_meta_test.LPGTestConfig, {k: v[k] for k in test_keys})
    mg = {**dataclasses.asdict(cfg.meta_gradient), "steps_per_call": steps_per_call}
    resolved = {**v, "kl_weight": cfg.lpg.kl_weight, "meta_optimizer": cfg.meta_optimizer,
                "meta_gradient": mg, "es": dataclasses.asdict(cfg.lpg.es),
                "buffer": dataclasses.asdict(cfg.buffer), **dataclasses.asdict(test)}  # fmt: skip
    seed = command.as_int("seed", v["seed"], 0)
    settings = Settings(command.plain({k: resolved[k] for k in v}), cfg, test, seed, steps_per_call)
    for task, m in test.cells:  # validates every meta-test config now
        for learner in lpg_meta_test.LEARNERS:
            settings.learner_config(task, m, learner)
    return settings


def describer(curriculum: str = "dr"):
    """The first status line (`metacli.describe`) of the command whose default curriculum is
    `curriculum`."""

    def describe(args, values: dict, ta: bool, size: str) -> str:
        opt = args.meta_optimizer or values.get("meta_optimizer")
        opt = opt or ("es" if ta else "meta_gradient")
        score = values.get("curriculum", curriculum)
        env = values.get("env", "gridworld/all_shortlife")
        if args.compare_ta:
            return (f"building the TA comparison (ES TA-LPG, meta-gradient TA-LPG, ES LPG) on "
                    f"{env} (curriculum {score}) ...")  # fmt: skip
        name = method_name(ta, opt, score).split(", curriculum")[0]
        name += "" if score == "regret" else ")"
        if opt == "meta_gradient":
            mg = values.get("meta_gradient")
            mg = {**MG_DESCRIBE, **(mg if isinstance(mg, Mapping) else {})}
            size = f"{mg['num_agents']} agents x {mg['num_steps']} meta-steps"
        return f"building {name} meta-training on {env} (curriculum {score}, {size}) ..."

    return describe


def schedule(settings: Settings) -> metacli.Schedule:
    """ES: `metacli.es_schedule`; meta-gradient: meta_gradient.num_steps meta-steps,
    checkpointed in DIR/meta_gradient every meta_gradient.steps_per_call."""
    from meta import groove

    if not settings.meta_gradient:
        return metacli.es_schedule(settings)
    steps = settings.cfg.meta_gradient.num_steps
    return metacli.Schedule(steps, "meta_gradient.num_steps", "meta-step", "meta_gradient/",
                            groove.checkpoint_steps, MG_RESUMABLE, None)  # fmt: skip


def run_name(s: Settings) -> str:
    env = s.cfg.lpg.env.split("/", 1)[1]
    return f"{s.algo}-{'mg' if s.meta_gradient else 'es'}-{s.curriculum}-{env}"
