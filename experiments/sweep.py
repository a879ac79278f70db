"""Sweep hyper-parameters x seeds (x env params) as one sharded program; writes a sweep folder.

    python -m experiments.sweep --config experiments/configs/ppo_cartpole.yaml \\
        learning_rate=1e-4,3e-4,1e-3 ent_coef=0,0.01 --seeds 16 --out runs/lr-sweep
    python -m experiments.sweep --config FILE.yaml learning_rate='loguniform(1e-5,1e-2)' \\
        gamma=0.95,0.99 --random 32 --seeds 4 --out DIR       # 32 configurations drawn
    python -m experiments.sweep --resume DIR                  # finish an interrupted sweep

`key=a,b,c` sweeps a field (numeric config fields, static ones such as `hidden_sizes=[32],[64,64]`
which make one program per value, and env params as `env_params.<name>`); `key=value` without a
top-level comma sets it for every run. With `--random N`, lists are drawn from uniformly and
`uniform(a,b)` / `loguniform(a,b)` are ranges. Runs are `purejaxrl.sweep` batches: every
configuration sees the same seeds (`split(key(seed), seeds)`, as `experiments.train --seeds`).

On CPU the host's cores become devices (`--xla_force_host_platform_device_count`, set before jax
starts) and the run axis is sharded over them; `--devices N` uses the first N devices. `--chunk C`
runs at most C runs per program call (memory); each finished chunk is stored under chunks/, so
`--resume DIR` continues an interrupted sweep (the sweep definition is read from DIR/sweep.yaml;
overrides or flags that change it are refused). Multi-host: `--coordinator HOST:PORT
--num-processes N --process-id I` (or the environment a TPU pod / SLURM provides, with
`--distributed`); every process runs its share, process 0 writes the folder.

Sweep folder:
    sweep.yaml      the base run spec, the space, seeds, random draws, chunk size
    results.csv     tidy: one row per run x logged update (field values, seed, update, env_steps,
                    episode_return (empty before the run's first finished episode), losses)
    runs.csv        one row per run: field values, seed, final return, diverged
    summary.json    per configuration: IQM of the final return over seeds with a 95% stratified
                    bootstrap CI, mean, median; the ranking by IQM; sps, compile_s, wall_s
    curves.png      IQM learning curve per configuration with its 95% CI band
    sensitivity_<field>.png   final-return IQM (95% CI) vs the field's value, one per swept field
    profile.png     performance profile: fraction of runs with final return > tau
    chunks/         per-chunk metrics (resume)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments import runs

RANGE = re.compile(r"^\s*(uniform|loguniform|log_uniform)\(\s*([^,]+),\s*([^)]+)\)\s*$")
MAX_ROWS_PER_RUN = 200  # results.csv keeps at most about this many updates per run
CURVE_CONFIGS = 12  # curves.png shows the best configurations by IQM


# --------------------------------------------------------------------------- parsing


def split_top_level(text: str) -> list[str]:
    """'1e-4,3e-4' -> ['1e-4', '3e-4']; commas inside [...] / (...) / {...} do not split."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _value(text: str) -> Any:
    """A YAML value; '1e-4' (a string to YAML 1.1) is the number 0.0001."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return runs.number_or_text(value)


def parse_space(items) -> tuple[dict[str, Any], dict[str, Any]]:
    """key=value items -> (fixed overrides, space). A value with a top-level comma is a list of
    values to sweep; `uniform(a,b)` / `loguniform(a,b)` a range (`--random` only)."""
    fixed, space = [], {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{item!r} must look like key=value or key=a,b,c")
        match = RANGE.match(text)
        if match:
            kind, low, high = match.groups()
            try:
                bounds = [float(low), float(high)]
            except ValueError:
                raise ValueError(f"{item!r}: range bounds must be numbers") from None
            space[key] = {"loguniform" if "log" in kind else "uniform": bounds}
            continue
        parts = split_top_level(text)
        if len(parts) > 1:
            if any(not p.strip() for p in parts):
                raise ValueError(f"{item!r}: an empty value in the list")
            space[key] = [_value(p) for p in parts]
        elif key.startswith("env_params."):
            space[key] = [_value(text)]
        else:
            fixed.append(item)
    return runs.parse_overrides(fixed), space


def to_space(saved: dict[str, Any]):
    """sweep.yaml's space -> purejaxrl.sweep's (lists stay, ranges -> distributions)."""
    from purejaxrl import sweep

    out = {}
    for key, spec in saved.items():
        if isinstance(spec, dict) and set(spec) == {"uniform"}:
            out[key] = sweep.uniform(*spec["uniform"])
        elif isinstance(spec, dict) and set(spec) == {"loguniform"}:
            out[key] = sweep.log_uniform(*spec["loguniform"])
        else:
            out[key] = spec
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Sweep config fields x seeds as one sharded program; writes a sweep folder.",
        epilog=__doc__.split("Sweep folder:")[1].join(["Sweep folder:", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="key=a,b,c", help="swept fields and overrides")
    p.add_argument("--config", help="YAML run spec (algo and config fields)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: num_seeds)")
    p.add_argument("--random", type=int, metavar="N", help="draw N configurations at random")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--devices", type=int, metavar="N", help="use the first N devices")
    p.add_argument("--chunk", type=int, metavar="C", help="at most C runs per program call")
    p.add_argument("--out", help="sweep folder (default runs/sweep-<algo>-<env>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="finish the interrupted sweep in DIR")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for CIs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    p.add_argument("--log", nargs="+", default=[], choices=["tensorboard", "wandb"])
    p.add_argument("--wandb-project", default="purejaxrl-sweeps")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator")
    p.add_argument("--num-processes", type=int, help="jax.distributed: number of processes")
    p.add_argument("--process-id", type=int, help="jax.distributed: this process's index")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() from the environment (TPU pod, SLURM)",
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------- definition


def definition(args) -> tuple[dict, Path]:
    """The sweep definition (what sweep.yaml holds) and the folder; checks everything that can
    be checked without jax."""
    for flag in ("seeds", "random", "chunk", "devices"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag}={value}: must be a positive integer")
    if args.bootstrap < 1:
        raise ValueError(f"--bootstrap={args.bootstrap}: must be a positive integer")
    if args.resume:
        run_dir = Path(args.resume)
        saved_path = run_dir / "sweep.yaml"
        if not saved_path.is_file():
            raise ValueError(f"--resume {run_dir}: no sweep.yaml there (not a sweep folder)")
        saved = yaml.safe_load(saved_path.read_text())
        if args.out:
            raise ValueError("--resume DIR takes no --out (it writes to DIR)")
        if args.config or args.items or args.seeds or args.random or args.chunk:
            asked = _new_definition(args, saved.get("base"))
            given = {
                "base": bool(args.config) or bool(parse_space(args.items)[0]),
                "space": bool(parse_space(args.items)[1]),
                "seeds": args.seeds is not None,
                "random": args.random is not None,
                "chunk": args.chunk is not None,
            }
            differs = [k for k, g in given.items() if g and asked[k] != saved.get(k)]
            if differs:
                raise ValueError(
                    f"--resume {run_dir}: the sweep definition differs from the saved one in "
                    f"{differs}; resume with --resume DIR alone, or start a new sweep"
                )
        return saved, run_dir
    if not args.config:
        raise ValueError("give --config FILE for a new sweep or --resume DIR to finish one")
    spec = _new_definition(args, None)
    run_dir = Path(args.out) if args.out else _default_dir(spec)
    if (run_dir / "sweep.yaml").exists():
        raise ValueError(
            f"--out {run_dir} already holds a sweep; finish it with --resume {run_dir} or choose "
            "another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: exists and is not a folder")
    return spec, run_dir


def _new_definition(args, base: dict | None) -> dict:
    fixed, space = parse_space(args.items)
    if args.config:
        base_values = runs.merge(runs.load_yaml(args.config), fixed)
    else:
        base_values = runs.merge(base or {}, fixed)
    if not space and not args.resume:
        raise ValueError("nothing to sweep: give at least one key=a,b,c (or a range with --random)")
    ranges = [k for k, v in space.items() if isinstance(v, dict)]
    if ranges and not args.random:
        raise ValueError(f"{ranges}: ranges need --random N (a grid takes lists a,b,c)")
    seeds = args.seeds if args.seeds is not None else int(base_values.get("num_seeds", 1))
    spec = runs.build_spec(runs.merge(base_values, {"num_seeds": 1}))
    return {
        "base": spec.to_dict(),
        "space": space if space else None,
        "seeds": seeds,
        "random": args.random,
        "random_seed": args.random_seed if args.random else None,
        "chunk": args.chunk,
    }


def _default_dir(spec: dict) -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec["base"]["env"])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sweep-{spec['base']['algo']}-{env}-{stamp}"


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


# --------------------------------------------------------------------------- devices


def set_host_devices(args) -> None:
    """On CPU the sweep uses the host's cores as devices: sets XLA's host device count before
    jax starts (a count already in XLA_FLAGS wins)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = max(args.devices or 1, os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def start_distributed(args) -> None:
    import jax

    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        if jax.default_backend() == "cpu" or jax.config.jax_platforms == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    elif args.distributed:
        jax.distributed.initialize()


# --------------------------------------------------------------------------- outputs


def chunk_path(run_dir: Path, i: int) -> Path:
    return run_dir / "chunks" / f"chunk_{i:05d}.npz"


def load_chunks(run_dir: Path, num_chunks: int) -> dict[int, dict]:
    done = {}
    for i in range(num_chunks):
        path = chunk_path(run_dir, i)
        if path.exists():
            try:
                with np.load(path) as data:
                    done[i] = {k: data[k] for k in data.files}
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"{path} is unreadable ({e}); delete it to run that chunk again"
                ) from None
    return done


def save_chunk(run_dir: Path, i: int, metrics: dict) -> None:
    path = chunk_path(run_dir, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **metrics)
    os.replace(tmp, path)


def final_returns(metrics: dict) -> np.ndarray:
    """`[R]` per run: mean episode_return over the last FINAL_FRACTION of its updates (NaN if
    it finished no episode)."""
    returns = seen_returns(metrics)
    out = np.full(len(returns), np.nan)
    for r, row in enumerate(returns):
        valid = np.isfinite(metrics["env_steps"][r])
        row = row[valid]
        window = max(1, math.ceil(runs.FINAL_FRACTION * len(row)))
        tail = row[-window:]
        if np.isfinite(tail).any():
            out[r] = np.nanmean(tail)
    return out


def seen_returns(metrics: dict) -> np.ndarray:
    """episode_return `[R, U]` with NaN before each run's first finished episode."""
    finished = np.nan_to_num(metrics.get("episodes_finished", np.ones_like(metrics["env_steps"])))
    seen = np.cumsum(finished, axis=1) > 0
    return np.where(seen, metrics["episode_return"], np.nan)


def logged_updates(num_updates: int) -> np.ndarray:
    every = max(1, math.ceil(num_updates / MAX_ROWS_PER_RUN))
    idx = np.arange(every - 1, num_updates, every)
    if idx[-1] != num_updates - 1:
        idx = np.append(idx, num_updates - 1)
    return idx


def _cell(x) -> str:
    if isinstance(x, float | np.floating):
        return "" if not np.isfinite(x) else f"{float(x):.6g}"
    if isinstance(x, list):
        return json.dumps(x)
    return str(x)


def write_results(run_dir: Path, batch, result) -> None:
    """results.csv (tidy, per run x logged update) and runs.csv (per run)."""
    metrics = result.metrics
    returns = seen_returns(metrics)
    names = [k for k in sorted(metrics) if k not in ("episode_return", "env_steps")]
    fields = list(batch.fields)
    head = ["run", "config", "seed", *fields, "diverged"]
    tmp = run_dir / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*head, "update", "env_steps", "episode_return", *names])
        for r, row in enumerate(result.runs):
            valid = np.flatnonzero(np.isfinite(metrics["env_steps"][r]))
            for u in logged_updates(len(valid)):
                cells = [row[h] for h in head]
                cells += [u + 1, int(metrics["env_steps"][r, u]), returns[r, u]]
                cells += [metrics[k][r, u] for k in names]
                w.writerow([_cell(c) for c in cells])
    os.replace(tmp, run_dir / "results.csv")
    final = final_returns(metrics)
    with open(run_dir / "runs.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*head, "final_return"])
        for r, row in enumerate(result.runs):
            w.writerow([_cell(row[h]) for h in head] + [_cell(final[r])])
    os.replace(run_dir / "runs.csv.tmp", run_dir / "runs.csv")


def configurations(batch, result) -> list[dict]:
    """One entry per configuration: its field values, its runs' indices, and those of its runs
    that did not diverge (`healthy`)."""
    out: dict[int, dict] = {}
    for row in result.runs:
        c = out.setdefault(
            row["config"], {"config": row["config"], "values": {}, "runs": [], "healthy": []}
        )
        c["values"] = {f: row[f] for f in batch.fields}
        c["runs"].append(row["run"])
        if not row["diverged"]:
            c["healthy"].append(row["run"])
    return list(out.values())


def make_summary(spec, batch, result, reps: int, wall_s: float) -> dict:
    import jax

    final = final_returns(result.metrics)
    entries = []
    for c in configurations(batch, result):
        scores = final[c["healthy"]]
        stats = _stats(scores, reps)
        entries.append(
            {
                "config": c["config"],
                **c["values"],
                "final_return_iqm": stats["iqm"],
                "final_return_iqm_ci95": stats["iqm_ci"],
                "final_return_mean": stats["mean"],
                "final_return_mean_ci95": stats["mean_ci"],
                "final_return_median": stats["median"],
                "final_return_per_seed": [
                    None if not np.isfinite(x) else float(x) for x in final[c["runs"]]
                ],
                "num_seeds": len(c["runs"]),
                "diverged_seeds": len(c["runs"]) - len(c["healthy"]),
            }
        )
    order = sorted(
        entries,
        key=lambda e: -np.inf if e["final_return_iqm"] is None else e["final_return_iqm"],
        reverse=True,
    )
    return {
        "algo": spec["base"]["algo"],
        "env": spec["base"]["env"],
        "fields": list(batch.fields),
        "num_configurations": len(entries),
        "seeds": spec["seeds"],
        "num_runs": batch.num_runs,
        "configurations": entries,
        "ranking": [e["config"] for e in order],
        "best": {k: order[0][k] for k in ["config", *batch.fields, "final_return_iqm"]},
        "final_return_definition": (
            f"per run, mean episode_return over the last {runs.FINAL_FRACTION:.0%} of updates; "
            f"per configuration, IQM over seeds with a 95% stratified bootstrap CI ({reps} "
            "resamples); diverged runs (a non-finite step) are excluded"
        ),
        "programs": result.programs,
        "sps": result.sps,
        "compile_s": result.compile_s,
        "train_s": result.run_s,
        "wall_s": wall_s,
        "timing_note": "sps = env steps of all runs / train_s of this session (compile excluded)",
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "processes": jax.process_count(),
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


def _stats(scores: np.ndarray, reps: int) -> dict:
    """aggregate.summarize of the finite scores; None entries when there is none."""
    from experiments import aggregate

    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        keys = ("iqm", "iqm_ci", "mean", "mean_ci", "median")
        return dict.fromkeys(keys)
    return aggregate.summarize(scores, reps=reps, seed=0)


def _label(values: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def plot(run_dir: Path, batch, result, summary: dict, reps: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments import aggregate

    paths = []
    metrics = result.metrics
    returns = seen_returns(metrics)
    configs = {c["config"]: c for c in configurations(batch, result)}
    steps = np.nanmax(metrics["env_steps"], axis=0)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cid in summary["ranking"][:CURVE_CONFIGS]:
        c = configs[cid]
        rows = c["healthy"]
        if not rows:
            continue
        mid, lo, hi = aggregate.curve_iqm(returns[rows], reps=min(reps, 500), seed=0)
        (line,) = ax.plot(steps, mid, label=_label(c["values"]))
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps per run")
    ax.set_ylabel("episode return (IQM over seeds, 95% CI)")
    ax.set_title(f"{summary['algo']} on {summary['env']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(run_dir / "curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    entries = summary["configurations"]
    for field in batch.fields:
        values = sorted({_hashable(e[field]) for e in entries}, key=_sort_key)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        # the IQM at each value of `field`, over all runs with that value (other fields pooled)
        final = final_returns(metrics)
        xs, mids, los, his = [], [], [], []
        for v in values:
            rows = [
                r
                for r, row in enumerate(result.runs)
                if _hashable(row[field]) == v and not row["diverged"]
            ]
            stats = _stats(final[rows], reps)
            if stats["iqm"] is None:
                continue
            xs.append(v)
            mids.append(stats["iqm"])
            los.append(stats["iqm"] - stats["iqm_ci"][0])
            his.append(stats["iqm_ci"][1] - stats["iqm"])
        numeric = all(isinstance(x, int | float) for x in xs)
        pos = xs if numeric else list(range(len(xs)))
        ax.errorbar(pos, mids, yerr=[los, his], marker="o", capsize=3)
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(pos, [str(x) for x in xs])
        ax.set_xlabel(field)
        ax.set_ylabel("final return (IQM, 95% CI)")
        ax.set_title(f"sensitivity to {field} (other fields pooled)")
        fig.tight_layout()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", field)
        paths.append(run_dir / f"sensitivity_{safe}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    final = final_returns(metrics)
    finite = final[np.isfinite(final)]
    if finite.size:
        taus = np.linspace(finite.min(), finite.max(), 101)
        fig, ax = plt.subplots(figsize=(6, 4))
        for cid in summary["ranking"][:CURVE_CONFIGS]:
            c = configs[cid]
            scores = final[c["healthy"]]
            if scores.size:
                ax.plot(
                    taus, aggregate.performance_profile(scores, taus), label=_label(c["values"])
                )
        ax.set_xlabel("final return tau")
        ax.set_ylabel("fraction of runs with final return > tau")
        ax.set_title("performance profile")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(run_dir / "profile.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _sort_key(v):
    return (0, v, "") if isinstance(v, int | float) else (1, 0, str(v))


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    show = not args.no_progress
    try:
        spec, run_dir = definition(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_host_devices(args)
    if show:
        print(f"building the sweep of {spec['base']['algo']} on {spec['base']['env']} ...",
              file=sys.stderr, flush=True)  # fmt: skip
    try:
        start_distributed(args)
        import jax

        from purejaxrl import sweep

        if args.log:
            from experiments import sinks as sinks_lib

            sinks_lib.check_sinks(args.log)
        batch, make_agent = make_batch(spec)
        devices = sweep.resolve_devices(args.devices)
        statics, chunks = sweep.plan(batch, spec["chunk"])
        done = load_chunks(run_dir, len(chunks)) if args.resume else {}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    writer = jax.process_index() == 0
    callback = show or bool(args.log)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(run_dir / "sweep.yaml", yaml.safe_dump(spec, sort_keys=False))
    show = show and writer
    if show:
        configs = len({int(c) for c in batch.configs})
        print(
            f"{batch.num_runs} runs ({configs} configurations x {spec['seeds']} seeds) in "
            f"{len(statics)} program(s), {len(chunks)} chunk(s) "
            f"({len(done)} done before) over {len(devices)} {devices[0].platform} device(s); "
            "compiling ...",
            file=sys.stderr,
            flush=True,
        )
    sinks = _sinks(args, run_dir, spec, batch) if writer and args.log else []
    t0 = time.perf_counter()
    try:
        result = sweep.run(
            batch,
            make_agent=make_agent,
            devices=devices,
            chunk=spec["chunk"],
            # every process compiles the same program: with the host callback when process 0
            # shows progress or logs, which the others then feed to a no-op
            progress=show if writer else (_ignore if callback else False),
            done=done,
            on_chunk=(lambda i, c, m: save_chunk(run_dir, i, m)) if writer else None,
            on_report=_report_to(sinks, batch) if sinks else None,
            log=(lambda m: print(m, file=sys.stderr)) if show else None,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; finish it with python -m experiments.sweep --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    finally:
        if sinks:
            from experiments.sinks import close_sinks

            close_sinks(sinks)
    wall_s = time.perf_counter() - t0
    if not writer:
        return 0
    write_results(run_dir, batch, result)
    summary = make_summary(spec, batch, result, args.bootstrap, wall_s)
    runs.write_json(run_dir / "summary.json", summary)
    plot(run_dir, batch, result, summary, args.bootstrap)
    best = summary["best"]
    lo, hi = summary["configurations"][best["config"]]["final_return_iqm_ci95"] or [None, None]
    print(
        f"best: {_label({f: best[f] for f in batch.fields})}: final return IQM "
        f"{best['final_return_iqm']:.2f} [{_fmt(lo)}, {_fmt(hi)}] over {spec['seeds']} seeds | "
        f"{summary['sps']:,.0f} env steps/s | compile {summary['compile_s']:.1f} s | "
        f"wall {wall_s:.1f} s\nsweep folder: {run_dir}"
    )
    return 0


def _ignore(done, total) -> None:
    """The progress function of processes other than 0: the same program, nothing shown."""


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _sinks(args, run_dir, spec, batch) -> list:
    from experiments import sinks

    return sinks.make_sinks(args.log, run_dir, spec, wandb_project=args.wandb_project)


def _report_to(sinks, batch):
    """on_report for sweep.run: one sinks.Reporter per configuration (its prefix names the
    configuration), fed that configuration's rows of each report (means over its seeds)."""
    from experiments.sinks import Reporter

    reporters: dict[int, Reporter] = {}

    def report(chunk, update_step, metrics):
        n = len(chunk.index)
        configs = batch.configs[chunk.index]
        for c in dict.fromkeys(configs.tolist()):
            rows = np.flatnonzero(configs == c)
            rows = rows[rows < n]
            if c not in reporters:
                values = {f: _plain(batch.values[f][chunk.index[rows[0]]]) for f in batch.fields}
                on_error = lambda m: print(m, file=sys.stderr)  # noqa: E731
                reporters[c] = Reporter(sinks, prefix=_label(values), on_error=on_error)
            reporters[c].report(update_step[rows], {k: v[rows] for k, v in metrics.items()})

    return report


def _plain(x):
    return x.item() if isinstance(x, np.generic) else x


if __name__ == "__main__":
    sys.exit(main())
