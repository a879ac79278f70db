"""Logging sinks for training metrics, TensorBoard event files and Weights & Biases (both optional
packages), and `Reporter`, an agent's progress_fn that feeds them. What is logged, against which
step, and how per-seed reports are collected: docs/experiments.md, "Logging sinks".

    sinks = make_sinks(["tensorboard", "wandb"], run_dir, config)   # checks names and packages
    reporter = Reporter(sinks, num_seeds=4)      # progress_fn(update_step, metrics) of an agent
    ...
    reporter.flush()
    close_sinks(sinks)

A sink has `log(step, scalars, prefix=None)` (step: env steps per seed; a prefix such as
"lr=0.001", one per configuration of a sweep, makes each name "prefix/name") and `close()`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

SINKS = {  # name -> (package imported, pip package)
    "tensorboard": ("tensorboardX", "tensorboardX"),
    "wandb": ("wandb", "wandb"),
}
INSTALL_HINT = "pip install 'purejaxrl-research[log]'"
STEP_METRIC = "env_steps"
NAMESPACE = "train"
DEFAULT_WANDB_PROJECT = "purejaxrl-research"


class SinkError(ValueError):
    """A sink that cannot be used: unknown name, missing package, or a failed start."""


class Sink(Protocol):
    def log(self, step: int, scalars: Mapping[str, float], prefix: str | None = None) -> None: ...

    def close(self) -> None: ...


def tag(name: str, prefix: str | None) -> str:
    return f"{prefix}/{name}" if prefix else name


def tb_tag(name: str, prefix: str | None) -> str:
    """A TensorBoard tag: characters other than letters, digits and `_-./` become "_" (as
    tensorboardX would, with a log line each time), e.g. "lr=0.001/x" -> "lr_0.001/x"."""
    return re.sub(r"[^-/\w.]", "_", tag(name, prefix)).lstrip("/")


def _plain(config: Mapping[str, Any]) -> dict:
    """YAML/JSON-ready: tuples as lists, numpy scalars and arrays as Python values."""
    return json.loads(json.dumps(config, default=lambda x: x.tolist()))


class TensorBoardSink:
    """Event files in `log_dir` (tensorboardX), `config` written once as text (tag "config").
    purge_step: a resumed run's first new step; TensorBoard hides older events from it on."""

    name = "tensorboard"

    def __init__(self, log_dir, config: Mapping[str, Any], purge_step: int | None = None):
        require(self.name)
        from tensorboardX import SummaryWriter

        # Files are named by second and host: the suffix keeps a quick resume from reusing one.
        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.writer = SummaryWriter(
            str(log_dir), purge_step=purge_step, flush_secs=10, filename_suffix=suffix
        )
        text = yaml.safe_dump(_plain(config), sort_keys=False)
        self.writer.add_text("config", f"```\n{text}```", global_step=purge_step or 0)

    def log(self, step: int, scalars: Mapping[str, float], prefix: str | None = None) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(tb_tag(name, prefix), float(value), global_step=int(step))

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run of `project` with `config`, its files in `run_dir/wandb/` (WANDB_MODE=offline
    needs no network or login); `run_id` continues that run. Each name has a step metric of its
    own ("env_steps" or "prefix/env_steps"). The console is not captured."""

    name = "wandb"

    def __init__(self, project, run_dir, config, *, name=None, run_id: str | None = None):
        require(self.name)
        import wandb

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.defined: set[str] = set()
        try:
            self.run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
                dir=str(run_dir),
                config=_plain(config),
                mode=os.environ.get("WANDB_MODE") or None,
                name=name,
                id=run_id,
                resume="allow" if run_id else None,
                reinit="create_new",
                settings=wandb.Settings(console="off"),
            )
        except Exception as e:
            raise SinkError(
                f"--log wandb: wandb.init failed ({type(e).__name__}: {e}); log in with "
                "`wandb login`, or set WANDB_MODE=offline to write the run locally and "
                "`wandb sync` it later"
            ) from e

    def log(self, step: int, scalars: Mapping[str, float], prefix: str | None = None) -> None:
        step_key = tag(STEP_METRIC, prefix)
        data = {tag(name, prefix): float(value) for name, value in scalars.items()}
        for key in [step_key, *data]:  # define_metric reads "." as nesting: a dot is escaped
            if key not in self.defined:
                step_metric = None if key == step_key else step_key.replace(".", "\\.")
                self.run.define_metric(key.replace(".", "\\."), step_metric=step_metric)
                self.defined.add(key)
        self.run.log({**data, step_key: int(step)})

    def close(self) -> None:
        self.run.finish()


def check_sinks(names: Sequence[str]) -> list[str]:
    """The sink names (comma-separated items split, duplicates dropped), checked without starting
    any: an unknown name or a missing package raises SinkError."""
    out: list[str] = []
    for item in names:
        for name in (n.strip().lower() for n in str(item).split(",")):
            if not name or name in out:
                continue
            if name not in SINKS:
                raise SinkError(
                    f"--log {name}: unknown logging sink; choose from {sorted(SINKS)} "
                    "(metrics.csv is always written)"
                )
            require(name)
            out.append(name)
    return out


def require(name: str) -> None:
    """SinkError saying how to install the package of sink `name` when it is missing."""
    module, package = SINKS[name]
    if importlib.util.find_spec(module) is None:
        raise SinkError(
            f"--log {name} needs the {package} package, which is not installed: "
            f"{INSTALL_HINT} (or pip install {package})"
        )


def make_sinks(
    names: Sequence[str],
    run_dir,
    config: Mapping[str, Any],
    *,
    wandb_project: str | None = None,
    resume_step: int | None = None,
) -> list[Sink]:
    """The sinks `names` of the run folder `run_dir`: "tensorboard" writes `run_dir/tb/`, "wandb"
    `run_dir/wandb/` (a run named after the folder). resume_step: the step a resumed run goes on
    from (TensorBoard hides later events; W&B continues the run in `run_dir/wandb/`). SinkError
    for an unknown name, a missing package or a failed start (closing those started)."""
    run_dir, resumed = Path(run_dir), resume_step is not None
    started: list[Sink] = []
    try:
        for name in check_sinks(names):
            if name == "tensorboard":
                purge = int(resume_step) + 1 if resumed else None
                started.append(TensorBoardSink(run_dir / "tb", config, purge_step=purge))
            else:
                run_id = previous_wandb_id(run_dir) if resumed else None
                started.append(WandbSink(wandb_project, run_dir, config,
                                         name=run_dir.resolve().name, run_id=run_id))  # fmt: skip
    except BaseException:
        close_sinks(started)
        raise
    return started


def previous_wandb_id(run_dir) -> str | None:
    """The id of the newest W&B run in `run_dir/wandb/` (folders `[offline-]run-<time>-<id>`)."""
    found = []
    for path in (Path(run_dir) / "wandb").glob("*run-*-*"):
        m = re.fullmatch(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)", path.name)
        if m and path.is_dir():
            found.append((m.group(1), m.group(2)))
    return max(found)[1] if found else None


def close_sinks(sinks: Sequence[Sink], on_error: Callable[[str], None] | None = None) -> None:
    """Closes every sink; the first error is raised after all were tried, or with `on_error`
    reported to it as a warning (a run whose results are written loses only the log's tail)."""
    error = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as e:
            error = error or e
    if error is not None and on_error is None:
        raise error
    if error is not None:
        on_error(f"warning: closing the logging sinks failed: {error}")


def per_seed(value, num_seeds: int) -> np.ndarray:
    """float64 `[num_seeds]` from a metric batched over seeds (`[num_seeds, ...]`, extra axes
    averaged) or shared by them (broadcast)."""
    x = np.asarray(value, dtype=np.float64)
    if x.ndim and x.shape[0] == num_seeds:
        return x.reshape(num_seeds, -1).mean(axis=1)
    return np.full(num_seeds, x.mean())


def report_scalars(
    update_step, metrics: Mapping[str, Any], started: np.ndarray | None = None
) -> tuple[int, dict[str, float], np.ndarray]:
    """(step, scalars, started) of one report: update_step `[S]` (or a scalar, one seed), metrics
    {name: [S, ...]}; `started[i]`: seed i finished an episode before (updated and returned)."""
    updates = np.atleast_1d(np.asarray(update_step))
    n = updates.shape[0]
    seeds = {k: per_seed(v, n) for k, v in metrics.items()}
    started = np.zeros(n, bool) if started is None else np.array(started, bool)
    returns = seeds.get("episode_return")
    if "episodes_finished" in seeds:
        started |= seeds["episodes_finished"] > 0
        if returns is not None:
            started |= np.isfinite(returns) & (returns != 0)
    else:  # a metric set without the count: nothing to tell apart (as metrics.csv)
        started[:] = True
    step = int(np.max(seeds[STEP_METRIC])) if STEP_METRIC in seeds else int(np.max(updates))
    scalars = {f"{NAMESPACE}/update": float(np.max(updates))}
    for name, values in seeds.items():
        if name == STEP_METRIC:
            continue
        if name in ("episode_return", "episode_length"):
            if not started.any():
                continue
            values = values[started]
        scalars[f"{NAMESPACE}/{name}"] = float(np.mean(values))
    return step, scalars, started


class Reporter:
    """Feeds `sinks`: an agent's `progress_fn(update_step, metrics)`, or `report` for whole
    reports. prefix: every sink's `log` prefix; num_seeds: how many unbatched calls (one per seed,
    under a vmap) make a report (None: collected until another update or `flush`); started: per
    seed, whether it finished an episode before (a resume); on_error(message): told once when a
    sink fails (it is dropped; training goes on)."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        prefix: str | None = None,
        *,
        num_seeds: int | None = None,
        started: Sequence[bool] | None = None,
        on_error: Callable[[str], None] | None = None,
    ):
        self.sinks, self.prefix, self.num_seeds = list(sinks), prefix, num_seeds
        self.started = None if started is None else np.asarray(started, bool)
        self.on_error = on_error
        self._pending: list[tuple[int, dict]] = []

    def __call__(self, update_step, metrics) -> None:
        if np.ndim(update_step) != 0:
            self.flush()
            return self.report(update_step, metrics)
        step = int(update_step)  # one seed of a callback unrolled over a vmap
        if self._pending and self._pending[0][0] != step:
            self.flush()
        means = {k: float(np.mean(np.asarray(v, dtype=np.float64))) for k, v in metrics.items()}
        self._pending.append((step, means))
        if self.num_seeds is not None and len(self._pending) >= self.num_seeds:
            self.flush()

    def flush(self) -> None:
        """Logs the collected per-seed calls of an update as one report."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.report(
            np.array([s for s, _ in pending]),
            {k: np.array([m.get(k, np.nan) for _, m in pending]) for k in pending[0][1]},
        )

    def report(self, update_step, metrics: Mapping[str, Any]) -> None:
        """Logs one report batched over seeds (`[S]` values; or scalars for one seed)."""
        step, scalars, self.started = report_scalars(update_step, metrics, self.started)
        for sink in list(self.sinks):
            try:
                sink.log(step, scalars, prefix=self.prefix)
            except Exception as e:
                self.sinks.remove(sink)
                name = getattr(sink, "name", type(sink).__name__)
                if self.on_error is not None:
                    self.on_error(
                        f"warning: logging to {name} failed ({type(e).__name__}: {e}); "
                        "it stops, training and metrics.csv go on"
                    )
