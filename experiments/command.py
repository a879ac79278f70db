"""The run skeleton of every experiment command, and the run-folder helpers they share.

A command (`python -m experiments.<name>`) is a `Command`: its own flags and plan -> execute ->
report. `run(command, argv)` is the whole CLI (its docstring lists the steps); settings are a YAML
mapping (--config) deep-merged with `key=value` overrides (`parse_overrides`); every file of a run
folder is written atomically. How to add a command: docs/architecture.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: '1e-4' is a number (YAML 1.1 wants '1.0e-4')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)"
        r"(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """YAML text -> Python values (YAML 1.2 floats, see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


@dataclasses.dataclass
class Plan:
    """What every command's plan holds (a command's plan subclasses it): the run folder, the mode
    ("new", "resume", or the command's own), whether to show progress, and `done`: set to the
    message saying so when there is nothing left to do."""

    run_dir: Path
    mode: str = "new"
    progress: bool = True
    done: str | None = None

    def say(self, message: str) -> None:
        """A status line on stderr (nothing with --no-progress)."""
        if self.progress:
            print(message, file=sys.stderr, flush=True)


def _nothing(*_):
    return None


@dataclasses.dataclass(frozen=True)
class Command:
    """One experiment command: only what is its own.

    prog: the module run with -m ("experiments.train"); plan(args) -> Plan (ValueError on bad
    input, nothing written); execute(plan) -> summary dict; report(plan, summary) -> the final
    lines (or None); arguments(parser): the command's own flags; describe(args): the first status
    line, before jax starts; shards: it shards over devices (--devices N; on CPU the host's cores
    are made devices); resume: it has --resume DIR; continue_with(plan): the flag that continues
    an interrupted run (default --resume)."""

    prog: str
    description: str
    plan: Callable[[argparse.Namespace], Plan]
    execute: Callable[[Plan], dict]
    report: Callable[[Plan, dict], str | None]
    arguments: Callable[[argparse.ArgumentParser], None] = _nothing
    describe: Callable[[argparse.Namespace], str | None] = _nothing
    epilog: str = ""
    shards: bool = False
    resume: bool = True
    continue_with: Callable[[Plan], str] = lambda plan: "--resume"


def parser(command: Command) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {command.prog}",
        description=command.description,
        epilog=command.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (YAML values)")
    p.add_argument("--config", help="YAML settings (see experiments/configs/)")
    p.add_argument("--out", help="run folder (default: under runs/, named after the run)")
    if command.resume:
        p.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    if command.shards:
        p.add_argument(
            "--devices",
            type=int,
            metavar="N",
            help="shard over N devices (default: all; on CPU, one per core)",
        )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or status lines (errors, warnings and the final lines remain)",
    )
    command.arguments(p)
    return p


def run(command: Command, argv: Sequence[str] | None = None) -> int:
    """One invocation of `command`; returns the exit code. 1. parse argv (the shared flags and
    the command's own); 2. print `describe(args)` before jax is imported; 3. for a command that
    shards, make the host's CPU cores jax devices before jax's backend starts; 4. `plan(args)`
    checks everything and writes nothing: a ValueError is `error: ...` and EXIT_BAD_INPUT;
    5. a plan with `done` set has nothing left to do; 6. `execute(plan)` writes the run folder
    and returns the summary (a logging sink that fails to start: EXIT_BAD_INPUT; Ctrl-C: EXIT_INTERRUPTED and the
    command that continues); 7. print `report(plan, summary)`."""
    args = parser(command).parse_args(argv)
    if not args.no_progress:
        message = command.describe(args)
        if message:
            print(message, file=sys.stderr, flush=True)
    try:
        if command.shards:
            use_host_cores(args.devices)
        plan = command.plan(args)
    except ValueError as e:  # bad settings, unknown env or key, occupied or foreign folder
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if plan.done:
        print(plan.done, file=sys.stderr)
        return EXIT_OK
    try:
        summary = command.execute(plan)
    except ValueError as e:
        from purejaxrl.sinks import SinkError  # lazy: a command starts before purejaxrl loads

        if not isinstance(e, SinkError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        how = (
            f"continue with python -m {command.prog} {command.continue_with(plan)} {plan.run_dir}"
            if command.resume
            else f"{plan.run_dir} keeps what finished"
        )
        print(f"\ninterrupted; {how}", file=sys.stderr)
        return EXIT_INTERRUPTED
    lines = command.report(plan, summary)
    if lines:
        print(lines)
    return EXIT_OK


# --------------------------------------------------------------------------- devices


def use_host_cores(devices: int | None = None) -> None:
    """On CPU, makes the host's cores (or `devices`, if more) jax devices by setting XLA's host
    device count, so that sharded programs use every core. It must come before jax's backend
    starts; a count already in XLA_FLAGS wins. ValueError if the backend has started already with
    fewer devices than `devices` asks for."""
    if devices is not None and devices < 1:
        raise ValueError(f"--devices={devices}: must be a positive integer")
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            import jax

            if devices is not None and jax.device_count() < devices:
                raise ValueError(
                    f"--devices={devices}: jax started with {jax.device_count()} device(s)"
                )
            return
    if "xla_force_host_platform_device_count" in flags:
        return
    count = max(devices or 1, os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def environment() -> dict[str, Any]:
    """The summary's record of where a run ran: device, device count, jax and python versions."""
    import jax

    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": jax.device_count(),
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


# --------------------------------------------------------------------------- settings


def load_yaml(path) -> dict:
    """The mapping in a YAML file; ValueError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        values = read_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    return values


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['es.population_size=32', 'hidden_sizes=[32,32]'] -> a nested mapping (every dot nests;
    values are YAML, text that is not YAML stays text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            value = read_yaml(text) if text.strip() else None
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


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `update`; mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """--config's mapping (none: {}) merged with the key=value overrides."""
    values = load_yaml(args.config) if args.config else {}
    return merge(values, parse_overrides(args.overrides))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"es": {"sigma": 0.03}} -> {"es.sigma": 0.03}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def plain(value):
    """YAML/JSON-ready: tuples as lists, numpy scalars and arrays as Python values, recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- settings checks


def check_keys(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """ValueError naming the first key of `values` not among `keys` (and its close match)."""
    from purejaxrl.config import close_match  # lazy: jax

    for key in values:
        if key not in keys:
            raise ValueError(
                f"unknown key {key!r}{close_match(key, keys)} (known keys: {list(keys)})"
            )


def as_int(name: str, value, low: int) -> int:
    """`value` if it is an integer >= `low`, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    return value


def positive_flags(args: argparse.Namespace, *names: str) -> None:
    """ValueError for the first of the integer options `names` (attribute names) given < 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value}: must be a positive integer")


def checked(kind: type, ok, need: str):
    """An argparse type: `kind(text)` where it is finite and `ok`, else "<text>: must be <need>"."""

    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{text}: must be {need}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


positive_int = checked(int, lambda v: v > 0, "a positive integer")


def check_unique(args: argparse.Namespace, *flags: str) -> None:
    """ValueError naming the first of `flags` (list options) whose values repeat."""
    for flag in flags:
        values = getattr(args, flag) or []
        if len(set(values)) != len(values):
            raise ValueError(f"--{flag} {' '.join(map(str, values))}: repeated value")


def mapping(name: str, value) -> dict:
    """`value` as a dict (None: {}); ValueError naming `name` if it is not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}={value!r}: must be a mapping")
    return dict(value)


def field_default(cls, name: str):
    """The default of the dataclass `cls`'s field `name` (its factory's value)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def typed(name: str, cls, values):
    """Config `cls` (which checks its fields) from the mapping under key `name`; a ValueError
    names the key."""
    from purejaxrl.config import from_dict

    try:
        return from_dict(cls, mapping(name, values))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None


# --------------------------------------------------------------------------- run folders


def new_run_dir(
    out: str | None,
    name: str,
    markers: Iterable[str] = ("config.yaml",),
    resumable: bool = True,
) -> Path:
    """The folder of a new run: --out, or runs/<name>-<timestamp>. ValueError if it holds a run
    (any of `markers`; the message offers --resume if the command is `resumable`) or is a file."""
    if out:
        run_dir = Path(out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.+-]+', '_', name)}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: exists and is not a folder")
    if any((run_dir / m).exists() for m in markers):
        resume = f"continue it with --resume {run_dir} or " if resumable else ""
        raise ValueError(f"--out {run_dir} already holds a run; {resume}choose another --out")
    return run_dir


def start(
    args: argparse.Namespace,
    name: Callable[[dict], str],
    may_change: Iterable[str] = (),
    markers: Iterable[str] = ("config.yaml",),
) -> tuple[Path, dict, str]:
    """(run_dir, settings, mode) of an invocation. New run: --config merged with the overrides,
    in a new folder (`new_run_dir`, default name `name(settings)`). --resume DIR: DIR's
    config.yaml merged with the overrides, which may change only `may_change`
    (`check_unchanged`); --config/--out are refused with it."""
    folder = vars(args).get("resume")
    if not folder:
        values = settings(args)
        resumable = "resume" in vars(args)
        return new_run_dir(args.out, name(values), markers, resumable), values, "new"
    if args.config or args.out:
        raise ValueError("--resume DIR takes neither --config nor --out (it uses DIR)")
    saved = read_run_config(folder)
    values = merge(saved, parse_overrides(args.overrides))
    check_unchanged(saved, values, may_change)
    return Path(folder), values, "resume"


def read_run_config(folder, flag: str = "--resume", name: str = "config.yaml") -> dict:
    """The settings a run folder was started with (its config.yaml); ValueError naming the flag
    if the folder or the file is missing."""
    run_dir = Path(folder)
    if not run_dir.is_dir():
        raise ValueError(f"{flag} {run_dir}: no such run folder")
    if not (run_dir / name).is_file():
        raise ValueError(f"{flag} {run_dir}: no {name} there (not a run folder of this command)")
    return load_yaml(run_dir / name)


def check_unchanged(
    saved: Mapping[str, Any],
    new: Mapping[str, Any],
    may_change: Iterable[str] = (),
    flag: str = "--resume",
) -> None:
    """ValueError listing every setting (dotted key) that differs between a run's saved settings
    and the new ones, other than `may_change` (a key or a key prefix such as "meta_test")."""
    allowed = tuple(may_change)
    a, b = flatten(saved), flatten(new)
    diff = [
        f"{k}: the run has {a.get(k, '<unset>')!r}, given {b.get(k, '<unset>')!r}"
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k) and not any(k == p or k.startswith(f"{p}.") for p in allowed)
    ]
    if diff:
        only = f"; only {sorted(allowed)} may change" if allowed else ""
        raise ValueError(
            f"{flag}: the settings differ from the run's ({'; '.join(diff)}){only}; start a new "
            "run (--out) instead"
        )


# --------------------------------------------------------------------------- atomic outputs


def write_text(path, text: str | bytes) -> Path:
    """Writes via a temporary file and os.replace, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path, data: Any) -> Path:
    """Indented JSON (numpy values as Python values), written atomically."""
    return write_text(path, json.dumps(plain(data), indent=2) + "\n")


def write_yaml(path, data: Mapping[str, Any]) -> Path:
    """YAML in the given key order (tuples as lists), written atomically."""
    return write_text(path, yaml.safe_dump(plain(data), sort_keys=False))


def csv_cell(x, exact: bool = False) -> str:
    """A CSV cell: '' for None, integers as integers, floats to 6 significant digits (`exact`:
    as repr, which reads back exactly, and '' for NaN / inf)."""
    if x is None:
        return ""
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating) and exact:
        return repr(float(x)) if math.isfinite(x) else ""
    if isinstance(x, float | np.floating):
        return f"{float(x):.6g}"
    return str(x)


def write_csv(path, columns, rows, keep_upto: int | None = None, exact: bool = False) -> Path:
    """A CSV file with a header row, written atomically: the file's rows whose first column is
    <= `keep_upto` (None: none), then `rows` (`csv_cell`s; a cell with a comma is quoted)."""
    path = Path(path)
    old = path.read_text().splitlines()[1:] if keep_upto is not None and path.is_file() else []
    kept = [r for r in old if r and int(r.split(",")[0]) <= keep_upto]
    text = io.StringIO()
    text.writelines(f"{line}\n" for line in [",".join(columns), *kept])
    csv.writer(text, lineterminator="\n").writerows([csv_cell(x, exact) for x in r] for r in rows)
    return write_text(path, text.getvalue())


def read_csv(path) -> dict[str, np.ndarray]:
    """{column: values} of a CSV of numbers (empty cells NaN)."""
    rows = [line.split(",") for line in Path(path).read_text().splitlines() if line]
    names, data = rows[0], rows[1:]
    table = np.asarray([[float(x) if x else math.nan for x in r] for r in data], np.float64)
    return {name: table.reshape(len(data), len(names))[:, i] for i, name in enumerate(names)}


def num(x) -> float | None:
    """A JSON number: None for NaN / inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def read_json(path) -> dict:
    """The JSON object in `path`; {} if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        return {}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int | None = None, suptitle: str | None = None) -> Path:
    """Lays out a matplotlib figure (tight, under `suptitle`, at `dpi`), saves it atomically (PNG
    unless `path` says otherwise) and closes it."""
    if suptitle is not None:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if dpi is not None:
        fig.set_dpi(dpi)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path
