"""Run specs (YAML + key=value overrides) and run-folder IO shared by the experiment entry points.

A run spec is a flat mapping: `algo` (ppo | a2c), `seed` (base seed, default 0), `num_seeds`
(default 1) and the algorithm's config fields (`env_kwargs` a mapping). The run folder's
config.yaml is written in the same form, so `--config DIR/config.yaml` repeats a run.

Run folder:
    config.yaml    algo, seed, num_seeds and the full config
    metrics.csv    one row per update (see METRICS_DOC)
    summary.json   final returns, sps, compile_s, wall_s, ... (see `write_summary`)
    curve.png      mean episode return vs env steps, min-max band across seeds
    checkpoint/    orbax checkpoint of the seed-batched TrainState (purejaxrl.checkpoint)
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

from purejaxrl import checkpoint

RUN_KEYS = {"algo": None, "seed": 0, "num_seeds": 1}
FINAL_FRACTION = 0.05  # final_return_*: mean episode_return over the last 5% of updates

METRICS_DOC = """\
metrics.csv: one row per update. Columns: update (1-based), env_steps (per seed),
episode_return_mean / _std / _min / _max (across seeds), episode_return_seed<i> (one column per
seed), then every other training metric averaged over seeds (episode_length, episodes_finished,
nan_skipped, learning_rate, loss, policy_loss, value_loss, entropy, approx_kl, clip_frac,
grad_norm).
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
    """spec updated by overrides; a mapping override of a `*_kwargs` field updates it key by key."""
    out = dict(spec)
    for key, value in overrides.items():
        if key.endswith("_kwargs") and isinstance(value, Mapping):
            out[key] = {**dict(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


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
    if name.endswith("_kwargs"):
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


def metric_rows(metrics: Mapping[str, np.ndarray], first_update: int) -> tuple[list, list]:
    """(columns, rows) from seed-batched metrics {name: [num_seeds, n]}; updates numbered from
    first_update + 1."""
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
    returns = metrics["episode_return"]
    num_seeds, n = returns.shape
    columns = metric_columns(list(metrics), num_seeds)
    rows = []
    for j in range(n):
        r = returns[:, j]
        row = {
            "update": first_update + j + 1,
            "env_steps": int(metrics["env_steps"][0, j]),
            "episode_return_mean": r.mean(),
            "episode_return_std": r.std(),
            "episode_return_min": r.min(),
            "episode_return_max": r.max(),
        }
        row.update({f"episode_return_seed{i}": r[i] for i in range(num_seeds)})
        for name in columns[len(row) :]:
            row[name] = metrics[name][:, j].mean()
        rows.append([_fmt(row[c]) for c in columns])
    return columns, rows


def _fmt(x) -> str:
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.6g}"


def _read_rows(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return [], []
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    return (rows[0], rows[1:]) if rows else ([], [])


def read_metrics(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """(columns, float array [rows, columns]) of DIR/metrics.csv; ([], empty) if absent."""
    columns, rows = _read_rows(run_dir)
    data = np.asarray([[float(x) for x in row] for row in rows], dtype=np.float64)
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
    """Appends one row per update of seed-batched `metrics` (updates first_update+1, ...)."""
    columns, rows = metric_rows(metrics, first_update)
    old_columns, old = _read_rows(run_dir)
    if old_columns and old_columns != columns:
        raise ValueError(f"{run_dir}/metrics.csv has other columns than this run writes")
    old = [r for r in old if int(r[0]) <= first_update]
    write_metrics(run_dir, columns, old + rows)


def final_returns(run_dir: Path) -> dict[str, Any]:
    """Per-seed mean episode_return over the last FINAL_FRACTION of updates (at least one)."""
    columns, data = read_metrics(run_dir)
    seed_cols = [i for i, c in enumerate(columns) if c.startswith("episode_return_seed")]
    if not len(data):
        return {"final_return_mean": float("nan"), "final_return_per_seed": []}
    window = max(1, math.ceil(FINAL_FRACTION * len(data)))
    per_seed = data[-window:, seed_cols].mean(axis=0)
    return {
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "final_return_window_updates": int(window),
        "last_return_per_seed": [float(x) for x in data[-1, seed_cols]],
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


def plot_curve(run_dir: Path, title: str) -> Path:
    """curve.png: mean episode return vs env steps (per seed), min-max band across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, data = read_metrics(run_dir)
    col = {c: i for i, c in enumerate(columns)}
    num_seeds = sum(c.startswith("episode_return_seed") for c in columns)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if len(data):
        x = data[:, col["env_steps"]]
        ax.plot(x, data[:, col["episode_return_mean"]], lw=1.8, label=f"mean of {num_seeds} seeds")
        if num_seeds > 1:
            ax.fill_between(
                x,
                data[:, col["episode_return_min"]],
                data[:, col["episode_return_max"]],
                alpha=0.25,
                label="min-max across seeds",
            )
        ax.legend(loc="best")
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
