"""What the meta-training commands (experiments.lpo, lpg, groove) share on the run skeleton
(experiments/command.py): an `Experiment` names what differs; here are the plan, `execute`,
`report`, sessions and fitness.csv (docs/experiments.md)."""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import command

TIMINGS = ("baselines_s", "es_compile_s", "es_run_s", "meta_gradient_first_call_s",
           "meta_gradient_run_s", "meta_test_compile_s", "meta_test_run_s")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`planned` steps of `unit` set by `key`, checkpointed in DIR/`where`, `done(run_dir)` so
    far; `resumable`: the keys a --resume may change; `shards`: what the devices must divide."""

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
    return Schedule(es.num_generations, "es.num_generations", "generation", "es/",
                    done_generations, ("es.num_generations", "es.generations_per_call"),
                    es.population_size)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What differs between the meta-training commands. The learned object lives in
    DIR/<artifact>, written and read by the module `library` (its save(path, params, info) and
    load(path, time_aware=)). resolve(values) -> settings (.values: config.yaml, .es,
    .time_aware, .test: the meta-test's config, whose fields a --resume may change);
    meta_train(plan, session, t_start) -> (params, info); meta_test(plan, params) -> table
    (meta_test.json); summary_of(plan, table, session, info) -> summary.json."""

    prog: str
    artifact: str
    library: str
    resolve: Callable[[Mapping[str, Any]], Any]
    run_name: Callable[[Any], str]
    meta_train: Callable
    plot_training: Callable  # (plan, params)
    meta_test: Callable
    plot_meta_test: Callable  # (run_dir, table)
    format_table: Callable  # (table) -> text
    summary_of: Callable
    schedule: Callable[[Any], Schedule] = es_schedule


def arguments(p, time_aware: str, artifact: str) -> None:
    """The meta-training flags beside the skeleton's."""
    p.add_argument("--time-aware", action="store_true", help=time_aware)
    p.add_argument(
        "--meta-test-only", metavar="DIR", help=f"rerun the meta-test of DIR's {artifact}"
    )
    p.add_argument("--compile-cache", metavar="DIR", help="keep compiled programs in DIR (reruns)")


def describe(args, es_defaults: Mapping, line: Callable[..., str]) -> str | None:
    """The first status line of a new run (no jax import): line(args, values, time_aware,
    "population P x G generations") of --config merged with the overrides (`es` over
    `es_defaults`); None for --resume / --meta-test-only or on bad input."""
    try:
        values = None if args.resume or args.meta_test_only else command.settings(args)
    except ValueError:
        values = None
    if values is None:
        return None
    es = {**es_defaults, **(values["es"] if isinstance(values.get("es"), Mapping) else {})}
    size = f"population {es['population_size']} x {es['num_generations']} generations"
    return line(args, values, args.time_aware or values.get("time_aware") is True, size)


@dataclasses.dataclass
class MetaPlan(command.Plan):
    """mode "new" | "resume" | "meta_test_only"; stage: what `execute` is doing."""

    experiment: Any = None
    settings: Any = None
    devices: list = dataclasses.field(default_factory=list)
    es_devices: int = 1
    write_config: bool = True
    done_generations: int = 0
    baselines: dict | None = None  # DIR/baselines.json's "baselines" (experiments.lpo)
    previous: dict = dataclasses.field(default_factory=dict)  # summary.json of the folder
    compile_cache: str | None = None
    stage: str = "meta_train"


def continue_with(plan) -> str:
    return "--meta-test-only" if getattr(plan, "stage", "") == "meta_test" else "--resume"


def done_generations(run_dir: Path) -> int:
    """The generation of the newest ES checkpoint in DIR/es (0 if none)."""
    from purejaxrl import checkpoint

    try:
        return checkpoint.latest_step(run_dir / "es")
    except checkpoint.CheckpointError:
        return 0


def _existing(p: MetaPlan, args, overrides: dict) -> None:
    """Fills `p` for --resume / --meta-test-only DIR: DIR's settings with the overrides (only
    the meta-test's and, resuming, the schedule's keys may change)."""
    from meta.saved import MANIFEST

    exp, flag = p.experiment, "--resume" if args.resume else "--meta-test-only"
    if args.config or args.out:
        raise ValueError(f"{flag} DIR takes neither --config nor --out (it uses DIR)")
    p.run_dir = Path(args.resume or args.meta_test_only)
    saved = exp.resolve(command.read_run_config(p.run_dir, flag)).values
    p.settings = exp.resolve(command.merge(saved, overrides))
    schedule = exp.schedule(p.settings)
    test_keys = tuple(f.name for f in dataclasses.fields(p.settings.test))
    allowed = test_keys + (schedule.resumable if args.resume else ())
    command.check_unchanged(saved, p.settings.values, allowed, flag)
    p.done_generations = done = schedule.done(p.run_dir)
    name = exp.artifact
    if args.meta_test_only and not (p.run_dir / name / MANIFEST).is_file():
        raise ValueError(
            f"--meta-test-only {p.run_dir}: no learned {name} ({name}/) there yet; finish the "
            f"meta-training with --resume {p.run_dir}"
        )
    if args.resume and done > schedule.planned:
        raise ValueError(
            f"--resume {p.run_dir}: {schedule.where} holds {schedule.unit} {done}, past "
            f"{schedule.key}={schedule.planned}; give {schedule.key} >= {done}"
        )
    p.baselines = command.read_json(p.run_dir / "baselines.json").get("baselines")
    p.previous = command.read_json(p.run_dir / "summary.json")
    p.mode = "resume" if args.resume else "meta_test_only"
    p.write_config = p.settings.values != saved


def plan(args, exp: Experiment, extra: Mapping[str, Any] = ()) -> MetaPlan:
    """Everything that can fail on bad input, before anything is written. `extra`: overrides
    set by flags (--time-aware: time_aware true)."""
    extra = {**dict(extra), **({"time_aware": True} if args.time_aware else {})}
    if args.resume and args.meta_test_only:
        raise ValueError("--resume and --meta-test-only go apart: give one of them")
    p = MetaPlan(Path("."), progress=not args.no_progress, experiment=exp,
                 compile_cache=args.compile_cache)  # fmt: skip
    if args.resume or args.meta_test_only:
        _existing(p, args, command.merge(command.parse_overrides(args.overrides), extra))
    else:
        p.settings = exp.resolve(command.merge(command.settings(args), extra))
        markers = ("config.yaml", "es", exp.artifact)
        p.run_dir = command.new_run_dir(args.out, exp.run_name(p.settings), markers)
    from purejaxrl import sweep

    p.devices = sweep.resolve_devices(args.devices)
    schedule = exp.schedule(p.settings)
    pop = schedule.shards
    if args.devices is not None and pop is not None and pop % len(p.devices):
        raise ValueError(
            f"--devices {args.devices}: es.population_size={pop} must divide by the device count"
        )
    if pop is not None:
        from meta.meta_test import seed_devices

        p.es_devices = len(seed_devices(p.devices, pop))
    if (p.mode == "resume" and p.done_generations >= schedule.planned
            and (p.run_dir / "meta_test.json").is_file() and (p.run_dir / exp.artifact).is_dir()):  # fmt: skip
        p.done = (
            f"{p.run_dir} is complete ({p.done_generations} of {schedule.planned} "
            f"{schedule.unit}s); raise {schedule.key}=... to continue, or rerun the meta-test "
            f"with --meta-test-only {p.run_dir}"
        )
    return p


def use_compile_cache(path) -> Callable[[], None]:
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


def execute(plan: MetaPlan) -> dict:
    """Meta-training (unless --meta-test-only), the learned object, then the meta-test; writes
    summary.json after each."""
    restore = use_compile_cache(plan.compile_cache) if plan.compile_cache else None
    try:
        return _execute(plan, plan.experiment)
    finally:
        if restore is not None:
            restore()


def _execute(plan: MetaPlan, exp: Experiment) -> dict:
    t_start = time.perf_counter()
    run_dir, library = plan.run_dir, importlib.import_module(exp.library)
    session = begin_session(plan)
    if plan.mode == "resume":
        unit = exp.schedule(plan.settings).unit
        plan.say(f"resuming {run_dir} at {unit} {plan.done_generations} ...")
    if plan.mode == "meta_test_only":
        params, info = library.load(run_dir / exp.artifact, time_aware=plan.settings.time_aware)
    else:
        params, info = exp.meta_train(plan, session, t_start)
        info = {**info, "run": {"folder": str(run_dir), "seed": plan.settings.seed}}
        library.save(run_dir / exp.artifact, params, info)
        exp.plot_training(plan, params)
        session["wall_s"] = time.perf_counter() - t_start
        partial = exp.summary_of(plan, None, session, info)
        if plan.previous.get("meta_test") is not None:
            partial["meta_test_stale"] = (
                f"the {exp.artifact} changed; meta_test.json is of an older one"
            )
        command.write_json(run_dir / "summary.json", partial)
        plan.say(f"saved the learned {exp.artifact} to {run_dir / exp.artifact}")
    t_test = time.perf_counter()
    plan.stage = "meta_test"
    table = exp.meta_test(plan, params)
    session.update(meta_test_compile_s=table["compile_s"], meta_test_run_s=table["run_s"],
                   meta_test_s=time.perf_counter() - t_test)  # fmt: skip
    command.write_json(run_dir / "meta_test.json", table)
    exp.plot_meta_test(run_dir, table)
    session["wall_s"] = time.perf_counter() - t_start
    summary = exp.summary_of(plan, table, session, info)
    command.write_json(run_dir / "summary.json", summary)
    return summary


def report(plan: MetaPlan, summary: dict) -> str:
    """The final lines: the meta-training's progress, the meta-test table, the timings."""
    lines = [meta_training_line(summary)]
    lines.append(plan.experiment.format_table(command.read_json(plan.run_dir / "meta_test.json")))
    t = summary["timings"]
    parts = [f"{k} {t[k]:.0f} s" for k in TIMINGS if t.get(k) is not None]
    lines.append(f"{' | '.join(parts)} | wall {summary['wall_s']:.0f} s")
    lines.append(f"run folder: {plan.run_dir}")
    return "\n".join(x for x in lines if x)


def begin_session(plan: MetaPlan) -> dict:
    """Creates the run folder and config.yaml (a new run; a --meta-test-only with changes);
    returns the session record {mode, started, generations_before}."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.mode == "new" or (plan.write_config and plan.mode == "meta_test_only"):
        command.write_yaml(plan.run_dir / "config.yaml", plan.settings.values)
    return {
        "mode": plan.mode,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "generations_before": plan.done_generations,
    }


def write_resumed_config(plan: MetaPlan) -> None:
    """A resume's changed config.yaml, once its first checkpoint is written."""
    if plan.write_config and plan.mode == "resume":
        command.write_yaml(plan.run_dir / "config.yaml", plan.settings.values)
        plan.write_config = False


def session_summary(plan: MetaPlan, session: dict) -> dict:
    """summary.json's timings (this session), sessions (all so far), devices and versions."""
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
        "versions": command.environment()["versions"],
    }


def on_generations(plan: MetaPlan, extra: Callable[[Mapping, int], None] | None = None):
    """The ES callback after each checkpoint: config.yaml, `extra(metrics, first generation)`,
    then fitness.csv's new rows."""

    def callback(generation: int, metrics: Mapping) -> None:
        write_resumed_config(plan)
        fit = np.asarray(metrics["fitness"])
        first = generation - len(fit) + 1
        if extra is not None:
            extra(metrics, first)
        rows = fitness_rows(fit, np.asarray(metrics["nonfinite"]), first)
        write_fitness(plan.run_dir, rows, keep_upto=first - 1)

    return callback


def end_es(plan: MetaPlan, session: dict, es_out, steps: int, t_start: float) -> None:
    """After the ES: config.yaml, fitness.csv, this session's ES timings (steps: env steps of
    one candidate's inner runs)."""
    write_resumed_config(plan)
    write_fitness(plan.run_dir, fitness_rows(es_out.fitness, es_out.nonfinite))
    ran = es_out.fitness.shape[0] - plan.done_generations
    pop = plan.settings.es.population_size
    session.update(
        generations_run=int(ran),
        es_compile_s=es_out.compile_s,
        es_run_s=es_out.run_s,
        es_sps=(ran * pop * steps / es_out.run_s) if es_out.run_s else None,
        meta_train_s=time.perf_counter() - t_start,
    )


def fitness_rows(fitness: np.ndarray, nonfinite: np.ndarray, first: int = 1) -> list[list]:
    """[generation, mean, best, nonfinite] per generation of `fitness` [G, P] (finite values)."""
    rows = []
    for g, (row, bad) in enumerate(zip(fitness, nonfinite, strict=True)):
        finite = row[np.isfinite(row)]
        mean, best = (float(finite.mean()), float(finite.max())) if finite.size else (math.nan,) * 2
        rows.append([first + g, mean, best, int(bad)])
    return rows


def write_fitness(run_dir: Path, rows: list[list], keep_upto: int | None = None) -> None:
    """fitness.csv: `rows` after the existing rows up to generation `keep_upto`."""
    columns = ["generation", "mean", "best", "nonfinite"]
    command.write_csv(run_dir / "fitness.csv", columns, rows, keep_upto, exact=True)


def fitness_summary(run_dir: Path, definition: str) -> dict:
    """summary.json's "fitness" (fitness.csv): first / last mean and best, best ever, curves."""
    f = command.read_csv(run_dir / "fitness.csv")
    mean, best = f["mean"], f["best"]
    ends = lambda x, i: command.num(x[i]) if len(x) else None  # noqa: E731
    return {
        "definition": definition,
        "first_mean": ends(mean, 0),
        "last_mean": ends(mean, -1),
        "first_best": ends(best, 0),
        "last_best": ends(best, -1),
        "best_ever": command.num(np.nanmax(best)) if len(best) else None,
        "mean": [command.num(x) for x in mean],
        "best": [command.num(x) for x in best],
        "nonfinite_total": int(np.nansum(f["nonfinite"])),
    }


def meta_training_line(summary: dict) -> str | None:
    """The ES fitness curve's ends, or the meta-gradient's first and last tenth."""
    g = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731  (None: no finite value)
    f, mt = summary.get("fitness"), summary.get("meta_training")
    if f is not None and summary.get("generations"):
        return (
            f"fitness: generation 1 mean {g(f['first_mean'])} best {g(f['first_best'])} -> "
            f"generation {summary['generations']} mean {g(f['last_mean'])} best "
            f"{g(f['last_best'])} (best ever {g(f['best_ever'])})"
        )
    if f is None and mt and mt["meta_steps"]:
        return (
            f"{summary['method']}: {mt['meta_steps']} meta-steps, {mt['num_agents']} agents; "
            f"final return of finished agents {g(mt['finished_return_first_tenth'])} (first "
            f"tenth) -> {g(mt['finished_return_last_tenth'])} (last tenth)"
        )
    return None


def plot_fitness(run_dir: Path, title: str, ylabel: str, lines=()) -> Path:
    """fitness.png: fitness.csv's mean and best per generation, the best so far, and reference
    `lines` [(y, label)]."""
    plt = command.pyplot()
    f = command.read_csv(run_dir / "fitness.csv")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(f["generation"], f["mean"], label="population mean")
    ax.plot(f["generation"], f["best"], label="population best", alpha=0.8)
    ax.plot(f["generation"], np.fmax.accumulate(f["best"]), "--", lw=1, label="best so far")
    for (y, label), color in zip(lines, ("k", "grey", "tab:red"), strict=False):
        ax.axhline(y, color=color, ls=":", lw=1, label=label)
    ax.set(ylabel=ylabel, xlabel="generation")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return command.save_figure(fig, run_dir / "fitness.png", 120)
