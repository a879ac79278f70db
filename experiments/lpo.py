"""Meta-train an LPO / TA-LPO drift with evolution strategies, then meta-test it against PPO-clip,
DPO and MDPO.

    python -m experiments.lpo [--config FILE.yaml] [key=value ...] [--time-aware] [--out DIR]
        [--devices N] [--compile-cache DIR] [--no-progress]
    python -m experiments.lpo --resume DIR [es.num_generations=G ...]   # continue meta-training
    python -m experiments.lpo --meta-test-only DIR [test_seeds=16 ...]  # redo the meta-test

Settings (YAML mapping or `key=value` overrides with YAML values; nested keys with dots, e.g.
`inner.total_timesteps=32000`, `es.population_size=32`, `task_inner.Acrobot-v1.num_envs=16`):

    seed            base seed (default 0): meta-training uses jax.random.key(seed) exactly as
                    `meta.lpo.make_meta_train(cfg)(jax.random.key(seed))` does
    tasks, inner, task_inner, time_aware, ppo_init, hidden, normalize, baseline_seeds, es
                    meta.lpo_train.LPOConfig's fields (`inner` is merged over
                    lpo_train.CPU_INNER, `es` over population_size 16, num_generations 64,
                    sigma 0.03; `--time-aware` sets time_aware: true)
    test_seeds      seeds per meta-test program (default 8)
    held_out        env ids meta-tested but not trained on (default none)
    held_out_inner  per held-out task PPOConfig overrides {env id: {field: value}} over `inner`
    horizons        inner horizons the training tasks are also meta-tested at, as multiples of
                    the meta-trained one (default [0.5, 2.0]); num_updates is scaled (rounded),
                    the rollout kept; held-out tasks are tested at the meta-trained horizon
    compare         objectives the learned drift is compared with (default [ppo_clip, dpo, mdpo])
    bootstrap       stratified-bootstrap resamples for the 95% CIs (default 2000)

Meta-training (meta/lpo_train.py): PPO-clip baselines per task (for the fitness normalisation
(R - R_low) / (R_ppo - R_low), written to baselines.json at once so a resume reuses them; a task
where a PPO-clip seed finished no episode, or where PPO-clip does not beat R_low, stops the run
with a ValueError naming the task before the ES compiles), then `es.evolve` over the population,
sharded over the devices (on CPU the host's cores become devices, as in experiments.sweep; with
no `--devices` the largest count that divides the population is used), checkpointed in es/ after
every `es.generations_per_call` generations. `--resume DIR` continues from there bit-exactly
(the fitness history equals an uninterrupted run's); it may raise es.num_generations (and change
es.generations_per_call or the meta-test settings), nothing else.

Meta-test: fresh PPO agents trained with each objective ("learned": GAE + the learned drift's
loss, the ES mean; "ppo_clip": PPO's default objective; "dpo", "mdpo": meta.lpo's closed forms
with their defaults) on every training task at the meta-trained horizon (1x) and at each of
`horizons`, and on every held-out task at 1x. Each (objective, task, horizon) is one jitted program, vmapped over
`test_seeds` seeds (sharded over the devices when the seed count divides), with the same seed
keys for every objective and horizon of a task. A seed's final return: its mean episode return
over the last 5% of updates, before its first finished episode none (NaN when it finished none);
per cell, the IQM over seeds with a 95% stratified-bootstrap CI (experiments/aggregate.py, as
experiments.sweep) and, for the learned drift, its probability of improvement over each other
objective. `--meta-test-only DIR` reruns it on DIR/drift with the meta-test settings changed by
the overrides.

`--compile-cache DIR` keeps compiled programs in DIR (jax's persistent compilation cache): a
resume, a `--meta-test-only` rerun or a TA-LPO run after an LPO run of the same tasks then loads
the programs it compiled before (baselines, PPO-clip/DPO/MDPO meta-test programs) instead of
compiling them again (tens of seconds each on CPU).

Bad input (an unknown key or env id, a bad value, an occupied --out, a --resume of a folder whose
config differs from the overrides) stops with `error: ...` (exit code 2) before anything is
written. Ctrl-C stops with exit code 130 and says how to continue.

Run folder DIR (default runs/<lpo|ta-lpo>-<tasks>-<timestamp>):
    config.yaml     the resolved settings (`--config DIR/config.yaml` repeats the run)
    baselines.json  PPO-clip's final return ("ppo") and first-episode return ("low") per task,
                    means over baseline_seeds, from finished episodes only
    es/             the ES checkpoints (meta/es.py; `--resume` continues the newest)
    fitness.csv     generation, mean, best, nonfinite: per generation the mean and the maximum
                    of the population's finite fitness (normalised: 0 untrained, 1 PPO-clip)
                    and the number of non-finite fitness values (NaN: a candidate whose inner
                    run finished no episode on some task)
    fitness.png     the mean and best fitness per generation
    drift/          the learned drift (the final ES mean), `meta.lpo.save` with its info: load
                    it with `lpo.load(DIR/drift)` or train with it by `python -m
                    experiments.train ... objective.name=lpo objective.path=DIR/drift`
    drift.png       the drift over r in [0.5, 2] (log scale) x A in [-2, 2]: LPO next to
                    PPO-clip's and DPO's; TA-LPO at n/N = 0, 0.5, 1 and its change from 0 to 1
    meta_test.json  per task x horizon: per objective IQM [95% CI], mean, median, per-seed
                    final returns; the learned drift's probability of improvement
    meta_test.png   the same as bars (IQM) with CI whiskers, one panel per task
    summary.json    fitness curve, baselines, meta-test table, timings (baselines_s,
                    es compile_s / run_s, meta-test compile_s / run_s, wall_s) per session
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import metacli, runs
from experiments.metacli import (  # noqa: F401  (the shared pieces, also public here)
    FINAL_FRACTION,
    FITNESS_COLUMNS,
    TEST_KEY_SALT,
    Plan,
    deep_merge,
    final_per_seed,
    fitness_rows,
    parse_overrides,
    read_fitness,
    say,
    seed_keys,
    use_compile_cache,
    write_fitness,
    write_yaml,
)

# jax and meta are imported inside the functions that use them, after the first status line and
# after the host device count is set.

COMPARE = ("ppo_clip", "dpo", "mdpo")
OBJECTIVES = ("learned", *COMPARE)
LPO_KEYS = (
    "tasks",
    "inner",
    "task_inner",
    "time_aware",
    "ppo_init",
    "hidden",
    "normalize",
    "baseline_seeds",
    "es",
)
TEST_KEYS = ("test_seeds", "held_out", "held_out_inner", "horizons", "compare", "bootstrap")
KEYS = ("seed", *LPO_KEYS, *TEST_KEYS)
RESUMABLE = {*TEST_KEYS, "es.num_generations", "es.generations_per_call"}
ES_DEFAULTS = {"population_size": 16, "num_generations": 64, "sigma": 0.03}
TEST_DEFAULTS = {
    "test_seeds": 8,
    "held_out": [],
    "held_out_inner": {},
    "horizons": [0.5, 2.0],
    "compare": list(COMPARE),
    "bootstrap": 2000,
}
NESTED = ("inner", "task_inner", "held_out_inner", "es")  # mappings merged key by key
DRIFT_R = (0.5, 2.0)  # drift.png ranges
DRIFT_A = (-2.0, 2.0)


# --------------------------------------------------------------------------- arguments


def parse_args(argv):
    return metacli.parser(
        "experiments.lpo",
        "Meta-train LPO / TA-LPO with ES, then meta-test the learned drift against "
        "PPO-clip, DPO and MDPO; writes a run folder.",
        __doc__,
        time_aware="TA-LPO (sets time_aware: true)",
        artifact="drift",
        out="runs/<lpo|ta-lpo>-<tasks>-<timestamp>",
    ).parse_args(argv)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"es": {"sigma": 0.03}} -> {"es.sigma": 0.03} (only the NESTED mappings are opened)."""
    return metacli.flatten(values, NESTED, prefix)


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (plain YAML, written as config.yaml), the LPOConfig and
    the meta-test settings."""

    values: dict
    cfg: Any  # meta.lpo_train.LPOConfig
    seed: int
    test_seeds: int
    held_out: tuple[str, ...]
    held_out_inner: dict  # {env id: {PPOConfig field: value}} over cfg.inner
    horizons: tuple[float, ...]  # 1.0 first
    compare: tuple[str, ...]
    bootstrap: int

    @property
    def algo(self) -> str:
        return "ta-lpo" if self.cfg.time_aware else "lpo"

    @property
    def es(self):
        return self.cfg.es

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("learned", *self.compare)

    @property
    def test_tasks(self) -> tuple[str, ...]:
        return (*self.cfg.tasks, *self.held_out)

    @property
    def cells(self) -> list[tuple[str, float]]:
        """(task, horizon) of the meta-test: training tasks x horizons, held-out tasks at 1x."""
        return [(t, h) for t in self.cfg.tasks for h in self.horizons] + [
            (t, 1.0) for t in self.held_out
        ]


def defaults() -> dict[str, Any]:
    from meta import lpo_train

    d = lpo_train.LPOConfig.__dataclass_fields__
    inner = {k: list(v) if isinstance(v, tuple) else v for k, v in lpo_train.CPU_INNER.items()}
    return {
        "seed": 0,
        "tasks": list(d["tasks"].default),
        "inner": inner,
        "task_inner": {},
        "time_aware": False,
        "ppo_init": False,
        "hidden": d["hidden"].default,
        "normalize": d["normalize"].default,
        "baseline_seeds": d["baseline_seeds"].default,
        "es": dict(ES_DEFAULTS),
        **copy.deepcopy(TEST_DEFAULTS),
    }


def resolve(values: Mapping[str, Any]) -> Settings:
    """Settings from a mapping (defaults filled in); ValueError naming the key on bad input."""
    from meta import lpo_train

    metacli.check_keys(values, KEYS)
    v = deep_merge(defaults(), values)
    seed = metacli.as_int("seed", v["seed"], 0)
    tasks = metacli.task_list("tasks", v["tasks"])
    if not tasks:
        raise ValueError("tasks: give at least one env id")
    inner = metacli.mapping("inner", v["inner"])
    task_inner = metacli.mapping("task_inner", v["task_inner"])
    task_inner = {t: metacli.mapping(f"task_inner.{t}", f) for t, f in task_inner.items()}
    es_cfg = metacli.es_config(metacli.mapping("es", v["es"]))
    cfg = lpo_train.LPOConfig(
        tasks=tuple(tasks),
        inner=inner,
        task_inner=task_inner,
        time_aware=metacli.as_bool("time_aware", v["time_aware"]),
        ppo_init=metacli.as_bool("ppo_init", v["ppo_init"]),
        hidden=metacli.as_int("hidden", v["hidden"], 1),
        normalize=metacli.as_bool("normalize", v["normalize"]),
        baseline_seeds=metacli.as_int("baseline_seeds", v["baseline_seeds"], 1),
        es=es_cfg,
    )
    held_out = metacli.task_list("held_out", v["held_out"] or [])
    both = sorted(set(held_out) & set(tasks))
    if both:
        raise ValueError(f"held_out: {both} are training tasks too; a held-out task is not")
    held_out_inner = metacli.mapping("held_out_inner", v["held_out_inner"])
    unknown = sorted(set(held_out_inner) - set(held_out))
    if unknown:
        raise ValueError(f"held_out_inner: {unknown} are not among held_out {held_out}")
    held_out_inner = {
        t: metacli.mapping(f"held_out_inner.{t}", f) for t, f in held_out_inner.items()
    }
    horizons = metacli.multiples("horizons", v["horizons"])
    compare = v["compare"] or []
    if isinstance(compare, str):
        compare = [compare]
    for name in compare:
        if name not in COMPARE:
            raise ValueError(
                f"compare: unknown objective {name!r}{metacli.hint(name, COMPARE)} "
                f"(choose from {list(COMPARE)})"
            )
    compare = list(dict.fromkeys(compare))
    settings = Settings(
        values={},
        cfg=cfg,
        seed=seed,
        test_seeds=metacli.as_int("test_seeds", v["test_seeds"], 1),
        held_out=tuple(held_out),
        held_out_inner=held_out_inner,
        horizons=tuple(horizons),
        compare=tuple(compare),
        bootstrap=metacli.as_int("bootstrap", v["bootstrap"], 1),
    )
    for task, h in settings.cells:  # validates every meta-test config now
        test_config(settings, task, h)
    resolved = {
        "seed": seed,
        "tasks": tasks,
        "inner": metacli.plain(inner),
        "task_inner": metacli.plain(task_inner),
        "time_aware": cfg.time_aware,
        "ppo_init": cfg.ppo_init,
        "hidden": cfg.hidden,
        "normalize": cfg.normalize,
        "baseline_seeds": cfg.baseline_seeds,
        "es": metacli.plain(dataclasses.asdict(es_cfg)),
        "test_seeds": settings.test_seeds,
        "held_out": held_out,
        "held_out_inner": metacli.plain(held_out_inner),
        "horizons": list(horizons[1:]),
        "compare": compare,
        "bootstrap": settings.bootstrap,
    }
    return dataclasses.replace(settings, values=resolved)


def test_config(settings: Settings, task: str, horizon: float):
    """The PPOConfig of the meta-test on `task` at `horizon` x the meta-trained number of
    updates (rounded, at least 1; the rollout is unchanged)."""
    from meta import lpo_train

    if task in settings.cfg.tasks:
        base = settings.cfg.inner_config(task)
    else:
        fields = {**dict(settings.cfg.inner), **settings.held_out_inner.get(task, {})}
        try:
            base = lpo_train.LPOConfig(
                tasks=(task,), inner=fields, es=settings.cfg.es
            ).inner_config(task)
        except ValueError as e:
            raise ValueError(f"held-out task {task}: {e}") from None
    batch = base.num_envs * base.num_steps
    updates = max(1, round(horizon * (base.total_timesteps // batch)))
    return dataclasses.replace(base, total_timesteps=updates * batch)


# --------------------------------------------------------------------------- plan


def describe(args) -> str | None:
    """The first status line, from the YAML and overrides alone (no jax import)."""
    if args.resume or args.meta_test_only:
        return None
    try:
        values = runs.load_yaml(args.config) if args.config else {}
        values = deep_merge(values, parse_overrides(args.overrides))
    except ValueError:
        return None
    ta = args.time_aware or values.get("time_aware") is True
    tasks = values.get("tasks", ["CartPole-v1", "Acrobot-v1"])
    es_values = values.get("es") if isinstance(values.get("es"), Mapping) else {}
    pop = es_values.get("population_size", ES_DEFAULTS["population_size"])
    gens = es_values.get("num_generations", ES_DEFAULTS["num_generations"])
    tasks = ", ".join(map(str, tasks)) if isinstance(tasks, list) else tasks
    return (
        f"building {'TA-LPO' if ta else 'LPO'} meta-training on {tasks} (population {pop} x "
        f"{gens} generations) ..."
    )


EXPERIMENT = metacli.Experiment(
    prog="experiments.lpo",
    artifact="drift",
    resolve=lambda values: resolve(values),
    run_name=lambda s: f"{s.algo}-{'+'.join(s.cfg.tasks)}",
    test_keys=TEST_KEYS,
    nested=NESTED,
)


def prepare(args) -> Plan:
    """Everything that can fail on bad input, done before anything is written."""
    return metacli.prepare(args, EXPERIMENT)


# --------------------------------------------------------------------------- outputs


def plot_fitness(run_dir: Path, settings: Settings) -> Path:
    es_cfg = settings.cfg.es
    title = (
        f"{settings.algo.upper()} meta-training on {', '.join(settings.cfg.tasks)}\n"
        f"{es_cfg.strategy}, population {es_cfg.population_size}"
    )
    if settings.cfg.normalize:
        ylabel = "fitness (normalised return, mean over tasks)"
        lines = [(1.0, "PPO-clip (1)"), (0.0, "untrained (0)")]
    else:
        ylabel, lines = "fitness (final return, mean over tasks)", []
    return metacli.plot_fitness(run_dir, title, ylabel, lines)


def drift_grid(params, time_aware: bool, ppo_init: bool, progress: float | None = None):
    """(r [n], A [m], drift [m, n]) of the learned drift (with progress n/N for TA-LPO)."""
    import jax.numpy as jnp

    from meta import lpo

    r = np.geomspace(*DRIFT_R, 161)
    a = np.linspace(*DRIFT_A, 161)
    rr, aa = np.meshgrid(r, a)
    p = (0.0 if progress is None else progress) if time_aware else None
    d = lpo.drift(params, jnp.log(rr.ravel()), jnp.asarray(aa.ravel()), p, ppo_init)
    return r, a, np.asarray(d, np.float64).reshape(aa.shape)


def plot_drift(run_dir: Path, settings: Settings, params) -> Path:
    import jax.numpy as jnp

    from meta import lpo

    plt = metacli.pyplot()
    from matplotlib.ticker import NullFormatter

    ta, ppo_init = settings.cfg.time_aware, settings.cfg.ppo_init
    panels = []  # (title, r, a, values, kind)
    if ta:
        grids = [drift_grid(params, True, ppo_init, p) for p in (0.0, 0.5, 1.0)]
        for p, (r, a, d) in zip((0.0, 0.5, 1.0), grids, strict=True):
            panels.append((f"TA-LPO drift, n/N = {p:g}", r, a, d, "drift"))
        r, a, _ = grids[0]
        panels.append(
            ("change n/N 0 -> 1: drift(1) - drift(0)", r, a, grids[2][2] - grids[0][2], "diff")
        )
    else:
        r, a, d = drift_grid(params, False, ppo_init)
        panels.append(("LPO drift (learned)", r, a, d, "drift"))
        rr, aa = np.meshgrid(r, a)
        log_r, adv = jnp.log(rr.ravel()), jnp.asarray(aa.ravel())
        for title, ref in (
            ("PPO-clip drift (eps 0.2)", lpo.ppo_drift(log_r, adv)),
            ("DPO drift (alpha 2, beta 0.6)", lpo.dpo_drift(log_r, adv)),
        ):
            panels.append((title, r, a, np.asarray(ref, np.float64).reshape(aa.shape), "ref"))
    shared = [p[3] for p in panels if p[4] == "drift"]
    vmax = max(float(np.nanmax(d)) for d in shared) if shared else 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.9), squeeze=False)
    for ax, (title, r, a, d, kind) in zip(axes[0], panels, strict=True):
        if kind == "diff":
            lim = max(float(np.nanmax(np.abs(d))), 1e-12)
            mesh = ax.pcolormesh(r, a, d, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
        else:
            top = vmax if kind == "drift" else max(float(np.nanmax(d)), 1e-12)
            mesh = ax.pcolormesh(r, a, d, cmap="viridis", vmin=0.0, vmax=top, shading="auto")
        fig.colorbar(mesh, ax=ax)
        ax.set_xscale("log")
        ax.set_xticks([0.5, 0.75, 1.0, 1.5, 2.0], ["0.5", "0.75", "1", "1.5", "2"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="w" if kind != "diff" else "k", lw=0.6, ls=":")
        ax.axhline(0.0, color="w" if kind != "diff" else "k", lw=0.6, ls=":")
        ax.set_xlabel("probability ratio r")
        ax.set_ylabel("advantage A (normalised)")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = run_dir / "drift.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_meta_test(run_dir: Path, table: dict) -> Path:
    panels = {}
    for c in table["cells"]:
        kind = "held out" if c["kind"] == "held_out" else "trained on"
        panels.setdefault(f"{c['task']} ({kind})", []).append(
            {
                "tick": f"{c['horizon']:g}x\n({c['total_timesteps']:,})",
                "values": c["results"],
            }
        )
    return metacli.plot_cells(
        run_dir / "meta_test.png",
        panels,
        table["objectives"],
        xlabel="inner horizon (env steps)",
        ylabel="final return, IQM [95% CI]",
        suptitle=f"meta-test over {table['test_seeds']} seeds",
    )


def format_table(table: dict) -> str:
    objectives = table["objectives"]
    head = f"{'task':<22} {'horizon':>7} {'steps':>9}  " + "  ".join(f"{o:>24}" for o in objectives)
    lines = [f"meta-test: final return IQM [95% CI] over {table['test_seeds']} seeds", head]
    for c in table["cells"]:
        task = c["task"] + (" *" if c["kind"] == "held_out" else "")
        parts = []
        for o in objectives:
            s = c["results"][o]
            if s["iqm"] is None:
                parts.append(f"{'-':>24}")
            else:
                lo, hi = s["iqm_ci"]
                parts.append(f"{s['iqm']:>8.4g} [{lo:.4g}, {hi:.4g}]".rjust(24))
        lines.append(
            f"{task:<22} {c['horizon']:>6g}x {c['total_timesteps']:>9,}  " + "  ".join(parts)
        )
    if any(c["kind"] == "held_out" for c in table["cells"]):
        lines.append("* held out (not meta-trained on)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- meta-test


def make_program(objective: str, cfg, settings: Settings, sharding):
    """The jitted program of one meta-test cell: (params, key_data) -> metrics for "learned",
    (key_data) -> metrics otherwise; metrics `[S, U]` episode_return and episodes_finished."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from meta import lpo, lpo_train
    from purejaxrl import objectives, ppo

    def pick(m):
        return {"episode_return": m["episode_return"], "episodes_finished": m["episodes_finished"]}

    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    if objective == "learned":
        ta, ppo_init = settings.cfg.time_aware, settings.cfg.ppo_init

        def learned(params, key_data):
            keys = jax.random.wrap_key_data(key_data)
            loss = lpo.learned_loss(params, time_aware=ta, ppo_init=ppo_init)
            return pick(jax.vmap(lambda k: lpo_train.inner_train(cfg, loss)(k).metrics)(keys))

        return jax.jit(learned, in_shardings=(replicated, sharding), out_shardings=sharding)
    if objective == "ppo_clip":
        agent = ppo.make_agent(cfg)  # PPO's default objective: GAE + clipped surrogate
    else:
        loss = {"dpo": lpo.dpo, "mdpo": lpo.mdpo}[objective]()
        agent = ppo.make_agent(cfg, objectives.actor_critic(cfg, loss))

    def closed_form(key_data):
        keys = jax.random.wrap_key_data(key_data)
        return pick(jax.vmap(lambda k: agent.train(k).metrics)(keys))

    return jax.jit(closed_form, in_shardings=(sharding,), out_shardings=sharding)


def meta_test(plan: Plan, params) -> dict:
    """Trains `test_seeds` fresh agents per (objective, task, horizon); returns the table."""
    import jax

    from experiments import aggregate
    from purejaxrl import sweep

    settings = plan.settings
    n_dev = max(d for d in range(1, len(plan.devices) + 1) if settings.test_seeds % d == 0)
    sharding = sweep.run_sharding(plan.devices[:n_dev])
    from jax.sharding import NamedSharding, PartitionSpec

    params = jax.device_put(params, NamedSharding(sharding.mesh, PartitionSpec()))
    cells = [(task, h, test_config(settings, task, h)) for task, h in settings.cells]
    total = len(cells) * len(settings.objectives)
    say(
        plan,
        f"meta-test: {len(settings.objectives)} objectives x {len(cells)} (task, horizon) cells "
        f"= {total} programs, each over {settings.test_seeds} seeds on {n_dev} device(s), each "
        "compiled once ...",
    )
    bar = None
    if plan.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="meta-test", unit="prog", dynamic_ncols=True)
    compile_s = run_s = 0.0
    out_cells = []
    try:
        for task, h, cfg in cells:
            keys = sweep.put(seed_keys(settings.seed, task, settings.test_seeds), sharding)
            results, finals = {}, {}
            for objective in settings.objectives:
                if bar is not None:
                    bar.set_postfix_str(f"{task} {h:g}x {objective}", refresh=True)
                program = make_program(objective, cfg, settings, sharding)
                args = (params, keys) if objective == "learned" else (keys,)
                t0 = time.perf_counter()
                compiled = program.lower(*args).compile()
                compile_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                metrics = sweep.gather(jax.block_until_ready(compiled(*args)))
                run_s += time.perf_counter() - t0
                final = final_per_seed(metrics["episode_return"], metrics["episodes_finished"])
                finals[objective] = final
                results[objective] = metacli.stats(final, settings.bootstrap)
                if bar is not None:
                    bar.update(1)
            improve = {}
            mine = finals["learned"][np.isfinite(finals["learned"])]
            for objective in settings.compare:
                other = finals[objective][np.isfinite(finals[objective])]
                improve[objective] = (
                    aggregate.probability_of_improvement(mine, other)
                    if mine.size and other.size
                    else None
                )
            out_cells.append(
                {
                    "task": task,
                    "kind": "train" if task in settings.cfg.tasks else "held_out",
                    "horizon": h,
                    "total_timesteps": int(cfg.total_timesteps),
                    "num_updates": int(cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)),
                    "results": results,
                    "p_improvement_learned_over": improve,
                }
            )
    finally:
        if bar is not None:
            bar.close()
    return {
        "objectives": list(settings.objectives),
        "test_seeds": settings.test_seeds,
        "horizons": list(settings.horizons),
        "tasks": list(settings.cfg.tasks),
        "held_out": list(settings.held_out),
        "definition": (
            "per seed, mean episode_return over the last "
            f"{FINAL_FRACTION:.0%} of updates (from its first finished episode on; NaN if none); "
            f"per cell, IQM over seeds with a 95% stratified bootstrap CI ({settings.bootstrap} "
            "resamples; NaN seeds excluded); p_improvement_learned_over: P(learned > other) + "
            "0.5 P(=) over seed pairs; the same seed keys for every objective and horizon"
        ),
        "cells": out_cells,
        "programs": total,
        "devices": n_dev,
        "compile_s": compile_s,
        "run_s": run_s,
    }


# --------------------------------------------------------------------------- run


def summary_of(plan: Plan, fitness: dict, baselines, table, session: dict) -> dict:
    settings = plan.settings
    es_cfg = settings.cfg.es
    definition = (
        "per candidate, the mean over tasks of its inner run's final return (mean episode_return "
        f"over the last {FINAL_FRACTION:.0%} of updates, finished episodes only; NaN if a task's "
        "run finished none)"
        + (
            ", each normalised (R - R_low) / (R_ppo - R_low) by baselines (no floor)"
            if settings.cfg.normalize
            else ""
        )
        + "; per generation the mean and max over the population (finite values)"
    )
    out = {
        "algo": settings.algo,
        "tasks": list(settings.cfg.tasks),
        "held_out": list(settings.held_out),
        "seed": settings.seed,
        "population_size": es_cfg.population_size,
        "generations": len(fitness["mean"]),
        "planned_generations": es_cfg.num_generations,
        "fitness": metacli.fitness_summary(fitness, definition),
        "baselines": baselines,
        "drift": "drift",
        "meta_test": None,
    }
    if table is not None:
        out["meta_test"] = {
            f"{c['task']}@{c['horizon']:g}x": {
                o: {k: c["results"][o][k] for k in ("iqm", "iqm_ci", "mean")}
                for o in table["objectives"]
            }
            for c in table["cells"]
        }
        learned = {
            f"{c['task']}@{c['horizon']:g}x": c["results"]["learned"] for c in table["cells"]
        }
        out["final_return_mean"] = {k: v["mean"] for k, v in learned.items()}
        out["final_return_per_seed"] = {k: v["per_seed"] for k, v in learned.items()}
    out.update(metacli.session_summary(plan, session))
    return out


def run_meta_training(plan: Plan, session: dict, t_start: float):
    """Baselines + ES (resumable); returns the MetaOutput."""
    import jax

    from meta import lpo

    settings, run_dir = plan.settings, plan.run_dir
    cfg = settings.cfg
    state = {"first": True}

    def on_baselines(baselines):
        session["baselines_s"] = time.perf_counter() - t_start
        if plan.baselines is None:
            runs.write_json(run_dir / "baselines.json", {"baselines": baselines})
        if baselines:
            listed = "; ".join(f"{t} {b['ppo']:.4g}, {b['low']:.4g}" for t, b in baselines.items())
            say(plan, f"PPO-clip baselines (final return, first-episode return): {listed}")
        pop, g = cfg.es.population_size, cfg.es.num_generations
        say(
            plan,
            f"meta-training: {pop} candidates x {len(cfg.tasks)} task(s) per generation, "
            f"generations {plan.done_generations + 1}..{g}, population over {plan.es_devices} "
            "device(s); compiling the generation ...",
        )

    def on_generations(generation, metrics):
        if state["first"] and plan.write_config and plan.mode == "resume":
            write_yaml(run_dir, settings.values)  # a resume writes its config once it runs
        state["first"] = False
        fit = np.asarray(metrics["fitness"])
        n = len(fit)
        rows = fitness_rows(fit, np.asarray(metrics["nonfinite"]), generation - n + 1)
        write_fitness(run_dir, rows, keep_upto=generation - n)

    if cfg.normalize and plan.baselines is None:
        say(
            plan,
            f"PPO-clip baselines on {len(cfg.tasks)} task(s) x {cfg.baseline_seeds} seeds "
            "(one program per task) ...",
        )
    meta_train = lpo.make_meta_train(cfg)
    out = meta_train(
        jax.random.key(settings.seed),
        baselines=plan.baselines,
        on_baselines=on_baselines,
        devices=plan.devices[: plan.es_devices],
        progress=plan.progress,
        checkpoint_dir=run_dir / "es",
        resume=plan.mode == "resume",
        on_generations=on_generations,
    )
    if plan.write_config and plan.mode == "resume":
        write_yaml(run_dir, settings.values)
    write_fitness(run_dir, fitness_rows(out.es.fitness, out.es.nonfinite))
    ran = out.es.fitness.shape[0] - plan.done_generations
    steps = sum(int(cfg.inner_config(t).total_timesteps) for t in cfg.tasks)
    session.update(
        generations_run=int(ran),
        es_compile_s=out.es.compile_s,
        es_run_s=out.es.run_s,
        es_sps=(ran * cfg.es.population_size * steps / out.es.run_s) if out.es.run_s else None,
        meta_train_s=time.perf_counter() - t_start,
    )
    return out


def execute(plan: Plan) -> dict:
    from meta import lpo

    t_start = time.perf_counter()
    settings, run_dir = plan.settings, plan.run_dir
    session = metacli.begin_session(plan)

    if plan.mode == "meta_test_only":
        params, _ = lpo.load(run_dir / "drift", time_aware=settings.cfg.time_aware)
        baselines = metacli.read_json(run_dir / "baselines.json").get("baselines")
    else:
        out = run_meta_training(plan, session, t_start)
        params, baselines = out.params, out.baselines or None
        info = {**out.info, "run": {"folder": str(run_dir), "seed": settings.seed}}
        lpo.save(run_dir / "drift", params, info)
        plot_fitness(run_dir, settings)
        plot_drift(run_dir, settings, params)
        session["wall_s"] = time.perf_counter() - t_start
        partial = summary_of(plan, read_fitness(run_dir), baselines, None, session)
        if plan.previous.get("meta_test") is not None:
            partial["meta_test_stale"] = "the drift changed; meta_test.json is of an older one"
        runs.write_json(run_dir / "summary.json", partial)
        say(plan, f"saved the learned drift to {run_dir / 'drift'}")

    t_test = time.perf_counter()
    plan.stage = "meta_test"
    table = meta_test(plan, params)
    session.update(
        meta_test_compile_s=table["compile_s"],
        meta_test_run_s=table["run_s"],
        meta_test_s=time.perf_counter() - t_test,
    )
    runs.write_json(run_dir / "meta_test.json", table)
    plot_meta_test(run_dir, table)
    session["wall_s"] = time.perf_counter() - t_start
    summary = summary_of(plan, read_fitness(run_dir), baselines, table, session)
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def report(plan: Plan, summary: dict) -> None:
    """The final lines: the fitness curve's ends, the meta-test table, the timings."""
    table = metacli.read_json(plan.run_dir / "meta_test.json")
    line = metacli.fitness_line(summary)
    if line:
        print(line)
    print(format_table(table))
    t = summary["timings"]
    names = ("baselines_s", "es_compile_s", "es_run_s", "meta_test_compile_s", "meta_test_run_s")
    parts = [f"{k} {t[k]:.0f} s" for k in names if t.get(k) is not None]
    print(f"{' | '.join(parts)} | wall {summary['wall_s']:.0f} s\nrun folder: {plan.run_dir}")


def main(argv=None) -> int:
    return metacli.main(parse_args(argv), EXPERIMENT, describe, execute, report)


if __name__ == "__main__":
    sys.exit(main())
