"""The outputs of experiments.lpg: plots, text tables, summary.json and the --compare-ta table
(docs/experiments.md, section experiments.lpg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import command, metacli
from experiments import meta_test as T
from experiments.lpg_meta_test import NORMALISATION

CURRICULUM_CSV, META_STEPS_CSV = "curriculum.csv", "meta_steps.csv"


def plot_training(plan, params=None) -> Path:
    """meta_steps.png (meta-gradient) or fitness.png (ES)."""
    s = plan.settings
    if s.meta_gradient:
        return plot_meta_steps(plan.run_dir, s)
    es = s.es
    title = (
        f"{s.method} meta-training on {s.cfg.lpg.env} (curriculum {s.curriculum})\n{es.strategy} "
        f"{es.fitness_shaping}, population {es.population_size}, {s.train_updates} updates per "
        "lifetime"
    )
    return metacli.plot_fitness(plan.run_dir, title, "fitness (final return on the pair's level)")


def _rolling(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of the finite values of the last `width` entries at every point (NaN if none)."""
    finite = np.isfinite(x)
    total, count = np.cumsum(np.where(finite, x, 0.0)), np.cumsum(finite)
    shift = lambda a: np.concatenate([np.zeros(width), a[:-width]]) if len(a) > width else 0 * a  # noqa: E731
    total, count = total - shift(total), count - shift(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_meta_steps(run_dir: Path, settings) -> Path:
    """meta_steps.png: per meta-step the finished agents' mean final return (and its rolling
    mean) and the meta-loss (and its policy-gradient part)."""
    plt = command.pyplot()
    m = command.read_csv(run_dir / META_STEPS_CSV)
    step = m["meta_step"]
    width = max(1, len(step) // 50)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(step, m["finished_return"], ".", ms=3, alpha=0.4, label="agents finished this step")
    left.plot(step, _rolling(m["finished_return"], width), label=f"rolling mean ({width})")
    left.set(xlabel="meta-step", ylabel="final return of the agents whose life ended")
    for name in ("meta_loss", "meta_pg_loss"):
        if name in m:
            right.plot(step, _rolling(m[name], width), label=name)
    right.set(xlabel="meta-step", ylabel=f"rolling mean ({width})")
    for ax in (left, right):
        ax.legend(fontsize=8)
    mg = settings.cfg.meta_gradient
    title = (
        f"{settings.method} meta-training on {settings.cfg.lpg.env}: {mg.num_agents} agents, "
        f"K={mg.num_agent_updates}, rule Adam {mg.learning_rate:g}, {settings.train_updates} "
        "updates per lifetime"
    )
    return command.save_figure(fig, run_dir / "meta_steps.png", 120, title)


def plot_meta_test(run_dir: Path, table: dict) -> Path:
    """meta_test.png: per task the raw final-return IQM [CI] per learner and lifetime, and the
    overall normalised IQM per lifetime."""
    panels = {}
    for c in table["cells"]:
        tick = f"{c['lifetime']:g}x\n({c['num_updates']} upd.)"
        panels.setdefault(f"{c['task']} (final return)", []).append(
            {"tick": tick, "values": c["results"]}
        )
    panels["normalised return, IQM over tasks x seeds"] = [
        {"tick": m, "values": entry or {}} for m, entry in table["overall"].items()
    ]
    return T.plot_cells(
        run_dir / "meta_test.png", panels, table["learners"],
        xlabel="lifetime (x meta-trained updates)", ylabel="IQM [95% CI]",
        suptitle=f"meta-test over {table['test_seeds']} seeds; normalised: "
        "(R - R_random) / (R_A2C - R_random)",
    )  # fmt: skip


def format_table(table: dict) -> str:
    """The meta-test as text: per cell R_random, each learner's IQM [CI], then the overall
    normalised IQM per lifetime."""
    learners = table["learners"]
    head = f"{'task':<22} {'life':>5} {'updates':>7} {'random':>8}  " + "  ".join(
        f"{name:>24}" for name in learners
    )
    lines = [f"meta-test: final return IQM [95% CI] over {table['test_seeds']} seeds "
             "(a2c, ppo at their tuned learning rate)", head]  # fmt: skip
    for c in table["cells"]:
        r = "-" if c["r_random"] is None else f"{c['r_random']:.3g}"
        parts = "  ".join(T.ci_text(c["results"][k]) for k in learners)
        lines.append(f"{c['task']:<22} {c['lifetime']:>4g}x {c['num_updates']:>7} {r:>8}  {parts}")
    lines.append("normalised return (R - R_random) / (R_A2C - R_random), IQM over tasks x seeds:")
    for m, entry in table["overall"].items():
        if entry is None:
            lines.append(f"  {m:>5}: no normalisable task")
            continue
        parts = " | ".join(f"{k} {T.ci_text(entry[k], 0)}" for k in learners)
        lines.append(f"  {m:>5}: {parts}  ({len(entry['tasks'])} tasks)")
    if table["not_normalisable"]:
        lines.append(
            f"not normalisable (R_A2C <= R_random): {', '.join(table['not_normalisable'])}"
        )
    return "\n".join(lines)


def csv_summary(run_dir: Path, name: str = CURRICULUM_CSV) -> dict | None:
    """First / last / mean / total of every metric of a per-step CSV (curriculum.csv,
    meta_steps.csv; finite values); None if absent."""
    path = run_dir / name
    if not path.is_file():
        return None
    out = {}
    for key, x in list(command.read_csv(path).items())[1:]:
        finite = x[np.isfinite(x)]
        out[key] = {
            "first": command.num(x[0]) if len(x) else None,
            "last": command.num(x[-1]) if len(x) else None,
            "mean": command.num(finite.mean()) if finite.size else None,
            "total": command.num(finite.sum()) if finite.size else None,
        }
    return out


def meta_gradient_summary(run_dir: Path, settings) -> dict:
    """summary.json's "meta_training" of a meta-gradient run (meta_steps.csv)."""
    steps = command.read_csv(run_dir / META_STEPS_CSV)
    finished = steps.get("finished_return", np.zeros(0))
    tenth = max(1, len(finished) // 10)
    mean = lambda x: command.num(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else None  # noqa: E731
    return {
        "definition": (
            "per meta-step: finished_return = mean final return (last 5% of updates, finished "
            "episodes only) of the agents whose life ended that step (NaN if none); meta_loss = "
            "the regularised A2C loss of the updated agents that the rule's Adam step descends"
        ),
        "meta_steps": len(finished),
        "planned_meta_steps": settings.cfg.meta_gradient.num_steps,
        "num_agents": settings.cfg.meta_gradient.num_agents,
        "finished_return_first_tenth": mean(finished[:tenth]),
        "finished_return_last_tenth": mean(finished[-tenth:]),
        "metrics": csv_summary(run_dir, META_STEPS_CSV),
    }


def summary_of(plan, table, session: dict, info=None) -> dict:
    s, run_dir = plan.settings, plan.run_dir
    out = {"method": s.method, "meta_optimizer": s.meta_optimizer, "algo": s.algo,
           "curriculum": s.curriculum, "env": s.cfg.lpg.env, "seed": s.seed,
           "train_updates": s.train_updates}  # fmt: skip
    if s.meta_gradient:
        out.update(meta_training=meta_gradient_summary(run_dir, s), fitness=None)
    else:
        fitness = metacli.fitness_summary(run_dir, (
            "per candidate, the final return of an A2C agent trained with it for its lifetime "
            "on its antithetic pair's level; per generation the mean and max over the "
            "population (finite values)"))  # fmt: skip
        out.update(population_size=s.es.population_size, generations=len(fitness["mean"]),
                   planned_generations=s.es.num_generations, fitness=fitness)  # fmt: skip
    out.update(curriculum_metrics=csv_summary(run_dir), rule="rule", normalisation=NORMALISATION,
               meta_test=None)  # fmt: skip
    trained_on = (info or {}).get("trained_on", {})
    out.update({k: trained_on[k] for k in ("antagonist_runs", "antagonist_runs_uncached")
                if k in trained_on})  # fmt: skip
    if table is not None:
        normalised = lambda c, k: {"normalised_iqm": c["normalised"][k]["iqm"]}  # noqa: E731
        out |= T.test_summary(table["cells"], "lifetime", table["learners"], "lpg", normalised)
        out["overall_normalised"] = table["overall"]
    return out | metacli.session_summary(plan, session)


def comparison(out: Path, arms: list[tuple[str, str]]) -> dict:
    """The comparison table of the runs in out/<name>: per lifetime multiple the normalised
    return's IQM [95% CI] over tasks x seeds of each run's rule (its meta_test.json "overall"),
    with the tuned A2C and PPO of the first run (every run has the same baselines); per cell the
    raw final return's IQM [CI] of each rule."""
    from meta.lpg_meta_test import BASELINES

    tables = {name: command.read_json(out / name / "meta_test.json") for name, _ in arms}
    first = tables[arms[0][0]]
    overall = {}
    for m in sorted(first["lifetimes"]):
        key = f"{m:g}x"
        row = {name: (tables[name]["overall"].get(key) or {}).get("lpg") for name, _ in arms}
        row.update({b: (first["overall"].get(key) or {}).get(b) for b in BASELINES})
        overall[key] = row
    cells = {}
    for i, c in enumerate(first["cells"]):
        cell = {name: tables[name]["cells"][i]["results"]["lpg"] for name, _ in arms}
        cells[f"{c['task']}@{c['lifetime']:g}x"] = cell | {b: c["results"][b] for b in BASELINES}
    runs = {name: {"label": label, "folder": str(out / name),
                   "method": command.read_json(out / name / "summary.json").get("method")}
            for name, label in arms}  # fmt: skip
    return {
        "runs": runs,
        "series": [name for name, _ in arms] + list(BASELINES),
        "test_seeds": first["test_seeds"],
        "normalisation": NORMALISATION,
        "definition": (
            "overall: per lifetime multiple, IQM [95% stratified-bootstrap CI] over tasks x "
            "seeds of the normalised final return (each run's meta_test.json 'overall'; 1x over "
            "every task, other multiples over the grid worlds); cells: the raw final return's "
            "IQM [CI] over seeds; a2c / ppo: the tuned baselines (the same in every run)"
        ),
        "overall": overall,
        "cells": cells,
    }


def format_comparison(table: dict) -> str:
    series, width = table["series"], 26
    labels = {name: run["label"] for name, run in table["runs"].items()}
    row = lambda name, r: f"{name:<24}" + "".join(T.ci_text(r[s], width) for s in series)  # noqa: E731
    lines = [
        "TA comparison: normalised return (R - R_random) / (R_A2C - R_random), IQM [95% CI] "
        f"over tasks x {table['test_seeds']} seeds",
        f"{'':<24}" + "".join(f"{labels.get(s, s):>{width}}" for s in series),
        *(row(f"lifetime {m}", r) for m, r in table["overall"].items()),
        "final return per cell, IQM [95% CI] over seeds:",
        *(row(cell, r) for cell, r in table["cells"].items()),
    ]
    return "\n".join(lines)


def plot_comparison(out: Path, table: dict) -> Path:
    """comparison.png: the normalised IQM [CI] per lifetime multiple of every run and baseline."""
    ticks = [{"tick": m, "values": row} for m, row in table["overall"].items()]
    return T.plot_cells(
        out / "comparison.png", {"normalised return, IQM over tasks x seeds": ticks},
        table["series"], xlabel="lifetime (x meta-trained updates)", ylabel="IQM [95% CI]",
        suptitle=", ".join(f"{k}: {v['label']}" for k, v in table["runs"].items()),
    )  # fmt: skip
