"""Run specs (YAML + key=value overrides) and run-folder IO shared by the experiment entry points.

A run spec is a flat mapping: `algo` (ppo | a2c | sac, the names in
`purejaxrl.checkpoint.ALGOS`), `seed` (base seed, default 0), `num_seeds` (default 1) and the
algorithm's config fields (`env_kwargs` a mapping). The run folder's config.yaml is written in the
same form, so `--config DIR/config.yaml` repeats a run.

Run folder:
    config.yaml    algo, seed, num_seeds and the full config
    metrics.csv    one row per update (see METRICS_DOC); a seed's return is blank until its
                   first finished episode
    summary.json   final returns, sps, compile_s, wall_s, ... (see `final_returns`)
    curve.png      mean episode return vs env steps, min-max band across seeds (blank rows left out)
    checkpoint/    orbax checkpoint of the seed-batched TrainState (purejaxrl.checkpoint)
    evaluation.json            written by experiments.evaluate
    evaluation.stale.json      an evaluation.json that a `--resume` which trained further made stale
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RUN_KEYS = {"algo": None, "seed": 0, "num_seeds": 1}
FINAL_FRACTION = 0.05  # final_return_*: mean episode_return over the last 5% of updates

METRICS_DOC = """\
metrics.csv: one row per update. Columns: update (1-based), env_steps (per seed),
episode_return_mean / _std / _min / _max (across seeds), episode_return_seed<i> (one column per
seed), then every other training metric averaged over seeds (episode_length, episodes_finished,
nan_skipped, learning_rate, loss, policy_loss, value_loss, entropy, approx_kl, clip_frac,
grad_norm). episode_return is the mean return of the episodes finished in that update, carried
forward when none finished; a seed's cell is empty until its first finished episode, and the
across-seed columns (and episode_length) use only the seeds that have one (empty when none has).
"""


# --------------------------------------------------------------------------- specs


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    return spec


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['learning_rate=1e-3', 'hidden_sizes=[32,32]', 'env_kwargs.max_steps_in_episode=200']."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if "." in key:
            outer, inner = key.split(".", 1)
            nested = dict(out.get(outer) or {})
            nested[inner] = value
            out[outer] = nested
        else:
            out[key] = value
    return out


def merge(spec: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """spec updated by overrides; a mapping override of a mapping field (`*_kwargs`, `objective`)
    updates it key by key."""
    out = dict(spec)
    for key, value in overrides.items():
        if _is_mapping_field(key) and isinstance(value, Mapping):
            out[key] = {**dict(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def _is_mapping_field(name: str) -> bool:
    """Static fields held as frozen mappings: `*_kwargs`, and those purejaxrl.config names."""
    from purejaxrl import config as C

    return C.is_mapping_field(name)


def number_or_text(value: Any) -> Any:
    """A string that reads as a number ('1e-4', which YAML 1.1 leaves a string) as that float;
    any other value unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(cls_name: str, name: str, default: Any, value: Any) -> Any:
    """Matches YAML values to the field's type: '1e-3' -> 0.001, 1e6 -> 1000000, [..] -> tuple."""
    where = f"{cls_name}.{name}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
        return value
    if isinstance(default, int | float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{where}: must be a number") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"{where}: must be a number")
        if isinstance(default, int):
            if not float(number).is_integer():
                raise ValueError(f"{where}: must be an integer")
            return int(number)
        return float(number)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
        return value
    if _is_mapping_field(name):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: must be a mapping")
        return dict(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: must be a list")
        return tuple(value)
    return value


@dataclasses.dataclass(frozen=True)
class RunSpec:
    algo: str
    seed: int
    num_seeds: int
    config: Any  # the algorithm's frozen config

    def to_dict(self) -> dict[str, Any]:
        from purejaxrl import config as C

        return {
            "algo": self.algo,
            "seed": self.seed,
            "num_seeds": self.num_seeds,
            **C.to_dict(self.config),
        }


def build_spec(values: Mapping[str, Any]) -> RunSpec:
    """RunSpec from a flat mapping; unknown keys and ill-typed values raise ValueError."""
    # Here, not at import: `experiments.train` starts fast. meta.lpo registers the objectives
    # "lpo", "dpo" and "mdpo"; meta.lpg registers "lpg".
    import meta.lpg  # noqa: F401
    import meta.lpo  # noqa: F401
    from purejaxrl import checkpoint

    algo = values.get("algo")
    if algo not in checkpoint.ALGOS:
        raise ValueError(f"algo={algo!r}: allowed values are {sorted(checkpoint.ALGOS)}")
    cls = checkpoint.ALGOS[algo][0]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = sorted({*fields, *RUN_KEYS})
    kwargs = {}
    for key, value in values.items():
        if key in RUN_KEYS:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, known, n=3)
            raise ValueError(
                f"unknown key {key!r} for algo {algo}"
                + (f"; did you mean {hint}?" if hint else f"; known keys are {known}")
            )
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs[key] = _coerce(cls.__name__, key, default, value)
    seed = _coerce("run", "seed", 0, values.get("seed", 0))
    num_seeds = _coerce("run", "num_seeds", 1, values.get("num_seeds", 1))
    if num_seeds < 1:
        raise ValueError(f"num_seeds={num_seeds}: must be a positive integer")
    config = checkpoint.config_from_dict(algo, kwargs)
    return RunSpec(algo=algo, seed=seed, num_seeds=num_seeds, config=config)


def default_run_dir(spec: RunSpec, root="runs") -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.config.env)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{spec.algo}-{env}-{stamp}"


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, text: str) -> None:
    """Writes via a temporary file and os.replace, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """JSON (indented; numpy scalars and arrays as Python values), written atomically."""
    atomic_write(path, json.dumps(data, indent=2, default=_plain_json) + "\n")


def _plain_json(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_config(run_dir: Path, spec: RunSpec) -> None:
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))


def metric_columns(metric_names: Sequence[str], num_seeds: int) -> list[str]:
    others = sorted(k for k in metric_names if k not in ("episode_return", "env_steps"))
    return [
        "update",
        "env_steps",
        "episode_return_mean",
        "episode_return_std",
        "episode_return_min",
        "episode_return_max",
        *(f"episode_return_seed{i}" for i in range(num_seeds)),
        *others,
    ]


def metric_rows(
    metrics: Mapping[str, np.ndarray], first_update: int, started: Sequence[bool] | None = None
) -> tuple[list, list]:
    """(columns, rows) from seed-batched metrics {name: [num_seeds, n]}; updates numbered from
    first_update + 1.

    A seed's episode_return (and its share of episode_length) is left empty until its first
    finished episode (`episodes_finished` > 0): before it, the in-program metric is a placeholder
    0. `started[i]`: seed i finished an episode before these updates (a resumed run); the
    across-seed columns use only the seeds with a return.
    """
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
    returns = metrics["episode_return"]
    num_seeds, n = returns.shape
    started = np.zeros(num_seeds, bool) if started is None else np.asarray(started, bool)
    if "episodes_finished" in metrics:
        has = started[:, None] | (np.cumsum(metrics["episodes_finished"] > 0, axis=1) > 0)
    else:  # a metric set without the count: nothing to tell apart
        has = np.ones((num_seeds, n), bool)
    columns = metric_columns(list(metrics), num_seeds)
    rows = []
    for j in range(n):
        r = returns[has[:, j], j]
        row = {
            "update": first_update + j + 1,
            "env_steps": int(metrics["env_steps"][0, j]),
            "episode_return_mean": r.mean() if r.size else None,
            "episode_return_std": r.std() if r.size else None,
            "episode_return_min": r.min() if r.size else None,
            "episode_return_max": r.max() if r.size else None,
        }
        row.update(
            {
                f"episode_return_seed{i}": returns[i, j] if has[i, j] else None
                for i in range(num_seeds)
            }
        )
        for name in columns[len(row) :]:
            if name == "episode_length":
                row[name] = metrics[name][has[:, j], j].mean() if r.size else None
            else:
                row[name] = metrics[name][:, j].mean()
        rows.append([_fmt(row[c]) for c in columns])
    return columns, rows


def _fmt(x) -> str:
    if x is None:  # no value yet (no finished episode): an empty cell, NaN when read back
        return ""
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.6g}"


def _float(text: str) -> float:
    return float(text) if text.strip() else float("nan")


def _read_rows(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return [], []
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    return (rows[0], rows[1:]) if rows else ([], [])


def read_metrics(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """(columns, float array [rows, columns]) of DIR/metrics.csv; ([], empty) if absent.
    Empty cells (a seed's return before its first finished episode) read as NaN."""
    columns, rows = _read_rows(run_dir)
    data = np.asarray([[_float(x) for x in row] for row in rows], dtype=np.float64)
    return columns, data.reshape(len(rows), len(columns))


def write_metrics(run_dir: Path, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    lines = [",".join(columns)] + [",".join(r) for r in rows]
    atomic_write(Path(run_dir) / "metrics.csv", "\n".join(lines) + "\n")


def truncate_metrics(run_dir: Path, last_update: int) -> None:
    """Keeps only rows with update <= last_update (drops rows an interrupted run left behind)."""
    columns, rows = _read_rows(run_dir)
    if columns:
        write_metrics(run_dir, columns, [r for r in rows if int(r[0]) <= last_update])


def append_metrics(run_dir: Path, metrics: Mapping[str, np.ndarray], first_update: int) -> None:
    """Appends one row per update of seed-batched `metrics` (updates first_update+1, ...).

    Rows after first_update are replaced. A seed with a return in a kept row has finished an
    episode already, so its cells stay filled in the new rows (a resumed run)."""
    old_columns, old = _read_rows(run_dir)
    old = [r for r in old if int(r[0]) <= first_update]
    num_seeds = np.shape(metrics["episode_return"])[0]
    started = [
        f"episode_return_seed{i}" in old_columns
        and any(r[old_columns.index(f"episode_return_seed{i}")].strip() for r in old)
        for i in range(num_seeds)
    ]
    columns, rows = metric_rows(metrics, first_update, started)
    if old_columns and old_columns != columns:
        raise ValueError(f"{run_dir}/metrics.csv has other columns than this run writes")
    write_metrics(run_dir, columns, old + rows)


def has_finished_episode(run_dir: Path) -> bool:
    """Whether any seed of DIR/metrics.csv has a return (has finished an episode)."""
    columns, data = read_metrics(run_dir)
    seed_cols = [i for i, c in enumerate(columns) if c.startswith("episode_return_seed")]
    return bool(len(data)) and bool(np.isfinite(data[:, seed_cols]).any())


def final_returns(run_dir: Path) -> dict[str, Any]:
    """Per-seed mean episode_return over the last FINAL_FRACTION of updates (at least one).

    Empty cells (before a seed's first finished episode) are left out of a seed's mean. A seed
    that finished no episode in the whole run has no final return: NaN, listed in
    `seeds_without_finished_episode`, and final_return_mean/std are NaN then too (a mean over the
    other seeds would hide it); `experiments.train` prints a warning.
    """
    columns, data = read_metrics(run_dir)
    seed_cols = [i for i, c in enumerate(columns) if c.startswith("episode_return_seed")]
    if not len(data):
        return {"final_return_mean": float("nan"), "final_return_per_seed": []}
    window = max(1, math.ceil(FINAL_FRACTION * len(data)))
    last = data[-window:, seed_cols]
    counts = np.isfinite(last).sum(axis=0)
    per_seed = np.where(counts > 0, np.nansum(last, axis=0) / np.maximum(counts, 1), np.nan)
    missing = [i for i, c in enumerate(seed_cols) if not np.isfinite(data[:, c]).any()]
    return {
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "final_return_window_updates": int(window),
        "last_return_per_seed": [float(x) for x in data[-1, seed_cols]],
        "seeds_without_finished_episode": missing,
    }


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    atomic_write(Path(run_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def curve_points(run_dir: Path) -> dict[str, np.ndarray]:
    """curve.png's data: env_steps and the across-seed mean/min/max of episode_return, for the
    updates where at least one seed has a return (rows before any finished episode left out)."""
    columns, data = read_metrics(run_dir)
    if not len(data):
        return {k: np.zeros(0) for k in ("env_steps", "mean", "min", "max")}
    col = {c: i for i, c in enumerate(columns)}
    keep = np.isfinite(data[:, col["episode_return_mean"]])
    return {
        "env_steps": data[keep, col["env_steps"]],
        "mean": data[keep, col["episode_return_mean"]],
        "min": data[keep, col["episode_return_min"]],
        "max": data[keep, col["episode_return_max"]],
    }


def plot_curve(run_dir: Path, title: str) -> Path:
    """curve.png: mean episode return vs env steps (per seed), min-max band across seeds; the
    updates before the first finished episode are left out (see `curve_points`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, _ = read_metrics(run_dir)
    num_seeds = sum(c.startswith("episode_return_seed") for c in columns)
    points = curve_points(run_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if len(points["env_steps"]):
        x = points["env_steps"]
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
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "curve.png"
    tmp = path.with_name(".curve.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
