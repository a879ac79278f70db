"""Meta-train an LPG / TA-LPG update rule on random grid worlds (domain randomisation or
GROOVE's level curricula) with meta-gradients or ES, then meta-test it against A2C and PPO tuned
per task.

    python -m experiments.lpg [--config FILE.yaml] [key=value ...] [--time-aware]
        [--meta-optimizer meta_gradient|es] [--out DIR] [--devices N] [--compile-cache DIR]
        [--no-progress]
    python -m experiments.lpg --resume DIR [meta_gradient.num_steps=S | es.num_generations=G]
    python -m experiments.lpg --meta-test-only DIR [test_seeds=16 ...]  # redo the meta-test
    python -m experiments.lpg --compare-ta [--config FILE.yaml] [key=value ...] [--out DIR]
    python -m experiments.groove ...                                    # the same, curriculum: regret

The methods (`meta_optimizer` x `time_aware` x `curriculum`):

    LPG        (Oh et al. 2020, arXiv 2007.08794): meta_optimizer meta_gradient, the default
    TA-LPG     (Jackson et al., ICLR 2024, arXiv 2402.05828): --time-aware; its default
               meta-optimiser is es, the TA paper's (meta_optimizer=meta_gradient is its ablation)
    GROOVE     (Jackson et al., NeurIPS 2023, arXiv 2310.02782): experiments.groove (curriculum
               regret) with meta_optimizer meta_gradient, the default, as the public code
               (EmptyJackson/groove: GROOVE = its meta-gradient LPG with --score_function
               alg_regret)
    ES-GROOVE  the regret curriculum with meta_optimizer=es (this repository's ES variant: whole
               lifetimes per antithetic pair, see meta/groove.py)

So with `meta_optimizer` unset (the shipped configs leave it unset) a run uses es when
time_aware is true and meta_gradient otherwise, in both CLIs; the resolved value is written to
config.yaml.

Settings (YAML mapping or `key=value` overrides with YAML values; nested keys with dots, e.g.
`inner.total_timesteps=12800`, `meta_gradient.num_agents=32`, `buffer.replay_prob=0.5`):

    seed            base seed (default 0): meta-training uses jax.random.key(seed) exactly as
                    `meta.groove.make_meta_train(cfg)(jax.random.key(seed))` does
    env, env_kwargs the meta-training levels: a grid-world distribution id (default
                    gridworld/all_shortlife; gridworld/small, medium, large, all, all_vrandlife,
                    ...): ES, every antithetic pair meets one level of it per generation;
                    meta-gradient, every agent trains on its own level until its life ends
    inner, time_aware, y_size, hidden, kl_weight, level_lifetime
                    meta.lpg.LPGConfig's fields (`inner`: the A2CConfig fields of the agents,
                    merged over meta.lpg.CPU_INNER: tabular agents, hidden_sizes []; `--time-aware`
                    sets time_aware: true)
    meta_optimizer  meta_gradient | es (meta.groove.GrooveConfig.meta_optimizer; also
                    `--meta-optimizer`); unset: es if time_aware else meta_gradient (above)
    meta_gradient   meta.lpg.MetaGradientConfig fields (num_agents, agent_chunks,
                    num_agent_updates K, num_steps, learning_rate, max_grad_norm, gamma,
                    gae_lambda, normalize_advantages, entropy_coef, pi_hat_l2_coef,
                    y_entropy_coef, y_hat_l2_coef, critic_learning_rate, adam_eps_root, stagger)
                    over its defaults, and steps_per_call (default 50): meta-steps per jitted
                    call, the checkpoint interval. Read when meta_optimizer is meta_gradient
    es              meta.es.ESConfig fields, merged over population_size 16, num_generations 100,
                    sigma 0.1, learning_rate 0.01, fitness_shaping pairwise; read when
                    meta_optimizer is es
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

Meta-training (meta/groove.py, `groove.make_meta_train`):

- meta_gradient: `meta_gradient.num_agents` persistent agents, each on its own level; a
  meta-step = K agent updates with the rule, then one clipped-Adam step of the rule on the
  regularised A2C loss of the updated agents, differentiated through the K updates
  (`lpg.make_meta_gradient_train`); agents whose life ended score their level and restart on one
  the curriculum picks (dr: a fresh level; regret / pvl: replayed from the level buffer with
  buffer.replay_prob, else fresh). Runs on one device in jitted calls of
  `meta_gradient.steps_per_call` meta-steps, checkpointed in DIR/meta_gradient after each call
  (the whole state: rule, optimiser, agents, critics, antagonists, buffer, metrics).
  `--resume DIR` continues from there exactly (meta_steps.csv equals an uninterrupted run's);
  it may raise meta_gradient.num_steps (and change meta_gradient.steps_per_call or the meta-test
  settings), nothing else.
- es: `es.evolve` over the population of rules, sharded over the devices (on CPU the host's
  cores become devices; with no `--devices` the largest count that divides the population is
  used), with the curriculum choosing each generation's levels (one per antithetic pair),
  checkpointed in es/ after every `es.generations_per_call` generations (the curriculum's state,
  e.g. the level buffer, included). `--resume DIR` continues from there bit-exactly (the fitness
  history equals an uninterrupted run's); it may raise es.num_generations (and change
  es.generations_per_call or the meta-test settings), nothing else.

Meta-test (the learned rule: the final ES mean, or the meta-gradient's rule after its last
meta-step), per cell (task, lifetime): `test_seeds` fresh
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
lifetime over the grid worlds.

TA-LPG vs LPG at unseen lifetimes, one command: `--compare-ta` runs TA-LPG (ES), TA-LPG
(meta-gradient) and LPG (ES) with the same settings (each run's time_aware and meta_optimizer
set for it) into DIR/ta-lpg-es, DIR/ta-lpg-mg and DIR/lpg-es, one after another, each an
ordinary run folder of this CLI (below), then writes DIR/comparison.json, comparison.txt and
comparison.png: per lifetime multiple (1x, 0.5x, 2x, ... as `lifetimes`) the normalised return's
IQM [95% CI] over tasks x seeds of each rule beside the tuned A2C and PPO, and per cell the raw
final return's IQM [CI]. The TA paper pits TA-LPG (ES) against LPG: LPG runs with ES here too,
so that pair isolates the time-awareness, and TA-LPG (meta-gradient) isolates the
meta-optimiser (the paper: meta-gradients over K updates fail to learn lifetime-dependent
rules). Its own meta-training setting: `env=gridworld/all_vrandlife level_lifetime=true` (the
public code's TA-LPG command: lifetimes log-uniform in 10-250 updates, the rule told each
level's own). The runs share the meta-test's tuned baselines and random-policy returns (computed
once). Rerunning the same command continues the comparison (an unfinished run is resumed, a
finished one kept); a folder holding a run of other settings is refused.

`--compile-cache DIR` keeps compiled programs in DIR (jax's persistent compilation cache): a
resume, a `--meta-test-only` rerun, or another run with the same test settings, loads the
baselines' and the rule's meta-test programs it compiled before (the rule is an argument).

Bad input (an unknown key, env id, curriculum, meta-optimiser or field of `meta_gradient`, `es`,
`buffer`, `inner`, ..., with its close matches; a bad value; a meta-gradient K longer than a
lifetime; an occupied --out; a --resume of a folder whose config differs from the overrides)
stops with `error: ...` (exit code 2) before anything is compiled or written (with
--compare-ta: before its first run starts, every run checked). Ctrl-C stops with exit code 130
and says how to continue.

Run folder DIR (default runs/<lpg|ta-lpg>-<mg|es>-<curriculum>-<env>-<timestamp>):
    config.yaml     the resolved settings (`--config DIR/config.yaml` repeats the run)
    meta_gradient/  meta_gradient: the checkpoint (meta/groove.py; `--resume` continues it)
    meta_steps.csv  meta_gradient: meta_step and per meta-step the meta-gradient's metrics
                    (meta.groove's: meta_loss, meta_pg_loss, finished_return = mean final return
                    of the agents whose life ended that step (empty if none), agents_restarted,
                    unscored, rule_grad_norm, rule_skipped, entropy, y_entropy, critic_loss, ...)
    meta_steps.png  meta_gradient: finished_return and the meta-loss per meta-step
    es/             es: the ES checkpoints (meta/es.py; `--resume` continues the newest)
    fitness.csv     es: generation, mean, best, nonfinite: per generation the mean and the
                    maximum of the population's fitness (a candidate's agent's final return on
                    its pair's level) and the number of non-finite fitness values
    fitness.png     es: the mean and best fitness per generation
    curriculum.csv  generation (es) or meta_step (meta_gradient) and the curriculum's metrics
                    per step (meta.groove: replay, antagonist_runs, admitted, buffer_size,
                    mean_score, ... ; dr: mean_agent_return)
    rule/           the learned rule (the final ES mean, or the meta-gradient's last rule),
                    `meta.lpg.save` with its info (trained_on.method: es | meta_gradient): load it
                    with `lpg.load(DIR/rule)` or train an A2C agent with it by `python -m
                    experiments.train --config experiments/configs/a2c_cartpole.yaml
                    env=gridworld/dense hidden_sizes=[] prediction_size=8 objective.name=lpg
                    objective.path=DIR/rule` (prediction_size: the rule's y width)
    meta_test.json  per cell: R_random, the tuned learning rates, per learner the per-seed final
                    returns, IQM [95% CI], mean and the same of the normalised return; overall
    meta_test.png   IQM bars with CI whiskers per task and lifetime, and the overall normalised
    summary.json    method (LPG, TA-LPG, GROOVE, ES-GROOVE, ... as above), meta_optimizer, the
                    fitness curve (es) or the meta_steps.csv summary (meta_gradient:
                    "meta_training"), curriculum, meta-test table, timings per session (es
                    compile_s / run_s; meta_gradient_first_call_s = compile + first call,
                    meta_gradient_run_s, meta_step_s = seconds per meta-step after the first
                    call; meta-test compile_s / run_s, wall_s)
"""

from __future__ import annotations

import argparse
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
META_OPTIMIZERS = ("meta_gradient", "es")  # meta.groove.META_OPTIMIZERS
MG_EXTRA = {"steps_per_call": 50}  # meta_gradient keys beside lpg.MetaGradientConfig's fields
MG_RESUMABLE = ("meta_gradient.num_steps", "meta_gradient.steps_per_call")
MG_DESCRIBE = {"num_agents": 8, "num_steps": 100}  # lpg.MetaGradientConfig's (no jax import)
MG_CHECKPOINT = "meta_gradient"  # the folder groove's meta_train keeps under checkpoint_dir
META_STEPS_CSV = "meta_steps.csv"
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
    "meta_optimizer",
    "meta_gradient",
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
    "meta_gradient",
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
    p = metacli.parser(
        prog,
        f"Meta-train an LPG / TA-LPG rule on random grid worlds with meta-gradients (LPG, "
        f"GROOVE) or ES (TA-LPG, ES-GROOVE) (curriculum default {curriculum}), then meta-test "
        "it against A2C and PPO tuned per task; writes a run folder.",
        __doc__,
        time_aware="TA-LPG (sets time_aware: true; meta-optimiser default es)",
        artifact="rule",
        out="runs/<lpg|ta-lpg>-<mg|es>-<curriculum>-<env>-<timestamp>",
    )
    p.add_argument(
        "--meta-optimizer",
        choices=META_OPTIMIZERS,
        help="sets meta_optimizer (default meta_gradient; es with --time-aware)",
    )
    p.add_argument(
        "--compare-ta",
        action="store_true",
        help="run ES TA-LPG, meta-gradient TA-LPG and ES LPG into subfolders of --out and "
        "write one comparison table (rerun the same command to continue it)",
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (plain YAML, written as config.yaml), the GrooveConfig
    of the meta-training and the meta-test settings (see the module docstring)."""

    values: dict
    cfg: Any  # meta.groove.GrooveConfig
    seed: int
    steps_per_call: int  # meta-gradient: meta-steps per jitted call and checkpoint
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
    def meta_optimizer(self) -> str:
        return self.cfg.meta_optimizer

    @property
    def meta_gradient(self) -> bool:
        return self.cfg.meta_optimizer == "meta_gradient"

    @property
    def method(self) -> str:
        """The method's name: GROOVE / ES-GROOVE (regret curriculum; "(TA-LPG rule)" when
        time-aware), else "LPG" / "TA-LPG" with the meta-optimiser and curriculum."""
        ta = self.cfg.lpg.time_aware
        if self.curriculum == "regret":
            name = "GROOVE" if self.meta_gradient else "ES-GROOVE"
            return f"{name} (TA-LPG rule)" if ta else name
        opt = "meta-gradient" if self.meta_gradient else "ES"
        return f"{'TA-LPG' if ta else 'LPG'} ({opt}, curriculum {self.curriculum})"

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
        "meta_optimizer": None,  # None: es if time_aware else meta_gradient
        "meta_gradient": {**dataclasses.asdict(lpg.MetaGradientConfig()), **MG_EXTRA},
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


def _meta_optimizer(value, time_aware: bool) -> str:
    """The meta-optimiser: `value`, or when unset (None) the method's own: es for TA-LPG (the TA
    paper's), meta_gradient otherwise (LPG, Oh et al. 2020; GROOVE, Jackson et al. 2023)."""
    if value is None:
        return "es" if time_aware else "meta_gradient"
    if value not in META_OPTIMIZERS:
        raise ValueError(
            f"meta_optimizer={value!r} is unknown{metacli.hint(str(value), META_OPTIMIZERS)} "
            f"(choose from {list(META_OPTIMIZERS)})"
        )
    return value


def _meta_gradient(values: Mapping[str, Any]):
    """(lpg.MetaGradientConfig, steps_per_call) of the `meta_gradient` block; an unknown field is
    named with close matches, a bad value with its field."""
    from meta import lpg

    fields = {f.name: f for f in dataclasses.fields(lpg.MetaGradientConfig)}
    known = [*fields, *MG_EXTRA]
    for key in values:
        if key not in known:
            raise ValueError(
                f"meta_gradient: unknown field {key!r}{metacli.hint(key, known)} (fields: {known})"
            )
    kwargs = {
        k: runs.number_or_text(v) if isinstance(fields[k].default, float) else v
        for k, v in values.items()
        if k in fields
    }
    try:
        mg = lpg.MetaGradientConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"meta_gradient: {e}") from None
    steps = metacli.as_int(
        "meta_gradient.steps_per_call", values.get("steps_per_call", MG_EXTRA["steps_per_call"]), 1
    )
    return mg, steps


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
    time_aware = metacli.as_bool("time_aware", v["time_aware"])
    mg, _ = _meta_gradient(metacli.mapping("meta_gradient", v["meta_gradient"]))
    cfg = lpg.LPGConfig(
        env=env,
        env_kwargs=metacli.mapping("env_kwargs", v["env_kwargs"]),
        inner=metacli.mapping("inner", v["inner"]),
        time_aware=time_aware,
        y_size=metacli.as_int("y_size", v["y_size"], 1),
        hidden=metacli.as_int("hidden", v["hidden"], 1),
        kl_weight=_positive_float("kl_weight", v["kl_weight"]),
        level_lifetime=metacli.as_bool("level_lifetime", v["level_lifetime"]),
        es=metacli.es_config(metacli.mapping("es", v["es"])),
    )
    return groove.GrooveConfig(
        lpg=cfg,
        score=_curriculum(v["curriculum"]),
        meta_optimizer=_meta_optimizer(v["meta_optimizer"], time_aware),
        meta_gradient=mg,
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
    _, steps_per_call = _meta_gradient(metacli.mapping("meta_gradient", v["meta_gradient"]))
    settings = Settings(
        values={},
        cfg=cfg,
        seed=metacli.as_int("seed", v["seed"], 0),
        steps_per_call=steps_per_call,
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
        "meta_optimizer": cfg.meta_optimizer,
        "meta_gradient": metacli.plain(
            {**dataclasses.asdict(cfg.meta_gradient), "steps_per_call": settings.steps_per_call}
        ),
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
    opt = args.meta_optimizer or values.get("meta_optimizer") or ("es" if ta else "meta_gradient")
    score = values.get("curriculum", curriculum)
    if args.compare_ta:
        return (
            f"building the TA comparison (ES TA-LPG, meta-gradient TA-LPG, ES LPG) on "
            f"{values.get('env', 'gridworld/all_shortlife')} (curriculum {score}) ..."
        )
    if score == "regret":
        name = "GROOVE" if opt == "meta_gradient" else "ES-GROOVE"
        name += " (TA-LPG rule)" if ta else ""
    else:
        name = f"{'TA-LPG' if ta else 'LPG'} ({'ES' if opt == 'es' else 'meta-gradient'})"
    if opt == "meta_gradient":
        mg_values = values.get("meta_gradient")
        mg_values = {**MG_DESCRIBE, **(mg_values if isinstance(mg_values, Mapping) else {})}
        agents, steps = mg_values["num_agents"], mg_values["num_steps"]
        size = f"{agents} agents x {steps} meta-steps"
    else:
        es_values = values.get("es") if isinstance(values.get("es"), Mapping) else {}
        pop = es_values.get("population_size", ES_DEFAULTS["population_size"])
        gens = es_values.get("num_generations", ES_DEFAULTS["num_generations"])
        size = f"population {pop} x {gens} generations"
    return (
        f"building {name} meta-training on {values.get('env', 'gridworld/all_shortlife')} "
        f"(curriculum {score}, {size}) ..."
    )


def experiment(prog: str = "experiments.lpg", curriculum: str = "dr") -> metacli.Experiment:
    """The shared CLI's description of this experiment, with its default curriculum."""
    return metacli.Experiment(
        prog=prog,
        artifact="rule",
        resolve=lambda values: resolve(values, curriculum),
        run_name=lambda s: (
            f"{s.algo}-{'mg' if s.meta_gradient else 'es'}-{s.curriculum}-"
            f"{s.cfg.lpg.env.split('/', 1)[1]}"
        ),
        test_keys=TEST_KEYS,
        nested=NESTED,
        schedule=schedule,
    )


def schedule(settings: Settings) -> metacli.Schedule:
    """ES: `metacli.es_schedule`; meta-gradient: meta_gradient.num_steps meta-steps,
    checkpointed in DIR/meta_gradient every meta_gradient.steps_per_call."""
    if not settings.meta_gradient:
        return metacli.es_schedule(settings)
    return metacli.Schedule(
        settings.cfg.meta_gradient.num_steps,
        "meta_gradient.num_steps",
        "meta-step",
        f"{MG_CHECKPOINT}/",
        done_meta_steps,
        MG_RESUMABLE,
        None,
    )


def done_meta_steps(run_dir: Path) -> int:
    """The meta-steps of the meta-gradient checkpoint in DIR/meta_gradient (0 if none);
    ValueError if it is damaged."""
    from meta import groove

    return groove.checkpoint_steps(run_dir)


# --------------------------------------------------------------------------- meta-training


CURRICULUM_CSV = "curriculum.csv"


def curriculum_rows(metrics: Mapping[str, np.ndarray], first: int = 1) -> list[list]:
    """[step, *metrics in name order] per generation or meta-step of `metrics` {name: [n]}."""
    names = sorted(metrics)
    count = len(np.asarray(metrics[names[0]])) if names else 0
    return [[first + g, *(float(np.asarray(metrics[k])[g]) for k in names)] for g in range(count)]


def write_curriculum(
    run_dir: Path, metrics: Mapping, first: int = 1, keep_upto=None, step: str = "generation"
) -> None:
    """curriculum.csv: `step` ("generation" or "meta_step") and the curriculum's metrics (see
    `curriculum_rows`) after the existing rows up to step `keep_upto` (None: only these)."""
    columns = [step, *sorted(metrics)]
    rows = curriculum_rows(metrics, first)
    metacli.write_csv_rows(run_dir / CURRICULUM_CSV, columns, rows, keep_upto)


def write_meta_steps(run_dir: Path, metrics: Mapping, first: int = 1, keep_upto=None) -> None:
    """meta_steps.csv: meta_step and the meta-gradient's metrics per meta-step (those that are
    not the curriculum's) after the existing rows up to meta-step `keep_upto` (None: only
    these)."""
    columns = ["meta_step", *sorted(metrics)]
    rows = curriculum_rows(metrics, first)
    metacli.write_csv_rows(run_dir / META_STEPS_CSV, columns, rows, keep_upto)


def _split_metrics(metrics: Mapping, curriculum_names) -> tuple[dict, dict]:
    """(the meta-gradient's own metrics, the curriculum's) of groove's per-meta-step metrics."""
    names = set(curriculum_names)
    own = {k: v for k, v in metrics.items() if k not in names}
    return own, {k: v for k, v in metrics.items() if k in names}


def run_meta_training(plan: Plan, session: dict, t_start: float):
    """The meta-training of `meta_optimizer` (resumable); returns the GrooveOutput."""
    if plan.settings.meta_gradient:
        return run_meta_gradient(plan, session, t_start)
    return run_es(plan, session, t_start)


def run_meta_gradient(plan: Plan, session: dict, t_start: float):
    """Meta-gradient LPG / GROOVE with the curriculum (`groove.make_meta_train`), checkpointed
    in DIR/meta_gradient every `steps_per_call` meta-steps; returns the GrooveOutput."""
    import jax

    from meta import groove

    settings, run_dir = plan.settings, plan.run_dir
    cfg, mg = settings.cfg, settings.cfg.meta_gradient
    train_cfg = cfg  # the checkpoint matches the config less num_steps, which a resume may raise
    clock = {"first": True, "t": time.perf_counter(), "calls": []}

    def on_steps(done, metrics):
        if clock["first"] and plan.write_config and plan.mode == "resume":
            metacli.write_yaml(run_dir, settings.values)  # a resume writes its config once it runs
        clock["first"] = False
        now = time.perf_counter()
        n = len(np.asarray(metrics["meta_loss"]))
        clock["calls"].append((n, now - clock["t"]))
        clock["t"] = now
        first = done - n + 1
        own, cur = _split_metrics(metrics, meta_train.curriculum.metrics)
        write_curriculum(run_dir, cur, first, keep_upto=first - 1, step="meta_step")
        write_meta_steps(run_dir, own, first, keep_upto=first - 1)

    say(
        plan,
        f"meta-training ({settings.method}): {mg.num_agents} agents on their own "
        f"{cfg.lpg.env} levels (curriculum {cfg.score}), each meta-step {mg.num_agent_updates} "
        f"updates of every agent + one rule update, lives of {settings.train_updates} updates; "
        f"meta-steps {plan.done_generations + 1}..{mg.num_steps} in calls of "
        f"{settings.steps_per_call}; compiling ...",
    )
    meta_train = groove.make_meta_train(train_cfg)
    out = meta_train(
        jax.random.key(settings.seed),
        num_steps=mg.num_steps,
        steps_per_call=settings.steps_per_call,
        progress=plan.progress,
        on_steps=on_steps,
        checkpoint_dir=run_dir,
        resume=plan.mode == "resume",
    )
    out.info["trained_on"]["meta_gradient"] = dataclasses.asdict(mg)
    if "antagonist_runs" in out.curriculum:
        out.info["trained_on"]["antagonist_runs_uncached"] = out.antagonist_runs_uncached
    if plan.write_config and plan.mode == "resume":
        metacli.write_yaml(run_dir, settings.values)
    own, cur = _split_metrics(out.metrics, out.curriculum)
    write_meta_steps(run_dir, own)
    write_curriculum(run_dir, cur, step="meta_step")
    calls = clock["calls"]
    later = calls[1:]
    steps_later = sum(n for n, _ in later)
    session.update(
        meta_steps_run=int(sum(n for n, _ in calls)),
        meta_gradient_first_call_s=calls[0][1] if calls else None,
        meta_gradient_run_s=sum(t for _, t in later),
        meta_step_s=(sum(t for _, t in later) / steps_later) if steps_later else None,
        meta_train_s=time.perf_counter() - t_start,
    )
    return out


def run_es(plan: Plan, session: dict, t_start: float):
    """ES (ES-GROOVE, ES LPG / TA-LPG) with the curriculum (resumable); returns the
    GrooveOutput."""
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
        f"meta-training ({settings.method}): {pop} rules x one {settings.train_updates}-update "
        "agent lifetime each "
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
    memo_key = ("tune", learner, repr(cfg), lrs, seed, seeds)
    if _MEMO is not None and memo_key in _MEMO:  # --compare-ta: another run tuned it
        per_lr, compile_s, run_s = _MEMO[memo_key], 0.0, 0.0
    else:
        per_lr, compile_s, run_s = tune(learner, cfg, lrs, *env, seed, seeds, plan.devices)
        if _MEMO is not None:
            _MEMO[memo_key] = per_lr
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
        memo_key = ("random", task, repr(settings.test_env_kwargs.get(task)), settings.seed,
                    settings.random_steps)  # fmt: skip
        if _MEMO is not None and memo_key in _MEMO:  # --compare-ta: another run has it
            randoms[task] = dict(_MEMO[memo_key])
            continue
        key = jax.random.fold_in(jax.random.key(task_seed(settings.seed, task)), 1)
        r, n = random_return(*envs_of[task], key, RANDOM_ENVS, settings.random_steps)
        randoms[task] = {"return": metacli.num(r), "episodes": n}
        if _MEMO is not None:
            _MEMO[memo_key] = dict(randoms[task])
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
        f"{settings.method} meta-training on {settings.cfg.lpg.env} (curriculum "
        f"{settings.curriculum})\n{es_cfg.strategy} {es_cfg.fitness_shaping}, population "
        f"{es_cfg.population_size}, {settings.train_updates} updates per lifetime"
    )
    return metacli.plot_fitness(run_dir, title, "fitness (final return on the pair's level)")


def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """{column: values} of a CSV of numbers (empty cells NaN)."""
    rows = [line.split(",") for line in path.read_text().splitlines() if line]
    names, data = rows[0], rows[1:]
    table = np.asarray([[float(x) if x else math.nan for x in r] for r in data], np.float64)
    table = table.reshape(len(data), len(names))
    return {name: table[:, i] for i, name in enumerate(names)}


def _rolling(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of the finite values of the last `width` entries at every point (NaN if none)."""
    finite = np.isfinite(x)
    total = np.cumsum(np.where(finite, x, 0.0))
    count = np.cumsum(finite)
    shift = lambda a: np.concatenate([np.zeros(width), a[:-width]]) if len(a) > width else 0 * a  # noqa: E731
    total, count = total - shift(total), count - shift(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_meta_steps(run_dir: Path, settings: Settings) -> Path:
    """meta_steps.png: per meta-step the finished agents' mean final return (and its rolling
    mean) and the meta-loss (and its policy-gradient part)."""
    plt = metacli.pyplot()
    m = read_csv_columns(run_dir / META_STEPS_CSV)
    step = m["meta_step"]
    width = max(1, len(step) // 50)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot(step, m["finished_return"], ".", ms=3, alpha=0.4, label="agents finished this step")
    ax.plot(step, _rolling(m["finished_return"], width), label=f"rolling mean ({width})")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("final return of the agents whose life ended")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name in ("meta_loss", "meta_pg_loss"):
        if name in m:
            ax.plot(step, _rolling(m[name], width), label=name)
    ax.set_xlabel("meta-step")
    ax.set_ylabel(f"rolling mean ({width})")
    ax.legend(fontsize=8)
    mg = settings.cfg.meta_gradient
    fig.suptitle(
        f"{settings.method} meta-training on {settings.cfg.lpg.env}: {mg.num_agents} agents, "
        f"K={mg.num_agent_updates}, rule Adam {mg.learning_rate:g}, {settings.train_updates} "
        "updates per lifetime",
        fontsize=10,
    )
    fig.tight_layout()
    path = run_dir / "meta_steps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


def _curriculum_summary(run_dir: Path, name: str = CURRICULUM_CSV) -> dict | None:
    """First / last / mean / total of every metric of a per-step CSV (curriculum.csv,
    meta_steps.csv; finite values); None if absent."""
    path = run_dir / name
    if not path.is_file():
        return None
    columns = read_csv_columns(path)
    out = {}
    for key, x in list(columns.items())[1:]:
        finite = x[np.isfinite(x)]
        out[key] = {
            "first": metacli.num(x[0]) if len(x) else None,
            "last": metacli.num(x[-1]) if len(x) else None,
            "mean": metacli.num(finite.mean()) if finite.size else None,
            "total": metacli.num(finite.sum()) if finite.size else None,
        }
    return out


def _meta_gradient_summary(run_dir: Path, settings: Settings) -> dict:
    """summary.json's "meta_training" of a meta-gradient run (meta_steps.csv)."""
    m = read_csv_columns(run_dir / META_STEPS_CSV)
    finished = m.get("finished_return", np.zeros(0))
    tenth = max(1, len(finished) // 10)
    head, tail = finished[:tenth], finished[-tenth:]
    mean = lambda x: metacli.num(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else None  # noqa: E731
    return {
        "definition": (
            "per meta-step: finished_return = mean final return (last 5% of updates, finished "
            "episodes only) of the agents whose life ended that step (NaN if none); meta_loss = "
            "the regularised A2C loss of the updated agents that the rule's Adam step descends"
        ),
        "meta_steps": len(finished),
        "planned_meta_steps": settings.cfg.meta_gradient.num_steps,
        "num_agents": settings.cfg.meta_gradient.num_agents,
        "finished_return_first_tenth": mean(head),
        "finished_return_last_tenth": mean(tail),
        "metrics": _curriculum_summary(run_dir, META_STEPS_CSV),
    }


def summary_of(plan: Plan, table, session: dict, info=None) -> dict:
    settings, run_dir = plan.settings, plan.run_dir
    out = {
        "method": settings.method,
        "meta_optimizer": settings.meta_optimizer,
        "algo": settings.algo,
        "curriculum": settings.curriculum,
        "env": settings.cfg.lpg.env,
        "seed": settings.seed,
        "train_updates": settings.train_updates,
    }
    if settings.meta_gradient:
        out["meta_training"] = _meta_gradient_summary(run_dir, settings)
        out["fitness"] = None
    else:
        fitness = metacli.read_fitness(run_dir)
        definition = (
            "per candidate, the final return of an A2C agent trained with it for its lifetime "
            "on its antithetic pair's level; per generation the mean and max over the "
            "population (finite values)"
        )
        out.update(
            population_size=settings.es.population_size,
            generations=len(fitness["mean"]),
            planned_generations=settings.es.num_generations,
            fitness=metacli.fitness_summary(fitness, definition),
        )
    out.update(
        {
            "curriculum_metrics": _curriculum_summary(run_dir),
            "rule": "rule",
            "normalisation": NORMALISATION,
            "meta_test": None,
        }
    )
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
        if settings.meta_gradient:
            plot_meta_steps(run_dir, settings)
        else:
            plot_fitness(run_dir, settings)
        session["wall_s"] = time.perf_counter() - t_start
        partial = summary_of(plan, None, session, info)
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
    summary = summary_of(plan, table, session, info)
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def meta_training_line(summary: dict) -> str | None:
    """The meta-training's one line: the ES fitness curve's ends, or the meta-gradient's
    finished-agent return over the first and last tenth of its meta-steps."""
    if summary.get("fitness") is not None:
        return metacli.fitness_line(summary)
    mt = summary.get("meta_training")
    if not mt or not mt["meta_steps"]:
        return None
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    return (
        f"{summary['method']}: {mt['meta_steps']} meta-steps, {mt['num_agents']} agents; final "
        f"return of finished agents {fmt(mt['finished_return_first_tenth'])} (first tenth) -> "
        f"{fmt(mt['finished_return_last_tenth'])} (last tenth)"
    )


def report(plan: Plan, summary: dict) -> None:
    """The final lines: the meta-training's progress, the meta-test table, the timings."""
    line = meta_training_line(summary)
    if line:
        print(line)
    print(format_table(metacli.read_json(plan.run_dir / "meta_test.json")))
    t = summary["timings"]
    names = (
        "es_compile_s",
        "es_run_s",
        "meta_gradient_first_call_s",
        "meta_gradient_run_s",
        "meta_test_compile_s",
        "meta_test_run_s",
    )
    parts = [f"{k} {t[k]:.0f} s" for k in names if t.get(k) is not None]
    print(f"{' | '.join(parts)} | wall {summary['wall_s']:.0f} s\nrun folder: {plan.run_dir}")


# --------------------------------------------------------------------------- --compare-ta

# (subfolder, label, settings) of the TA comparison's runs: the TA paper's TA-LPG (ES) against
# LPG (ES: the same meta-optimiser, so the pair isolates the time-awareness) and the ablation
# TA-LPG (meta-gradient: the paper reports that meta-gradients over K updates fail to learn
# lifetime-dependent rules).
COMPARE_TA = (
    ("ta-lpg-es", "TA-LPG (ES)", {"time_aware": True, "meta_optimizer": "es"}),
    (
        "ta-lpg-mg",
        "TA-LPG (meta-gradient)",
        {"time_aware": True, "meta_optimizer": "meta_gradient"},
    ),
    ("lpg-es", "LPG (ES)", {"time_aware": False, "meta_optimizer": "es"}),
)
_MEMO: dict | None = (
    None  # --compare-ta: the tuned baselines and random returns, shared by its runs
)


def _arm_args(args, arm_dir: Path, arm: Mapping[str, Any], exp) -> argparse.Namespace:
    """The CLI arguments of one run of the comparison: a new run in `arm_dir`, or a --resume of
    the run there (refused when the config file and overrides now give another config)."""
    overrides = [*args.overrides, *(f"{k}={str(v).lower()}" for k, v in arm.items())]
    ns = argparse.Namespace(**{**vars(args), "overrides": overrides, "compare_ta": False})
    ns.time_aware, ns.meta_optimizer, ns.resume, ns.meta_test_only = False, None, None, None
    if not (arm_dir / "config.yaml").is_file():
        ns.out = str(arm_dir)
        return ns
    values = runs.load_yaml(args.config) if args.config else {}
    values = metacli.deep_merge(values, metacli.parse_overrides(overrides))
    saved = exp.resolve(metacli.read_config(arm_dir, "--compare-ta", exp.prog))
    diff = metacli.changed(saved, exp.resolve(values), exp)
    if diff:
        raise ValueError(
            f"--compare-ta: {arm_dir} holds a run of another config ({'; '.join(diff)}); "
            "give another --out"
        )
    ns.resume, ns.config, ns.out = str(arm_dir), None, None
    return ns


def compare_ta(args, prog: str, curriculum: str) -> int:
    """--compare-ta: the runs of COMPARE_TA one after another in DIR/<name> (each as a plain run
    of this CLI with its settings; a rerun continues them), then DIR/comparison.json, .txt and
    .png. Returns the exit code."""
    global _MEMO
    import datetime

    from experiments.sweep import set_host_devices

    if not args.no_progress:
        print(describe(args, curriculum), file=sys.stderr, flush=True)
    set_host_devices(args)
    exp = experiment(prog, curriculum)
    try:
        if args.resume or args.meta_test_only or args.time_aware or args.meta_optimizer:
            raise ValueError(
                "--compare-ta sets time_aware and meta_optimizer per run: it takes neither "
                "--time-aware, --meta-optimizer, --resume nor --meta-test-only (rerun the same "
                "command to continue a comparison)"
            )
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path("runs") / f"compare-ta-{stamp}"
        arms = [
            (name, label, _arm_args(args, out / name, arm, exp)) for name, label, arm in COMPARE_TA
        ]
        for _, _, ns in arms:  # every run's settings are checked before any starts
            metacli.prepare(ns, exp)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    describe_arm = lambda a: describe(a, curriculum)  # noqa: E731
    _MEMO = {}
    try:
        for _, label, ns in arms:
            if not args.no_progress:
                print(f"== {label}: {ns.out or ns.resume}", file=sys.stderr, flush=True)
            rc = metacli.main(ns, exp, describe_arm, execute, report)
            if rc:
                if rc == 130:
                    print("or rerun the whole comparison with the same command", file=sys.stderr)
                return rc
    finally:
        _MEMO = None
    table = comparison(out, [(name, label) for name, label, _ in arms])
    runs.write_json(out / "comparison.json", table)
    text = format_comparison(table)
    runs.atomic_write(out / "comparison.txt", text + "\n")
    plot_comparison(out, table)
    print(text)
    print(f"comparison folder: {out}")
    return 0


def comparison(out: Path, arms: list[tuple[str, str]]) -> dict:
    """The comparison table of the runs in out/<name>: per lifetime multiple the normalised
    return's IQM [95% CI] over tasks x seeds of each run's rule (its meta_test.json "overall"),
    with the tuned A2C and PPO of the first run (every run has the same baselines); per cell the
    raw final return's IQM [CI] of each rule."""
    tables = {name: metacli.read_json(out / name / "meta_test.json") for name, _ in arms}
    first = tables[arms[0][0]]
    lifetimes = sorted(first["lifetimes"])
    overall = {}
    for m in lifetimes:
        key = f"{m:g}x"
        row = {}
        for name, _ in arms:
            entry = tables[name]["overall"].get(key)
            row[name] = None if entry is None else entry["lpg"]
        entry = first["overall"].get(key)
        for baseline in BASELINES:
            row[baseline] = None if entry is None else entry[baseline]
        overall[key] = row
    cells = {}
    for i, c in enumerate(first["cells"]):
        cell = {name: tables[name]["cells"][i]["results"]["lpg"] for name, _ in arms}
        cell.update({b: c["results"][b] for b in BASELINES})
        cells[f"{c['task']}@{c['lifetime']:g}x"] = cell
    return {
        "runs": {
            name: {
                "label": label,
                "folder": str(out / name),
                "method": metacli.read_json(out / name / "summary.json").get("method"),
            }
            for name, label in arms
        },
        "series": [name for name, _ in arms] + list(BASELINES),
        "test_seeds": first["test_seeds"],
        "normalisation": NORMALISATION,
        "definition": (
            "overall: per lifetime multiple, IQM [95% stratified-bootstrap CI] over tasks x "
            "seeds of the normalised final return (each run's meta_test.json 'overall'; 1x over "
            "every task, other multiples over the grid worlds); cells: the raw final return's "
            "IQM [CI] over seeds; a2c / ppo: the tuned baselines (the same in every run)"
        ),
        "overall": overall,
        "cells": cells,
    }


def format_comparison(table: dict) -> str:
    series = table["series"]
    labels = {name: run["label"] for name, run in table["runs"].items()}
    width = 26
    head = f"{'':<24}" + "".join(f"{labels.get(s, s):>{width}}" for s in series)
    lines = [
        "TA comparison: normalised return (R - R_random) / (R_A2C - R_random), IQM [95% CI] "
        f"over tasks x {table['test_seeds']} seeds",
        head,
    ]
    for m, row in table["overall"].items():
        lines.append(
            f"{'lifetime ' + m:<24}" + "".join(metacli.ci_text(row[s], width) for s in series)
        )
    lines.append("final return per cell, IQM [95% CI] over seeds:")
    for cell, row in table["cells"].items():
        lines.append(f"{cell:<24}" + "".join(metacli.ci_text(row[s], width) for s in series))
    return "\n".join(lines)


def plot_comparison(out: Path, table: dict) -> Path:
    """comparison.png: the normalised IQM [CI] per lifetime multiple of every run and baseline."""
    panels = {
        "normalised return, IQM over tasks x seeds": [
            {"tick": m, "values": row} for m, row in table["overall"].items()
        ]
    }
    return metacli.plot_cells(
        out / "comparison.png",
        panels,
        table["series"],
        xlabel="lifetime (x meta-trained updates)",
        ylabel="IQM [95% CI]",
        suptitle=", ".join(f"{k}: {v['label']}" for k, v in table["runs"].items()),
    )


def main(argv=None, prog: str = "experiments.lpg", curriculum: str = "dr") -> int:
    """The CLI (experiments.groove: prog "experiments.groove", curriculum "regret")."""
    args = parse_args(argv, prog, curriculum)
    if args.compare_ta:
        return compare_ta(args, prog, curriculum)
    if args.meta_optimizer:
        args.overrides = [*args.overrides, f"meta_optimizer={args.meta_optimizer}"]
    return metacli.main(
        args,
        experiment(prog, curriculum),
        lambda a: describe(a, curriculum),
        execute,
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
