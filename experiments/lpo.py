"""Meta-train an LPO / TA-LPO drift with evolution strategies, then meta-test it against PPO-clip,
DPO and MDPO. Settings: meta.lpo_train.LPOConfig's fields and meta.meta_test.LPOTestConfig's;
the command line and the run folder: docs/experiments.md, section experiments.lpo.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import command, metacli
from experiments import meta_test as T
from purejaxrl import config as C

LPO_KEYS = ("tasks", "inner", "task_inner", "time_aware", "ppo_init", "hidden", "normalize",
            "baseline_seeds", "es")  # fmt: skip
ES_DEFAULTS = {"population_size": 16, "num_generations": 64, "sigma": 0.03}  # LPOConfig's
DRIFT_GRID = np.geomspace(0.5, 2.0, 161), np.linspace(-2.0, 2.0, 161)  # drift.png's r, A


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings: `values` (config.yaml), the LPOConfig and the meta-test's
    meta.meta_test.LPOTestConfig."""

    values: dict
    cfg: Any  # meta.lpo_train.LPOConfig
    test: Any  # meta.meta_test.LPOTestConfig
    seed: int

    es = property(lambda self: self.cfg.es)
    time_aware = property(lambda self: self.cfg.time_aware)
    algo = property(lambda self: "ta-lpo" if self.cfg.time_aware else "lpo")


def defaults() -> dict[str, Any]:
    """Every key's default: LPOConfig's (inner: its CPU_INNER mapping; es: the values its
    ESConfig is given, the strategy filling in the rest) and LPOTestConfig's."""
    from meta import lpo_train, meta_test

    lpo = {k: command.field_default(lpo_train.LPOConfig, k) for k in LPO_KEYS}
    test = dataclasses.asdict(meta_test.LPOTestConfig())
    return command.plain(
        {"seed": 0, **lpo, "inner": lpo_train.CPU_INNER, "es": ES_DEFAULTS, **test}
    )


def resolve(values: Mapping[str, Any]) -> Settings:
    """Settings from a mapping (defaults filled in); LPOConfig, ESConfig and LPOTestConfig
    validate their fields; ValueError naming the key on bad input."""
    from meta import es, lpo_train, meta_test

    test_keys = [f.name for f in dataclasses.fields(meta_test.LPOTestConfig)]
    command.check_keys(values, ("seed", *LPO_KEYS, *test_keys))
    v = command.merge(defaults(), values)
    tasks = meta_test.names("tasks", v["tasks"], meta_test.env_ids())
    es_cfg = command.typed("es", es.ESConfig, v["es"])
    fields = {k: v[k] for k in LPO_KEYS}
    cfg = C.from_dict(lpo_train.LPOConfig, {**fields, "tasks": tasks, "es": es_cfg})
    test = C.from_dict(meta_test.LPOTestConfig, {k: v[k] for k in test_keys})
    test.cells(cfg)  # validates every meta-test config now
    resolved = {**v, "tasks": tasks, "es": dataclasses.asdict(es_cfg), **dataclasses.asdict(test)}
    seed = command.as_int("seed", v["seed"], 0)
    return Settings(command.plain({k: resolved[k] for k in v}), cfg, test, seed)


def describe(args, values: dict, time_aware: bool, size: str) -> str:
    """The first status line (`metacli.describe`)."""
    tasks = values.get("tasks", ["CartPole-v1", "Acrobot-v1"])
    tasks = ", ".join(map(str, tasks)) if isinstance(tasks, list) else tasks
    return f"building {'TA-LPO' if time_aware else 'LPO'} meta-training on {tasks} ({size}) ..."


def meta_train(plan: metacli.MetaPlan, session: dict, t_start: float):
    """Baselines + ES (resumable); returns (the learned drift, its info)."""
    import jax

    from meta import lpo

    settings, run_dir = plan.settings, plan.run_dir
    cfg = settings.cfg

    def on_baselines(baselines):
        session["baselines_s"] = time.perf_counter() - t_start
        if plan.baselines is None:
            command.write_json(run_dir / "baselines.json", {"baselines": baselines})
        if baselines:
            listed = "; ".join(f"{t} {b['ppo']:.4g}, {b['low']:.4g}" for t, b in baselines.items())
            plan.say(f"PPO-clip baselines (final return, first-episode return): {listed}")
        plan.say(
            f"meta-training: {cfg.es.population_size} candidates x {len(cfg.tasks)} task(s) per "
            f"generation, generations {plan.done_generations + 1}..{cfg.es.num_generations}, "
            f"population over {plan.es_devices} device(s); compiling the generation ..."
        )

    if cfg.normalize and plan.baselines is None:
        plan.say(f"PPO-clip baselines on {len(cfg.tasks)} task(s) x {cfg.baseline_seeds} seeds "
                 "(one program per task) ...")  # fmt: skip
    out = lpo.make_meta_train(cfg)(
        jax.random.key(settings.seed), baselines=plan.baselines, on_baselines=on_baselines,
        devices=plan.devices[: plan.es_devices], progress=plan.progress,
        checkpoint_dir=run_dir / "es", resume=plan.mode == "resume",
        on_generations=metacli.on_generations(plan),
    )  # fmt: skip
    steps = sum(int(cfg.inner_config(t).total_timesteps) for t in cfg.tasks)
    metacli.end_es(plan, session, out.es, steps, t_start)
    plan.baselines = out.baselines or None
    return out.params, out.info


def meta_test(plan: metacli.MetaPlan, params) -> dict:
    """Trains `test_seeds` fresh agents per (objective, task, horizon); returns the table."""
    from meta import meta_test as M

    settings, test = plan.settings, plan.settings.test
    n_dev = len(M.seed_devices(plan.devices, test.test_seeds))
    cells = test.cells(settings.cfg)
    total = len(cells) * len(test.objectives)
    plan.say(
        f"meta-test: {len(test.objectives)} objectives x {len(cells)} (task, horizon) cells = "
        f"{total} programs, each over {test.test_seeds} seeds on {n_dev} device(s), each "
        "compiled once ..."
    )
    timing = np.zeros(2)
    with T.progress_bar(plan, total) as bar:
        out_cells = [test_cell(plan, params, c, bar, timing) for c in cells]
    what = ("p_improvement_learned_over: P(learned > other) + 0.5 P(=) over seed pairs; the same "
            "seed keys for every objective and horizon")  # fmt: skip
    return {
        "objectives": list(test.objectives),
        "test_seeds": test.test_seeds,
        "horizons": list(test.multiples),
        "tasks": list(settings.cfg.tasks),
        "held_out": list(test.held_out),
        "definition": T.definition(what, test.bootstrap),
        "cells": out_cells,
        "programs": total,
        "devices": n_dev,
        "compile_s": float(timing[0]),
        "run_s": float(timing[1]),
    }


def test_cell(plan, params, cell, bar, timing) -> dict:
    """meta_test.json's cell (task, horizon, cfg): every objective's statistics."""
    from experiments import aggregate
    from meta import meta_test as M

    settings, test, (task, h, cfg) = plan.settings, plan.settings.test, cell
    keys = M.seed_keys(settings.seed, task, test.test_seeds)
    finals = {}
    for objective in test.objectives:
        bar.set_postfix_str(f"{task} {h:g}x {objective}")
        make_train = M.lpo_trainer(objective, cfg, settings.time_aware, settings.cfg.ppo_init)
        finals[objective], _, *seconds = M.finals(make_train, params, keys, plan.devices)
        timing += seconds
        bar.update()
    finite = {k: x[np.isfinite(x)] for k, x in finals.items()}
    mine = finite["learned"]
    return {
        "task": task,
        "kind": "train" if task in settings.cfg.tasks else "held_out",
        "horizon": h,
        "total_timesteps": int(cfg.total_timesteps),
        "num_updates": int(cfg.num_updates),
        "results": {k: T.stats(x, test.bootstrap) for k, x in finals.items()},
        "p_improvement_learned_over": {
            o: aggregate.probability_of_improvement(mine, finite[o])
            if mine.size and finite[o].size
            else None
            for o in test.compare
        },  # fmt: skip
    }


def plot_training(plan: metacli.MetaPlan, params) -> None:
    """fitness.png and drift.png."""
    settings = plan.settings
    es_cfg = settings.cfg.es
    title = (f"{settings.algo.upper()} meta-training on {', '.join(settings.cfg.tasks)}\n"
             f"{es_cfg.strategy}, population {es_cfg.population_size}")  # fmt: skip
    norm = settings.cfg.normalize
    ylabel = f"fitness ({'normalised' if norm else 'final'} return, mean over tasks)"
    lines = [(1.0, "PPO-clip (1)"), (0.0, "untrained (0)")] if norm else []
    metacli.plot_fitness(plan.run_dir, title, ylabel, lines)
    plot_drift(plan.run_dir, settings, params)


def drift_grid(fn) -> np.ndarray:
    """`fn(log r, A)` on drift.png's grid `DRIFT_GRID`: `[A, r]`."""
    import jax.numpy as jnp

    rr, aa = np.meshgrid(*DRIFT_GRID)
    values = fn(jnp.log(rr.ravel()), jnp.asarray(aa.ravel()))
    return np.asarray(values, np.float64).reshape(aa.shape)


def drift_panels(settings: Settings, params) -> list[tuple]:
    """(title, values, kind) of drift.png: TA-LPO at n/N = 0, 0.5, 1 and its change; LPO beside
    PPO-clip's and DPO's drifts."""
    from meta import lpo

    ppo_init = settings.cfg.ppo_init
    learned = lambda p: drift_grid(lambda r, a: lpo.drift(params, r, a, p, ppo_init))  # noqa: E731
    if settings.cfg.time_aware:
        grids = {p: learned(p) for p in (0.0, 0.5, 1.0)}
        panels = [(f"TA-LPO drift, n/N = {p:g}", d, "drift") for p, d in grids.items()]
        change = grids[1.0] - grids[0.0]
        return [*panels, ("change n/N 0 -> 1: drift(1) - drift(0)", change, "diff")]
    return [("LPO drift (learned)", learned(None), "drift"),
            ("PPO-clip drift (eps 0.2)", drift_grid(lpo.ppo_drift), "ref"),
            ("DPO drift (alpha 2, beta 0.6)", drift_grid(lpo.dpo_drift), "ref")]  # fmt: skip


def plot_drift(run_dir: Path, settings: Settings, params) -> Path:
    """drift.png over r in [0.5, 2] (log scale) x A in [-2, 2] (`drift_panels`)."""
    plt = command.pyplot()
    from matplotlib.ticker import NullFormatter

    panels = drift_panels(settings, params)
    shared = [d for _, d, kind in panels if kind == "drift"]
    vmax = max(float(np.nanmax(d)) for d in shared) if shared else 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.9), squeeze=False)
    r, a = DRIFT_GRID
    for ax, (title, d, kind) in zip(axes[0], panels, strict=True):
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
        line = "w" if kind != "diff" else "k"
        ax.axvline(1.0, color=line, lw=0.6, ls=":")
        ax.axhline(0.0, color=line, lw=0.6, ls=":")
        ax.set(xlabel="probability ratio r", ylabel="advantage A (normalised)")
        ax.set_title(title, fontsize=9)
    return command.save_figure(fig, run_dir / "drift.png", 110)


def plot_meta_test(run_dir: Path, table: dict) -> Path:
    panels = {}
    for c in table["cells"]:
        kind = "held out" if c["kind"] == "held_out" else "trained on"
        tick = f"{c['horizon']:g}x\n({c['total_timesteps']:,})"
        panels.setdefault(f"{c['task']} ({kind})", []).append(
            {"tick": tick, "values": c["results"]}
        )
    return T.plot_cells(
        run_dir / "meta_test.png", panels, table["objectives"], xlabel="inner horizon (env steps)",
        ylabel="final return, IQM [95% CI]", suptitle=f"meta-test over {table['test_seeds']} seeds",
    )  # fmt: skip


def format_table(table: dict) -> str:
    objectives = table["objectives"]
    head = f"{'task':<22} {'horizon':>7} {'steps':>9}  " + "  ".join(f"{o:>24}" for o in objectives)
    lines = [f"meta-test: final return IQM [95% CI] over {table['test_seeds']} seeds", head]
    for c in table["cells"]:
        task = c["task"] + (" *" if c["kind"] == "held_out" else "")
        parts = "  ".join(T.ci_text(c["results"][o]) for o in objectives)
        lines.append(f"{task:<22} {c['horizon']:>6g}x {c['total_timesteps']:>9,}  {parts}")
    if any(c["kind"] == "held_out" for c in table["cells"]):
        lines.append("* held out (not meta-trained on)")
    return "\n".join(lines)


def summary_of(plan: metacli.MetaPlan, table, session: dict, info=None) -> dict:
    from purejaxrl import scores

    settings = plan.settings
    normalised = ", each normalised (R - R_low) / (R_ppo - R_low) by baselines (no floor)"
    fitness = metacli.fitness_summary(plan.run_dir, (
        "per candidate, the mean over tasks of its inner run's final return (mean episode_return "
        f"over the last {scores.FINAL_FRACTION:.0%} of updates, finished episodes only; NaN if a "
        "task's run finished none)" + (normalised if settings.cfg.normalize else "")
        + "; per generation the mean and max over the population (finite values)"))  # fmt: skip
    out = {
        "algo": settings.algo,
        "tasks": list(settings.cfg.tasks),
        "held_out": list(settings.test.held_out),
        "seed": settings.seed,
        "population_size": settings.es.population_size,
        "generations": len(fitness["mean"]),
        "planned_generations": settings.es.num_generations,
        "fitness": fitness,
        "baselines": plan.baselines,
        "drift": "drift",
        "meta_test": None,
    }
    if table is not None:
        out |= T.test_summary(table["cells"], "horizon", table["objectives"], "learned")
    return out | metacli.session_summary(plan, session)


def run_name(s: Settings) -> str:
    return f"{s.algo}-{'+'.join(s.cfg.tasks)}"


EXPERIMENT = metacli.Experiment(
    prog="experiments.lpo",
    artifact="drift",
    library="meta.lpo",
    resolve=resolve,
    run_name=run_name,
    meta_train=meta_train,
    plot_training=plot_training,
    meta_test=meta_test,
    plot_meta_test=plot_meta_test,
    format_table=format_table,
    summary_of=summary_of,
)

COMMAND = command.Command(
    prog="experiments.lpo",
    description="Meta-train LPO / TA-LPO with ES, then meta-test the learned drift against "
    "PPO-clip, DPO and MDPO; writes a run folder.",
    plan=lambda args: metacli.plan(args, EXPERIMENT),
    execute=metacli.execute,
    report=metacli.report,
    arguments=lambda p: metacli.arguments(p, "TA-LPO (sets time_aware: true)", "drift"),
    describe=lambda args: metacli.describe(args, ES_DEFAULTS, describe),
    epilog="Settings, run folder and files: docs/experiments.md, section experiments.lpo.",
    shards=True,
    continue_with=metacli.continue_with,
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
