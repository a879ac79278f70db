"""Evolution strategies: evosax 0.3 driven as ask -> vmapped fitness -> tell, scanned and sharded.

    from meta import es
    cfg = es.ESConfig(strategy="open_es", population_size=16, num_generations=100)
    out = es.evolve(fitness_fn, init_params, cfg, key, checkpoint_dir="runs/x/es", resume=True)
    out.mean_params, out.best_params, out.best_fitness   # pytrees like init_params; a float
                                                         # (best: see ESOutput; per generation
                                                         # with a curriculum)
    out.fitness                                          # [G, P] numpy, higher is better

`fitness_fn(params, key) -> scalar` is maximised (evosax minimises: the driver negates). It sees
one candidate (a pytree like `init_params`) and its key; the driver vmaps it over the population
(it may be a whole inner training run).

One generation (all inside one jitted function, `generations_per_call` of them in a `lax.scan`):
its key fold_in(split(key)[1], g) -> (ask, fitness, tell) keys; ask -> `[P, ...]` candidates;
vmapped fitness `[P]`; non-finite entries replaced (below); tell. Between calls the host shows
progress, writes a checkpoint and calls `on_generations`. The keys depend only on the
generation index g, not on `generations_per_call` or on where a run was interrupted.

Antithetic sampling (evosax 0.3 `Open_ES(use_antithetic_sampling=True)` and `PGPE`, always):
`z = concat([z_plus, -z_plus])`, so candidate i and candidate i + P/2 are the mirrored pair
`mean +- std * z_i` (i < P/2). Both members of a pair get the same fitness key (the P/2 keys are
repeated in that layout), so in a multi-task fitness they meet the same task and env randomness.
SNES and CMA-ES sample P independent candidates, each with its own key.

Non-finite fitness (NaN, +-inf): such a candidate is given the worst finite fitness of its
generation (a finite value, so it ranks last, or ties for last, and z-score shaping stays
finite); it never becomes `best_params`; `out.nonfinite` counts them per generation (and
`out.fitness` keeps the raw values). A generation with no finite fitness leaves the ES state
unchanged.

Curriculum (`curriculum=`, optional): generation-level task state that `evolve` carries, for
fitness functions that train on tasks chosen by the search itself (GROOVE's level buffer,
`meta.groove`). A `Curriculum`, an object with

    metrics: tuple[str, ...]                         names of its per-generation scalars
    init(key) -> state                               a pytree of arrays (checkpointed)
    propose(state, key, num, shard) -> (state, tasks, info)
        tasks: a pytree with leading axis [num], one task per antithetic pair (num = P/2; P
        when not antithetic); info: any pytree handed to `update`; shard(tree) constrains a
        [num]-leading pytree to the population's devices (for expensive work on the tasks)
    update(state, tasks, info, fitness) -> (state, {name: [] for name in metrics})
        fitness: `[num, 2]` raw fitness of each pair's two members (`[num, 1]` not antithetic)

Then `fitness_fn(params, key, task)` gets its candidate's task (both members of a pair the same
one), `out.curriculum` holds the metrics `{name: [G]}`, and the state is in the checkpoints (a
resume continues it exactly). Each generation meets its own tasks, so fitness values of
different generations are not comparable (a high one may only mean an easy level): with a
curriculum, `best_params` / `best_fitness` are the best candidate of the most recent generation
that had a finite fitness, not a maximum over generations. The curriculum's key is
fold_in(generation key, 1), apart from the ask, fitness and tell keys, so a run's candidates do
not depend on whether the fitness function is a curriculum's or not.

Sharding: the population axis (candidates and their keys, and the fitness) is split over
`devices` with `purejaxrl.sweep.run_sharding`; the ES state is replicated. `population_size`
must divide by the device count (ValueError; no padding, which would waste whole inner runs).

Checkpoints (`checkpoint_dir`): after every call, `checkpoint_dir/<generation>/` holds the ES
state, base key, generation index, best so far, fitness history and the config (orbax, atomic,
with a SHA-256 manifest: the helpers of `purejaxrl.checkpoint`). `resume=True` continues the
newest one bit-exactly; it refuses (CheckpointError, a ValueError, naming the field) a
checkpoint of another config (`num_generations` and `generations_per_call` may change), key or
parameter shape.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from evosax.algorithms import CMA_ES, PGPE, SNES, Open_ES
from evosax.core import fitness_shaping as shaping
from evosax.core.optimizer import clipup
from jax.sharding import NamedSharding, PartitionSpec

from purejaxrl import checkpoint as ckpt
from purejaxrl import config as C
from purejaxrl import sweep

FORMAT = "es/1"
RESUMABLE_FIELDS = frozenset({"num_generations", "generations_per_call"})

# strategy -> (default learning_rate, default antithetic, default fitness_shaping)
_DEFAULTS = {
    "open_es": (0.03, True, "centered_rank"),
    "snes": (1.0, False, "rank_weights"),
    "cma_es": (None, False, "rank_weights"),
    "pgpe": (0.03, True, "centered_rank"),
}
STRATEGIES = tuple(_DEFAULTS)
SHAPINGS = ("centered_rank", "z_score", "none", "pairwise")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """An evolution strategy and its settings (validated on construction; None = the strategy's
    default, filled in, so a config compares equal however its defaults were spelled).

    strategy: "open_es" (OpenAI-ES: fixed isotropic std, Adam on the mean; default), "snes"
        (separable NES: per-dimension std adapted; plain SGD on the mean), "cma_es" (full
        covariance; sets its own step sizes) or "pgpe" (per-dimension std adapted; ClipUp on the
        mean).
    population_size: candidates per generation (P); even for open_es and pgpe (mirrored pairs).
    num_generations: generations in all (G; may be raised when resuming).
    generations_per_call: generations one jitted call scans (default 10); progress, the
        callback and checkpoints happen between calls.
    sigma: initial search std per dimension (default 0.03), > 0.
    learning_rate: step size of the mean's optimiser, > 0: open_es Adam (default 0.03), pgpe
        ClipUp (default 0.03, max speed 2x), snes SGD on the natural gradient (default 1.0);
        cma_es takes none (None).
    antithetic: mirrored sampling; open_es: True (default) or False; pgpe: always True; snes,
        cma_es: False (not supported).
    fitness_shaping: open_es, pgpe: "centered_rank" (ranks scaled to [-0.5, 0.5]; default),
        "z_score" (standardised), "none" (raw) or "pairwise" (antithetic only: within each
        mirrored pair +0.5 for the better member, -0.5 for the worse, 0 on a tie: GROOVE's
        signal, which compares only candidates that met the same task, so tasks of different
        return scales mix fairly); snes and cma_es always use their own rank weights
        ("rank_weights").
    sigma_decay: open_es only: std multiplied by this each generation (default 1.0: constant).
    weight_decay: L2 penalty `weight_decay * ||x||^2` subtracted from each candidate's fitness
        before shaping (not from `fitness` as reported); default 0.0.
    """

    strategy: str = "open_es"
    population_size: int = 16
    num_generations: int = 100
    generations_per_call: int = 10
    sigma: float = 0.03
    learning_rate: float | None = None
    antithetic: bool | None = None
    fitness_shaping: str | None = None
    sigma_decay: float = 1.0
    weight_decay: float = 0.0

    def __post_init__(self):
        C.check_types(self)
        C.check_choice(self, "strategy", STRATEGIES)
        lr, anti, shape = _DEFAULTS[self.strategy]
        where = f"ESConfig (strategy={self.strategy!r})"
        for name in ("population_size", "num_generations", "generations_per_call"):
            C.check_positive_int(self, name)
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.population_size < 2:
            raise ValueError(f"{where}: population_size={self.population_size} must be >= 2")
        if lr is None and self.learning_rate is not None:
            raise ValueError(
                f"{where}: learning_rate={self.learning_rate!r}: cma_es sets its own step "
                "sizes; leave learning_rate unset"
            )
        if shape == "rank_weights" and self.fitness_shaping not in (None, shape):
            raise ValueError(
                f"{where}: fitness_shaping={self.fitness_shaping!r}: {self.strategy} shapes "
                "fitness with its own rank weights; leave fitness_shaping unset"
            )
        defaults = {"learning_rate": lr, "antithetic": anti, "fitness_shaping": shape}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for name in ("sigma", "sigma_decay", "learning_rate", "weight_decay"):
            if getattr(self, name) is not None:
                _check_number(self, name, positive=name != "weight_decay")
                object.__setattr__(self, name, float(getattr(self, name)))
        if not isinstance(self.antithetic, bool | np.bool_):
            raise ValueError(f"{where}: antithetic={self.antithetic!r} must be true or false")
        object.__setattr__(self, "antithetic", bool(self.antithetic))
        if self.antithetic != anti and self.strategy != "open_es":
            reason = "pgpe always samples mirrored pairs" if anti else "not supported here"
            raise ValueError(f"{where}: antithetic={self.antithetic}: {reason}")
        if shape != "rank_weights":
            C.check_choice(self, "fitness_shaping", SHAPINGS, where=where)
        if self.fitness_shaping == "pairwise" and not self.antithetic:
            raise ValueError(
                f"{where}: fitness_shaping='pairwise' compares the members of mirrored pairs; "
                "it needs antithetic=True"
            )
        if self.population_size % 2 and self.strategy in ("open_es", "pgpe"):
            reason = "antithetic pairs" if self.antithetic else "evosax requires it"
            raise ValueError(
                f"{where}: population_size={self.population_size} must be even ({reason})"
            )
        if self.sigma_decay != 1.0 and self.strategy != "open_es":
            raise ValueError(
                f"{where}: sigma_decay={self.sigma_decay}: only open_es has a fixed std "
                "schedule; the others adapt their std"
            )


def _check_number(cfg: ESConfig, name: str, positive: bool) -> None:
    """ValueError naming the field unless it is a finite real number > 0 (>= 0: not positive)."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"ESConfig.{name}={value!r}: must be a number")
    C.check_range(cfg, name, 0.0, np.inf, low_open=positive)


def make_strategy(cfg: ESConfig, init_params):
    """(evosax strategy, its params) for `cfg`, with candidates shaped like `init_params`."""
    fn = {
        "centered_rank": shaping.centered_rank_fitness_shaping_fn,
        "z_score": shaping.standardize_fitness_shaping_fn,
        "none": shaping.identity_fitness_shaping_fn,
        "rank_weights": shaping.weights_fitness_shaping_fn,
        "pairwise": pairwise_shaping,
    }[cfg.fitness_shaping]
    if cfg.weight_decay > 0:  # evosax adds the penalty to the (minimised) fitness
        fn = shaping.add_weight_decay(fn, cfg.weight_decay)
    P, lr = cfg.population_size, cfg.learning_rate
    if cfg.strategy == "open_es":
        schedule = (
            optax.constant_schedule(cfg.sigma)
            if cfg.sigma_decay == 1.0
            else optax.exponential_decay(cfg.sigma, 1, cfg.sigma_decay)
        )
        strategy = Open_ES(
            P,
            init_params,
            use_antithetic_sampling=cfg.antithetic,
            optimizer=optax.adam(lr),
            std_schedule=schedule,
            fitness_shaping_fn=fn,
        )
        return strategy, strategy.default_params
    if cfg.strategy == "snes":
        strategy = SNES(P, init_params, optimizer=optax.sgd(lr), fitness_shaping_fn=fn)
    elif cfg.strategy == "pgpe":
        strategy = PGPE(P, init_params, optimizer=clipup(lr, 2 * lr), fitness_shaping_fn=fn)
    else:
        strategy = CMA_ES(P, init_params, fitness_shaping_fn=fn)
    params = strategy.default_params.replace(std_init=jnp.asarray(cfg.sigma, jnp.float32))
    return strategy, params


# --------------------------------------------------------------------------- pieces


def pairwise_shaping(population, fitness, state, params):
    """evosax fitness shaping of mirrored pairs (candidate i and i + P/2): -0.5 for the member
    with the lower (minimised: better) fitness, +0.5 for the other, 0 for both on a tie."""
    del population, state, params
    half = fitness.shape[0] // 2
    sign = 0.5 * jnp.sign(fitness[:half] - fitness[half:])
    return jnp.concatenate([sign, -sign])


def candidate_keys(key: jax.Array, population_size: int, antithetic: bool) -> jax.Array:
    """`[P]` fitness keys from one key; antithetic: the P/2 keys twice (i and i + P/2 share)."""
    if antithetic:
        half = jax.random.split(key, population_size // 2)
        return jnp.concatenate([half, half])
    return jax.random.split(key, population_size)


def replace_nonfinite(fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[P]` -> (`[P]` with each non-finite entry set to the worst finite one (0 if none is
    finite), the number replaced)."""
    finite = jnp.isfinite(fitness)
    worst = jnp.min(jnp.where(finite, fitness, jnp.inf))
    worst = jnp.where(jnp.any(finite), worst, 0.0)
    return jnp.where(finite, fitness, worst), jnp.sum(~finite).astype(jnp.int32)


class Carry(NamedTuple):
    """What one generation hands the next (replicated over devices)."""

    es_state: Any  # evosax state
    best_params: Any  # pytree like init_params: best finite candidate so far (with a curriculum:
    # of the most recent generation that had one)
    best_fitness: jax.Array  # [] float32; -inf until a finite fitness is seen
    key_data: jax.Array  # the base key's data (uint32)
    generation: jax.Array  # [] int32: generations done
    task_state: Any = ()  # the curriculum's state (none without a curriculum)


@dataclasses.dataclass
class ESOutput:
    """The result of `evolve` (numpy leaves, on every process).

    mean_params / best_params: pytrees like init_params (the final search mean; the candidate
    with the highest finite fitness, init_params if there was none). Without a curriculum "best"
    is over all generations (the first to reach the maximum; every generation draws its keys
    afresh, so with a noisy fitness the maximum also selects for lucky noise). With a
    curriculum it is the best of the most recent generation that had a finite fitness: each
    generation is scored on its own tasks, so fitness is comparable only within a generation.
    best_fitness: its fitness (-inf if none was finite). fitness: `[G, P]` raw fitness per
    generation and candidate (non-finite values kept). nonfinite: `[G]` int, candidates per
    generation whose fitness was not finite. state: the final evosax state. compile_s / run_s:
    seconds compiling (this process) / running the generations (compile excluded).
    curriculum: `{name: [G]}` the curriculum's metrics per generation ({} without one);
    task_state: its final state (numpy; None without one).
    """

    mean_params: Any
    best_params: Any
    best_fitness: float
    fitness: np.ndarray
    nonfinite: np.ndarray
    state: Any
    compile_s: float
    run_s: float
    curriculum: dict = dataclasses.field(default_factory=dict)
    task_state: Any = None

    @property
    def mean_fitness(self) -> np.ndarray:
        """`[G]` mean over each generation's finite fitness (NaN if none)."""
        return _finite_mean(self.fitness)

    @property
    def num_nonfinite(self) -> int:
        return int(np.sum(self.nonfinite))


def _finite_mean(fitness: np.ndarray) -> np.ndarray:
    finite = np.isfinite(fitness)
    count = finite.sum(-1)
    total = np.where(finite, fitness, 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --------------------------------------------------------------------------- driver


def evolve(
    fitness_fn: Callable[[Any, jax.Array], jax.Array],
    init_params,
    cfg: ESConfig,
    key: jax.Array,
    *,
    devices=None,
    progress: bool = True,
    checkpoint_dir=None,
    resume: bool = False,
    on_generations: Callable[[int, dict], None] | None = None,
    curriculum=None,
) -> ESOutput:
    """Runs `cfg.num_generations` generations of `cfg.strategy` from mean `init_params`.

    fitness_fn(params, key) -> scalar, higher is better (see the module docstring). key: a jax
    key (typed or raw uint32). devices: None (all), an int n (the first n) or a list; the
    population is sharded over them. progress: a tqdm bar with mean / best fitness.
    checkpoint_dir: write a checkpoint after every call; resume=True continues the newest one
    there (starts afresh if there is none). on_generations(generation, metrics) after every
    call: generation = generations done, metrics = {"fitness": [n, P], "nonfinite": [n],
    "mean_fitness": [n], "best_fitness": float (as ESOutput.best_fitness so far), "mean_params":
    pytree} for the n generations of that call (after that call's checkpoint: an exception
    there, or an interruption, loses nothing). curriculum: tasks chosen per generation (see the
    module docstring); then fitness_fn(params, key, task) and the metrics also hold
    "curriculum": {name: [n]} and "task_state" (the curriculum's state after that call, numpy),
    and best_params / best_fitness are those of the latest generation with a finite fitness
    (see ESOutput). Returns ESOutput; `compile_s` is 0 when a program compiled by an earlier
    call for the same fitness_fn, curriculum, config and shapes is reused.
    """
    if not isinstance(cfg, ESConfig):
        raise TypeError(f"evolve: cfg must be an ESConfig, got {type(cfg).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("evolve: resume=True needs a checkpoint_dir")
    devices = _population_devices(cfg, devices)
    key_data, impl = _key_data(key)
    init_params = jax.tree.map(jnp.asarray, init_params)
    strategy, params = make_strategy(cfg, init_params)
    names = _check_curriculum(curriculum)
    fresh = _initial_carry(strategy, params, init_params, key_data, impl, curriculum)
    directory = None if checkpoint_dir is None else Path(checkpoint_dir).absolute()
    carry, history = _resume(directory, resume, cfg, fresh, impl, names)
    start = int(carry.generation)

    population_sharding = sweep.run_sharding(devices)
    replicated = NamedSharding(population_sharding.mesh, PartitionSpec())
    run_chunk = _make_chunk(
        strategy, params, cfg, fitness_fn, impl, population_sharding, curriculum
    )
    state = sweep.put(carry, replicated)
    programs = _ProgramCache(cfg, (fitness_fn, curriculum), init_params, impl, devices)
    compile_s = run_s = 0.0
    bar = _Bar(progress, cfg.num_generations, start)
    try:
        for generation in range(start, cfg.num_generations, cfg.generations_per_call):
            n = min(cfg.generations_per_call, cfg.num_generations - generation)
            program, seconds = programs.compiled(n, run_chunk, state, replicated)
            compile_s += seconds
            t0 = time.perf_counter()
            state, chunk = jax.block_until_ready(program(state))
            run_s += time.perf_counter() - t0
            fit, bad, task_metrics = chunk = sweep.gather(chunk)
            history.extend(*chunk)
            host = sweep.gather(state) if directory is not None or on_generations else None
            if directory is not None:
                _save(directory, host, history, cfg, impl)
            best = float(sweep.gather(state.best_fitness))
            bar.advance(n, _finite_mean(fit)[-1], best)
            if on_generations is not None:
                metrics = _call_metrics(strategy, host, chunk, best, curriculum is not None)
                on_generations(generation + n, metrics)
    finally:
        bar.close()
    return _output(strategy, sweep.gather(state), history, compile_s, run_s, curriculum)


def _output(strategy, final: Carry, history: _History, compile_s, run_s, curriculum) -> ESOutput:
    return ESOutput(
        mean_params=_mean_params(strategy, final.es_state),
        best_params=final.best_params,
        best_fitness=float(final.best_fitness),
        fitness=history.fitness,
        nonfinite=history.nonfinite,
        state=final.es_state,
        compile_s=compile_s,
        run_s=run_s,
        curriculum=history.curriculum,
        task_state=final.task_state if curriculum is not None else None,
    )


def _population_devices(cfg: ESConfig, devices) -> list:
    """The devices the population is sharded over (see `evolve`); ValueError unless they divide
    `population_size`."""
    devices = sweep.resolve_devices(devices)
    if cfg.population_size % len(devices):
        raise ValueError(
            f"evolve: ESConfig.population_size={cfg.population_size} must divide by the "
            f"{len(devices)} devices it is sharded over (pass devices=n, or change the size)"
        )
    return devices


def _call_metrics(strategy, host: Carry, chunk, best: float, with_curriculum: bool) -> dict:
    """`on_generations`'s metrics of one call (see `evolve`) from its gathered outputs."""
    fit, bad, task_metrics = chunk
    metrics = {
        "fitness": fit,
        "nonfinite": bad,
        "mean_fitness": _finite_mean(fit),
        "best_fitness": best,
        "mean_params": _mean_params(strategy, host.es_state),
    }
    if with_curriculum:
        metrics.update(curriculum=task_metrics, task_state=host.task_state)
    return metrics


@runtime_checkable
class Curriculum(Protocol):
    """Generation-level task state that `evolve` carries (see the module docstring)."""

    metrics: tuple[str, ...]

    def init(self, key): ...

    def propose(self, state, key, num: int, shard): ...

    def update(self, state, tasks, info, fitness): ...


def _check_curriculum(curriculum) -> tuple[str, ...]:
    """The curriculum's metric names (() without one); TypeError if it is not a Curriculum."""
    if curriculum is None:
        return ()
    if not isinstance(curriculum, Curriculum) or not isinstance(curriculum.metrics, tuple | list):
        raise TypeError(
            f"evolve: curriculum {type(curriculum).__name__} needs init, propose, update and a "
            "metrics tuple (meta.es.Curriculum)"
        )
    return tuple(str(n) for n in curriculum.metrics)


def _key_data(key) -> tuple[np.ndarray, str]:
    """(raw key data, impl name) of a typed key or a raw uint32 key."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape != ():
        raise ValueError(f"evolve: key must be a single key, got shape {key.shape}")
    return np.asarray(jax.random.key_data(key)), str(jax.random.key_impl(key))


def _initial_carry(strategy, params, init_params, key_data, impl: str, curriculum=None) -> Carry:
    """The carry before generation 0, as host numpy (strong dtypes, like a restored one)."""

    @jax.jit
    def init():
        key = jax.random.wrap_key_data(jnp.asarray(key_data), impl=impl)
        k_init = jax.random.split(key)[0]
        task_state = () if curriculum is None else curriculum.init(jax.random.fold_in(k_init, 1))
        return Carry(
            es_state=strategy.init(k_init, init_params, params),
            best_params=init_params,
            best_fitness=jnp.asarray(-jnp.inf, jnp.float32),
            key_data=jnp.asarray(key_data),
            generation=jnp.asarray(0, jnp.int32),
            task_state=task_state,
        )

    return jax.tree.map(np.asarray, init())


def _make_chunk(strategy, params, cfg: ESConfig, fitness_fn, impl: str, sharding, curriculum=None):
    """run_chunk(carry, n) -> (carry, (fitness [n, P], nonfinite [n], curriculum metrics
    {name: [n]})): n generations."""
    P, antithetic = cfg.population_size, cfg.antithetic
    shard = lambda tree: jax.lax.with_sharding_constraint(tree, sharding)
    num_tasks = P // 2 if antithetic else P
    devices = sharding.mesh.size

    def shard_tasks(tree):
        """Constrains a [num_tasks]-leading pytree to the devices (when they divide it)."""
        return shard(tree) if num_tasks % devices == 0 else tree

    def generation(carry: Carry, _):
        key = jax.random.wrap_key_data(carry.key_data, impl=impl)
        key = jax.random.fold_in(jax.random.split(key)[1], carry.generation)
        k_ask, k_fit, k_tell = jax.random.split(key, 3)
        population, asked = strategy.ask(k_ask, carry.es_state, params)
        population = shard(population)
        keys = shard(candidate_keys(k_fit, P, antithetic))
        task_state, task_metrics = carry.task_state, {}
        if curriculum is None:
            fitness = jax.vmap(fitness_fn)(population, keys)
        else:
            k_task = jax.random.fold_in(key, 1)
            task_state, tasks, info = curriculum.propose(task_state, k_task, num_tasks, shard_tasks)
            copies = 2 if antithetic else 1
            per_candidate = shard(jax.tree.map(lambda x: jnp.concatenate([x] * copies), tasks))
            fitness = jax.vmap(fitness_fn)(population, keys, per_candidate)
        if jnp.shape(fitness) != (P,):
            raise ValueError(
                "evolve: fitness_fn(params, key) must return a scalar, got shape "
                f"{jnp.shape(fitness)[1:]}"
            )
        fitness = shard(jnp.asarray(fitness, jnp.float32))
        if curriculum is not None:
            pairs = fitness.reshape(copies, num_tasks).T  # [num_tasks, copies]
            task_state, task_metrics = curriculum.update(task_state, tasks, info, pairs)
            task_metrics = {
                k: jnp.asarray(task_metrics[k], jnp.float32) for k in curriculum.metrics
            }
        clean, bad = replace_nonfinite(fitness)
        told, _ = strategy.tell(k_tell, population, -clean, asked, params)  # evosax minimises
        any_finite = bad < P
        es_state = jax.tree.map(lambda new, old: jnp.where(any_finite, new, old), told, asked)
        ranked = jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)
        i = jnp.argmax(ranked)
        if curriculum is None:  # one task distribution: the best over all generations
            better = ranked[i] > carry.best_fitness
        else:  # each generation its own tasks: the best of the latest one with a finite fitness
            better = jnp.isfinite(ranked[i])
        best_params = jax.tree.map(
            lambda old, pop: jnp.where(better, pop[i], old), carry.best_params, population
        )
        carry = Carry(
            es_state=es_state,
            best_params=best_params,
            best_fitness=jnp.where(better, ranked[i], carry.best_fitness),
            key_data=carry.key_data,
            generation=carry.generation + 1,
            task_state=task_state,
        )
        return carry, (fitness, bad, task_metrics)

    def run_chunk(carry: Carry, n: int):
        return jax.lax.scan(generation, carry, length=n)

    return run_chunk


class _ProgramCache:
    """Compiled chunk programs, kept across `evolve` calls (like `jax.jit`'s own cache, keyed
    on the identity of `fitness_fn`): a resumed or repeated run of the same fitness, config
    (`num_generations` and `generations_per_call` aside), parameter shapes and devices does not
    compile again. The newest `_CACHE_SIZE` programs are kept."""

    def __init__(self, cfg: ESConfig, fitness_fn, init_params, impl: str, devices):
        static = dataclasses.replace(cfg, num_generations=1, generations_per_call=1)
        shapes = tuple((np.shape(x), np.dtype(x.dtype).str) for x in jax.tree.leaves(init_params))
        self.key = (static, fitness_fn, jax.tree.structure(init_params), shapes, impl)
        self.key += (tuple(devices),)
        self.cache = _CACHE
        try:
            hash(self.key)
        except TypeError:  # an unhashable fitness_fn: compile for this call only
            self.key, self.cache = (), collections.OrderedDict()

    def compiled(self, n: int, run_chunk, state: Carry, sharding) -> tuple[Any, float]:
        """(the program running `run_chunk(carry, n)` on replicated `state`, seconds spent
        compiling it now: 0 when cached)."""
        key = (*self.key, n)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key], 0.0
        t0 = time.perf_counter()
        jitted = jax.jit(
            lambda c: run_chunk(c, n), in_shardings=(sharding,), out_shardings=sharding
        )
        self.cache[key] = program = jitted.lower(state).compile()
        while len(self.cache) > _CACHE_SIZE:
            self.cache.popitem(last=False)
        return program, time.perf_counter() - t0


_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 8


def _mean_params(strategy, es_state):
    return jax.tree.map(np.asarray, strategy.get_mean(es_state))


class _Bar:
    """A tqdm bar over generations with mean / best fitness (progress=True), or nothing."""

    def __init__(self, progress: bool, total: int, initial: int):
        self.tqdm = None
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self.tqdm = tqdm(
                total=total, initial=initial, desc="es", unit="gen", dynamic_ncols=True
            )

    def advance(self, n: int, mean: float, best: float) -> None:
        if self.tqdm is not None:
            self.tqdm.set_postfix(mean=f"{mean:.4g}", best=f"{best:.4g}", refresh=False)
            self.tqdm.update(n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


# --------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class _History:
    """Host records per generation: fitness `[G, P]` (raw), nonfinite `[G]`, and the
    curriculum's metrics `{name: [G]}` ({} without a curriculum)."""

    fitness: np.ndarray
    nonfinite: np.ndarray
    curriculum: dict

    @classmethod
    def zeros(cls, generations: int, population_size: int, names=()) -> _History:
        return cls(
            np.zeros((generations, population_size), np.float32),
            np.zeros((generations,), np.int32),
            {name: np.zeros((generations,), np.float32) for name in names},
        )

    def extend(self, fitness, nonfinite, curriculum) -> None:
        self.fitness = np.concatenate([self.fitness, fitness])
        self.nonfinite = np.concatenate([self.nonfinite, nonfinite])
        self.curriculum = {
            k: np.concatenate([v, curriculum[k]]) for k, v in self.curriculum.items()
        }


def _tree(carry: Carry, history: _History) -> dict:
    """What a checkpoint stores (its layout is the on-disk format: keep it)."""
    tree = {"carry": carry, "fitness": history.fitness, "nonfinite": history.nonfinite}
    if history.curriculum:  # absent without a curriculum
        tree["curriculum"] = history.curriculum
    return tree


def _save(directory: Path, carry: Carry, history: _History, cfg: ESConfig, impl: str) -> Path:
    """Writes generation `carry.generation` atomically with `purejaxrl.checkpoint.save_tree`: the
    leaves are stored flat (orbax needs no knowledge of evosax / optax state classes)."""
    generation = int(carry.generation)
    info = {
        "format": FORMAT,
        "config": dataclasses.asdict(cfg),
        "generation": generation,
        "key_impl": impl,
        "key_data": np.asarray(carry.key_data).tolist(),
        "versions": {
            "jax": jax.__version__,
            "evosax": importlib.metadata.version("evosax"),
            "orbax": ocp.__version__,
        },
    }
    tree = _tree(carry, history)
    return ckpt.save_tree(directory, generation, tree, info, unit="generation", flat=True)


def _resume(directory, resume: bool, cfg: ESConfig, fresh: Carry, impl: str, names):
    """(carry, _History) to start from: `fresh` and no history, or the newest checkpoint in
    `directory` when `resume` (CheckpointError when there is one and not `resume`; ValueError
    when it is past `cfg.num_generations`)."""
    saved = [] if directory is None else ckpt.complete_steps(directory)
    if saved and not resume:
        raise ckpt.CheckpointError(
            f"{directory} already holds an ES checkpoint (generation {saved[-1]}): pass "
            "resume=True to continue it, or use another checkpoint_dir"
        )
    if not saved:
        return fresh, _History.zeros(0, cfg.population_size, names)
    carry, history = _load(directory, cfg, fresh, impl, names)
    if int(carry.generation) > cfg.num_generations:
        raise ValueError(
            f"evolve: the checkpoint is at generation {int(carry.generation)}, past "
            f"ESConfig.num_generations={cfg.num_generations}"
        )
    return carry, history


def _load(directory: Path, cfg: ESConfig, fresh: Carry, impl: str, names=()):
    """(carry, _History) of the newest checkpoint, checked against `cfg`, the key and the shapes
    of `fresh` (the carry a new run would start with: its parameters and curriculum state) and
    the curriculum's metric names."""
    path, info = ckpt.read_latest(directory)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ckpt.CheckpointError(
            f"checkpoint at {path} is not an ES checkpoint of format {FORMAT} "
            f"(format {info.get('format') if isinstance(info, dict) else None!r})"
        )
    problems = [
        f"{name}: checkpoint {info['config'].get(name, '<absent>')!r} vs config {value!r}"
        for name, value in dataclasses.asdict(cfg).items()
        if name not in RESUMABLE_FIELDS and info["config"].get(name, "<absent>") != value
    ]
    if info["key_impl"] != impl or info["key_data"] != np.asarray(fresh.key_data).tolist():
        problems.append("key: the checkpoint was started with another key")
    if problems:
        raise ckpt.CheckpointError(
            f"checkpoint at {path} does not fit this run ({'; '.join(problems)}): use the "
            "checkpoint's settings or another checkpoint_dir"
        )
    history = _History.zeros(int(info["generation"]), cfg.population_size, names)
    hint = " (other init_params or curriculum?)"
    tree = ckpt.restore_tree(path, _tree(fresh, history), info, flat=True, hint=hint)
    return tree["carry"], _History(tree["fitness"], tree["nonfinite"], tree.get("curriculum", {}))
