"""Meta-train an LPO / TA-LPO drift with evolution strategies, then meta-test it against PPO-clip,
DPO and MDPO.

    python -m experiments.lpo [--config FILE.yaml] [key=value ...] [--time-aware] [--out DIR]
        [--devices N] [--compile-cache DIR] [--no-progress]
    python -m experiments.lpo --resume DIR [es.num_generations=G ...]   # continue meta-training
    python -m experiments.lpo --meta-test-only DIR [test_seeds=16 ...]  # redo the meta-test

Settings (YAML mapping or `key=value` overrides with YAML values; nested keys with dots, e.g.
`inner.total_timesteps=32000`, `es.population_size=32`, `task_inner.Acrobot-v1.num_envs=16`):

    seed            base seed (default 0): meta-training uses jax.random.key(seed) exactly as
                    `meta.lpo.make_meta_train(cfg)(jax.random.key(seed))` does
    tasks, inner, task_inner, time_aware, ppo_init, hidden, normalize, baseline_seeds, es
                    meta.lpo_train.LPOConfig's fields (`inner` is merged over
                    lpo_train.CPU_INNER, `es` over population_size 16, num_generations 64,
                    sigma 0.03; `--time-aware` sets time_aware: true)
    test_seeds      seeds per meta-test program (default 8)
    held_out        env ids meta-tested but not trained on (default none)
    held_out_inner  per held-out task PPOConfig overrides {env id: {field: value}} over `inner`
    horizons        inner horizons the training tasks are also meta-tested at, as multiples of
                    the meta-trained one (default [0.5, 2.0]); num_updates is scaled (rounded),
                    the rollout kept; held-out tasks are tested at the meta-trained horizon
    compare         objectives the learned drift is compared with (default [ppo_clip, dpo, mdpo])
    bootstrap       stratified-bootstrap resamples for the 95% CIs (default 2000)

Meta-training (meta/lpo_train.py): PPO-clip baselines per task (for the fitness normalisation,
written to baselines.json at once so a resume reuses them), then `es.evolve` over the population,
sharded over the devices (on CPU the host's cores become devices, as in experiments.sweep; with
no `--devices` the largest count that divides the population is used), checkpointed in es/ after
every `es.generations_per_call` generations. `--resume DIR` continues from there bit-exactly
(the fitness history equals an uninterrupted run's); it may raise es.num_generations (and change
es.generations_per_call or the meta-test settings), nothing else.

Meta-test: fresh PPO agents trained with each objective ("learned": GAE + the learned drift's
loss, the ES mean; "ppo_clip": PPO's default objective; "dpo", "mdpo": meta.lpo's closed forms
with their defaults) on every training task at the meta-trained horizon (1x) and at each of
`horizons`, and on every held-out task at 1x. Each (objective, task, horizon) is one jitted program, vmapped over
`test_seeds` seeds (sharded over the devices when the seed count divides), with the same seed
keys for every objective and horizon of a task. A seed's final return: its mean episode return
over the last 5% of updates, before its first finished episode none (NaN when it finished none);
per cell, the IQM over seeds with a 95% stratified-bootstrap CI (experiments/aggregate.py, as
experiments.sweep) and, for the learned drift, its probability of improvement over each other
objective. `--meta-test-only DIR` reruns it on DIR/drift with the meta-test settings changed by
the overrides.

`--compile-cache DIR` keeps compiled programs in DIR (jax's persistent compilation cache): a
resume, a `--meta-test-only` rerun or a TA-LPO run after an LPO run of the same tasks then loads
the programs it compiled before (baselines, PPO-clip/DPO/MDPO meta-test programs) instead of
compiling them again (tens of seconds each on CPU).

Bad input (an unknown key or env id, a bad value, an occupied --out, a --resume of a folder whose
config differs from the overrides) stops with `error: ...` (exit code 2) before anything is
written. Ctrl-C stops with exit code 130 and says how to continue.

Run folder DIR (default runs/<lpo|ta-lpo>-<tasks>-<timestamp>):
    config.yaml     the resolved settings (`--config DIR/config.yaml` repeats the run)
    baselines.json  PPO-clip's final return ("ppo") and first-episode return ("low") per task
    es/             the ES checkpoints (meta/es.py; `--resume` continues the newest)
    fitness.csv     generation, mean, best, nonfinite: per generation the mean and the maximum
                    of the population's fitness (normalised: 0 untrained, 1 PPO-clip) and the
                    number of non-finite fitness values
    fitness.png     the mean and best fitness per generation
    drift/          the learned drift (the final ES mean), `meta.lpo.save` with its info: load
                    it with `lpo.load(DIR/drift)` or train with it by `python -m
                    experiments.train ... objective.name=lpo objective.path=DIR/drift`
    drift.png       the drift over r in [0.5, 2] (log scale) x A in [-2, 2]: LPO next to
                    PPO-clip's and DPO's; TA-LPO at n/N = 0, 0.5, 1 and its change from 0 to 1
    meta_test.json  per task x horizon: per objective IQM [95% CI], mean, median, per-seed
                    final returns; the learned drift's probability of improvement
    meta_test.png   the same as bars (IQM) with CI whiskers, one panel per task
    summary.json    fitness curve, baselines, meta-test table, timings (baselines_s,
                    es compile_s / run_s, meta-test compile_s / run_s, wall_s) per session
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime
import difflib
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments import runs
from experiments.sweep import set_host_devices

# jax and meta are imported inside the functions that use them, after the first status line and
# after the host device count is set.

COMPARE = ("ppo_clip", "dpo", "mdpo")
OBJECTIVES = ("learned", *COMPARE)
LPO_KEYS = (
    "tasks",
    "inner",
    "task_inner",
    "time_aware",
    "ppo_init",
    "hidden",
    "normalize",
    "baseline_seeds",
    "es",
)
TEST_KEYS = ("test_seeds", "held_out", "held_out_inner", "horizons", "compare", "bootstrap")
KEYS = ("seed", *LPO_KEYS, *TEST_KEYS)
RESUMABLE = {*TEST_KEYS, "es.num_generations", "es.generations_per_call"}
ES_DEFAULTS = {"population_size": 16, "num_generations": 64, "sigma": 0.03}
TEST_DEFAULTS = {
    "test_seeds": 8,
    "held_out": [],
    "held_out_inner": {},
    "horizons": [0.5, 2.0],
    "compare": list(COMPARE),
    "bootstrap": 2000,
}
NESTED = ("inner", "task_inner", "held_out_inner", "es")  # mappings merged key by key
FINAL_FRACTION = runs.FINAL_FRACTION  # final return: mean over the last 5% of updates
TEST_KEY_SALT = 0x7E57  # meta-test keys: fold_in(key(seed), this), then per task name
DRIFT_R = (0.5, 2.0)  # drift.png ranges
DRIFT_A = (-2.0, 2.0)


# --------------------------------------------------------------------------- arguments


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.lpo",
        description="Meta-train LPO / TA-LPO with ES, then meta-test the learned drift against "
        "PPO-clip, DPO and MDPO; writes a run folder.",
        epilog=__doc__.split("Run folder", 1)[1].join(["Run folder", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (YAML values)")
    p.add_argument("--config", help="YAML settings (e.g. experiments/configs/lpo_cpu.yaml)")
    p.add_argument("--time-aware", action="store_true", help="TA-LPO (sets time_aware: true)")
    p.add_argument("--out", help="run folder (default runs/<lpo|ta-lpo>-<tasks>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue the meta-training in DIR")
    p.add_argument(
        "--meta-test-only", metavar="DIR", help="rerun the meta-test of DIR's learned drift"
    )
    p.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="shard over the first N devices (default: all that divide the population)",
    )
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="keep compiled programs in DIR (jax's persistent compilation cache) for reruns",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or status lines (errors, warnings and the final table remain)",
    )
    return p.parse_args(argv)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['es.population_size=32', 'tasks=[CartPole-v1]', 'task_inner.Acrobot-v1.num_envs=16']
    -> a nested mapping (every dot nests; values are YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        *outer, last = key.split(".")
        node = out
        for part in outer:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `update`; mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"es": {"sigma": 0.03}} -> {"es.sigma": 0.03} (only the NESTED mappings are opened)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and (prefix or key in NESTED):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (plain YAML, written as config.yaml), the LPOConfig and
    the meta-test settings."""

    values: dict
    cfg: Any  # meta.lpo_train.LPOConfig
    seed: int
    test_seeds: int
    held_out: tuple[str, ...]
    held_out_inner: dict  # {env id: {PPOConfig field: value}} over cfg.inner
    horizons: tuple[float, ...]  # 1.0 first
    compare: tuple[str, ...]
    bootstrap: int

    @property
    def algo(self) -> str:
        return "ta-lpo" if self.cfg.time_aware else "lpo"

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("learned", *self.compare)

    @property
    def test_tasks(self) -> tuple[str, ...]:
        return (*self.cfg.tasks, *self.held_out)

    @property
    def cells(self) -> list[tuple[str, float]]:
        """(task, horizon) of the meta-test: training tasks x horizons, held-out tasks at 1x."""
        return [(t, h) for t in self.cfg.tasks for h in self.horizons] + [
            (t, 1.0) for t in self.held_out
        ]


def defaults() -> dict[str, Any]:
    from meta import lpo_train

    d = lpo_train.LPOConfig.__dataclass_fields__
    inner = {k: list(v) if isinstance(v, tuple) else v for k, v in lpo_train.CPU_INNER.items()}
    return {
        "seed": 0,
        "tasks": list(d["tasks"].default),
        "inner": inner,
        "task_inner": {},
        "time_aware": False,
        "ppo_init": False,
        "hidden": d["hidden"].default,
        "normalize": d["normalize"].default,
        "baseline_seeds": d["baseline_seeds"].default,
        "es": dict(ES_DEFAULTS),
        **copy.deepcopy(TEST_DEFAULTS),
    }


def _hint(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_keys(values: Mapping[str, Any]) -> None:
    for key in values:
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r}{_hint(key, KEYS)} (known keys: {list(KEYS)})")


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be true or false")
    return value


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    return value


def _task_list(name: str, value) -> list[str]:
    import envs

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{name}={value!r}: must be a list of env ids")
    known = envs.registered()
    for task in value:
        if task not in known:
            raise ValueError(f"{name}: unknown env id {task!r}{_hint(task, known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}={list(value)}: an env id appears twice")
    return list(value)


def _mapping(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}={value!r}: must be a mapping")
    return dict(value)


def _plain(value):
    """YAML-ready: tuples as lists, numpy scalars as Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def resolve(values: Mapping[str, Any]) -> Settings:
    """Settings from a mapping (defaults filled in); ValueError naming the key on bad input."""
    from meta import es, lpo_train

    _check_keys(values)
    v = deep_merge(defaults(), values)
    seed = _int("seed", v["seed"], 0)
    tasks = _task_list("tasks", v["tasks"])
    if not tasks:
        raise ValueError("tasks: give at least one env id")
    inner = _mapping("inner", v["inner"])
    task_inner = _mapping("task_inner", v["task_inner"])
    task_inner = {t: _mapping(f"task_inner.{t}", f) for t, f in task_inner.items()}
    es_values = _mapping("es", v["es"])
    fields = [f.name for f in dataclasses.fields(es.ESConfig)]
    for key in es_values:
        if key not in fields:
            raise ValueError(f"es: unknown field {key!r}{_hint(key, fields)} (fields: {fields})")
    es_cfg = es.ESConfig(**es_values)
    cfg = lpo_train.LPOConfig(
        tasks=tuple(tasks),
        inner=inner,
        task_inner=task_inner,
        time_aware=_bool("time_aware", v["time_aware"]),
        ppo_init=_bool("ppo_init", v["ppo_init"]),
        hidden=_int("hidden", v["hidden"], 1),
        normalize=_bool("normalize", v["normalize"]),
        baseline_seeds=_int("baseline_seeds", v["baseline_seeds"], 1),
        es=es_cfg,
    )
    held_out = _task_list("held_out", v["held_out"] or [])
    both = sorted(set(held_out) & set(tasks))
    if both:
        raise ValueError(f"held_out: {both} are training tasks too; a held-out task is not")
    held_out_inner = _mapping("held_out_inner", v["held_out_inner"])
    unknown = sorted(set(held_out_inner) - set(held_out))
    if unknown:
        raise ValueError(f"held_out_inner: {unknown} are not among held_out {held_out}")
    held_out_inner = {t: _mapping(f"held_out_inner.{t}", f) for t, f in held_out_inner.items()}
    horizons = v["horizons"] or []
    if not isinstance(horizons, list | tuple) or not all(
        isinstance(h, int | float) and not isinstance(h, bool) and math.isfinite(h) and h > 0
        for h in horizons
    ):
        raise ValueError(f"horizons={horizons!r}: must be a list of positive numbers")
    horizons = [1.0, *dict.fromkeys(float(h) for h in horizons if float(h) != 1.0)]
    compare = v["compare"] or []
    if isinstance(compare, str):
        compare = [compare]
    for name in compare:
        if name not in COMPARE:
            raise ValueError(
                f"compare: unknown objective {name!r}{_hint(name, COMPARE)} "
                f"(choose from {list(COMPARE)})"
            )
    compare = list(dict.fromkeys(compare))
    settings = Settings(
        values={},
        cfg=cfg,
        seed=seed,
        test_seeds=_int("test_seeds", v["test_seeds"], 1),
        held_out=tuple(held_out),
        held_out_inner=held_out_inner,
        horizons=tuple(horizons),
        compare=tuple(compare),
        bootstrap=_int("bootstrap", v["bootstrap"], 1),
    )
    for task, h in settings.cells:  # validates every meta-test config now
        test_config(settings, task, h)
    resolved = {
        "seed": seed,
        "tasks": tasks,
        "inner": _plain(inner),
        "task_inner": _plain(task_inner),
        "time_aware": cfg.time_aware,
        "ppo_init": cfg.ppo_init,
        "hidden": cfg.hidden,
        "normalize": cfg.normalize,
        "baseline_seeds": cfg.baseline_seeds,
        "es": _plain(dataclasses.asdict(es_cfg)),
        "test_seeds": settings.test_seeds,
        "held_out": held_out,
        "held_out_inner": _plain(held_out_inner),
        "horizons": list(horizons[1:]),
        "compare": compare,
        "bootstrap": settings.bootstrap,
    }
    return dataclasses.replace(settings, values=resolved)


def test_config(settings: Settings, task: str, horizon: float):
    """The PPOConfig of the meta-test on `task` at `horizon` x the meta-trained number of
    updates (rounded, at least 1; the rollout is unchanged)."""
    from meta import lpo_train

    if task in settings.cfg.tasks:
        base = settings.cfg.inner_config(task)
    else:
        fields = {**dict(settings.cfg.inner), **settings.held_out_inner.get(task, {})}
        try:
            base = lpo_train.LPOConfig(
                tasks=(task,), inner=fields, es=settings.cfg.es
            ).inner_config(task)
        except ValueError as e:
            raise ValueError(f"held-out task {task}: {e}") from None
    batch = base.num_envs * base.num_steps
    updates = max(1, round(horizon * (base.total_timesteps // batch)))
    return dataclasses.replace(base, total_timesteps=updates * batch)


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    mode: str  # "new" | "resume" | "meta_test_only"
    settings: Settings
    run_dir: Path
    devices: list
    es_devices: int
    progress: bool
    write_config: bool
    done_generations: int = 0
    baselines: dict | None = None
    previous: dict = dataclasses.field(default_factory=dict)  # summary.json of the folder
    stage: str = "meta_train"  # what `execute` is doing: "meta_train" | "meta_test"


def describe(args) -> str | None:
    """The first status line, from the YAML and overrides alone (no jax import)."""
    if args.resume or args.meta_test_only:
        return None
    try:
        values = runs.load_yaml(args.config) if args.config else {}
        values = deep_merge(values, parse_overrides(args.overrides))
    except ValueError:
        return None
    ta = args.time_aware or values.get("time_aware") is True
    tasks = values.get("tasks", ["CartPole-v1", "Acrobot-v1"])
    es_values = values.get("es") if isinstance(values.get("es"), Mapping) else {}
    pop = es_values.get("population_size", ES_DEFAULTS["population_size"])
    gens = es_values.get("num_generations", ES_DEFAULTS["num_generations"])
    tasks = ", ".join(map(str, tasks)) if isinstance(tasks, list) else tasks
    return (
        f"building {'TA-LPO' if ta else 'LPO'} meta-training on {tasks} (population {pop} x "
        f"{gens} generations) ..."
    )


def _read_config(run_dir: Path, flag: str) -> dict:
    if not run_dir.is_dir():
        raise ValueError(f"{flag} {run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{flag} {run_dir}: no config.yaml there (not a run of experiments.lpo)")
    return runs.load_yaml(run_dir / "config.yaml")


def _changed(saved: Settings, new: Settings) -> list[str]:
    a, b = flatten(saved.values), flatten(new.values)
    return [
        f"{k}: the run has {a.get(k, '<unset>')!r}, given {b.get(k, '<unset>')!r}"
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k) and k not in RESUMABLE and k.split(".")[0] not in TEST_KEYS
    ]


def _done_generations(run_dir: Path) -> int:
    from purejaxrl import checkpoint

    try:
        return checkpoint.latest_step(run_dir / "es")
    except checkpoint.CheckpointError:
        return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def prepare(args) -> Plan:
    """Everything that can fail on bad input, done before anything is written."""
    overrides = parse_overrides(args.overrides)
    if args.resume and args.meta_test_only:
        raise ValueError("--resume and --meta-test-only go apart: give one of them")
    folder = args.resume or args.meta_test_only
    flag = "--resume" if args.resume else "--meta-test-only"
    if folder and (args.config or args.out):
        raise ValueError(f"{flag} DIR takes neither --config nor --out (it uses DIR)")
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices={args.devices}: must be a positive integer")
    if args.time_aware:
        overrides["time_aware"] = True

    if folder:
        run_dir = Path(folder)
        saved = resolve(_read_config(run_dir, flag))
        settings = resolve(deep_merge(saved.values, overrides))
        changed = _changed(saved, settings)
        if args.meta_test_only:
            changed += [
                f"{k}: only the meta-test settings may change with --meta-test-only"
                for k in ("es.num_generations", "es.generations_per_call")
                if flatten(saved.values)[k] != flatten(settings.values)[k]
            ]
        if changed:
            allowed = sorted(RESUMABLE if args.resume else TEST_KEYS)
            raise ValueError(
                f"{flag} {run_dir}: the overrides change the run's config ({'; '.join(changed)}); "
                f"only {allowed} may change; start a new run (--out) instead"
            )
        done = _done_generations(run_dir)
        if args.meta_test_only:
            from meta import lpo

            if not (run_dir / "drift" / lpo.MANIFEST).is_file():
                raise ValueError(
                    f"--meta-test-only {run_dir}: no learned drift (drift/) there yet; finish the "
                    f"meta-training with --resume {run_dir}"
                )
        elif done > settings.cfg.es.num_generations:
            raise ValueError(
                f"--resume {run_dir}: es/ holds generation {done}, past es.num_generations="
                f"{settings.cfg.es.num_generations}; give es.num_generations >= {done}"
            )
        baselines = _read_json(run_dir / "baselines.json").get("baselines")
        previous = _read_json(run_dir / "summary.json")
        mode = "resume" if args.resume else "meta_test_only"
    else:
        values = runs.load_yaml(args.config) if args.config else {}
        settings = resolve(deep_merge(values, overrides))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", "+".join(settings.cfg.tasks))
        run_dir = Path(args.out) if args.out else Path("runs") / f"{settings.algo}-{name}-{stamp}"
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--out {run_dir}: exists and is not a folder")
        if any((run_dir / f).exists() for f in ("config.yaml", "es", "drift")):
            raise ValueError(
                f"--out {run_dir} already holds a run; continue it with --resume {run_dir} or "
                "choose another --out"
            )
        done, baselines, previous, mode = 0, None, {}, "new"

    import jax

    from purejaxrl import sweep

    devices = sweep.resolve_devices(args.devices)
    pop = settings.cfg.es.population_size
    if args.devices is not None and pop % len(devices):
        raise ValueError(
            f"--devices {args.devices}: es.population_size={pop} must divide by the device count"
        )
    es_devices = max(d for d in range(1, len(devices) + 1) if pop % d == 0)
    del jax
    return Plan(
        mode=mode,
        settings=settings,
        run_dir=run_dir,
        devices=devices,
        es_devices=es_devices,
        progress=not args.no_progress,
        write_config=mode == "new" or settings.values != _read_config(run_dir, flag),
        done_generations=done,
        baselines=baselines,
        previous=previous,
    )


# --------------------------------------------------------------------------- outputs


def say(plan: Plan, message: str) -> None:
    if plan.progress:
        print(message, file=sys.stderr, flush=True)


def write_yaml(run_dir: Path, values: Mapping[str, Any]) -> None:
    runs.atomic_write(run_dir / "config.yaml", yaml.safe_dump(dict(values), sort_keys=False))


def _num(x) -> float | None:
    """A JSON number: None for NaN / inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def fitness_rows(fitness: np.ndarray, nonfinite: np.ndarray, first: int = 1) -> list[list]:
    """[generation, mean, best, nonfinite] per generation of `fitness` [G, P] (finite values)."""
    rows = []
    for g, (row, bad) in enumerate(zip(fitness, nonfinite, strict=True)):
        finite = row[np.isfinite(row)]
        mean = float(finite.mean()) if finite.size else math.nan
        best = float(finite.max()) if finite.size else math.nan
        rows.append([first + g, mean, best, int(bad)])
    return rows


def _cell(x) -> str:
    if isinstance(x, float):
        return "" if not math.isfinite(x) else repr(x)  # repr: reads back exactly
    return str(x)


FITNESS_COLUMNS = ["generation", "mean", "best", "nonfinite"]


def write_fitness(run_dir: Path, rows: list[list], keep_upto: int | None = None) -> None:
    """fitness.csv: `rows` after the existing rows up to generation `keep_upto` (None: only
    `rows`)."""
    old = []
    path = run_dir / "fitness.csv"
    if keep_upto is not None and path.is_file():
        with path.open(newline="") as fh:
            old = [r for r in list(csv.reader(fh))[1:] if r and int(r[0]) <= keep_upto]
    lines = [",".join(FITNESS_COLUMNS)] + [",".join(r) for r in old]
    lines += [",".join(_cell(x) for x in r) for r in rows]
    runs.atomic_write(path, "\n".join(lines) + "\n")


def read_fitness(run_dir: Path) -> dict[str, np.ndarray]:
    with (run_dir / "fitness.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0] != FITNESS_COLUMNS:
        raise ValueError(f"{run_dir}/fitness.csv: expected columns {FITNESS_COLUMNS}")
    data = [[float(x) if x else math.nan for x in r] for r in rows[1:] if r]
    table = np.asarray(data, np.float64).reshape(len(data), len(FITNESS_COLUMNS))
    return {c: table[:, i] for i, c in enumerate(FITNESS_COLUMNS)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fitness(run_dir: Path, settings: Settings) -> Path:
    plt = _pyplot()
    f = read_fitness(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(f["generation"], f["mean"], label="population mean")
    ax.plot(f["generation"], f["best"], label="population best", alpha=0.8)
    ax.plot(f["generation"], np.fmax.accumulate(f["best"]), "--", lw=1, label="best so far")
    if settings.cfg.normalize:
        ax.axhline(1.0, color="k", ls=":", lw=1, label="PPO-clip (1)")
        ax.axhline(0.0, color="grey", ls=":", lw=1, label="untrained (0)")
        ax.set_ylabel("fitness (normalised return, mean over tasks)")
    else:
        ax.set_ylabel("fitness (final return, mean over tasks)")
    ax.set_xlabel("generation")
    es_cfg = settings.cfg.es
    ax.set_title(
        f"{settings.algo.upper()} meta-training on {', '.join(settings.cfg.tasks)}\n"
        f"{es_cfg.strategy}, population {es_cfg.population_size}",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "fitness.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def drift_grid(params, time_aware: bool, ppo_init: bool, progress: float | None = None):
    """(r [n], A [m], drift [m, n]) of the learned drift (with progress n/N for TA-LPO)."""
    import jax.numpy as jnp

    from meta import lpo

    r = np.geomspace(*DRIFT_R, 161)
    a = np.linspace(*DRIFT_A, 161)
    rr, aa = np.meshgrid(r, a)
    p = (0.0 if progress is None else progress) if time_aware else None
    d = lpo.drift(params, jnp.log(rr.ravel()), jnp.asarray(aa.ravel()), p, ppo_init)
    return r, a, np.asarray(d, np.float64).reshape(aa.shape)


def plot_drift(run_dir: Path, settings: Settings, params) -> Path:
    import jax.numpy as jnp

    from meta import lpo

    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    ta, ppo_init = settings.cfg.time_aware, settings.cfg.ppo_init
    panels = []  # (title, r, a, values, kind)
    if ta:
        grids = [drift_grid(params, True, ppo_init, p) for p in (0.0, 0.5, 1.0)]
        for p, (r, a, d) in zip((0.0, 0.5, 1.0), grids, strict=True):
            panels.append((f"TA-LPO drift, n/N = {p:g}", r, a, d, "drift"))
        r, a, _ = grids[0]
        panels.append(
            ("change n/N 0 -> 1: drift(1) - drift(0)", r, a, grids[2][2] - grids[0][2], "diff")
        )
    else:
        r, a, d = drift_grid(params, False, ppo_init)
        panels.append(("LPO drift (learned)", r, a, d, "drift"))
        rr, aa = np.meshgrid(r, a)
        log_r, adv = jnp.log(rr.ravel()), jnp.asarray(aa.ravel())
        for title, ref in (
            ("PPO-clip drift (eps 0.2)", lpo.ppo_drift(log_r, adv)),
            ("DPO drift (alpha 2, beta 0.6)", lpo.dpo_drift(log_r, adv)),
        ):
            panels.append((title, r, a, np.asarray(ref, np.float64).reshape(aa.shape), "ref"))
    shared = [p[3] for p in panels if p[4] == "drift"]
    vmax = max(float(np.nanmax(d)) for d in shared) if shared else 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.9), squeeze=False)
    for ax, (title, r, a, d, kind) in zip(axes[0], panels, strict=True):
        if kind == "diff":
            lim = max(float(np.nanmax(np.abs(d))), 1e-12)
            mesh = ax.pcolormesh(r, a, d, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
        else:
            top = vmax if kind == "drift" else max(float(np.nanmax(d)), 1e-12)
            mesh = ax.pcolormesh(r, a, d, cmap="viridis", vmin=0.0, vmax=top, shading="auto")
        fig.colorbar(mesh, ax=ax)
        ax.set_xscale("log")
        ax.set_xticks([0.5, 0.75, 1.0, 1.5, 2.0], ["0.5", "0.75", "1", "1.5", "2"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="w" if kind != "diff" else "k", lw=0.6, ls=":")
        ax.axhline(0.0, color="w" if kind != "diff" else "k", lw=0.6, ls=":")
        ax.set_xlabel("probability ratio r")
        ax.set_ylabel("advantage A (normalised)")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = run_dir / "drift.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_meta_test(run_dir: Path, table: dict) -> Path:
    plt = _pyplot()
    cells = table["cells"]
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    objectives = table["objectives"]
    n = len(tasks)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    width = 0.8 / len(objectives)
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        mine = [c for c in cells if c["task"] == task]
        if all(c["results"][o]["iqm"] is None for c in mine for o in objectives):
            ax.text(0.5, 0.5, "no finished episode", ha="center", transform=ax.transAxes)
        for j, obj in enumerate(objectives):
            xs, mids, lo, hi = [], [], [], []
            for k, c in enumerate(mine):
                s = c["results"][obj]
                if s["iqm"] is None:
                    continue
                xs.append(k + (j - (len(objectives) - 1) / 2) * width)
                mids.append(s["iqm"])
                ci = s["iqm_ci"] or [s["iqm"], s["iqm"]]
                lo.append(s["iqm"] - ci[0])
                hi.append(ci[1] - s["iqm"])
            ax.bar(xs, mids, width, yerr=[lo, hi], capsize=2, label=obj)
        ax.set_xticks(
            range(len(mine)), [f"{c['horizon']:g}x\n({c['total_timesteps']:,})" for c in mine]
        )
        kind = "held out" if mine[0]["kind"] == "held_out" else "trained on"
        ax.set_title(f"{task} ({kind})", fontsize=10)
        ax.set_xlabel("inner horizon (env steps)")
        ax.set_ylabel("final return, IQM [95% CI]")
        if i == 0:
            ax.legend(fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"meta-test over {table['test_seeds']} seeds", fontsize=10)
    fig.tight_layout()
    path = run_dir / "meta_test.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(table: dict) -> str:
    objectives = table["objectives"]
    head = f"{'task':<22} {'horizon':>7} {'steps':>9}  " + "  ".join(f"{o:>24}" for o in objectives)
    lines = [f"meta-test: final return IQM [95% CI] over {table['test_seeds']} seeds", head]
    for c in table["cells"]:
        task = c["task"] + (" *" if c["kind"] == "held_out" else "")
        parts = []
        for o in objectives:
            s = c["results"][o]
            if s["iqm"] is None:
                parts.append(f"{'-':>24}")
            else:
                lo, hi = s["iqm_ci"]
                parts.append(f"{s['iqm']:>8.4g} [{lo:.4g}, {hi:.4g}]".rjust(24))
        lines.append(
            f"{task:<22} {c['horizon']:>6g}x {c['total_timesteps']:>9,}  " + "  ".join(parts)
        )
    if any(c["kind"] == "held_out" for c in table["cells"]):
        lines.append("* held out (not meta-trained on)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- meta-test


def final_per_seed(episode_return: np.ndarray, episodes_finished: np.ndarray) -> np.ndarray:
    """`[S, U]` -> `[S]`: mean episode return over the last FINAL_FRACTION of updates, counting
    only updates at or after the seed's first finished episode (NaN if it finished none)."""
    seen = np.cumsum(np.asarray(episodes_finished) > 0, axis=1) > 0
    returns = np.where(seen, np.asarray(episode_return, np.float64), np.nan)
    window = max(1, math.ceil(FINAL_FRACTION * returns.shape[1]))
    tail = returns[:, -window:]
    count = np.isfinite(tail).sum(axis=1)
    total = np.where(np.isfinite(tail), tail, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def seed_keys(seed: int, task: str, num: int) -> np.ndarray:
    """Raw key data `[num, 2]` of a task's meta-test seeds (the same for every objective and
    horizon; independent of the other tasks)."""
    import jax

    key = jax.random.fold_in(jax.random.key(seed), TEST_KEY_SALT)
    key = jax.random.fold_in(key, zlib.crc32(task.encode()))
    return np.asarray(jax.random.key_data(jax.random.split(key, num)))


def make_program(objective: str, cfg, settings: Settings, sharding):
    """The jitted program of one meta-test cell: (params, key_data) -> metrics for "learned",
    (key_data) -> metrics otherwise; metrics `[S, U]` episode_return and episodes_finished."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from meta import lpo, lpo_train
    from purejaxrl import objectives, ppo

    def pick(m):
        return {"episode_return": m["episode_return"], "episodes_finished": m["episodes_finished"]}

    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    if objective == "learned":
        ta, ppo_init = settings.cfg.time_aware, settings.cfg.ppo_init

        def learned(params, key_data):
            keys = jax.random.wrap_key_data(key_data)
            loss = lpo.learned_loss(params, time_aware=ta, ppo_init=ppo_init)
            return pick(jax.vmap(lambda k: lpo_train.inner_train(cfg, loss)(k).metrics)(keys))

        return jax.jit(learned, in_shardings=(replicated, sharding), out_shardings=sharding)
    if objective == "ppo_clip":
        agent = ppo.make_agent(cfg)  # PPO's default objective: GAE + clipped surrogate
    else:
        loss = {"dpo": lpo.dpo, "mdpo": lpo.mdpo}[objective]()
        agent = ppo.make_agent(cfg, objectives.actor_critic(cfg, loss))

    def closed_form(key_data):
        keys = jax.random.wrap_key_data(key_data)
        return pick(jax.vmap(lambda k: agent.train(k).metrics)(keys))

    return jax.jit(closed_form, in_shardings=(sharding,), out_shardings=sharding)


def meta_test(plan: Plan, params) -> dict:
    """Trains `test_seeds` fresh agents per (objective, task, horizon); returns the table."""
    import jax

    from experiments import aggregate
    from purejaxrl import sweep

    settings = plan.settings
    n_dev = max(d for d in range(1, len(plan.devices) + 1) if settings.test_seeds % d == 0)
    sharding = sweep.run_sharding(plan.devices[:n_dev])
    from jax.sharding import NamedSharding, PartitionSpec

    params = jax.device_put(params, NamedSharding(sharding.mesh, PartitionSpec()))
    cells = [(task, h, test_config(settings, task, h)) for task, h in settings.cells]
    total = len(cells) * len(settings.objectives)
    say(
        plan,
        f"meta-test: {len(settings.objectives)} objectives x {len(cells)} (task, horizon) cells "
        f"= {total} programs, each over {settings.test_seeds} seeds on {n_dev} device(s), each "
        "compiled once ...",
    )
    bar = None
    if plan.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="meta-test", unit="prog", dynamic_ncols=True)
    compile_s = run_s = 0.0
    out_cells = []
    try:
        for task, h, cfg in cells:
            keys = sweep.put(seed_keys(settings.seed, task, settings.test_seeds), sharding)
            results, finals = {}, {}
            for objective in settings.objectives:
                if bar is not None:
                    bar.set_postfix_str(f"{task} {h:g}x {objective}", refresh=True)
                program = make_program(objective, cfg, settings, sharding)
                args = (params, keys) if objective == "learned" else (keys,)
                t0 = time.perf_counter()
                compiled = program.lower(*args).compile()
                compile_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                metrics = sweep.gather(jax.block_until_ready(compiled(*args)))
                run_s += time.perf_counter() - t0
                final = final_per_seed(metrics["episode_return"], metrics["episodes_finished"])
                finals[objective] = final
                results[objective] = _stats(final, settings.bootstrap)
                if bar is not None:
                    bar.update(1)
            improve = {}
            mine = finals["learned"][np.isfinite(finals["learned"])]
            for objective in settings.compare:
                other = finals[objective][np.isfinite(finals[objective])]
                improve[objective] = (
                    aggregate.probability_of_improvement(mine, other)
                    if mine.size and other.size
                    else None
                )
            out_cells.append(
                {
                    "task": task,
                    "kind": "train" if task in settings.cfg.tasks else "held_out",
                    "horizon": h,
                    "total_timesteps": int(cfg.total_timesteps),
                    "num_updates": int(cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)),
                    "results": results,
                    "p_improvement_learned_over": improve,
                }
            )
    finally:
        if bar is not None:
            bar.close()
    return {
        "objectives": list(settings.objectives),
        "test_seeds": settings.test_seeds,
        "horizons": list(settings.horizons),
        "tasks": list(settings.cfg.tasks),
        "held_out": list(settings.held_out),
        "definition": (
            "per seed, mean episode_return over the last "
            f"{FINAL_FRACTION:.0%} of updates (from its first finished episode on; NaN if none); "
            f"per cell, IQM over seeds with a 95% stratified bootstrap CI ({settings.bootstrap} "
            "resamples; NaN seeds excluded); p_improvement_learned_over: P(learned > other) + "
            "0.5 P(=) over seed pairs; the same seed keys for every objective and horizon"
        ),
        "cells": out_cells,
        "programs": total,
        "devices": n_dev,
        "compile_s": compile_s,
        "run_s": run_s,
    }


def _stats(final: np.ndarray, reps: int) -> dict:
    from experiments import aggregate

    finite = final[np.isfinite(final)]
    per_seed = [_num(x) for x in final]
    if not finite.size:
        empty = dict.fromkeys(("iqm", "iqm_ci", "mean", "mean_ci", "median"))
        return {**empty, "per_seed": per_seed, "num_runs": 0, "excluded_nan": int(final.size)}
    s = aggregate.summarize(finite, reps=reps, seed=0)
    return {
        "iqm": s["iqm"],
        "iqm_ci": s["iqm_ci"],
        "mean": s["mean"],
        "mean_ci": s["mean_ci"],
        "median": s["median"],
        "per_seed": per_seed,
        "num_runs": s["num_runs"],
        "excluded_nan": int(final.size - finite.size),
    }


# --------------------------------------------------------------------------- run


def use_compile_cache(path) -> Any:
    """Turns on jax's persistent compilation cache in `path`; returns a function restoring the
    previous setting (the CLI may run inside a longer process, e.g. the tests)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    previous = jax.config.jax_compilation_cache_dir
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(Path(path).absolute()))
    cc.reset_cache()

    def restore():
        jax.config.update("jax_compilation_cache_dir", previous)
        cc.reset_cache()

    return restore


def summary_of(plan: Plan, fitness: dict, baselines, table, session: dict) -> dict:
    import jax

    settings = plan.settings
    mean, best = fitness["mean"], fitness["best"]
    sessions = [s for s in plan.previous.get("sessions", []) if isinstance(s, dict)]
    es_cfg = settings.cfg.es
    out = {
        "algo": settings.algo,
        "tasks": list(settings.cfg.tasks),
        "held_out": list(settings.held_out),
        "seed": settings.seed,
        "population_size": es_cfg.population_size,
        "generations": len(mean),
        "planned_generations": es_cfg.num_generations,
        "fitness": {
            "definition": (
                "per candidate, the mean over tasks of its inner run's final return"
                + (
                    ", normalised (R - R_low) / (R_ppo - R_low) by baselines"
                    if settings.cfg.normalize
                    else ""
                )
                + "; per generation the mean and max over the population (finite values)"
            ),
            "first_mean": _num(mean[0]) if len(mean) else None,
            "last_mean": _num(mean[-1]) if len(mean) else None,
            "first_best": _num(best[0]) if len(best) else None,
            "last_best": _num(best[-1]) if len(best) else None,
            "best_ever": _num(np.nanmax(best)) if len(best) else None,
            "mean": [_num(x) for x in mean],
            "best": [_num(x) for x in best],
            "nonfinite_total": int(np.nansum(fitness["nonfinite"])),
        },
        "baselines": baselines,
        "drift": "drift",
        "meta_test": None,
    }
    if table is not None:
        out["meta_test"] = {
            f"{c['task']}@{c['horizon']:g}x": {
                o: {k: c["results"][o][k] for k in ("iqm", "iqm_ci", "mean")}
                for o in table["objectives"]
            }
            for c in table["cells"]
        }
        learned = {
            f"{c['task']}@{c['horizon']:g}x": c["results"]["learned"] for c in table["cells"]
        }
        out["final_return_mean"] = {k: v["mean"] for k, v in learned.items()}
        out["final_return_per_seed"] = {k: v["per_seed"] for k, v in learned.items()}
    out.update(
        {
            "sps": session.get("es_sps"),
            "compile_s": session.get("es_compile_s", 0.0) + session.get("meta_test_compile_s", 0.0),
            "wall_s": session["wall_s"],
            "timings": session,
            "timing_note": (
                "sps = env steps of all inner runs of the ES generations of this session / "
                "es_run_s (compile excluded); compile_s = ES + meta-test compile seconds"
            ),
            "sessions": sessions + [session],
            "devices": f"{len(plan.devices)} x {plan.devices[0].platform}",
            "es_devices": plan.es_devices,
            "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
        }
    )
    return out


def run_meta_training(plan: Plan, session: dict, t_start: float):
    """Baselines + ES (resumable); returns the MetaOutput."""
    import jax

    from meta import lpo

    settings, run_dir = plan.settings, plan.run_dir
    cfg = settings.cfg
    state = {"first": True}

    def on_baselines(baselines):
        session["baselines_s"] = time.perf_counter() - t_start
        if plan.baselines is None:
            runs.write_json(run_dir / "baselines.json", {"baselines": baselines})
        if baselines:
            listed = "; ".join(f"{t} {b['ppo']:.4g}, {b['low']:.4g}" for t, b in baselines.items())
            say(plan, f"PPO-clip baselines (final return, first-episode return): {listed}")
        pop, g = cfg.es.population_size, cfg.es.num_generations
        say(
            plan,
            f"meta-training: {pop} candidates x {len(cfg.tasks)} task(s) per generation, "
            f"generations {plan.done_generations + 1}..{g}, population over {plan.es_devices} "
            "device(s); compiling the generation ...",
        )

    def on_generations(generation, metrics):
        if state["first"] and plan.write_config and plan.mode == "resume":
            write_yaml(run_dir, settings.values)  # a resume writes its config once it runs
        state["first"] = False
        fit = np.asarray(metrics["fitness"])
        n = len(fit)
        rows = fitness_rows(fit, np.asarray(metrics["nonfinite"]), generation - n + 1)
        write_fitness(run_dir, rows, keep_upto=generation - n)

    if cfg.normalize and plan.baselines is None:
        say(
            plan,
            f"PPO-clip baselines on {len(cfg.tasks)} task(s) x {cfg.baseline_seeds} seeds "
            "(one program per task) ...",
        )
    meta_train = lpo.make_meta_train(cfg)
    out = meta_train(
        jax.random.key(settings.seed),
        baselines=plan.baselines,
        on_baselines=on_baselines,
        devices=plan.devices[: plan.es_devices],
        progress=plan.progress,
        checkpoint_dir=run_dir / "es",
        resume=plan.mode == "resume",
        on_generations=on_generations,
    )
    if plan.write_config and plan.mode == "resume":
        write_yaml(run_dir, settings.values)
    write_fitness(run_dir, fitness_rows(out.es.fitness, out.es.nonfinite))
    ran = out.es.fitness.shape[0] - plan.done_generations
    steps = sum(int(cfg.inner_config(t).total_timesteps) for t in cfg.tasks)
    session.update(
        generations_run=int(ran),
        es_compile_s=out.es.compile_s,
        es_run_s=out.es.run_s,
        es_sps=(ran * cfg.es.population_size * steps / out.es.run_s) if out.es.run_s else None,
        meta_train_s=time.perf_counter() - t_start,
    )
    return out


def execute(plan: Plan) -> dict:
    from meta import lpo

    t_start = time.perf_counter()
    settings, run_dir = plan.settings, plan.run_dir
    session = {
        "mode": plan.mode,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "generations_before": plan.done_generations,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.mode == "new" or (plan.write_config and plan.mode == "meta_test_only"):
        write_yaml(run_dir, settings.values)

    if plan.mode == "meta_test_only":
        params, _ = lpo.load(run_dir / "drift", time_aware=settings.cfg.time_aware)
        baselines = _read_json(run_dir / "baselines.json").get("baselines")
    else:
        out = run_meta_training(plan, session, t_start)
        params, baselines = out.params, out.baselines or None
        info = {**out.info, "run": {"folder": str(run_dir), "seed": settings.seed}}
        lpo.save(run_dir / "drift", params, info)
        plot_fitness(run_dir, settings)
        plot_drift(run_dir, settings, params)
        session["wall_s"] = time.perf_counter() - t_start
        partial = summary_of(plan, read_fitness(run_dir), baselines, None, session)
        if plan.previous.get("meta_test") is not None:
            partial["meta_test_stale"] = "the drift changed; meta_test.json is of an older one"
        runs.write_json(run_dir / "summary.json", partial)
        say(plan, f"saved the learned drift to {run_dir / 'drift'}")

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
    summary = summary_of(plan, read_fitness(run_dir), baselines, table, session)
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    show = not args.no_progress
    if show:
        message = describe(args)
        if message:  # at once, before jax is imported (seconds)
            print(message, file=sys.stderr, flush=True)
    set_host_devices(args)
    restore = None
    try:
        try:
            plan = prepare(args)
            if args.compile_cache:
                restore = use_compile_cache(args.compile_cache)
        except ValueError as e:  # bad settings, unknown env or key, occupied or foreign folder
            print(f"error: {e}", file=sys.stderr)
            return 2
        if plan.mode == "resume" and plan.done_generations >= plan.settings.cfg.es.num_generations:
            if (plan.run_dir / "meta_test.json").is_file() and (plan.run_dir / "drift").is_dir():
                print(
                    f"{plan.run_dir} is complete ({plan.done_generations} of "
                    f"{plan.settings.cfg.es.num_generations} generations); raise "
                    "es.num_generations=... to continue, or rerun the meta-test with "
                    f"--meta-test-only {plan.run_dir}",
                    file=sys.stderr,
                )
                return 0
        if plan.mode == "resume":
            say(plan, f"resuming {plan.run_dir} at generation {plan.done_generations} ...")
        try:
            summary = execute(plan)
        except KeyboardInterrupt:
            flag = "--meta-test-only" if plan.stage == "meta_test" else "--resume"
            print(
                f"\ninterrupted; continue with python -m experiments.lpo {flag} {plan.run_dir}",
                file=sys.stderr,
            )
            return 130
    finally:
        if restore is not None:
            restore()
    table = _read_json(plan.run_dir / "meta_test.json")
    f = summary["fitness"]
    if f["first_mean"] is not None:
        print(
            f"fitness: generation 1 mean {f['first_mean']:.4g} best {f['first_best']:.4g} -> "
            f"generation {summary['generations']} mean {f['last_mean']:.4g} best "
            f"{f['last_best']:.4g} (best ever {f['best_ever']:.4g})"
        )
    print(format_table(table))
    t = summary["timings"]
    names = ("baselines_s", "es_compile_s", "es_run_s", "meta_test_compile_s", "meta_test_run_s")
    parts = [f"{k} {t[k]:.0f} s" for k in names if t.get(k) is not None]
    print(f"{' | '.join(parts)} | wall {summary['wall_s']:.0f} s\nrun folder: {plan.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
