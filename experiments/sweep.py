"""Sweep hyper-parameters x seeds (x env params) as one sharded program; writes a sweep folder.
Usage, the override grammar, devices, resume, multi-host runs and the folder: docs/experiments.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import command, runs

RANGE = re.compile(r"^\s*(uniform|loguniform|log_uniform)\(\s*([^,]+),\s*([^)]+)\)\s*$")
MAX_ROWS_PER_RUN = 200  # results.csv keeps at most about this many updates per run
CURVE_CONFIGS = 12  # curves.png and profile.png show the best configurations by IQM


def split_top_level(text: str) -> list[str]:
    """'1e-4,3e-4' -> ['1e-4', '3e-4']; commas inside [...] / (...) / {...} do not split."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += (ch in "[({") - (ch in "])}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    return [*parts, "".join(current)]


def parse_space(items) -> tuple[dict[str, Any], dict[str, Any]]:
    """key=value items -> (fixed overrides, space). A value with a top-level comma is a list of
    values to sweep; `uniform(a,b)` / `loguniform(a,b)` a range (`--random` only)."""
    fixed, space = [], {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{item!r} must look like key=value or key=a,b,c")
        match, parts = RANGE.match(text), split_top_level(text)
        if match:
            kind, low, high = match.groups()
            try:
                bounds = [float(low), float(high)]
            except ValueError:
                raise ValueError(f"{item!r}: range bounds must be numbers") from None
            space[key] = {"loguniform" if "log" in kind else "uniform": bounds}
        elif len(parts) > 1 and any(not p.strip() for p in parts):
            raise ValueError(f"{item!r}: an empty value in the list")
        elif len(parts) > 1 or key.startswith("env_params."):
            space[key] = [command.parse_overrides([f"v={p}"])["v"] for p in parts]
        else:
            fixed.append(item)
    return command.parse_overrides(fixed), space


def to_space(saved: dict[str, Any]):
    """sweep.yaml's space -> purejaxrl.sweep's (lists stay, ranges -> distributions)."""
    from purejaxrl import sweep

    ranges = {"uniform": sweep.uniform, "loguniform": sweep.log_uniform}
    kind = lambda v: next(iter(v)) if isinstance(v, dict) and len(v) == 1 else None
    return {k: ranges[kind(v)](*v[kind(v)]) if kind(v) in ranges else v for k, v in saved.items()}


def arguments(p) -> None:
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: num_seeds)")
    p.add_argument("--random", type=int, metavar="N", help="draw N configurations at random")
    p.add_argument("--random-seed", type=int, help="seed of the random draws (default 0)")
    p.add_argument("--chunk", type=int, metavar="C", help="at most C runs per program call")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for CIs")
    p.add_argument("--log", nargs="+", default=[], choices=["tensorboard", "wandb"])
    p.add_argument("--wandb-project", default="purejaxrl-sweeps")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator")
    p.add_argument("--num-processes", type=int, help="jax.distributed: number of processes")
    p.add_argument("--process-id", type=int, help="jax.distributed: this process's index")
    text = "jax.distributed from the environment (TPU pod, SLURM)"
    p.add_argument("--distributed", action="store_true", help=text)


@dataclasses.dataclass
class SweepPlan(command.Plan):
    args: Any = None
    spec: dict = dataclasses.field(default_factory=dict)  # what sweep.yaml holds
    batch: Any = None  # purejaxrl.sweep.Batch
    make_agent: Any = None
    devices: list = dataclasses.field(default_factory=list)
    programs: int = 0
    chunks: int = 0
    finished: dict = dataclasses.field(default_factory=dict)  # chunk -> metrics stored before


def plan(args) -> SweepPlan:
    """Checks everything and writes nothing; the folder before jax.distributed joins the
    processes (so none sees another's files), which comes before jax's backend starts."""
    command.positive_flags(args, "seeds", "random", "chunk", "bootstrap")
    fixed, space = parse_space(args.overrides)
    if args.resume:
        if args.out:
            raise ValueError("--resume DIR takes no --out (it writes to DIR)")
        saved, run_dir = command.read_run_config(args.resume, name="sweep.yaml"), Path(args.resume)
    elif not args.config:
        raise ValueError("give --config FILE for a new sweep or --resume DIR to finish one")
    else:
        values = command.merge(command.load_yaml(args.config), fixed)
        name = f"sweep-{values.get('algo')}-{values.get('env')}"
        saved, run_dir = None, command.new_run_dir(args.out, name, markers=("sweep.yaml",))
    start_distributed(args)
    spec = definition(args, fixed, space, saved)
    from purejaxrl import sinks, sweep

    sinks.check_sinks(args.log)
    batch, make_agent = make_batch(spec)
    devices = sweep.resolve_devices(args.devices)
    statics, chunks = sweep.plan(batch, spec["chunk"])
    finished = load_chunks(run_dir, len(chunks)) if args.resume else {}
    mode = "resume" if args.resume else "new"
    return SweepPlan(run_dir, mode, not args.no_progress, None, args, spec, batch, make_agent,
                     devices, len(statics), len(chunks), finished)  # fmt: skip


def definition(args, fixed: dict, space: dict, saved: dict | None) -> dict:
    """What sweep.yaml holds: the base run spec, the space, seeds, random draws, chunk size. A
    resumed sweep keeps its `saved` one: flags and items may repeat it, not change it."""
    old = saved or {}
    base = command.load_yaml(args.config) if args.config else old.get("base", {})
    base = command.merge(base, fixed)
    space = space or old.get("space")
    if not space:
        raise ValueError("nothing to sweep: give at least one key=a,b,c (or a range with --random)")
    random = args.random or old.get("random")
    ranges = [k for k, v in space.items() if isinstance(v, dict)]
    if ranges and not random:
        raise ValueError(f"{ranges}: ranges need --random N (a grid takes lists a,b,c)")
    random_seed = args.random_seed if args.random_seed is not None else old.get("random_seed")
    spec = {
        "base": runs.build_spec(command.merge(base, {"num_seeds": 1})).to_dict(),
        "space": space,
        "seeds": args.seeds or old.get("seeds") or int(base.get("num_seeds", 1)),
        "random": random,
        "random_seed": (random_seed or 0) if random else None,
        "chunk": args.chunk or old.get("chunk"),
    }
    if saved is not None:
        command.check_unchanged(saved, spec)
    return spec


def make_batch(spec: dict):
    """purejaxrl.sweep batch and the algorithm's make_agent from a sweep definition."""
    from purejaxrl import algos, sweep

    run_spec = runs.build_spec(spec["base"])
    space = to_space(spec["space"])
    cfg, seed = run_spec.config, run_spec.seed
    if spec.get("random"):
        batch = sweep.random(cfg, space, spec["random"], spec["seeds"], spec["random_seed"], seed)
    else:
        batch = sweep.grid(cfg, space, spec["seeds"], seed)
    return batch, algos.ALGOS[run_spec.algo][1]


def start_distributed(args) -> None:
    """jax.distributed.initialize from --coordinator etc., or with --distributed from the env."""
    import jax

    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        # collectives between the processes' CPU devices (the GPU and TPU backends ignore it)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def execute(plan: SweepPlan) -> dict:
    """Runs the missing chunks (each stored in chunks/); process 0 writes the folder and returns
    the summary, the others {}."""
    import jax

    from purejaxrl import sinks as sinks_lib
    from purejaxrl import sweep

    writer, args, batch, spec = jax.process_index() == 0, plan.args, plan.batch, plan.spec
    show, sinks = plan.progress and writer, []
    if writer:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        command.write_yaml(plan.run_dir / "sweep.yaml", spec)
        plan.say(
            f"{batch.num_runs} runs ({len(set(batch.configs.tolist()))} configurations x "
            f"{spec['seeds']} seeds) in {plan.programs} program(s), {plan.chunks} chunk(s) "
            f"({len(plan.finished)} done before) over {len(plan.devices)} "
            f"{plan.devices[0].platform} device(s); compiling ..."
        )
        sinks = sinks_lib.make_sinks(args.log, plan.run_dir, spec, wandb_project=args.wandb_project)
    # every process compiles the same program: with the host callback when process 0 shows
    # progress or logs, which the others then feed to a no-op
    progress = show if writer else bool(plan.progress or args.log) and (lambda done, total: None)
    t0 = time.perf_counter()
    try:
        result = sweep.run(
            batch,
            make_agent=plan.make_agent,
            devices=plan.devices,
            chunk=spec["chunk"],
            progress=progress,
            done=plan.finished,
            on_chunk=(lambda i, c, m: save_chunk(plan.run_dir, i, m)) if writer else None,
            on_report=_report_to(sinks, batch) if sinks else None,
            log=(lambda m: print(m, file=sys.stderr)) if show else None,
        )
    finally:  # a sink that fails to close must not cost the finished sweep its results
        sinks_lib.close_sinks(sinks, on_error=lambda m: print(m, file=sys.stderr))
    wall_s = time.perf_counter() - t0
    if not writer:
        return {}
    write_results(plan.run_dir, batch, result)
    summary = make_summary(plan, result, wall_s)
    command.write_json(plan.run_dir / "summary.json", summary)
    plot(plan.run_dir, batch, result, summary, args.bootstrap)
    return summary


def _report_to(sinks, batch):
    """on_report for sweep.run: one sinks.Reporter per configuration (named in its prefix), fed
    that configuration's rows of each report."""
    from purejaxrl.sinks import Reporter

    reporters: dict[int, Reporter] = {}
    runs, on_error = batch.runs, lambda m: print(m, file=sys.stderr)

    def report(chunk, update_step, metrics):
        configs = batch.configs[chunk.index]
        for c in dict.fromkeys(configs.tolist()):
            rows = np.flatnonzero(configs == c)
            rows = rows[rows < len(chunk.index)]
            if c not in reporters:
                values = {f: runs[chunk.index[rows[0]]][f] for f in batch.fields}
                reporters[c] = Reporter(sinks, _label(values), on_error=on_error)
            reporters[c].report(update_step[rows], {k: v[rows] for k, v in metrics.items()})

    return report


def chunk_path(run_dir: Path, i: int) -> Path:
    return run_dir / "chunks" / f"chunk_{i:05d}.npz"


def load_chunks(run_dir: Path, num_chunks: int) -> dict[int, dict]:
    """chunk index -> its stored metrics, for the chunks an earlier session finished."""
    done = {}
    for i in range(num_chunks):
        try:
            if (path := chunk_path(run_dir, i)).exists():
                with np.load(path) as data:
                    done[i] = dict(data)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path} is unreadable ({e}); delete it to run that chunk again"
            ) from None
    return done


def save_chunk(run_dir: Path, i: int, metrics: dict) -> None:
    chunk_path(run_dir, i).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **metrics)
    command.write_text(chunk_path(run_dir, i), buffer.getvalue())


def _finished(metrics: dict) -> np.ndarray:
    return metrics.get("episodes_finished", np.ones_like(metrics["env_steps"]))


def seen_returns(metrics: dict) -> np.ndarray:
    """episode_return `[R, U]` with NaN before each run's first finished episode."""
    from purejaxrl import scores

    return np.asarray(scores.measured_returns(metrics["episode_return"], _finished(metrics)))


def final_returns(metrics: dict) -> np.ndarray:
    """`[R]`: purejaxrl.scores.final_return over each run's own (not NaN-padded) updates."""
    from purejaxrl import scores

    lifetime = np.isfinite(metrics["env_steps"]).sum(axis=1)
    returns = scores.final_return(metrics["episode_return"], _finished(metrics), lifetime)
    return np.asarray(returns, float)


def logged_updates(num_updates: int) -> np.ndarray:
    every = max(1, math.ceil(num_updates / MAX_ROWS_PER_RUN))
    return np.unique(np.append(np.arange(every - 1, num_updates, every), num_updates - 1))


def _cell(x) -> str:
    """A CSV cell: lists as JSON, NaN / inf empty."""
    if isinstance(x, float | np.floating):
        return "" if not np.isfinite(x) else f"{float(x):.6g}"
    return json.dumps(x) if isinstance(x, list) else str(x)


def write_results(run_dir: Path, batch, result) -> None:
    """results.csv (tidy, per run x logged update) and runs.csv (per run)."""
    metrics, returns = result.metrics, seen_returns(result.metrics)
    names = [k for k in sorted(metrics) if k not in ("episode_return", "env_steps")]
    head = ["run", "config", "seed", *batch.fields, "diverged"]
    rows = []
    for r, row in enumerate(result.runs):
        for u in logged_updates(int(np.isfinite(metrics["env_steps"][r]).sum())):
            cells = [row[h] for h in head] + [u + 1, int(metrics["env_steps"][r, u]), returns[r, u]]
            rows.append([_cell(c) for c in cells + [metrics[k][r, u] for k in names]])
    columns = [*head, "update", "env_steps", "episode_return", *names]
    command.write_csv(run_dir / "results.csv", columns, rows)
    final = final_returns(metrics)
    per_run = [
        [_cell(c) for c in [*(row[h] for h in head), final[r]]] for r, row in enumerate(result.runs)
    ]
    command.write_csv(run_dir / "runs.csv", [*head, "final_return"], per_run)


def configurations(batch, result) -> list[dict]:
    """Per configuration: its field values, its runs' indices, its `healthy` (not diverged) ones."""
    out: dict[int, dict] = {}
    for row in result.runs:
        c = out.setdefault(row["config"], {"config": row["config"], "runs": [], "healthy": []})
        c["values"] = {f: row[f] for f in batch.fields}
        c["runs"].append(row["run"])
        if not row["diverged"]:
            c["healthy"].append(row["run"])
    return list(out.values())


def make_summary(plan: SweepPlan, result, wall_s: float) -> dict:
    """summary.json: per configuration the final return's IQM, mean (95% CIs) and median over its
    healthy seeds; the ranking by IQM; timing; devices and versions."""
    import jax

    from experiments import aggregate
    from purejaxrl import scores

    spec, batch, reps = plan.spec, plan.batch, plan.args.bootstrap
    final, entries = final_returns(result.metrics), []
    for c in configurations(batch, result):
        s = aggregate.summarize_finite(final[c["healthy"]], reps=reps)
        entries.append({
            "config": c["config"], **c["values"], "final_return_iqm": s["iqm"],
            "final_return_iqm_ci95": s["iqm_ci"], "final_return_mean": s["mean"],
            "final_return_mean_ci95": s["mean_ci"], "final_return_median": s["median"],
            "final_return_per_seed": [float(x) if np.isfinite(x) else None for x in final[c["runs"]]],
            "num_seeds": len(c["runs"]), "diverged_seeds": len(c["runs"]) - len(c["healthy"]),
        })  # fmt: skip
    iqm = lambda e: -np.inf if e["final_return_iqm"] is None else e["final_return_iqm"]
    order = sorted(entries, key=iqm, reverse=True)
    return {
        "algo": spec["base"]["algo"], "env": spec["base"]["env"], "fields": list(batch.fields),
        "num_configurations": len(entries), "seeds": spec["seeds"], "num_runs": batch.num_runs,
        "configurations": entries, "ranking": [e["config"] for e in order],
        "best": {k: order[0][k] for k in ["config", *batch.fields, "final_return_iqm"]},
        "final_return_definition": (
            f"per run, mean episode_return over the last {scores.FINAL_FRACTION:.0%} of updates "
            "(purejaxrl.scores.final_return: finished episodes only); per configuration, IQM over "
            f"seeds with a 95% stratified bootstrap CI ({reps} resamples); diverged runs (a "
            "non-finite step) are excluded"
        ),
        "programs": result.programs, "sps": result.sps, "compile_s": result.compile_s,
        "train_s": result.run_s, "wall_s": wall_s,
        "timing_note": "sps = env steps of all runs / train_s of this session (compile excluded)",
        "devices": f"{len(plan.devices)} x {plan.devices[0].platform}",
        "processes": jax.process_count(),
        **command.environment(),  # device, device_count (all devices), versions
    }  # fmt: skip


def _label(values: dict) -> str:
    return ", ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in values.items())


def plot(run_dir: Path, batch, result, summary: dict, reps: int) -> None:
    """curves.png (IQM, 95% CI) and profile.png of the best configurations; sensitivity_*.png."""
    from experiments import aggregate

    plt = command.pyplot()
    configs = {c["config"]: c for c in configurations(batch, result)}
    best = [configs[c] for c in summary["ranking"][:CURVE_CONFIGS] if configs[c]["healthy"]]
    returns, final = seen_returns(result.metrics), final_returns(result.metrics)
    steps = np.nanmax(result.metrics["env_steps"], axis=0)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for c in best:
        mid, lo, hi = aggregate.curve_iqm(returns[c["healthy"]], reps=min(reps, 500), seed=0)
        (line,) = ax.plot(steps, mid, label=_label(c["values"]))
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="env steps per run", ylabel="episode return (IQM over seeds, 95% CI)")
    ax.set_title(f"{summary['algo']} on {summary['env']}")
    ax.legend(fontsize=7)
    command.save_figure(fig, run_dir / "curves.png")
    for field in batch.fields:
        _plot_sensitivity(plt, run_dir, field, result.runs, final, reps)
    finite = final[np.isfinite(final)]
    if finite.size:
        taus = np.linspace(finite.min(), finite.max(), 101)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for c in best:
            scores = final[c["healthy"]]
            if np.isfinite(scores).any():
                profile = aggregate.performance_profile(scores[np.isfinite(scores)], taus)
                ax.plot(taus, profile, label=_label(c["values"]))
        ax.set(xlabel="final return tau", ylabel="fraction of runs with final return > tau")
        ax.set_title("performance profile")
        ax.legend(fontsize=7)
        command.save_figure(fig, run_dir / "profile.png")


def _plot_sensitivity(plt, run_dir: Path, field: str, rows: list, final, reps: int) -> None:
    """Final-return IQM (95% CI) over the healthy runs at each value of `field` (others pooled)."""
    from experiments import aggregate

    key = lambda v: tuple(v) if isinstance(v, list) else v
    order = lambda v: (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))
    xs, mids, errs = [], [], []
    for v in sorted({key(row[field]) for row in rows}, key=order):
        same = [r for r, row in enumerate(rows) if key(row[field]) == v and not row["diverged"]]
        s = aggregate.summarize_finite(final[same], reps=reps)
        if s["iqm"] is not None:
            xs.append(v)
            mids.append(s["iqm"])
            errs.append([s["iqm"] - s["iqm_ci"][0], s["iqm_ci"][1] - s["iqm"]])
    numeric = all(isinstance(x, int | float) for x in xs)
    pos = xs if numeric else list(range(len(xs)))
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    ax.errorbar(pos, mids, yerr=np.reshape(errs, (-1, 2)).T, marker="o", capsize=3)
    if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(pos, [str(x) for x in xs])
    ax.set(xlabel=field, ylabel="final return (IQM, 95% CI)")
    ax.set_title(f"sensitivity to {field} (other fields pooled)")
    command.save_figure(fig, run_dir / f"sensitivity_{re.sub(r'[^A-Za-z0-9_.-]+', '_', field)}.png")


def report(plan: SweepPlan, summary: dict) -> str | None:
    if not summary:  # a process other than 0
        return None
    best = summary["best"]
    lo, hi = summary["configurations"][best["config"]]["final_return_iqm_ci95"] or [None, None]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    return (
        f"best: {_label({f: best[f] for f in plan.batch.fields})}: final return IQM "
        f"{best['final_return_iqm']:.2f} [{fmt(lo)}, {fmt(hi)}] over {plan.spec['seeds']} seeds | "
        f"{summary['sps']:,.0f} env steps/s | compile {summary['compile_s']:.1f} s | "
        f"wall {summary['wall_s']:.1f} s\nsweep folder: {plan.run_dir}"
    )


COMMAND = command.Command(
    prog="experiments.sweep",
    description="Sweep config fields x seeds as one sharded program; writes a sweep folder.",
    plan=plan,
    execute=execute,
    report=report,
    arguments=arguments,
    describe=lambda args: f"building the sweep ({args.resume or args.config}) ...",
    epilog="Resume, multi-host runs and the sweep folder: docs/experiments.md.",
    shards=True,
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
