"""Meta-train an LPG / TA-LPG update rule with ES on random grid worlds (domain randomisation or
GROOVE's level curricula), then meta-test it against A2C and PPO tuned per task.

    python -m experiments.lpg [--config FILE.yaml] [key=value ...] [--time-aware] [--out DIR]
        [--devices N] [--compile-cache DIR] [--no-progress]
    python -m experiments.lpg --resume DIR [es.num_generations=G ...]   # continue meta-training
    python -m experiments.lpg --meta-test-only DIR [test_seeds=16 ...]  # redo the meta-test
    python -m experiments.groove ...                                    # the same, curriculum: regret

Settings (YAML mapping or `key=value` overrides with YAML values; nested keys with dots, e.g.
`inner.total_timesteps=12800`, `es.population_size=32`, `buffer.replay_prob=0.5`):

    seed            base seed (default 0): meta-training uses jax.random.key(seed) exactly as
                    `meta.groove.make_meta_train(cfg)(jax.random.key(seed))` does
    env, env_kwargs the meta-training levels: a grid-world distribution id (default
                    gridworld/all_shortlife; gridworld/small, medium, large, all, ...); every
                    pair of the ES population meets one level of it per generation
    inner, time_aware, y_size, hidden, kl_weight, level_lifetime
                    meta.lpg.LPGConfig's fields (`inner`: the A2CConfig fields of the agents,
                    merged over meta.lpg.CPU_INNER: tabular agents, hidden_sizes []; `--time-aware`
                    sets time_aware: true)
    es              meta.es.ESConfig fields, merged over population_size 16, num_generations 100,
                    sigma 0.1, learning_rate 0.01, fitness_shaping pairwise (GROOVE's values)
    curriculum      dr | regret | pvl (meta.groove's scores): dr = domain randomisation (fresh
                    random levels every generation), regret = GROOVE's algorithmic regret (A2C
                    antagonist's return - the rule's agents' return, a prioritised level buffer),
                    pvl = positive value loss. Default dr (experiments.groove: regret)
    buffer          meta.level_buffer.BufferConfig fields (regret, pvl), over meta.groove's defaults
    antagonist      A2CConfig overrides of the antagonist over `inner` (regret, pvl)
    test_tasks      grid worlds the rule is meta-tested on (default the five tabular ones:
                    gridworld/dense, sparse, long, longer, long_dense)
    test_env_kwargs per test task, envs.make overrides {env id: {key: value}} (e.g. a shorter
                    max_steps: the CPU config scales the episodes down)
    lifetimes       lifetimes the grid worlds are also meta-tested at, as multiples of the
                    meta-trained number of agent updates (default [0.5, 2.0]); the number of
                    updates is scaled (rounded, at least 1), the rollout kept
    minatar         MinAtar ids the rule is also meta-tested on, at 1x (default [Breakout-MinAtar];
                    [] for none)
    minatar_inner   A2CConfig fields over `inner` for every MinAtar run (network, rollout, budget,
                    the LPG agent's learning rate)
    lr_grid         learning rates the A2C and PPO baselines are tuned over on the grid worlds,
                    {a2c: [...], ppo: [...]}; minatar_lr_grid the same on MinAtar
    ppo             PPOConfig fields of the PPO baseline over the task's A2C fields (update_epochs,
                    num_minibatches, clip_eps, ...)
    random_steps    steps per env (64 envs) of the uniform-random-policy rollout (default 2000)
    test_seeds      seeds per learner and cell (default 8)
    bootstrap       stratified-bootstrap resamples for the 95% CIs (default 2000)

Meta-training (meta/groove.py): `es.evolve` over the population of rules, sharded over the
devices (on CPU the host's cores become devices; with no `--devices` the largest count that
divides the population is used), with the curriculum choosing each generation's levels (one per
antithetic pair), checkpointed in es/ after every `es.generations_per_call` generations (the
curriculum's state, e.g. the level buffer, included). `--resume DIR` continues from there
bit-exactly (the fitness history equals an uninterrupted run's); it may raise
es.num_generations (and change es.generations_per_call or the meta-test settings), nothing else.

Meta-test (the learned rule = the final ES mean), per cell (task, lifetime): `test_seeds` fresh
A2C agents trained with the rule ("lpg"), and A2C ("a2c") and PPO ("ppo") with their standard
objectives, each tuned per cell over its learning-rate grid: one vmapped sweep (lr x seeds) per
(algorithm, cell) with `purejaxrl.sweep`, the learning rate with the best mean final return over
the seeds kept. Every learner of a task gets the same seed keys (split(key(s_task), test_seeds),
s_task from the seed and the task name). Grid-world cells: the agents of meta-training (network,
rollout, learning rate) on the task, for round(m x U) updates, U the meta-trained number, m in
1 and `lifetimes`; MinAtar cells: `minatar_inner`, at 1x. A seed's final return: its mean episode
return over the last 5% of updates (from its first finished episode on; NaN if none).

Normalised return: normalised = (R - R_random) / (R_A2C - R_random), per seed and learner, with
R_random the mean episode return of a uniform random policy on the task (a random-action rollout
of 64 envs x `random_steps` steps) and R_A2C the tuned A2C's mean final return over the seeds in
that cell. Where R_A2C <= R_random (or either is undefined) the cell has no normalised return and
is left out of the overall numbers (listed in meta_test.json). Per cell: per-seed final returns,
IQM [95% stratified-bootstrap CI] of the raw and the normalised returns per learner (as
experiments.sweep, experiments/aggregate.py); overall: the IQM of the normalised return over
tasks x seeds (tasks the bootstrap's strata) per learner, at 1x over all tasks and at every other
lifetime over the grid worlds. TA-LPG vs LPG at unseen lifetimes: two runs, compare their
meta_test.json "overall" at 0.5x and 2x.

`--compile-cache DIR` keeps compiled programs in DIR (jax's persistent compilation cache): a
resume, a `--meta-test-only` rerun, or another run with the same test settings, loads the
baselines' and the rule's meta-test programs it compiled before (the rule is an argument).

Bad input (an unknown key, env id or curriculum, a bad value, an occupied --out, a --resume of a
folder whose config differs from the overrides) stops with `error: ...` (exit code 2) before
anything is written. Ctrl-C stops with exit code 130 and says how to continue.

Run folder DIR (default runs/<lpg|ta-lpg>-<curriculum>-<env>-<timestamp>):
    config.yaml     the resolved settings (`--config DIR/config.yaml` repeats the run)
    es/             the ES checkpoints (meta/es.py; `--resume` continues the newest)
    fitness.csv     generation, mean, best, nonfinite: per generation the mean and the maximum
                    of the population's fitness (a candidate's agent's final return on its
                    pair's level) and the number of non-finite fitness values
    fitness.png     the mean and best fitness per generation
    curriculum.csv  generation and the curriculum's metrics per generation (meta.groove: replay,
                    antagonist_runs, admitted, buffer_size, mean_score, ... ; dr:
                    mean_agent_return)
    rule/           the learned rule (the final ES mean), `meta.lpg.save` with its info: load it
                    with `lpg.load(DIR/rule)` or train an A2C agent with it by `python -m
                    experiments.train --config experiments/configs/a2c_cartpole.yaml
                    env=gridworld/dense hidden_sizes=[] prediction_size=8 objective.name=lpg
                    objective.path=DIR/rule` (prediction_size: the rule's y width)
    meta_test.json  per cell: R_random, the tuned learning rates, per learner the per-seed final
                    returns, IQM [95% CI], mean and the same of the normalised return; overall
    meta_test.png   IQM bars with CI whiskers per task and lifetime, and the overall normalised
    summary.json    fitness curve, curriculum, meta-test table, timings (es compile_s / run_s,
                    meta-test compile_s / run_s, wall_s) per session
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import metacli, runs
from experiments.metacli import Plan, say, write_fitness

# jax and meta are imported inside the functions that use them, after the first status line and
# after the host device count is set.

CURRICULA = ("dr", "regret", "pvl")  # meta.groove.SCORES
GRID_TASKS = (
    "gridworld/dense",
    "gridworld/sparse",
    "gridworld/long",
    "gridworld/longer",
    "gridworld/long_dense",
)
LEARNERS = ("lpg", "a2c", "ppo")  # the rule's agents, then the tuned baselines
BASELINES = ("a2c", "ppo")
LPG_KEYS = (
    "env",
    "env_kwargs",
    "inner",
    "time_aware",
    "y_size",
    "hidden",
    "kl_weight",
    "level_lifetime",
    "es",
    "curriculum",
    "buffer",
    "antagonist",
)
TEST_KEYS = (
    "test_tasks",
    "test_env_kwargs",
    "lifetimes",
    "minatar",
    "minatar_inner",
    "lr_grid",
    "minatar_lr_grid",
    "ppo",
    "random_steps",
    "test_seeds",
    "bootstrap",
)
KEYS = ("seed", *LPG_KEYS, *TEST_KEYS)
NESTED = (
    "env_kwargs",
    "inner",
    "es",
    "buffer",
    "antagonist",
    "test_env_kwargs",
    "minatar_inner",
    "lr_grid",
    "minatar_lr_grid",
    "ppo",
)
ES_DEFAULTS = {
    "population_size": 16,
    "num_generations": 100,
    "sigma": 0.1,
    "learning_rate": 0.01,
    "fitness_shaping": "pairwise",
}
TEST_DEFAULTS = {
    "test_tasks": list(GRID_TASKS),
    "test_env_kwargs": {},
    "lifetimes": [0.5, 2.0],
    "minatar": ["Breakout-MinAtar"],
    "minatar_inner": {
        "hidden_sizes": [64, 64],
        "num_envs": 16,
        "num_steps": 16,
        "total_timesteps": 16 * 16 * 200,
        "learning_rate": 3e-3,
    },
    "lr_grid": {"a2c": [0.03, 0.1, 0.3], "ppo": [0.01, 0.03, 0.1]},
    "minatar_lr_grid": {"a2c": [1e-3, 3e-3, 1e-2], "ppo": [3e-4, 1e-3, 3e-3]},
    "ppo": {"update_epochs": 4, "num_minibatches": 4},
    "random_steps": 2000,
    "test_seeds": 8,
    "bootstrap": 2000,
}
RANDOM_ENVS = 64  # envs of the uniform-random-policy rollout
NORMALISATION = (
    "normalised = (R - R_random) / (R_A2C - R_random): R a seed's final return, R_random the "
    "mean episode return of a uniform random policy on the task, R_A2C the tuned A2C's mean "
    "final return over the seeds in the same cell; undefined (null) where R_A2C <= R_random"
)


# --------------------------------------------------------------------------- arguments


def parse_args(argv, prog: str = "experiments.lpg", curriculum: str = "dr"):
    return metacli.parser(
        prog,
        f"Meta-train an LPG / TA-LPG rule with ES on random grid worlds (curriculum default "
        f"{curriculum}), then meta-test it against A2C and PPO tuned per task; writes a run "
        "folder.",
        __doc__,
        time_aware="TA-LPG (sets time_aware: true)",
        artifact="rule",
        out="runs/<lpg|ta-lpg>-<curriculum>-<env>-<timestamp>",
    ).parse_args(argv)


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (plain YAML, written as config.yaml), the GrooveConfig
    of the meta-training and the meta-test settings (see the module docstring)."""

    values: dict
    cfg: Any  # meta.groove.GrooveConfig
    seed: int
    test_tasks: tuple[str, ...]
    test_env_kwargs: dict  # {env id: {envs.make override: value}}
    lifetimes: tuple[float, ...]  # 1.0 first
    minatar: tuple[str, ...]
    minatar_inner: dict  # A2CConfig fields over cfg.lpg.inner
    lr_grid: dict  # {"a2c": (lr, ...), "ppo": (lr, ...)}
    minatar_lr_grid: dict
    ppo: dict  # PPOConfig fields of the PPO baseline
    random_steps: int
    test_seeds: int
    bootstrap: int

    @property
    def es(self):
        return self.cfg.lpg.es

    @property
    def algo(self) -> str:
        return "ta-lpg" if self.cfg.lpg.time_aware else "lpg"

    @property
    def curriculum(self) -> str:
        return self.cfg.score

    @property
    def train_updates(self) -> int:
        """U: the number of agent updates of a meta-training lifetime."""
        inner = self.cfg.lpg.inner_config()
        return int(inner.total_timesteps // (inner.num_envs * inner.num_steps))

    @property
    def cells(self) -> list[tuple[str, float]]:
        """(task, lifetime multiple) of the meta-test: grid worlds x lifetimes, MinAtar at 1x."""
        return [(t, m) for t in self.test_tasks for m in self.lifetimes] + [
            (t, 1.0) for t in self.minatar
        ]


def defaults(curriculum: str = "dr") -> dict[str, Any]:
    from meta import groove, lpg

    buffer = groove.GrooveConfig.__dataclass_fields__["buffer"].default_factory()
    return {
        "seed": 0,
        "env": "gridworld/all_shortlife",
        "env_kwargs": {},
        "inner": metacli.plain(lpg.CPU_INNER),
        "time_aware": False,
        "y_size": lpg.Y_SIZE,
        "hidden": lpg.HIDDEN,
        "kl_weight": lpg.KL_WEIGHT,
        "level_lifetime": False,
        "es": dict(ES_DEFAULTS),
        "curriculum": curriculum,
        "buffer": dataclasses.asdict(buffer),
        "antagonist": {},
        **copy.deepcopy(TEST_DEFAULTS),
    }


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}={value!r}: must be a number > 0")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be finite")
    return float(value)


def _lr_grid(name: str, value) -> dict[str, tuple[float, ...]]:
    """{a2c: [lr, ...], ppo: [lr, ...]}: both baselines, each a non-empty list of rates > 0."""
    grid = metacli.mapping(name, value)
    for key in grid:
        if key not in BASELINES:
            raise ValueError(
                f"{name}: unknown baseline {key!r}{metacli.hint(key, BASELINES)} "
                f"(give {list(BASELINES)})"
            )
    out = {}
    for algo in BASELINES:
        rates = grid.get(algo)
        if not isinstance(rates, list | tuple) or not rates:
            raise ValueError(f"{name}.{algo}={rates!r}: must be a non-empty list of rates")
        out[algo] = tuple(_positive_float(f"{name}.{algo}", r) for r in rates)
    return out


def _curriculum(value) -> str:
    if value not in CURRICULA:
        raise ValueError(
            f"curriculum={value!r} is unknown{metacli.hint(str(value), CURRICULA)} "
            f"(choose from {list(CURRICULA)})"
        )
    return value


def _buffer(values: Mapping[str, Any]):
    """meta.level_buffer.BufferConfig(**values); an unknown field is named with close matches."""
    from meta import level_buffer

    fields = [f.name for f in dataclasses.fields(level_buffer.BufferConfig)]
    for key in values:
        if key not in fields:
            raise ValueError(
                f"buffer: unknown field {key!r}{metacli.hint(key, fields)} (fields: {fields})"
            )
    return level_buffer.BufferConfig(**values)


def _groove_config(v: Mapping[str, Any]):
    """The GrooveConfig of the merged settings `v` (ValueError naming the key)."""
    from meta import groove, lpg

    env = v["env"]
    if not isinstance(env, str) or not env.startswith("gridworld/"):
        raise ValueError(f"env={env!r}: must be a grid-world id (gridworld/<distribution>)")
    metacli.task_list("env", [env])
    cfg = lpg.LPGConfig(
        env=env,
        env_kwargs=metacli.mapping("env_kwargs", v["env_kwargs"]),
        inner=metacli.mapping("inner", v["inner"]),
        time_aware=metacli.as_bool("time_aware", v["time_aware"]),
        y_size=metacli.as_int("y_size", v["y_size"], 1),
        hidden=metacli.as_int("hidden", v["hidden"], 1),
        kl_weight=_positive_float("kl_weight", v["kl_weight"]),
        level_lifetime=metacli.as_bool("level_lifetime", v["level_lifetime"]),
        es=metacli.es_config(metacli.mapping("es", v["es"])),
    )
    return groove.GrooveConfig(
        lpg=cfg,
        score=_curriculum(v["curriculum"]),
        buffer=_buffer(metacli.mapping("buffer", v["buffer"])),
        antagonist=metacli.mapping("antagonist", v["antagonist"]),
    )


def resolve(values: Mapping[str, Any], curriculum: str = "dr") -> Settings:
    """Settings from a mapping (defaults filled in, `curriculum` the default curriculum);
    ValueError naming the key on bad input."""
    metacli.check_keys(values, KEYS)
    v = metacli.deep_merge(defaults(curriculum), values)
    cfg = _groove_config(v)
    grid_ids = [i for i in _registered() if i.startswith("gridworld/")]
    test_tasks = metacli.task_list("test_tasks", v["test_tasks"] or [], grid_ids)
    minatar_ids = [i for i in _registered() if i.endswith("-MinAtar")]
    minatar = metacli.task_list("minatar", v["minatar"] or [], minatar_ids)
    if not test_tasks and not minatar:
        raise ValueError("test_tasks, minatar: give at least one meta-test task")
    env_kwargs = metacli.mapping("test_env_kwargs", v["test_env_kwargs"])
    unknown = sorted(set(env_kwargs) - set(test_tasks))
    if unknown:
        raise ValueError(f"test_env_kwargs: {unknown} are not among test_tasks {test_tasks}")
    env_kwargs = {t: metacli.mapping(f"test_env_kwargs.{t}", k) for t, k in env_kwargs.items()}
    settings = Settings(
        values={},
        cfg=cfg,
        seed=metacli.as_int("seed", v["seed"], 0),
        test_tasks=tuple(test_tasks),
        test_env_kwargs=env_kwargs,
        lifetimes=tuple(metacli.multiples("lifetimes", v["lifetimes"])),
        minatar=tuple(minatar),
        minatar_inner=metacli.mapping("minatar_inner", v["minatar_inner"]),
        lr_grid=_lr_grid("lr_grid", v["lr_grid"]),
        minatar_lr_grid=_lr_grid("minatar_lr_grid", v["minatar_lr_grid"]),
        ppo=metacli.mapping("ppo", v["ppo"]),
        random_steps=metacli.as_int("random_steps", v["random_steps"], 1),
        test_seeds=metacli.as_int("test_seeds", v["test_seeds"], 1),
        bootstrap=metacli.as_int("bootstrap", v["bootstrap"], 1),
    )
    for task in settings.test_tasks:  # unknown envs.make overrides fail now
        test_env(settings, task)
    for task, m in settings.cells:  # validates every meta-test config now
        for learner in LEARNERS:
            learner_config(settings, task, m, learner)
    return dataclasses.replace(settings, values=_values(settings))


def _values(settings: Settings) -> dict:
    """The plain YAML of resolved settings (what config.yaml holds)."""
    cfg = settings.cfg
    return {
        "seed": settings.seed,
        "env": cfg.lpg.env,
        "env_kwargs": metacli.plain(cfg.lpg.env_kwargs),
        "inner": metacli.plain(cfg.lpg.inner),
        "time_aware": cfg.lpg.time_aware,
        "y_size": cfg.lpg.y_size,
        "hidden": cfg.lpg.hidden,
        "kl_weight": cfg.lpg.kl_weight,
        "level_lifetime": cfg.lpg.level_lifetime,
        "es": metacli.plain(dataclasses.asdict(cfg.lpg.es)),
        "curriculum": cfg.score,
        "buffer": metacli.plain(dataclasses.asdict(cfg.buffer)),
        "antagonist": metacli.plain(cfg.antagonist),
        "test_tasks": list(settings.test_tasks),
        "test_env_kwargs": metacli.plain(settings.test_env_kwargs),
        "lifetimes": list(settings.lifetimes[1:]),
        "minatar": list(settings.minatar),
        "minatar_inner": metacli.plain(settings.minatar_inner),
        "lr_grid": metacli.plain(settings.lr_grid),
        "minatar_lr_grid": metacli.plain(settings.minatar_lr_grid),
        "ppo": metacli.plain(settings.ppo),
        "random_steps": settings.random_steps,
        "test_seeds": settings.test_seeds,
        "bootstrap": settings.bootstrap,
    }


def _registered() -> list[str]:
    import envs

    return envs.registered()


def test_env(settings: Settings, task: str):
    """(env, env_params) of a meta-test task, built on the host (a grid world's level must be
    concrete: agents get it as an argument, never build it inside a trace)."""
    import envs

    try:
        return envs.make(task, **settings.test_env_kwargs.get(task, {}))
    except ValueError as e:
        raise ValueError(f"test_env_kwargs.{task}: {e}") from None


def learner_config(settings: Settings, task: str, lifetime: float, learner: str, lr=None):
    """The config of one meta-test run on `task`: an A2CConfig for "lpg" (with the rule's
    prediction head) and "a2c", a PPOConfig for "ppo" (`settings.ppo` over the fields, PPO's
    own defaults for the rest), with learning rate `lr` (None: the fields'). The fields: the
    meta-training agents' (`inner`: network, rollout, budget), `minatar_inner` over them on
    MinAtar; the number of updates is scaled by `lifetime` (rounded, at least 1), the rollout
    kept."""
    from meta import lpg
    from purejaxrl import a2c, actor_critic, ppo
    from purejaxrl import config as C

    fields = dict(settings.cfg.lpg.inner)
    if task in settings.minatar:
        fields.update(settings.minatar_inner)
    if lr is not None:
        fields["learning_rate"] = float(lr)
    env_kwargs = settings.test_env_kwargs.get(task, {})
    where = f"the {learner} config of the meta-test on {task}"
    try:
        if learner == "lpg":
            cfg = lpg.LPGConfig(
                env=task, env_kwargs=env_kwargs, inner=fields, y_size=settings.cfg.lpg.y_size
            ).inner_config()
        else:
            cls, extra = (a2c.A2CConfig, {}) if learner == "a2c" else (ppo.PPOConfig, settings.ppo)
            cfg = C.from_dict(cls, {**fields, **extra, "env": task, "env_kwargs": env_kwargs})
            actor_critic.validate(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    batch = cfg.num_envs * cfg.num_steps
    updates = max(1, round(lifetime * (cfg.total_timesteps // batch)))
    return dataclasses.replace(cfg, total_timesteps=updates * batch)


# --------------------------------------------------------------------------- plan


def describe(args, curriculum: str = "dr") -> str | None:
    """The first status line, from the YAML and overrides alone (no jax import)."""
    if args.resume or args.meta_test_only:
        return None
    try:
        values = runs.load_yaml(args.config) if args.config else {}
        values = metacli.deep_merge(values, metacli.parse_overrides(args.overrides))
    except ValueError:
        return None
    ta = args.time_aware or values.get("time_aware") is True
    es_values = values.get("es") if isinstance(values.get("es"), Mapping) else {}
    pop = es_values.get("population_size", ES_DEFAULTS["population_size"])
    gens = es_values.get("num_generations", ES_DEFAULTS["num_generations"])
    return (
        f"building {'TA-LPG' if ta else 'LPG'} meta-training on "
        f"{values.get('env', 'gridworld/all_shortlife')} (curriculum "
        f"{values.get('curriculum', curriculum)}, population {pop} x {gens} generations) ..."
    )


def experiment(prog: str = "experiments.lpg", curriculum: str = "dr") -> metacli.Experiment:
    """The shared CLI's description of this experiment, with its default curriculum."""
    return metacli.Experiment(
        prog=prog,
        artifact="rule",
        resolve=lambda values: resolve(values, curriculum),
        run_name=lambda s: f"{s.algo}-{s.curriculum}-{s.cfg.lpg.env.split('/', 1)[1]}",
        test_keys=TEST_KEYS,
        nested=NESTED,
    )


# --------------------------------------------------------------------------- meta-training


CURRICULUM_CSV = "curriculum.csv"


def curriculum_rows(metrics: Mapping[str, np.ndarray], first: int = 1) -> list[list]:
    """[generation, *metrics in name order] per generation of `metrics` {name: [n]}."""
    names = sorted(metrics)
    count = len(np.asarray(metrics[names[0]])) if names else 0
    return [[first + g, *(float(np.asarray(metrics[k])[g]) for k in names)] for g in range(count)]


def write_curriculum(run_dir: Path, metrics: Mapping, first: int = 1, keep_upto=None) -> None:
    """curriculum.csv: generation and the curriculum's metrics (see `curriculum_rows`) after the
    existing rows up to generation `keep_upto` (None: only these)."""
    columns = ["generation", *sorted(metrics)]
    rows = curriculum_rows(metrics, first)
    metacli.write_csv_rows(run_dir / CURRICULUM_CSV, columns, rows, keep_upto)


def run_meta_training(plan: Plan, session: dict, t_start: float):
    """ES with the curriculum (resumable); returns the GrooveOutput."""
    import jax

    from meta import groove

    settings, run_dir = plan.settings, plan.run_dir
    cfg = settings.cfg
    state = {"first": True}

    def on_generations(generation, metrics):
        if state["first"] and plan.write_config and plan.mode == "resume":
            metacli.write_yaml(run_dir, settings.values)  # a resume writes its config once it runs
        state["first"] = False
        fit = np.asarray(metrics["fitness"])
        first = generation - len(fit) + 1
        rows = metacli.fitness_rows(fit, np.asarray(metrics["nonfinite"]), first)
        write_curriculum(run_dir, metrics.get("curriculum", {}), first, keep_upto=first - 1)
        write_fitness(run_dir, rows, keep_upto=first - 1)

    pop, g = cfg.lpg.es.population_size, cfg.lpg.es.num_generations
    say(
        plan,
        f"meta-training: {pop} rules x one {settings.train_updates}-update agent lifetime each "
        f"on {pop // 2} {cfg.lpg.env} level(s) per generation (curriculum {cfg.score}), "
        f"generations {plan.done_generations + 1}..{g}, population over {plan.es_devices} "
        "device(s); compiling the generation ...",
    )
    meta_train = groove.make_meta_train(cfg)
    out = meta_train(
        jax.random.key(settings.seed),
        devices=plan.devices[: plan.es_devices],
        progress=plan.progress,
        checkpoint_dir=run_dir / "es",
        resume=plan.mode == "resume",
        on_generations=on_generations,
    )
    if plan.write_config and plan.mode == "resume":
        metacli.write_yaml(run_dir, settings.values)
    write_fitness(run_dir, metacli.fitness_rows(out.es.fitness, out.es.nonfinite))
    write_curriculum(run_dir, out.curriculum)
    ran = out.es.fitness.shape[0] - plan.done_generations
    steps = int(cfg.lpg.inner_config().total_timesteps)
    session.update(
        generations_run=int(ran),
        es_compile_s=out.es.compile_s,
        es_run_s=out.es.run_s,
        es_sps=(ran * pop * steps / out.es.run_s) if out.es.run_s else None,
        meta_train_s=time.perf_counter() - t_start,
    )
    return out


# --------------------------------------------------------------------------- meta-test


def task_seed(seed: int, task: str) -> int:
    """The integer seed of a task's meta-test keys: split(key(it), test_seeds), the keys
    `purejaxrl.sweep.grid(..., seed=it)` gives its seed indices (every learner of a task, at
    every lifetime, meets the same keys; independent of the other tasks)."""
    return zlib.crc32(f"{seed}:{task}".encode()) & 0x7FFFFFFF


def random_return(env, env_params, key, num_envs: int, num_steps: int) -> tuple[float, int]:
    """(mean episode return, episodes) of a uniform random policy: `num_envs` envs (auto-reset,
    the training loops' wrappers) x `num_steps` steps, the episodes that finished; NaN if none."""
    import jax.numpy as jnp

    from envs.benchmark import random_rollout

    def finished(reward, info):
        done = info["episode_done"]
        return jnp.sum(jnp.where(done, info["episode_return"], 0.0)), jnp.sum(done)

    total, count = random_rollout(env, env_params, num_envs, num_steps, finished)(key)
    count = int(count)
    return (float(total) / count if count else math.nan), count


def normalise(returns, r_random: float, r_a2c: float) -> np.ndarray:
    """(R - R_random) / (R_A2C - R_random) elementwise; all NaN where R_A2C <= R_random or
    either is NaN (no normalisation)."""
    returns = np.asarray(returns, np.float64)
    gap = r_a2c - r_random
    if not (math.isfinite(gap) and gap > 0):
        return np.full(returns.shape, np.nan)
    return (returns - r_random) / gap


def rule_program(cfg, env, env_params, kl_weight: float, sharding):
    """The jitted `(rule params, key data [S, 2]) -> metrics [S, U]` (episode_return,
    episodes_finished, nan_skipped) of A2C agents trained with the rule (`cfg`: the agents'
    A2CConfig), the seeds sharded."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from meta import lpg
    from purejaxrl import a2c

    names = ("episode_return", "episodes_finished", "nan_skipped")

    def run(params, key_data):
        keys = jax.random.wrap_key_data(key_data)
        rule = lpg.objective(params, kl_weight, cfg.gamma)
        agent = a2c.make_agent(cfg, rule, env=env, env_params=env_params)
        metrics = jax.vmap(lambda k: agent.train(k).metrics)(keys)
        return {k: metrics[k] for k in names}

    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.jit(run, in_shardings=(replicated, sharding), out_shardings=sharding)


def tune(learner: str, cfg, lrs, env, env_params, seed: int, seeds: int, devices):
    """One vmapped sweep of `learner` ("a2c" | "ppo") over learning rates `lrs` x `seeds` seeds
    (`purejaxrl.sweep`, seed keys split(key(seed), seeds)) -> (final returns [L, S], the sweep's
    compile and run seconds)."""
    from purejaxrl import a2c, ppo, sweep

    module = {"a2c": a2c, "ppo": ppo}[learner]
    batch = sweep.grid(cfg, {"learning_rate": list(lrs)}, seeds=seeds, seed=seed)
    res = sweep.run(
        batch,
        make_agent=lambda c: module.make_agent(c, env=env, env_params=env_params),
        devices=devices,
        progress=False,
    )
    m = res.metrics
    finals = metacli.final_per_seed(m["episode_return"], m["episodes_finished"])
    return finals.reshape(len(lrs), seeds), res.compile_s, res.run_s


def best_lr(finals: np.ndarray) -> int | None:
    """Index of the learning rate with the best mean final return over seeds (`finals` [L, S],
    NaN seeds left out; the first of ties); None if no rate has a finite return."""
    finite = np.isfinite(finals)
    counts = finite.sum(axis=1)
    means = np.where(
        counts > 0, np.where(finite, finals, 0.0).sum(axis=1) / np.maximum(counts, 1), -np.inf
    )
    return int(np.argmax(means)) if np.isfinite(means).any() else None


def _mean(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else math.nan


class _Progress:
    """A tqdm bar over the meta-test's programs (or nothing)."""

    def __init__(self, show: bool, total: int):
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="meta-test", unit="prog", dynamic_ncols=True)

    def step(self, label: str, done: bool = False) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=True)
            if done:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tuned_baseline(plan: Plan, learner: str, task: str, m: float, env, bar):
    """(final returns [S] at the best learning rate, {"learning_rate", "grid": {lr: mean}},
    compile_s, run_s) of `learner` ("a2c" | "ppo") on `task` at lifetime multiple `m`."""
    settings = plan.settings
    grid = settings.minatar_lr_grid if task in settings.minatar else settings.lr_grid
    lrs, seeds = grid[learner], settings.test_seeds
    bar.step(f"{task} {m:g}x {learner}")
    cfg = learner_config(settings, task, m, learner)
    seed = task_seed(settings.seed, task)
    per_lr, compile_s, run_s = tune(learner, cfg, lrs, *env, seed, seeds, plan.devices)
    best = best_lr(per_lr)
    tuned = {
        "learning_rate": None if best is None else lrs[best],
        "grid": {f"{lr:g}": metacli.num(_mean(row)) for lr, row in zip(lrs, per_lr, strict=True)},
    }
    bar.step(f"{task} {m:g}x {learner}", done=True)
    finals = per_lr[best] if best is not None else np.full(seeds, np.nan)
    return finals, tuned, compile_s, run_s


def rule_finals(plan: Plan, params, task: str, m: float, env, bar):
    """(final returns [S], updates skipped for non-finite values, compile_s, run_s) of A2C
    agents trained with the rule `params` on `task` at lifetime multiple `m`."""
    import jax

    from purejaxrl import sweep

    settings = plan.settings
    seeds = settings.test_seeds
    bar.step(f"{task} {m:g}x lpg")
    cfg = learner_config(settings, task, m, "lpg")
    n_dev = max(d for d in range(1, len(plan.devices) + 1) if seeds % d == 0)
    sharding = sweep.run_sharding(plan.devices[:n_dev])
    program = rule_program(cfg, *env, settings.cfg.lpg.kl_weight, sharding)
    key = jax.random.key(task_seed(settings.seed, task))
    keys = np.asarray(jax.random.key_data(jax.random.split(key, seeds)))
    args = (params, sweep.put(keys, sharding))
    t0 = time.perf_counter()
    compiled = program.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = sweep.gather(jax.block_until_ready(compiled(*args)))
    run_s = time.perf_counter() - t0
    bar.step(f"{task} {m:g}x lpg", done=True)
    finals = metacli.final_per_seed(metrics["episode_return"], metrics["episodes_finished"])
    return finals, int(np.sum(metrics["nan_skipped"])), compile_s, run_s


def run_cell(plan: Plan, params, task: str, m: float, env, r_random: float, bar) -> dict:
    """One meta-test cell: the tuned A2C and PPO and the rule's agents on `task` at lifetime
    multiple `m`; raw and normalised statistics per learner (meta_test.json's cell)."""
    settings = plan.settings
    finals, tuned, timing = {}, {}, {"compile_s": 0.0, "run_s": 0.0}
    for learner in BASELINES:
        finals[learner], tuned[learner], c_s, r_s = tuned_baseline(plan, learner, task, m, env, bar)
        timing["compile_s"] += c_s
        timing["run_s"] += r_s
    finals["lpg"], skipped, c_s, r_s = rule_finals(plan, params, task, m, env, bar)
    timing["compile_s"] += c_s
    timing["run_s"] += r_s
    r_a2c = _mean(finals["a2c"])
    normalised = {k: normalise(finals[k], r_random, r_a2c) for k in LEARNERS}
    cfg = learner_config(settings, task, m, "lpg")
    reps = settings.bootstrap
    return {
        "task": task,
        "kind": "minatar" if task in settings.minatar else "gridworld",
        "lifetime": m,
        "num_updates": int(cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)),
        "total_timesteps": int(cfg.total_timesteps),
        "r_random": metacli.num(r_random),
        "r_a2c": metacli.num(r_a2c),
        "normalisable": bool(np.isfinite(normalised["a2c"]).any()),
        "tuned": tuned,
        "lpg_nan_skipped": skipped,
        "results": {k: metacli.stats(finals[k], reps) for k in LEARNERS},
        "normalised": {k: metacli.stats(normalised[k], reps) for k in LEARNERS},
        **timing,
    }


def overall(cells: list[dict], lifetimes, reps: int) -> dict:
    """Per lifetime multiple ("1x": every task; others: the grid worlds) and learner: the IQM
    [95% stratified-bootstrap CI] of the normalised return over tasks x seeds (the normalisable
    cells only; tasks are the strata)."""
    from experiments import aggregate

    out = {}
    for m in lifetimes:
        mine = [c for c in cells if c["lifetime"] == m and c["normalisable"]]
        if not mine:
            out[f"{m:g}x"] = None
            continue
        entry = {"tasks": [c["task"] for c in mine]}
        for learner in LEARNERS:
            table = np.asarray(
                [
                    [np.nan if x is None else x for x in c["normalised"][learner]["per_seed"]]
                    for c in mine
                ],
                np.float64,
            ).T  # [seeds, tasks]
            s = aggregate.summarize(table, reps=reps, seed=0)
            entry[learner] = {k: s[k] for k in ("iqm", "iqm_ci", "mean", "num_runs", "num_tasks")}
            entry[learner] = {k: metacli.plain(v) for k, v in entry[learner].items()}
        out[f"{m:g}x"] = entry
    return out


def meta_test(plan: Plan, params) -> dict:
    """Random returns, then every cell (see `run_cell`); returns the table (meta_test.json)."""
    import jax

    settings = plan.settings
    cells = settings.cells
    tasks = list(dict.fromkeys(t for t, _ in cells))
    say(
        plan,
        f"meta-test: {len(cells)} (task, lifetime) cells x (the rule + A2C and PPO each tuned "
        f"over its learning rates), {settings.test_seeds} seeds; random-policy returns first ...",
    )
    envs_of = {t: test_env(settings, t) for t in tasks}
    t0 = time.perf_counter()
    randoms = {}
    for task in tasks:
        key = jax.random.fold_in(jax.random.key(task_seed(settings.seed, task)), 1)
        r, n = random_return(*envs_of[task], key, RANDOM_ENVS, settings.random_steps)
        randoms[task] = {"return": metacli.num(r), "episodes": n}
    random_s = time.perf_counter() - t0
    bar = _Progress(plan.progress, len(cells) * len(LEARNERS))
    out_cells = []
    try:
        for task, m in cells:
            r_random = randoms[task]["return"]
            r_random = math.nan if r_random is None else r_random
            out_cells.append(run_cell(plan, params, task, m, envs_of[task], r_random, bar))
    finally:
        bar.close()
    reps = settings.bootstrap
    summary = overall(out_cells, settings.lifetimes, reps)
    return {
        "learners": list(LEARNERS),
        "test_seeds": settings.test_seeds,
        "lifetimes": list(settings.lifetimes),
        "train_updates": settings.train_updates,
        "test_tasks": list(settings.test_tasks),
        "minatar": list(settings.minatar),
        "normalisation": NORMALISATION,
        "definition": (
            "per seed, mean episode_return over the last "
            f"{metacli.FINAL_FRACTION:.0%} of updates (from its first finished episode on; NaN "
            f"if none); per cell, IQM over seeds with a 95% stratified bootstrap CI ({reps} "
            "resamples; NaN seeds excluded); a2c and ppo at their best learning rate of the "
            "cell's grid (best mean final return over the seeds); the same seed keys for every "
            "learner and lifetime of a task; overall: IQM of the normalised return over tasks x "
            "seeds (tasks the strata) of the normalisable cells"
        ),
        "random": randoms,
        "random_rollout": {"envs": RANDOM_ENVS, "steps": settings.random_steps},
        "cells": out_cells,
        "overall": summary,
        "not_normalisable": [
            f"{c['task']}@{c['lifetime']:g}x" for c in out_cells if not c["normalisable"]
        ],
        "programs": len(cells) * len(LEARNERS),
        "devices": len(plan.devices),
        "random_s": random_s,
        "compile_s": sum(c["compile_s"] for c in out_cells),
        "run_s": sum(c["run_s"] for c in out_cells) + random_s,
    }


# --------------------------------------------------------------------------- outputs


def plot_fitness(run_dir: Path, settings: Settings) -> Path:
    es_cfg = settings.es
    title = (
        f"{settings.algo.upper()} meta-training on {settings.cfg.lpg.env} (curriculum "
        f"{settings.curriculum})\n{es_cfg.strategy} {es_cfg.fitness_shaping}, population "
        f"{es_cfg.population_size}, {settings.train_updates} updates per lifetime"
    )
    return metacli.plot_fitness(run_dir, title, "fitness (final return on the pair's level)")


def plot_meta_test(run_dir: Path, table: dict) -> Path:
    """meta_test.png: per task the raw final-return IQM [CI] per learner and lifetime, and the
    overall normalised IQM per lifetime."""
    panels = {}
    for c in table["cells"]:
        panels.setdefault(f"{c['task']} (final return)", []).append(
            {"tick": f"{c['lifetime']:g}x\n({c['num_updates']} upd.)", "values": c["results"]}
        )
    panels["normalised return, IQM over tasks x seeds"] = [
        {"tick": m, "values": entry or {}} for m, entry in table["overall"].items()
    ]
    return metacli.plot_cells(
        run_dir / "meta_test.png",
        panels,
        table["learners"],
        xlabel="lifetime (x meta-trained updates)",
        ylabel="IQM [95% CI]",
        suptitle=f"meta-test over {table['test_seeds']} seeds; normalised: "
        "(R - R_random) / (R_A2C - R_random)",
    )


def format_table(table: dict) -> str:
    """The meta-test as text: per cell R_random, each learner's IQM [CI] and the tuned rates,
    then the overall normalised IQM per lifetime."""
    head = f"{'task':<22} {'life':>5} {'updates':>7} {'random':>8}  " + "  ".join(
        f"{name:>24}" for name in table["learners"]
    )
    lines = [
        f"meta-test: final return IQM [95% CI] over {table['test_seeds']} seeds "
        "(a2c, ppo at their tuned learning rate)",
        head,
    ]
    for c in table["cells"]:
        r = "-" if c["r_random"] is None else f"{c['r_random']:.3g}"
        parts = [metacli.ci_text(c["results"][k]) for k in table["learners"]]
        lines.append(
            f"{c['task']:<22} {c['lifetime']:>4g}x {c['num_updates']:>7} {r:>8}  "
            + "  ".join(parts)
        )
    lines.append("normalised return (R - R_random) / (R_A2C - R_random), IQM over tasks x seeds:")
    for m, entry in table["overall"].items():
        if entry is None:
            lines.append(f"  {m:>5}: no normalisable task")
            continue
        parts = [f"{k} {metacli.ci_text(entry[k], 0)}" for k in table["learners"]]
        lines.append(f"  {m:>5}: " + " | ".join(parts) + f"  ({len(entry['tasks'])} tasks)")
    if table["not_normalisable"]:
        lines.append(
            f"not normalisable (R_A2C <= R_random): {', '.join(table['not_normalisable'])}"
        )
    return "\n".join(lines)


def _curriculum_summary(run_dir: Path) -> dict | None:
    """First / last / mean of every curriculum metric (curriculum.csv); None if absent."""
    path = run_dir / CURRICULUM_CSV
    if not path.is_file():
        return None
    rows = [line.split(",") for line in path.read_text().splitlines() if line]
    names, data = rows[0][1:], rows[1:]
    table = np.asarray([[float(x) if x else math.nan for x in r[1:]] for r in data], np.float64)
    table = table.reshape(len(data), len(names))
    return {
        name: {
            "first": metacli.num(table[0, i]) if len(data) else None,
            "last": metacli.num(table[-1, i]) if len(data) else None,
            "mean": metacli.num(np.nanmean(table[:, i])) if len(data) else None,
            "total": metacli.num(np.nansum(table[:, i])) if len(data) else None,
        }
        for i, name in enumerate(names)
    }


def summary_of(plan: Plan, fitness: dict, table, session: dict, info=None) -> dict:
    settings = plan.settings
    definition = (
        "per candidate, the final return of an A2C agent trained with it for its lifetime on "
        "its antithetic pair's level; per generation the mean and max over the population "
        "(finite values)"
    )
    out = {
        "algo": settings.algo,
        "curriculum": settings.curriculum,
        "env": settings.cfg.lpg.env,
        "seed": settings.seed,
        "population_size": settings.es.population_size,
        "generations": len(fitness["mean"]),
        "planned_generations": settings.es.num_generations,
        "train_updates": settings.train_updates,
        "fitness": metacli.fitness_summary(fitness, definition),
        "curriculum_metrics": _curriculum_summary(plan.run_dir),
        "rule": "rule",
        "normalisation": NORMALISATION,
        "meta_test": None,
    }
    trained_on = (info or {}).get("trained_on", {})
    for key in ("antagonist_runs", "antagonist_runs_uncached"):
        if key in trained_on:
            out[key] = trained_on[key]
    if table is not None:
        out["meta_test"] = {
            f"{c['task']}@{c['lifetime']:g}x": {
                k: {
                    "iqm": c["results"][k]["iqm"],
                    "iqm_ci": c["results"][k]["iqm_ci"],
                    "mean": c["results"][k]["mean"],
                    "normalised_iqm": c["normalised"][k]["iqm"],
                }
                for k in table["learners"]
            }
            for c in table["cells"]
        }
        out["overall_normalised"] = table["overall"]
        rule = {f"{c['task']}@{c['lifetime']:g}x": c["results"]["lpg"] for c in table["cells"]}
        out["final_return_mean"] = {k: v["mean"] for k, v in rule.items()}
        out["final_return_per_seed"] = {k: v["per_seed"] for k, v in rule.items()}
    out.update(metacli.session_summary(plan, session))
    return out


# --------------------------------------------------------------------------- run


def execute(plan: Plan) -> dict:
    from meta import lpg

    t_start = time.perf_counter()
    settings, run_dir = plan.settings, plan.run_dir
    session = metacli.begin_session(plan)

    info = None
    if plan.mode == "meta_test_only":
        params, info = lpg.load(run_dir / "rule", time_aware=settings.cfg.lpg.time_aware)
    else:
        out = run_meta_training(plan, session, t_start)
        params = out.params
        info = {**out.info, "run": {"folder": str(run_dir), "seed": settings.seed}}
        lpg.save(run_dir / "rule", params, info)
        plot_fitness(run_dir, settings)
        session["wall_s"] = time.perf_counter() - t_start
        partial = summary_of(plan, metacli.read_fitness(run_dir), None, session, info)
        if plan.previous.get("meta_test") is not None:
            partial["meta_test_stale"] = "the rule changed; meta_test.json is of an older one"
        runs.write_json(run_dir / "summary.json", partial)
        say(plan, f"saved the learned rule to {run_dir / 'rule'}")

    t_test = time.perf_counter()
    plan.stage = "meta_test"
    table = meta_test(plan, params)
    session.update(
        meta_test_compile_s=table["compile_s"],
        meta_test_run_s=table["run_s"],
        meta_test_s=time.perf_counter() - t_test,
    )
    runs.write_json(run_dir / "meta_test.json", table)
    plot_meta_test(run_dir, table)
    session["wall_s"] = time.perf_counter() - t_start
    summary = summary_of(plan, metacli.read_fitness(run_dir), table, session, info)
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def report(plan: Plan, summary: dict) -> None:
    """The final lines: the fitness curve's ends, the meta-test table, the timings."""
    line = metacli.fitness_line(summary)
    if line:
        print(line)
    print(format_table(metacli.read_json(plan.run_dir / "meta_test.json")))
    t = summary["timings"]
    names = ("es_compile_s", "es_run_s", "meta_test_compile_s", "meta_test_run_s")
    parts = [f"{k} {t[k]:.0f} s" for k in names if t.get(k) is not None]
    print(f"{' | '.join(parts)} | wall {summary['wall_s']:.0f} s\nrun folder: {plan.run_dir}")


def main(argv=None, prog: str = "experiments.lpg", curriculum: str = "dr") -> int:
    """The CLI (experiments.groove: prog "experiments.groove", curriculum "regret")."""
    return metacli.main(
        parse_args(argv, prog, curriculum),
        experiment(prog, curriculum),
        lambda args: describe(args, curriculum),
        execute,
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
