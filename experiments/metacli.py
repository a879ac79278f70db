"""The command-line machinery that the meta-training experiments share (experiments.lpo,
experiments.lpg, experiments.groove).

One meta-training CLI is: settings (a YAML mapping and `key=value` overrides, resolved to a
settings object with `values`, the plain YAML written as config.yaml, and `es`, its
meta.es.ESConfig), a run folder, ES meta-training with checkpoints in DIR/es (`--resume DIR`
continues it bit-exactly), a learned object saved in DIR/<artifact>, and a meta-test that
`--meta-test-only DIR` reruns. An `Experiment` names what differs between them; this module holds
what does not:

- arguments: `parser` (the shared flags), `parse_overrides`, `deep_merge`, `flatten`;
- checks that raise ValueError naming the key: `check_keys`, `as_bool`, `as_int`, `task_list`,
  `mapping`, `multiples`, `es_config`, `hint` (close matches);
- the plan: `prepare(args, experiment)` does everything that can fail on bad input before
  anything is written (an occupied --out, a --resume that changes the run's config, ...);
- outputs: `say`, `write_yaml`, `num`, fitness.csv (`fitness_rows`, `write_fitness`,
  `read_fitness`), `plot_fitness`, `plot_cells` (IQM bars with CI whiskers), `ci_text`;
- the meta-test's per-seed numbers: `final_per_seed`, `stats`, `seed_keys`;
- `use_compile_cache` (jax's persistent compilation cache) and `main`, the error handling of a
  run: exit code 2 and `error: ...` on bad input before anything is written, 130 on Ctrl-C with
  the command that continues.
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
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments import runs
from experiments.sweep import set_host_devices

FINAL_FRACTION = runs.FINAL_FRACTION  # final return: mean over the last 5% of updates
TEST_KEY_SALT = 0x7E57  # meta-test keys: fold_in(key(seed), this), then per task name
FITNESS_COLUMNS = ["generation", "mean", "best", "nonfinite"]
ES_RESUMABLE = ("es.num_generations", "es.generations_per_call")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How far a run's meta-training goes and where its progress is kept: `planned` steps of
    `unit` ("generation", "meta-step") set by the key `key` ("es.num_generations"), checkpointed
    in the run folder's `where` ("es/"), `done(run_dir)` of them there so far; `resumable`: the
    meta-training keys a --resume may change (beside the test keys); `shards`: the count the
    devices must divide (the ES population; None: the meta-training runs on one device)."""

    planned: int
    key: str
    unit: str
    where: str
    done: Callable[[Path], int]
    resumable: tuple[str, ...]
    shards: int | None


def es_schedule(settings) -> Schedule:
    """The ES meta-training's schedule (`settings.es`, checkpoints in DIR/es)."""
    es = settings.es
    return Schedule(
        es.num_generations,
        "es.num_generations",
        "generation",
        "es/",
        done_generations,
        ES_RESUMABLE,
        es.population_size,
    )


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What differs between the meta-training CLIs.

    prog: the module run with -m ("experiments.lpo"); artifact: the run folder's subfolder of
    the learned object ("drift", "rule"), saved with meta/saved.py; resolve(values) -> settings
    with `.values` (plain YAML) and `.es` (ESConfig), ValueError naming the key on bad input;
    run_name(settings): the default folder name under runs/ (a timestamp is appended);
    test_keys: the settings only the meta-test reads (they may change with --resume and
    --meta-test-only); nested: the mapping-valued settings, merged and compared key by key;
    schedule(settings): the meta-training's `Schedule` (default: ES, `es_schedule`).
    """

    prog: str
    artifact: str
    resolve: Callable[[Mapping[str, Any]], Any]
    run_name: Callable[[Any], str]
    test_keys: tuple[str, ...]
    nested: tuple[str, ...]
    schedule: Callable[[Any], Schedule] = es_schedule

    def resumable(self, settings) -> set[str]:
        """The keys a --resume of a run with `settings` may change."""
        return {*self.test_keys, *self.schedule(settings).resumable}


# --------------------------------------------------------------------------- arguments


def parser(prog: str, description: str, doc: str, time_aware: str, artifact: str, out: str):
    """The shared flags: key=value overrides, --config, --time-aware (help `time_aware`),
    --out (default `out`), --resume, --meta-test-only, --devices, --compile-cache,
    --no-progress. The epilog is `doc` from its "Run folder" section on."""
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=description,
        epilog=doc.split("Run folder", 1)[1].join(["Run folder", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (YAML values)")
    p.add_argument("--config", help="YAML settings (see experiments/configs/)")
    p.add_argument("--time-aware", action="store_true", help=time_aware)
    p.add_argument("--out", help=f"run folder (default {out})")
    p.add_argument("--resume", metavar="DIR", help="continue the meta-training in DIR")
    p.add_argument(
        "--meta-test-only", metavar="DIR", help=f"rerun the meta-test of DIR's learned {artifact}"
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
    return p


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


def flatten(values: Mapping[str, Any], nested: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """{"es": {"sigma": 0.03}} -> {"es.sigma": 0.03}: the top-level keys in `nested` are opened,
    and every mapping below them."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and (prefix or key in nested):
            out.update(flatten(value, nested, f"{name}."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- checks


def hint(name: str, known: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the close matches of `name` in `known`, else ""."""
    close = difflib.get_close_matches(str(name), list(known), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_keys(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    for key in values:
        if key not in keys:
            raise ValueError(f"unknown key {key!r}{hint(key, keys)} (known keys: {list(keys)})")


def as_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be true or false")
    return value


def as_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    return value


def task_list(name: str, value, known: Sequence[str] | None = None) -> list[str]:
    """A list of distinct env ids (a single id is a list of one); each must be in `known`
    (default: every registered id)."""
    import envs

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{name}={value!r}: must be a list of env ids")
    known = envs.registered() if known is None else list(known)
    for task in value:
        if task not in known:
            raise ValueError(f"{name}: unknown env id {task!r}{hint(task, known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}={list(value)}: an env id appears twice")
    return list(value)


def mapping(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}={value!r}: must be a mapping")
    return dict(value)


def multiples(name: str, value) -> list[float]:
    """[1.0, *the distinct positive numbers of `value` other than 1] (e.g. horizons)."""
    value = value or []
    if not isinstance(value, list | tuple) or not all(
        isinstance(h, int | float) and not isinstance(h, bool) and math.isfinite(h) and h > 0
        for h in value
    ):
        raise ValueError(f"{name}={value!r}: must be a list of positive numbers")
    return [1.0, *dict.fromkeys(float(h) for h in value if float(h) != 1.0)]


def es_config(values: Mapping[str, Any]):
    """meta.es.ESConfig(**values); an unknown field is named with its close matches."""
    from meta import es

    fields = [f.name for f in dataclasses.fields(es.ESConfig)]
    for key in values:
        if key not in fields:
            raise ValueError(f"es: unknown field {key!r}{hint(key, fields)} (fields: {fields})")
    return es.ESConfig(**values)


def plain(value):
    """YAML-ready: tuples as lists, numpy scalars as Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    mode: str  # "new" | "resume" | "meta_test_only"
    settings: Any
    run_dir: Path
    devices: list
    es_devices: int
    progress: bool
    write_config: bool
    done_generations: int = 0
    baselines: dict | None = None  # DIR/baselines.json's "baselines" (experiments.lpo)
    previous: dict = dataclasses.field(default_factory=dict)  # summary.json of the folder
    stage: str = "meta_train"  # what `execute` is doing: "meta_train" | "meta_test"


def read_config(run_dir: Path, flag: str, prog: str) -> dict:
    if not run_dir.is_dir():
        raise ValueError(f"{flag} {run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{flag} {run_dir}: no config.yaml there (not a run of {prog})")
    return runs.load_yaml(run_dir / "config.yaml")


def changed(saved, new, experiment: Experiment) -> list[str]:
    """The settings that differ between two resolved settings, other than the resumable ones."""
    a, b = flatten(saved.values, experiment.nested), flatten(new.values, experiment.nested)
    return [
        f"{k}: the run has {a.get(k, '<unset>')!r}, given {b.get(k, '<unset>')!r}"
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k)
        and k not in experiment.resumable(saved)
        and k.split(".")[0] not in experiment.test_keys
    ]


def done_generations(run_dir: Path) -> int:
    """The generation of the newest ES checkpoint in DIR/es (0 if none)."""
    from purejaxrl import checkpoint

    try:
        return checkpoint.latest_step(run_dir / "es")
    except checkpoint.CheckpointError:
        return 0


def read_json(path: Path) -> dict:
    """The JSON object in `path`, {} if it is missing or unreadable."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _folder_settings(args, overrides, experiment: Experiment):
    """(run_dir, settings, done) of --resume / --meta-test-only DIR, checked."""
    from meta import saved as saved_objects

    flag = "--resume" if args.resume else "--meta-test-only"
    run_dir = Path(args.resume or args.meta_test_only)
    saved = experiment.resolve(read_config(run_dir, flag, experiment.prog))
    settings = experiment.resolve(deep_merge(saved.values, overrides))
    diff = changed(saved, settings, experiment)
    schedule = experiment.schedule(settings)
    if args.meta_test_only:
        before, after = (flatten(s.values, experiment.nested) for s in (saved, settings))
        diff += [
            f"{k}: only the meta-test settings may change with --meta-test-only"
            for k in schedule.resumable
            if before.get(k) != after.get(k)
        ]
    if diff:
        allowed = sorted(experiment.resumable(saved) if args.resume else experiment.test_keys)
        raise ValueError(
            f"{flag} {run_dir}: the overrides change the run's config ({'; '.join(diff)}); "
            f"only {allowed} may change; start a new run (--out) instead"
        )
    done = schedule.done(run_dir)
    name = experiment.artifact
    if args.meta_test_only:
        if not (run_dir / name / saved_objects.MANIFEST).is_file():
            raise ValueError(
                f"--meta-test-only {run_dir}: no learned {name} ({name}/) there yet; finish the "
                f"meta-training with --resume {run_dir}"
            )
    elif done > schedule.planned:
        raise ValueError(
            f"--resume {run_dir}: {schedule.where} holds {schedule.unit} {done}, past "
            f"{schedule.key}={schedule.planned}; give {schedule.key} >= {done}"
        )
    return run_dir, settings, done


def _new_settings(args, overrides, experiment: Experiment):
    """(run_dir, settings) of a new run, checked (an occupied --out is refused)."""
    values = runs.load_yaml(args.config) if args.config else {}
    settings = experiment.resolve(deep_merge(values, overrides))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", experiment.run_name(settings))
    run_dir = Path(args.out) if args.out else Path("runs") / f"{name}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: exists and is not a folder")
    if any((run_dir / f).exists() for f in ("config.yaml", "es", experiment.artifact)):
        raise ValueError(
            f"--out {run_dir} already holds a run; continue it with --resume {run_dir} or "
            "choose another --out"
        )
    return run_dir, settings


def prepare(args, experiment: Experiment) -> Plan:
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
        run_dir, settings, done = _folder_settings(args, overrides, experiment)
        baselines = read_json(run_dir / "baselines.json").get("baselines")
        previous = read_json(run_dir / "summary.json")
        mode = "resume" if args.resume else "meta_test_only"
        write_config = settings.values != read_config(run_dir, flag, experiment.prog)
    else:
        run_dir, settings = _new_settings(args, overrides, experiment)
        done, baselines, previous, mode, write_config = 0, None, {}, "new", True

    from purejaxrl import sweep

    devices = sweep.resolve_devices(args.devices)
    pop = experiment.schedule(settings).shards
    if args.devices is not None and pop is not None and pop % len(devices):
        raise ValueError(
            f"--devices {args.devices}: es.population_size={pop} must divide by the device count"
        )
    return Plan(
        mode=mode,
        settings=settings,
        run_dir=run_dir,
        devices=devices,
        es_devices=1 if pop is None else max(d for d in range(1, len(devices) + 1) if pop % d == 0),
        progress=not args.no_progress,
        write_config=write_config,
        done_generations=done,
        baselines=baselines,
        previous=previous,
    )


# --------------------------------------------------------------------------- outputs


def say(plan: Plan, message: str) -> None:
    if plan.progress:
        print(message, file=sys.stderr, flush=True)


def begin_session(plan: Plan) -> dict:
    """Creates the run folder, writes config.yaml for a new run (or a `--meta-test-only` rerun
    with changed settings) and returns the session record {mode, started, generations_before}."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.mode == "new" or (plan.write_config and plan.mode == "meta_test_only"):
        write_yaml(plan.run_dir, plan.settings.values)
    return {
        "mode": plan.mode,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "generations_before": plan.done_generations,
    }


def write_yaml(run_dir: Path, values: Mapping[str, Any]) -> None:
    runs.atomic_write(run_dir / "config.yaml", yaml.safe_dump(dict(values), sort_keys=False))


def num(x) -> float | None:
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


def csv_cell(x) -> str:
    if isinstance(x, float):
        return "" if not math.isfinite(x) else repr(x)  # repr: reads back exactly
    return str(x)


def write_csv_rows(
    path: Path, columns: Sequence[str], rows: Sequence[Sequence], keep_upto: int | None = None
) -> None:
    """`path`: a header, the existing rows whose first column is <= `keep_upto` (None: none),
    then `rows` (written atomically)."""
    old = []
    if keep_upto is not None and path.is_file():
        with path.open(newline="") as fh:
            old = [r for r in list(csv.reader(fh))[1:] if r and int(r[0]) <= keep_upto]
    lines = [",".join(columns)] + [",".join(r) for r in old]
    lines += [",".join(csv_cell(x) for x in r) for r in rows]
    runs.atomic_write(path, "\n".join(lines) + "\n")


def write_fitness(run_dir: Path, rows: list[list], keep_upto: int | None = None) -> None:
    """fitness.csv: `rows` after the existing rows up to generation `keep_upto` (None: only
    `rows`)."""
    write_csv_rows(run_dir / "fitness.csv", FITNESS_COLUMNS, rows, keep_upto)


def read_fitness(run_dir: Path) -> dict[str, np.ndarray]:
    with (run_dir / "fitness.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0] != FITNESS_COLUMNS:
        raise ValueError(f"{run_dir}/fitness.csv: expected columns {FITNESS_COLUMNS}")
    data = [[float(x) if x else math.nan for x in r] for r in rows[1:] if r]
    table = np.asarray(data, np.float64).reshape(len(data), len(FITNESS_COLUMNS))
    return {c: table[:, i] for i, c in enumerate(FITNESS_COLUMNS)}


def fitness_summary(fitness: dict[str, np.ndarray], definition: str) -> dict:
    """summary.json's "fitness": first / last mean and best, best ever, the curves."""
    mean, best = fitness["mean"], fitness["best"]
    return {
        "definition": definition,
        "first_mean": num(mean[0]) if len(mean) else None,
        "last_mean": num(mean[-1]) if len(mean) else None,
        "first_best": num(best[0]) if len(best) else None,
        "last_best": num(best[-1]) if len(best) else None,
        "best_ever": num(np.nanmax(best)) if len(best) else None,
        "mean": [num(x) for x in mean],
        "best": [num(x) for x in best],
        "nonfinite_total": int(np.nansum(fitness["nonfinite"])),
    }


def fitness_line(summary: dict) -> str | None:
    """ "fitness: generation 1 mean .. -> generation G mean .." from summary.json (None if no
    generation ran)."""
    f = summary["fitness"]
    if not summary.get("generations"):
        return None
    g = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731  (None: no finite fitness)
    return (
        f"fitness: generation 1 mean {g(f['first_mean'])} best {g(f['first_best'])} -> "
        f"generation {summary['generations']} mean {g(f['last_mean'])} best "
        f"{g(f['last_best'])} (best ever {g(f['best_ever'])})"
    )


def session_summary(plan: Plan, session: dict) -> dict:
    """summary.json's timing and provenance fields: sps, compile_s, wall_s, timings (this
    session), sessions (all so far), devices, es_devices, versions."""
    import jax

    sessions = [s for s in plan.previous.get("sessions", []) if isinstance(s, dict)]
    return {
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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fitness(run_dir: Path, title: str, ylabel: str, lines=()) -> Path:
    """fitness.png: the population's mean and best fitness per generation (fitness.csv), the
    best so far, and horizontal reference `lines` [(y, label)]."""
    plt = pyplot()
    f = read_fitness(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(f["generation"], f["mean"], label="population mean")
    ax.plot(f["generation"], f["best"], label="population best", alpha=0.8)
    ax.plot(f["generation"], np.fmax.accumulate(f["best"]), "--", lw=1, label="best so far")
    for (y, label), color in zip(lines, ("k", "grey", "tab:red"), strict=False):
        ax.axhline(y, color=color, ls=":", lw=1, label=label)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("generation")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "fitness.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cells(path: Path, panels: Mapping[str, Sequence[dict]], series: Sequence[str], **text):
    """IQM bars with 95% CI whiskers: one panel per key of `panels` (its title), one group of
    bars per cell of that panel, one bar per name in `series`.

    A cell is {"tick": x label, "values": {name: stats or None}}, stats having "iqm" and
    "iqm_ci" (None where undefined: no bar). `text`: xlabel, ylabel, suptitle."""
    plt = pyplot()
    n = len(panels)
    cols = min(max(n, 1), 3)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for i, (title, cells) in enumerate(panels.items()):
        ax = axes[i // cols][i % cols]
        if all((c["values"].get(s) or {}).get("iqm") is None for c in cells for s in series):
            ax.text(0.5, 0.5, "no finished episode", ha="center", transform=ax.transAxes)
        for j, name in enumerate(series):
            xs, mids, lo, hi = [], [], [], []
            for k, c in enumerate(cells):
                s = c["values"].get(name) or {}
                if s.get("iqm") is None:
                    continue
                xs.append(k + (j - (len(series) - 1) / 2) * width)
                mids.append(s["iqm"])
                ci = s.get("iqm_ci") or [s["iqm"], s["iqm"]]
                lo.append(s["iqm"] - ci[0])
                hi.append(ci[1] - s["iqm"])
            ax.bar(xs, mids, width, yerr=[lo, hi], capsize=2, label=name)
        ax.set_xticks(range(len(cells)), [c["tick"] for c in cells])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(text.get("xlabel", ""))
        ax.set_ylabel(text.get("ylabel", ""))
        if i == 0:
            ax.legend(fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(text.get("suptitle", ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ci_text(s: Mapping[str, Any] | None, width: int = 24) -> str:
    """ "iqm [lo, hi]" of a stats dict, right-aligned in `width`; "-" where there is none."""
    if not s or s.get("iqm") is None:
        return f"{'-':>{width}}"
    lo, hi = s["iqm_ci"]
    return f"{s['iqm']:>8.4g} [{lo:.4g}, {hi:.4g}]".rjust(width)


# --------------------------------------------------------------------------- meta-test numbers


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


def stats(final: np.ndarray, reps: int) -> dict:
    """IQM [95% CI], mean [CI], median over the finite per-seed values of `final` `[S]`, and
    the per-seed values (None for NaN) with the counts used / excluded."""
    from experiments import aggregate

    final = np.asarray(final, np.float64)
    finite = final[np.isfinite(final)]
    per_seed = [num(x) for x in final]
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


def seed_keys(seed: int, task: str, num: int) -> np.ndarray:
    """Raw key data `[num, 2]` of a task's meta-test seeds (the same for every objective and
    horizon; independent of the other tasks)."""
    import jax

    key = jax.random.fold_in(jax.random.key(seed), TEST_KEY_SALT)
    key = jax.random.fold_in(key, zlib.crc32(task.encode()))
    return np.asarray(jax.random.key_data(jax.random.split(key, num)))


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


def _complete(plan: Plan, experiment: Experiment) -> bool:
    """A resume of a run whose meta-training and meta-test are done."""
    run_dir = plan.run_dir
    return (
        plan.mode == "resume"
        and plan.done_generations >= experiment.schedule(plan.settings).planned
        and (run_dir / "meta_test.json").is_file()
        and (run_dir / experiment.artifact).is_dir()
    )


def main(
    args,
    experiment: Experiment,
    describe: Callable[[Any], str | None],
    execute: Callable[[Plan], dict],
    report: Callable[[Plan, dict], None],
) -> int:
    """Runs one CLI invocation: the first status line (`describe(args)`, before jax starts),
    host devices, `prepare`, the compile cache, `execute(plan)` -> summary, `report(plan,
    summary)`. Returns the exit code: 0, 2 on bad input (nothing written), 130 on Ctrl-C."""
    if not args.no_progress:
        message = describe(args)
        if message:  # at once, before jax is imported (seconds)
            print(message, file=sys.stderr, flush=True)
    set_host_devices(args)
    restore = None
    try:
        try:
            plan = prepare(args, experiment)
            if args.compile_cache:
                restore = use_compile_cache(args.compile_cache)
        except ValueError as e:  # bad settings, unknown env or key, occupied or foreign folder
            print(f"error: {e}", file=sys.stderr)
            return 2
        schedule = experiment.schedule(plan.settings)
        if _complete(plan, experiment):
            print(
                f"{plan.run_dir} is complete ({plan.done_generations} of {schedule.planned} "
                f"{schedule.unit}s); raise {schedule.key}=... to continue, or rerun the "
                f"meta-test with --meta-test-only {plan.run_dir}",
                file=sys.stderr,
            )
            return 0
        if plan.mode == "resume":
            say(plan, f"resuming {plan.run_dir} at {schedule.unit} {plan.done_generations} ...")
        try:
            summary = execute(plan)
        except KeyboardInterrupt:
            flag = "--meta-test-only" if plan.stage == "meta_test" else "--resume"
            print(
                f"\ninterrupted; continue with python -m {experiment.prog} {flag} {plan.run_dir}",
                file=sys.stderr,
            )
            return 130
    finally:
        if restore is not None:
            restore()
    report(plan, summary)
    return 0
