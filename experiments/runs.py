"""The run spec of `experiments.train` (a flat YAML mapping: `algo`, `seed`, `num_seeds` and the
algorithm's config fields) and its run folder's metrics.csv, final returns and learning curve."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import command

RUN_KEYS = {"algo": None, "seed": 0, "num_seeds": 1}

METRICS_DOC = """\
metrics.csv: one row per update. Columns: update (1-based), env_steps (per seed),
episode_return_mean / _std / _min / _max (across seeds), episode_return_seed<i> (one column per
seed), then every other training metric averaged over seeds (episode_length, episodes_finished,
nan_skipped, learning_rate, loss, policy_loss, value_loss, entropy, approx_kl, clip_frac,
grad_norm). episode_return is the mean return of the episodes finished in that update, carried
forward when none finished; a seed's cell is empty until its first finished episode, and the
across-seed columns (and episode_length) use only the seeds that have one (empty when none has).
"""


def register_objectives() -> None:
    """Adds meta/'s objectives ("lpo", "dpo", "mdpo", "lpg") to the objective registry, so a
    spec or a checkpoint may name them (when needed, not at import: the CLI starts fast)."""
    from meta import objectives

    objectives.register()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    algo: str
    seed: int
    num_seeds: int
    config: Any  # the algorithm's frozen config

    def to_dict(self) -> dict[str, Any]:
        from purejaxrl import config as C

        return {**{k: getattr(self, k) for k in RUN_KEYS}, **C.to_dict(self.config)}


def build_spec(values: Mapping[str, Any]) -> RunSpec:
    """RunSpec from a flat mapping; an unknown key or an ill-typed value is a ValueError."""
    register_objectives()
    from purejaxrl import algos
    from purejaxrl import config as C

    algo = values.get("algo")
    if algo not in algos.ALGOS:
        raise ValueError(f"algo={algo!r}: allowed values are {sorted(algos.ALGOS)}")
    cls = algos.ALGOS[algo][0]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    known = sorted({*fields, *RUN_KEYS})
    for key in values:
        if key not in known:
            hint = C.close_match(key, known, n=3) or f"; known keys are {known}"
            raise ValueError(f"unknown key {key!r} for algo {algo}{hint}")
    config = algos.config_from_dict(algo, {k: v for k, v in values.items() if k in fields})
    run = {k: C.whole(d, values.get(k, d)) for k, d in RUN_KEYS.items() if k != "algo"}
    for key, low in (("seed", 0), ("num_seeds", 1)):
        command.as_int(key, run[key], low)
    return RunSpec(algo=algo, config=config, **run)


def write_config(run_dir, spec: RunSpec) -> None:
    """DIR/config.yaml: the spec, so that `--config DIR/config.yaml` repeats the run."""
    command.write_yaml(Path(run_dir) / "config.yaml", spec.to_dict())


def metric_rows(
    metrics: Mapping[str, np.ndarray], first_update: int, started: Sequence[bool] | None = None
) -> tuple[list, list]:
    """(columns, rows) of metrics.csv (METRICS_DOC) from seed-batched metrics {name: [num_seeds, n]}
    for updates first_update+1...; `started[i]`: seed i finished an episode before them."""
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
    returns = metrics["episode_return"]
    num_seeds, n = returns.shape
    started = np.zeros(num_seeds, bool) if started is None else np.asarray(started, bool)
    finished = metrics.get("episodes_finished", np.ones((num_seeds, n)))  # none: all measured
    has = started[:, None] | (np.cumsum(finished > 0, axis=1) > 0)
    others = sorted(k for k in metrics if k not in ("episode_return", "env_steps"))
    stats = ("mean", "std", "min", "max")
    columns = ["update", "env_steps", *(f"episode_return_{s}" for s in stats)]
    columns += [*(f"episode_return_seed{i}" for i in range(num_seeds)), *others]
    rows = []
    for j in range(n):
        r = returns[has[:, j], j]
        row = [first_update + j + 1, int(metrics["env_steps"][0, j])]
        row += [getattr(r, s)() if r.size else None for s in stats]
        row += [returns[i, j] if has[i, j] else None for i in range(num_seeds)]
        for name in others:  # episode_length: only the seeds with a return
            values = metrics[name][has[:, j] | (name != "episode_length"), j]
            row.append(values.mean() if values.size else None)
        rows.append(row)
    return columns, rows


def read_metrics(run_dir) -> tuple[list[str], np.ndarray]:
    """(columns, float array [rows, columns]) of DIR/metrics.csv; ([], empty) if absent.
    Empty cells (a seed's return before its first finished episode) read as NaN."""
    path = Path(run_dir) / "metrics.csv"
    lines = path.read_text().splitlines() if path.is_file() else []
    columns, *rows = [row for row in csv.reader(lines) if row] or [[]]
    try:
        data = [[float(x) if x.strip() else np.nan for x in row] for row in rows]
    except ValueError as e:
        raise ValueError(f"{run_dir}/metrics.csv is unreadable: {e}") from None
    return columns, np.asarray(data, dtype=np.float64).reshape(len(rows), len(columns))


def seed_columns(columns: Sequence[str]) -> list[int]:
    """The indices of the per-seed return columns."""
    return [i for i, c in enumerate(columns) if c.startswith("episode_return_seed")]


def append_metrics(run_dir, metrics: Mapping[str, np.ndarray], first_update: int) -> None:
    """DIR/metrics.csv's rows up to first_update, then those of seed-batched `metrics`."""
    started, num_seeds = seeds_with_return(run_dir, first_update), len(metrics["episode_return"])
    columns, rows = metric_rows(metrics, first_update, (started + [False] * num_seeds)[:num_seeds])
    if read_metrics(run_dir)[0] not in ([], columns):
        raise ValueError(f"{run_dir}/metrics.csv has other columns than this run writes")
    command.write_csv(Path(run_dir) / "metrics.csv", columns, rows, keep_upto=first_update)


def truncate_metrics(run_dir, last_update: int) -> None:
    """Keeps only rows with update <= last_update (drops rows an interrupted run left behind)."""
    columns, _ = read_metrics(run_dir)
    if columns:
        command.write_csv(Path(run_dir) / "metrics.csv", columns, [], keep_upto=last_update)


def seeds_with_return(run_dir, last_update: int | None = None) -> list[bool]:
    """Per seed of DIR/metrics.csv: has it a return in the rows up to `last_update` (None: all)."""
    columns, data = read_metrics(run_dir)
    if last_update is not None and len(data):
        data = data[data[:, 0] <= last_update]
    return [bool(np.isfinite(data[:, i]).any()) for i in seed_columns(columns)]


def final_returns(run_dir) -> dict[str, Any]:
    """summary.json's final returns: per seed, `purejaxrl.scores.final_return` of its metrics.csv
    column; NaN for a seed that finished no episode, and then final_return_mean/std too."""
    from purejaxrl import scores

    columns, data = read_metrics(run_dir)
    if not len(data):
        return {"final_return_mean": float("nan"), "final_return_per_seed": []}
    returns = data[:, seed_columns(columns)].T  # [seeds, updates], NaN before the first finish
    per_seed = np.asarray(scores.final_return(returns, np.isfinite(returns)), np.float64)
    return {
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "final_return_window_updates": scores.final_window(len(data)),
        "last_return_per_seed": [float(x) for x in returns[:, -1]],
        "seeds_without_finished_episode": [
            i for i, has in enumerate(np.isfinite(returns).any(axis=1)) if not has
        ],
    }


def curve_points(run_dir) -> dict[str, np.ndarray]:
    """curve.png's data: env_steps and the across-seed mean/min/max of episode_return, for the
    updates where at least one seed has a return."""
    columns, data = read_metrics(run_dir)
    names = {"env_steps": "env_steps", **{s: f"episode_return_{s}" for s in ("mean", "min", "max")}}
    if not len(data):
        return {k: np.zeros(0) for k in names}
    keep = np.isfinite(data[:, columns.index("episode_return_mean")])
    return {k: data[keep, columns.index(c)] for k, c in names.items()}


def plot_curve(run_dir, title: str) -> Path:
    """DIR/curve.png: `curve_points`' mean return vs env steps, min-max band across seeds."""
    num_seeds, points = len(seed_columns(read_metrics(run_dir)[0])), curve_points(run_dir)
    x = points["env_steps"]
    fig, ax = command.pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
    if len(x):
        ax.plot(x, points["mean"], lw=1.8, label=f"mean of {num_seeds} seeds")
        if num_seeds > 1:
            ax.fill_between(
                x, points["min"], points["max"], alpha=0.25, label="min-max across seeds"
            )
        ax.legend(loc="best")
    else:
        ax.text(
            0.5, 0.5, "no episode finished yet", ha="center", va="center", transform=ax.transAxes
        )
    ax.set(xlabel="environment steps (per seed)", ylabel="episode return", title=title)
    ax.grid(alpha=0.3)
    return command.save_figure(fig, Path(run_dir) / "curve.png")
