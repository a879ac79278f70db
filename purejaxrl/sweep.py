"""Sweeps: seeds x hyper-parameters x env params as one program, sharded over devices.

    from purejaxrl import ppo, sweep
    batch = sweep.grid(cfg, {"learning_rate": [1e-4, 3e-4, 1e-3], "ent_coef": [0.0, 0.01]}, seeds=16)
    res = sweep.run(batch, make_agent=ppo.make_agent)
    res.runs[i]                     # {"run": i, "config": c, "seed": s, "learning_rate": ..., ...}
    res.metrics["episode_return"]   # [runs, updates]

A space maps a field to a list of values (`grid`: every combination; `random`: drawn uniformly)
or, for `random`, to `uniform(low, high)` / `log_uniform(low, high)`. Fields are:

- numeric config fields (pytree leaves: learning_rate, ent_coef, gamma, clip_eps, ...): one
  program vmaps over them;
- env-param fields, `env_params.<name>` (e.g. `env_params.length` for CartPole): passed to
  `agent.train(key, env_params)`, vmapped the same way;
- static config fields (hidden_sizes, num_envs, total_timesteps, ...): they change shapes, so
  the runs are grouped by their static values and each group is its own program.

Run keys: run with seed index s gets `jax.random.split(jax.random.key(seed), seeds)[s]`, the key
`experiments.train --seeds` gives its seed s, so every configuration sees the same seeds.

`run` compiles one program per group: `jax.jit(jax.vmap(train))` over the run axis, that axis
sharded over `devices` with a `NamedSharding` on a 1-D mesh. The runs of a group go through it in
chunks of `chunk` runs (default: all), each padded to a multiple of the device count with copies
of its first run (dropped from the results), so every call has the same shape and the program
compiles once. Multi-host (`jax.distributed.initialize` before): every process feeds only the
shards of its own devices, and the results are gathered on every process.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxrl import config as C
from purejaxrl import loop
from purejaxrl.parallel import resolve_devices

ENV_PREFIX = "env_params."
AXIS = "runs"


# --------------------------------------------------------------------------- distributions


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniform on [low, high] (`random` only)."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """log-uniform on [low, high], 0 < low <= high (`random` only): uniform in log(value)."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.exp(rng.uniform(np.log(self.low), np.log(self.high), n))


def uniform(low: float, high: float) -> Uniform:
    return Uniform(float(low), float(high))


def log_uniform(low: float, high: float) -> LogUniform:
    return LogUniform(float(low), float(high))


# --------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Batch:
    """R runs: `base` with each swept field set to `values[field][r]`, trained with seed index
    `seeds[r]`. `fields` in space order; `static` the swept static config fields."""

    base: Any
    fields: tuple[str, ...]
    values: Mapping[str, np.ndarray]  # field -> [R]; object arrays for static fields
    seeds: np.ndarray  # [R] seed index in [0, num_seeds)
    configs: np.ndarray  # [R] configuration index
    num_seeds: int
    seed: int = 0
    static: tuple[str, ...] = ()
    env_defaults: Any = None  # the env's default params when env_params.* fields are swept

    @property
    def num_runs(self) -> int:
        return len(self.seeds)

    @property
    def keys(self) -> jax.Array:
        """Run keys `[R]`: seed index s -> split(key(seed), num_seeds)[s]."""
        return jax.random.split(jax.random.key(self.seed), self.num_seeds)[self.seeds]

    @property
    def config(self):
        """`base` whose swept numeric fields are `[R]` arrays (static fields at their base)."""
        numeric = {f: jnp.asarray(_device(self.values[f])) for f in self.config_fields}
        return dataclasses.replace(self.base, **numeric)

    @property
    def config_fields(self) -> tuple[str, ...]:
        """Swept numeric config fields (vmapped)."""
        return tuple(f for f in self.fields if f not in self.static and not _is_env(f))

    @property
    def env_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if _is_env(f))

    @property
    def runs(self) -> list[dict]:
        """One dict per run: run, config, seed and the swept fields' values (Python scalars)."""
        rows = []
        for r in range(self.num_runs):
            row = {"run": r, "config": int(self.configs[r]), "seed": int(self.seeds[r])}
            row.update({f: _plain(self.values[f][r]) for f in self.fields})
            rows.append(row)
        return rows


def grid(cfg, space: Mapping[str, Sequence], seeds: int, seed: int = 0) -> Batch:
    """Every combination of the values in `space` (the last field varies fastest) x `seeds`
    seed indices: R = prod(len(values)) * seeds runs, configuration-major."""
    _check_seeds(seeds)
    fields, env_defaults = _check_space(cfg, space, allow_distributions=False)
    lists = [_column(cfg, f, space[f], env_defaults) for f in fields]
    combos = list(itertools.product(*[range(len(v)) for v in lists]))
    # Index, not np.asarray: a list of equal-length tuples would become a 2-D array.
    values = {f: np.repeat(lists[i][[c[i] for c in combos]], seeds) for i, f in enumerate(fields)}
    return _batch(cfg, fields, values, len(combos), seeds, seed, env_defaults)


def random(cfg, space: Mapping[str, Any], num: int, seeds: int, key, seed: int = 0) -> Batch:
    """`num` configurations drawn from `space` (a list: uniform choice; `uniform`/`log_uniform`
    ranges) with `key` (a jax key or an int), each trained on `seeds` seed indices."""
    _check_seeds(seeds)
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise ValueError(f"sweep.random: num={num!r} must be a positive integer")
    fields, env_defaults = _check_space(cfg, space, allow_distributions=True)
    if isinstance(key, int | np.integer):
        entropy = [int(key)]
    else:
        entropy = np.asarray(jax.random.key_data(key)).ravel().astype(np.uint64).tolist()
    rng = np.random.default_rng(entropy)
    values = {}
    for f in fields:
        spec = space[f]
        if isinstance(spec, Uniform | LogUniform):
            drawn = _column(cfg, f, spec.sample(rng, num).tolist(), env_defaults)
        else:
            choices = _column(cfg, f, spec, env_defaults)
            drawn = choices[rng.integers(0, len(choices), num)]
        values[f] = np.repeat(drawn, seeds)
    return _batch(cfg, fields, values, num, seeds, seed, env_defaults)


def _batch(cfg, fields, values, num_configs, seeds, seed, env_defaults) -> Batch:
    static = tuple(f for f in fields if not _is_env(f) and _is_static(cfg, f))
    batch = Batch(
        base=cfg,
        fields=tuple(fields),
        values=values,
        seeds=np.tile(np.arange(seeds), num_configs),
        configs=np.repeat(np.arange(num_configs), seeds),
        num_seeds=seeds,
        seed=int(seed),
        static=static,
        env_defaults=env_defaults,
    )
    _validate(batch)
    return batch


def _check_seeds(seeds) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
        raise ValueError(f"sweep: seeds={seeds!r} must be a positive integer")


def _is_env(field: str) -> bool:
    return field.startswith(ENV_PREFIX)


def _is_static(cfg, field: str) -> bool:
    f = {f.name: f for f in dataclasses.fields(cfg)}[field]
    return not f.metadata.get("pytree_node", True)


def _check_space(cfg, space: Mapping, allow_distributions: bool):
    """Checks names and value lists; returns (fields, the env's default params or None)."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError("sweep: space must be a non-empty mapping of field -> values")
    names = {f.name for f in dataclasses.fields(cfg)}
    env_defaults = None
    if any(_is_env(f) for f in space):
        import envs

        _, env_defaults = envs.make(cfg.env, **dict(cfg.env_kwargs))
    for field, spec in space.items():
        if _is_env(field):
            name = field[len(ENV_PREFIX) :]
            known = [f.name for f in dataclasses.fields(env_defaults)]
            if name not in known:
                hint = C.close_match(field, [ENV_PREFIX + k for k in known], n=3)
                raise ValueError(
                    f"sweep: {cfg.env} has no env param {name!r}{hint} (its params: {known})"
                )
        elif field not in names:
            raise ValueError(
                f"sweep: {type(cfg).__name__} has no field {field!r}"
                f"{C.close_match(field, sorted(names), n=3)} (env params are swept as "
                f"'{ENV_PREFIX}<name>')"
            )
        elif C.is_mapping_field(field) or field == "env":
            raise ValueError(f"sweep: {field!r} cannot be swept (sweep numeric or static fields)")
        if isinstance(spec, Uniform | LogUniform):
            if not allow_distributions:
                raise ValueError(f"sweep.grid: {field}={spec}: grid takes lists of values")
            if not (np.isfinite(spec.low) and np.isfinite(spec.high) and spec.low <= spec.high):
                raise ValueError(f"sweep: {field}={spec}: needs finite bounds with low <= high")
            if isinstance(spec, LogUniform) and spec.low <= 0:
                raise ValueError(f"sweep: {field}={spec}: log-uniform bounds must be positive")
            if not _is_env(field) and _is_static(cfg, field):
                raise ValueError(f"sweep: {field} is static: give a list of values, not a range")
        elif isinstance(spec, str | bytes) or not isinstance(spec, Sequence | np.ndarray):
            raise ValueError(f"sweep: {field}={spec!r} must be a list of values")
        elif len(spec) == 0:
            raise ValueError(f"sweep: {field} has an empty list of values")
    return list(space), env_defaults


def _column(cfg, field: str, values: Sequence, env_defaults) -> np.ndarray:
    """The values of `field` as a 1-D array of its type: float64 (the values as given, for the
    tables) or int32 / bool for numeric leaves and env params, objects for static fields."""
    if _is_env(field):
        default = np.asarray(getattr(env_defaults, field[len(ENV_PREFIX) :]))
    else:
        default = getattr(cfg, field)
        if _is_static(cfg, field):  # checked by the config itself (`_validate`)
            out = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                out[i] = tuple(v) if isinstance(v, list) else C.whole(default, v)
            return out
        default = np.asarray(default)
    for v in values:
        ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        if isinstance(default.item(), bool):
            ok = isinstance(v, bool | np.bool_)
        if not ok:
            raise ValueError(f"sweep: {field}={v!r}: must be a number like its default {default}")
        if not np.isfinite(v):
            raise ValueError(f"sweep: {field}={v!r}: must be finite")
        if np.issubdtype(default.dtype, np.integer) and not float(v).is_integer():
            raise ValueError(f"sweep: {field}={v!r}: must be an integer")
    if np.issubdtype(default.dtype, np.integer):
        return np.asarray(values, dtype=np.int32)
    if default.dtype == bool:
        return np.asarray(values, dtype=bool)
    return np.asarray(values, dtype=np.float64)  # as given; the program gets float32 (`_device`)


def _validate(batch: Batch) -> None:
    """Each value alone on the base config, which checks it (before compiling)."""
    for field in batch.fields:
        if _is_env(field):
            continue
        for value in dict.fromkeys(_hashable(_plain(v)) for v in batch.values[field]):
            dataclasses.replace(batch.base, **{field: value})


def _plain(x):
    """numpy scalars -> Python; tuples -> lists (JSON/YAML/CSV friendly)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return x


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class SweepResult:
    """`runs`: one dict per run (Batch.runs plus `diverged`: training skipped a non-finite step or
    its final return is not finite). `metrics`: name -> `[runs, updates]` (NaN past the last
    update of a group with fewer updates). `final_state`: the final TrainState with a leading run
    axis when asked for (a list, one per program, when static fields split the sweep)."""

    runs: list[dict]
    metrics: dict[str, np.ndarray]
    final_state: Any
    programs: int
    compile_s: float
    run_s: float
    env_steps: int  # over all runs

    @property
    def sps(self) -> float:
        """Env steps per second over all runs, compile excluded."""
        return self.env_steps / self.run_s if self.run_s > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One program call: runs `index` (into the batch) of static group `group`."""

    group: int
    index: np.ndarray


def plan(batch: Batch, chunk: int | None = None) -> tuple[list[dict], list[Chunk]]:
    """(the static values of each group, the chunks in run order). Independent of devices, so a
    resumed sweep finds the same chunks."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"sweep: chunk={chunk!r} must be a positive integer")
    keys = [
        tuple(_hashable(batch.values[f][r]) for f in batch.static) for r in range(batch.num_runs)
    ]
    groups = list(dict.fromkeys(keys))
    chunks = []
    for g, k in enumerate(groups):
        members = np.asarray([r for r in range(batch.num_runs) if keys[r] == k])
        size = len(members) if chunk is None else chunk
        for start in range(0, len(members), size):
            chunks.append(Chunk(g, members[start : start + size]))
    statics = [dict(zip(batch.static, k, strict=True)) for k in groups]
    return statics, chunks


def _hashable(x):
    return tuple(x) if isinstance(x, list | tuple) else x


def run(
    batch: Batch,
    make_agent: Callable,
    devices=None,
    chunk: int | None = None,
    progress: bool | Callable = True,
    keep_state: bool = False,
    done: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    on_chunk: Callable | None = None,
    on_report: Callable | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Trains every run of `batch`; see the module docstring.

    make_agent(cfg) -> Agent (e.g. ppo.make_agent, or a lambda that adds an objective); it is
    called inside the vmap, so the swept numeric fields of `cfg` are tracers. progress: True (a tqdm bar over runs x updates), False, or
    a function (runs_done_equivalent, total) called as the sweep advances. `done` maps chunk
    numbers (see `plan`) to their stored metrics, which are not run again (resume);
    `on_chunk(i, chunk, metrics)` is called after each chunk that ran; `on_report(chunk,
    update_step [C], metrics {name: [C]})` with the progress reports inside a chunk (about 50 per
    chunk; rows past `len(chunk.index)` are padding). `log(message)` gets one-line notes (how
    many programs static fields make; diverged runs, which also raise a warning).
    """
    devices = resolve_devices(devices)
    statics, chunks = plan(batch, chunk)
    done = dict(done or {})
    say = log or (lambda message: None)
    if len(statics) > 1:
        say(
            f"static fields {list(batch.static)} take {len(statics)} value combinations: "
            f"{len(statics)} programs, compiled one after another"
        )
    sharding = run_sharding(devices)
    n_dev = len(devices)

    groups = [_Group(batch, s, make_agent, chunks, g, keep_state) for g, s in enumerate(statics)]
    total_units = sum(g.num_updates * len(c.index) for c in chunks for g in [groups[c.group]])
    bar = _Bar(progress, total_units, on_report)
    metrics_parts: dict[int, dict] = {}
    states: list = [[] for _ in groups]
    compile_s = run_s = 0.0
    env_steps = 0
    try:
        for i, c in enumerate(chunks):
            group = groups[c.group]
            if i in done:
                metrics_parts[i] = {k: np.asarray(v) for k, v in done[i].items()}
                bar.advance(group.num_updates * len(c.index))
                continue
            size = _padded_size(group.chunk_size, n_dev)
            index = np.concatenate([c.index, np.full(size - len(c.index), c.index[0])])
            inputs = group.inputs(index)
            if group.compiled is None:
                t0 = time.perf_counter()
                group.compile(sharding, inputs, bar if progress or on_report else None)
                compile_s += time.perf_counter() - t0
            bar.begin(c)
            t0 = time.perf_counter()
            arrays = [put(x, sharding) for x in inputs]
            out = group.compiled(*arrays)
            out = jax.block_until_ready(out)
            run_s += time.perf_counter() - t0
            out = gather(out)
            state, metrics = out if keep_state else (None, out)
            keep = slice(0, len(c.index))
            metrics_parts[i] = {k: np.asarray(v)[keep] for k, v in metrics.items()}
            if keep_state:
                states[c.group].append(jax.tree.map(lambda x: x[keep], state))
            env_steps += group.steps_per_run * len(c.index)
            bar.advance(group.num_updates * len(c.index))
            if on_chunk is not None:
                on_chunk(i, c, metrics_parts[i])
    finally:
        bar.close()
    rows, metrics, state = _assemble(batch, groups, chunks, metrics_parts, states, keep_state, say)
    return SweepResult(rows, metrics, state, len(groups), compile_s, run_s, env_steps)


def run_sharding(devices) -> NamedSharding:
    """Leading axis split over `devices` (a 1-D mesh with axis "runs"), the rest replicated;
    used for sweeps' run axis and ES populations."""
    return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def _padded_size(size: int, n_dev: int) -> int:
    return int(math.ceil(size / n_dev) * n_dev)


class _Group:
    """One static group's program: vmapped train over its chunk of runs."""

    def __init__(self, batch: Batch, statics: dict, make_agent, chunks, g, keep_state: bool):
        self.batch = batch
        self.keep_state = keep_state
        self.statics = statics
        self.cfg = dataclasses.replace(batch.base, **statics)
        self.make_agent = make_agent
        self.chunk_size = max(len(c.index) for c in chunks if c.group == g)
        probe = make_agent(self.cfg)
        self.num_updates = int(probe.num_updates)
        self.steps_per_run = int(self.cfg.total_timesteps)
        self.compiled = None

    def inputs(self, index: np.ndarray) -> tuple:
        b = self.batch
        numeric = {f: _device(b.values[f][index]) for f in b.config_fields}
        env = {f[len(ENV_PREFIX) :]: _device(b.values[f][index]) for f in b.env_fields}
        keys = jax.random.key_data(b.keys[index])
        return numeric, env, np.asarray(keys)

    def compile(self, sharding, inputs, bar) -> None:
        """jit(program) for this group's chunk shape: init and update are vmapped over the runs
        and the update scan (with the progress callback, if any) runs outside the vmap, so one
        host callback reports every run of the chunk (a callback inside a vmap is unrolled)."""
        cfg, make_agent, defaults = self.cfg, self.make_agent, self.batch.env_defaults
        keep_state, num_updates = self.keep_state, self.num_updates
        progress_fn = bar.callback if bar is not None else None

        def agent_for(numeric):
            return make_agent(dataclasses.replace(cfg, **numeric))

        def init_one(numeric, env, key_data):
            params = dataclasses.replace(defaults, **env) if env else None
            return agent_for(numeric).init(jax.random.wrap_key_data(key_data), params)

        def update_one(numeric, state):
            return agent_for(numeric).update(state)

        def program(numeric, env, key_data):
            state = jax.vmap(init_one)(numeric, env, key_data)
            update = functools.partial(jax.vmap(update_one), numeric)
            every = max(1, num_updates // 50)
            out = loop.scan_updates(update, state, num_updates, progress_fn, every)
            metrics = {k: jnp.swapaxes(v, 0, 1) for k, v in out.metrics.items()}  # [C, U]
            return (out.state, metrics) if keep_state else metrics

        jitted = jax.jit(program, in_shardings=sharding, out_shardings=sharding)
        arrays = [put(x, sharding) for x in inputs]
        self.compiled = jitted.lower(*arrays).compile()


def _device(values: np.ndarray) -> np.ndarray:
    """float64 host values -> float32, the dtype the program computes in."""
    values = np.asarray(values)
    return values.astype(np.float32) if values.dtype == np.float64 else values


def put(tree, sharding):
    """Host arrays -> global arrays sharded on their leading axis (which must divide by the
    device count); each process supplies only the shards of its own devices (the same host data
    exists on every process)."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def gather(tree):
    """Global arrays -> numpy on every process (multi-host: an all-gather)."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def _assemble(batch, groups, chunks, parts, states, keep_state, say) -> tuple:
    """Per-chunk metrics -> (the run table, `[R, U]` arrays in run order, the states)."""
    num_updates = max(g.num_updates for g in groups)
    names = sorted({k for p in parts.values() for k in p})
    metrics = {k: np.full((batch.num_runs, num_updates), np.nan, np.float32) for k in names}
    for i, c in enumerate(chunks):
        for k, v in parts[i].items():
            metrics[k][c.index, : v.shape[1]] = v
    rows = batch.runs
    skipped = np.nansum(metrics.get("nan_skipped", np.zeros((batch.num_runs, 1))), axis=1)
    last = _last_finite_update(metrics)
    final = metrics["episode_return"][np.arange(batch.num_runs), last]
    diverged = (skipped > 0) | ~np.isfinite(final)
    for r, row in enumerate(rows):
        row["diverged"] = bool(diverged[r])
    if diverged.any():
        bad = np.flatnonzero(diverged).tolist()
        note = f"{len(bad)} of {batch.num_runs} runs met non-finite values (runs {bad[:10]}"
        warnings.warn(note + f"{', ...' if len(bad) > 10 else ''}); marked diverged", stacklevel=3)
        say(note + ")")
    state = None
    if keep_state:
        per_group = [
            jax.tree.map(lambda *xs: np.concatenate(xs), *parts_) if parts_ else None
            for parts_ in states
        ]
        state = per_group[0] if len(per_group) == 1 else per_group
    return rows, metrics, state


def _last_finite_update(metrics) -> np.ndarray:
    """`[R]` index of each run's last update (its group may have fewer than the longest)."""
    steps = metrics.get("env_steps")
    if steps is None:
        return np.full(len(next(iter(metrics.values()))), -1)
    return np.sum(np.isfinite(steps), axis=1) - 1


class _Bar:
    """Progress over runs x updates: a tqdm bar (progress=True), a function(done, total), or
    nothing. The agents' throttled host callback moves it inside a chunk."""

    def __init__(self, progress, total: int, on_report=None):
        self.total = total
        self.done = 0
        self.chunk = None
        self.on_report = on_report
        self.fn = progress if callable(progress) else None
        self.tqdm = None
        if progress is True:
            from tqdm.auto import tqdm

            self.tqdm = tqdm(
                total=total, desc="sweep", unit="run-upd", mininterval=0.5, dynamic_ncols=True
            )

    def begin(self, chunk: Chunk) -> None:
        self.chunk = chunk

    def callback(self, update_step, metrics) -> None:
        if self.on_report is not None:
            self.on_report(self.chunk, np.asarray(update_step), jax.tree.map(np.asarray, metrics))
        self._show(self.done + len(self.chunk.index) * int(np.max(update_step)))

    def advance(self, units: int) -> None:
        self.done += units
        self._show(self.done)

    def _show(self, units: int) -> None:
        units = min(units, self.total)
        if self.tqdm is not None and units > self.tqdm.n:
            self.tqdm.update(units - self.tqdm.n)
        if self.fn is not None:
            self.fn(units, self.total)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
