"""Gaussian vs mixture-of-experts policies (PMOE, Gumbel-softmax, score function) on SAC and PPO:
each (algo, env, method) is one jitted program over the seeds with the same keys for every method.
Usage, tasks, scales, base configs, merging and the run folder: docs/experiments.md."""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from envs import multimodal
from experiments import agent_runs, aggregate, command
from purejaxrl import checkpoint, evaluation, scores
from purejaxrl.pmoe import CONTEXTS, MIN_WEIGHT, MODE_TOL, action_density, expert_stats, squashed
from purejaxrl.pmoe import mixture_outputs as mixture_outputs  # for notebooks/02_pmoe.ipynb

ALGOS = ("sac", "ppo")
METHODS = ("gaussian", "pmoe", "gumbel", "score")
# This command's final return: purejaxrl.scores.final_return over the last 10% of updates.
FINAL_RETURN_FRACTION = 0.1
BRAX_CPU_ENVS = ("brax/inverted_double_pendulum", "brax/hopper")
BRAX_PAPER_ENVS = tuple(
    f"brax/{n}" for n in ("hopper", "halfcheetah", "walker2d", "ant", "humanoid", "humanoidstandup")
)
MARKERS = ("config.yaml", "summary.json", "metrics.csv", "checkpoints")  # a folder holding a run

# Base configs (without the policy fields) per (algo, setting); the setting is "bandit" for
# --task multimodal, else the --scale of --task brax (which adds env_kwargs.backend).
SAC = ("total_timesteps", "num_envs", "buffer_size", "batch_size", "learning_starts", "utd_ratio",
       "hidden_sizes", "learning_rate")  # fmt: skip
PPO = ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches",
       "hidden_sizes", "learning_rate")  # fmt: skip
NORMALIZED = {"normalize_obs": True, "normalize_reward": True}


def _row(fields: tuple[str, ...], values: tuple, **more) -> dict:
    return {**dict(zip(fields, values, strict=True)), **more}


BASE = {
    ("sac", "bandit"): _row(SAC, (5_000, 4, 20_000, 128, 500, 0.5, (64, 64), 1e-3)),
    ("sac", "cpu"): _row(SAC, (50_000, 4, 50_000, 256, 5_000, 0.5, (256, 256), 3e-4)),
    ("sac", "paper"): _row(SAC, (10**6, 8, 10**6, 256, 10_000, 1.0, (256, 256), 3e-4)),
    ("ppo", "bandit"): _row(PPO, (49_152, 16, 16, 4, 4, (64, 64), 1e-3), ent_coef=0.0),
    ("ppo", "cpu"): _row(PPO, (50_000, 16, 64, 4, 8, (64, 64), 3e-4), **NORMALIZED),
    ("ppo", "paper"): _row(PPO, (10**6, 32, 64, 10, 32, (256, 256), 3e-4), **NORMALIZED),
}
SAC_BANDIT = BASE["sac", "bandit"]  # tests/test_learning.py checks this config
BACKEND = {"cpu": "spring", "paper": "generalized"}


@dataclasses.dataclass(kw_only=True)
class Run(agent_runs.Run):
    method: str


@dataclasses.dataclass(kw_only=True)
class Plan(agent_runs.Plan):
    merged: dict | None = None  # --merge: the folders' results, curves, run configs and wall_s


def arguments(p) -> None:
    count = command.positive_int
    p.add_argument("--task", default="multimodal", choices=("multimodal", "brax"))
    p.add_argument("--algos", nargs="+", choices=ALGOS, help="default: both; brax: sac")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=count, help="seeds per method (default 4; brax 3, paper 5)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the keys")
    p.add_argument("--steps", type=count, help="env steps per seed (total_timesteps)")
    p.add_argument("--num-experts", type=count, default=2, help="K for the mixture methods")
    p.add_argument("--envs", nargs="+", help="brax env ids (default: by --scale)")
    p.add_argument("--scale", default="cpu", choices=("cpu", "paper"), help="--task brax's size")
    p.add_argument("--eval-episodes", type=count, default=64, help="evaluation episodes per seed")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge these run folders into --out")


def method_fields(algo: str, method: str, num_experts: int) -> dict:
    if method == "gaussian":
        return {"policy": {"sac": "tanh_gaussian", "ppo": "gaussian"}[algo], "num_experts": 1}
    return {"policy": "pmoe", "num_experts": num_experts, "mixture_grad": method}


def split_overrides(values: dict) -> dict[str, dict]:
    """Settings -> per algo: key=value for every algo; sac.key=value / ppo.key=value for one."""
    out: dict[str, dict] = {a: {} for a in ALGOS}
    for key, value in values.items():
        own = key in ALGOS and isinstance(value, dict)
        for a in [key] if own else ALGOS:
            out[a] = command.merge(out[a], value if own else {key: value})
    return out


def task_envs(args) -> list[str]:
    if args.task == "brax":
        envs = args.envs or list(BRAX_PAPER_ENVS if args.scale == "paper" else BRAX_CPU_ENVS)
        bad = [e for e in envs if not e.startswith("brax/")]
        if bad:
            raise ValueError(f"--envs {bad}: --task brax takes brax/<name> ids")
        return envs
    if args.envs and args.envs != [multimodal.BANDIT_ID]:
        raise ValueError(f"--envs: --task multimodal runs {multimodal.BANDIT_ID} only")
    if args.scale != "cpu":
        raise ValueError("--scale paper applies to --task brax only")
    return [multimodal.BANDIT_ID]


def plan(args) -> Plan:
    """Checks every argument and builds every agent (validating its config) before compiling."""
    if args.merge:
        return merge_plan(args)
    command.check_unique(args, "algos", "methods", "envs")
    brax = args.task == "brax"
    algos = args.algos or (["sac"] if brax else list(ALGOS))
    if args.num_experts < 2 and set(args.methods) - {"gaussian"}:
        raise ValueError(f"--num-experts={args.num_experts}: a mixture needs at least 2 experts")
    envs = task_envs(args)
    run_dir, values, _ = command.start(args, lambda v: f"pmoe-{args.task}", markers=MARKERS)
    overrides = split_overrides(values)
    planned = []
    for algo, env, method in ((a, e, m) for a in algos for e in envs for m in args.methods):
        values = {"algo": algo, **BASE[algo, args.scale if brax else "bandit"], "env": env}
        if brax:
            values["env_kwargs"] = {"backend": BACKEND[args.scale]}
        values.update(method_fields(algo, method, args.num_experts))
        values = command.merge(values, overrides[algo])
        if args.steps is not None:
            values["total_timesteps"] = args.steps
            if algo == "sac":  # a short run keeps a warm-up of at most 10% of its steps
                values["learning_starts"] = min(values["learning_starts"], args.steps // 10)
        name = f"{algo}-{method}" if not brax else f"{algo}-{env.split('/')[-1]}-{method}"
        planned.append(agent_runs.make(Run, name, values, not args.no_progress, method=method))
    seeds = args.seeds or (5 if args.scale == "paper" else 3 if brax else 4)
    settings = {"task": args.task, "scale": args.scale, "num_seeds": seeds, "seed": args.seed}
    settings.update(eval_episodes=args.eval_episodes, final_fraction=FINAL_RETURN_FRACTION)
    return Plan(run_dir, "new", not args.no_progress, settings=settings, runs=planned)


def evaluate_seeds(agent, state, key, num_episodes: int) -> dict[str, np.ndarray]:
    """Mean evaluation return per seed `[S]`, deterministic (mode) and stochastic (sampled)."""
    out = {}
    for name, det in (("deterministic", True), ("stochastic", False)):
        returns = evaluation.evaluate_seeds(agent, state, key, num_episodes, det)  # [S, N]
        out[name] = np.asarray(returns, np.float64).mean(1)
    return out


def curve_stats(returns: np.ndarray, finished) -> dict:
    """Per-seed final return (last FINAL_RETURN_FRACTION of updates) and AUC (mean over all) of
    returns/finished `[S, U]`, with their statistics."""
    final = scores.final_return(returns, finished, fraction=FINAL_RETURN_FRACTION)
    return {
        **agent_runs.summarize("final_return", final, seeds=True),
        "final_return_std": float(np.asarray(final, np.float64).std()),
        "final_window_updates": scores.final_window(returns.shape[1], FINAL_RETURN_FRACTION),
        **agent_runs.summarize("auc", returns.mean(axis=1), seeds=True),
    }


def run_one(run: Run, plan: Plan) -> tuple[dict, dict]:
    """Trains, evaluates and checkpoints one run -> (summary entry, curves {env_steps, returns})."""
    t0, s = time.perf_counter(), plan.settings
    key = jax.random.key(s["seed"])
    keys = jax.random.split(key, s["num_seeds"])
    out, compile_s, train_s = agent_runs.train(run, keys, True, run.name)
    returns = np.asarray(out.metrics["episode_return"], np.float64)  # [S, U]
    env_steps = np.asarray(out.metrics["env_steps"][0], np.int64)  # [U]
    evals = evaluate_seeds(run.agent, out.state, jax.random.fold_in(key, 1), s["eval_episodes"])
    where = plan.run_dir / "checkpoints" / run.name
    checkpoint.save(where, out.state, run.config, {"seed": s["seed"]})
    entry = {"algo": run.algo, "env": run.env, "method": run.method}
    entry.update(curve_stats(returns, out.metrics["episodes_finished"]))
    for name, values in evals.items():
        entry.update(agent_runs.summarize(f"eval_{name}", values, seeds=True))
    entry["sps"] = int(env_steps[-1]) * s["num_seeds"] / train_s
    entry.update(compile_s=compile_s, train_s=train_s, checkpoint=f"checkpoints/{run.name}")
    if run.env == multimodal.BANDIT_ID:
        entry["experts"] = expert_stats(run.agent, out.state)
    entry["wall_s"] = time.perf_counter() - t0
    return entry, {"env_steps": env_steps, "returns": returns}


def write_metrics(plan: Plan, curves: dict[str, dict]) -> None:
    columns = ["algo", "env", "method", "seed", "update", "env_steps", "episode_return"]
    agent_runs.write_metrics(plan, columns, lambda r: (r.algo, r.env, r.method), curves)


def make_summary(plan: Plan, results: dict[str, dict], wall_s: float) -> dict:
    best = max(results, key=lambda n: results[n]["final_return_mean"])
    b, s = results[best], plan.settings
    return {
        **{k: s[k] for k in ("task", "scale", "num_seeds")},
        "best_run": best,
        "final_return_mean": b["final_return_mean"],
        "final_return_iqm": b.get("final_return_iqm", math.nan),  # older folders lack the IQM
        "final_return_iqm_ci": b.get("final_return_iqm_ci", [math.nan] * 2),
        "final_return_per_seed": b["final_return_per_seed"],
        "sps": b["sps"],
        "compile_s": sum(r["compile_s"] for r in results.values()),
        "wall_s": wall_s,
        "definitions": {
            "final_return": "per seed, mean episode_return over the last "
            f"{FINAL_RETURN_FRACTION:.0%} of updates (purejaxrl.scores.final_return with "
            f"fraction={FINAL_RETURN_FRACTION}: finished episodes only)",
            "auc": "per seed, mean episode_return over all updates (warm-up included)",
            "eval": f"per seed, mean return of {s['eval_episodes']} fresh episodes",
            "iqm": "interquartile mean over seeds (mean of the middle 50%, rliable's; with "
            "fewer than 4 seeds the plain mean)",
            "ci": f"[lo, hi]: 95% percentile interval over {aggregate.REPS} bootstrap "
            "resamples of the seeds (seed 0)",
            "sps": "env steps of all seeds / train_s (compile excluded)",
            "both_modes_split": f"unblocked context: one expert with weight >= {MIN_WEIGHT} "
            f"within {MODE_TOL} of -mode, another within {MODE_TOL} of +mode (action space)",
        },
        "results": results,
        **command.environment(),
        **({"merged_from": s["merged_from"]} if plan.merged else {}),
    }


def plot_runs(plan: Plan, curves: dict[str, dict], results: dict[str, dict]) -> None:
    """curves.png, a panel per algo/env: each method's mean and min-max band across seeds of the
    per-seed moving average over 1% of the updates; auc.png: mean (bar) and per-seed AUCs."""
    panels = list(dict.fromkeys((r.algo, r.env) for r in plan.runs))
    plt = command.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=90)
    auc_fig, auc_axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=90)
    for ax, bx, (algo, env) in zip(*map(np.atleast_1d, (axes, auc_axes)), panels, strict=True):
        planned = [r for r in plan.runs if (r.algo, r.env) == (algo, env)]
        for i, run in enumerate(planned):
            returns, steps = curves[run.name]["returns"], curves[run.name]["env_steps"]
            window = max(1, returns.shape[1] // 100)  # r: the moving average over window updates
            c = np.cumsum(np.pad(returns, ((0, 0), (1, 0))), axis=1)
            r, x = (c[:, window:] - c[:, :-window]) / window, steps[window - 1 :]
            (line,) = ax.plot(x, r.mean(0), lw=1.6, label=run.method)
            ax.fill_between(x, r.min(0), r.max(0), color=line.get_color(), alpha=0.15)
            auc = np.asarray(results[run.name]["auc_per_seed"])
            bx.bar(i, auc.mean(), color=f"C{i}", alpha=0.5)
            bx.scatter(np.full(auc.shape, i) + np.linspace(-0.15, 0.15, len(auc)), auc, c="k", s=12)
        title = f"{algo} on {env}" + (f" (moving average, {window} updates)" if window > 1 else "")
        ax.set(xlabel="env steps per seed", ylabel="episode return")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        bx.set_xticks(range(len(planned)), [r.method for r in planned])
        bx.set(ylabel="AUC (mean episode return)", title=f"{algo} on {env}")
        bx.grid(alpha=0.3, axis="y")
    command.save_figure(fig, plan.run_dir / "curves.png")
    command.save_figure(auc_fig, plan.run_dir / "auc.png")


def plot_experts(plan: Plan, results: dict[str, dict]) -> None:
    """experts.png: per bandit run (rows) and context (columns), the reward landscape and the
    first seed's action density with its weighted experts (other seeds' densities faint)."""
    bandit = [r for r in plan.runs if r.env == multimodal.BANDIT_ID]
    if not bandit:
        return
    a = np.linspace(-0.995, 0.995, 500)
    fig, axes = command.pyplot().subplots(
        len(bandit), 3, figsize=(11, 2.3 * len(bandit)), dpi=80, squeeze=False
    )
    for row, run in zip(axes, bandit, strict=True):
        ctx = results[run.name]["experts"]["contexts"]
        for ax, (name, blocked) in zip(row, CONTEXTS.items(), strict=True):
            reward = multimodal.bandit_reward(
                a[:, None], jnp.asarray(blocked, bool), run.agent.env_params
            )
            ax.plot(a, np.asarray(reward), color="0.5", lw=1.2, label="reward")
            ax.set_ylim(-0.7, 1.2)
            dens = ax.twinx()
            for s in range(len(ctx[name]["weights"]))[::-1]:
                w, m, sd = (np.asarray(ctx[name][k][s]) for k in ("weights", "mean", "std"))
                total, comps = action_density(w, m, sd, squashed(run.agent), a)
                first = {"lw": 1.8, "label": "policy (seed 0)"} if s == 0 else {}
                dens.plot(a, total, color="C0", **(first or {"lw": 0.8, "alpha": 0.3}))
                for k, comp in enumerate(comps if s == 0 else []):
                    dens.plot(a, comp, ls="--", lw=1.2, color=f"C{k + 1}")
            dens.set_ylim(bottom=0)
            dens.tick_params(labelsize=7)
            ax.set_title(f"{run.name}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("action")
    command.save_figure(fig, plan.run_dir / "experts.png")


def read_run_folder(folder: Path) -> tuple[dict, dict, dict[str, dict]]:
    """(config.yaml, summary.json, curves {run name: {env_steps [U], returns [S, U]}} from
    metrics.csv) of one finished run folder; ValueError naming what is missing."""
    for name in ("config.yaml", "summary.json", "metrics.csv"):
        if not (folder / name).is_file():
            raise ValueError(f"--merge {folder}: no {name} (not a finished experiments.pmoe run)")
    summary = command.read_json(folder / "summary.json")
    name_of = {(r["algo"], r["env"], r["method"]): n for n, r in summary["results"].items()}
    rows = list(csv.reader((folder / "metrics.csv").read_text().splitlines()))[1:]
    if any(tuple(row[:3]) not in name_of for row in rows):
        raise ValueError(f"--merge {folder}: metrics.csv has a run summary.json lacks")
    curves = {}
    for key, name in name_of.items():
        p = [row[3:] for row in rows if tuple(row[:3]) == key]
        p = np.asarray(p, np.float64).reshape(-1, 4)  # seed, update, env_steps, return
        seed, update = p[:, 0].astype(int), p[:, 1].astype(int) - 1
        shape = (seed.max(initial=-1) + 1, update.max(initial=-1) + 1)
        if not len(p) or len({*zip(seed, update, strict=True)}) != shape[0] * shape[1]:
            raise ValueError(f"--merge {folder}: metrics.csv lacks updates of run {name!r}")
        returns, env_steps = np.zeros(shape), np.zeros(shape[1], np.int64)
        returns[seed, update], env_steps[update] = p[:, 3], p[:, 2]
        curves[name] = {"env_steps": env_steps, "returns": returns}
    return command.load_yaml(folder / "config.yaml"), summary, curves


def merge_plan(args) -> Plan:
    """--merge: finished folders of the same task, scale, seeds and base seed; no run repeated."""
    if not args.out:
        raise ValueError("--merge needs --out, the folder to write")
    run_dir = command.new_run_dir(args.out, "pmoe-merged", MARKERS)
    loaded = [(Path(f), *read_run_folder(Path(f))) for f in args.merge]
    first = loaded[0][1]
    planned, results, curves, configs = [], {}, {}, {}
    for folder, settings, summary, folder_curves in loaded:
        for key in ("task", "scale", "num_seeds", "seed"):
            if settings.get(key) != first.get(key):
                raise ValueError(
                    f"--merge {folder}: {key}={settings.get(key)!r} differs from "
                    f"{loaded[0][0]}'s {first.get(key)!r}; only like runs can be merged"
                )
        for name, result in summary["results"].items():
            if name in results:
                raise ValueError(f"--merge {folder}: run {name!r} is also in another folder")
            where = str((folder / result["checkpoint"]).resolve())
            results[name] = {**result, "checkpoint": where}
            curves[name], configs[name] = folder_curves[name], settings["runs"][name]
            planned.append(Run(name=name, algo=result["algo"], env=result["env"],
                               method=result["method"]))  # fmt: skip
    settings = {k: v for k, v in first.items() if k != "runs"}
    settings["merged_from"] = [str(f.resolve()) for f, *_ in loaded]
    wall_s = sum(summary["wall_s"] for _, _, summary, _ in loaded)
    merged = {"results": results, "curves": curves, "runs": configs, "wall_s": wall_s}
    return Plan(
        run_dir, "merge", not args.no_progress, settings=settings, runs=planned, merged=merged
    )


def execute(plan: Plan) -> dict:
    """Trains every run in turn (config.yaml first, metrics.csv and summary.json after each) or
    with --merge gathers the folders; then the plots."""
    t0 = time.perf_counter()
    agent_runs.write_config(plan, plan.merged and plan.merged["runs"])
    if plan.merged:
        results, curves = plan.merged["results"], plan.merged["curves"]
        write_metrics(plan, curves)
    else:
        results, curves = {}, {}
        for run in plan.runs:
            results[run.name], curves[run.name] = run_one(run, plan)
            write_metrics(plan, curves)
            summary = make_summary(plan, results, time.perf_counter() - t0)
            command.write_json(plan.run_dir / "summary.json", summary)
        plot_experts(plan, results)
    plot_runs(plan, curves, results)
    wall_s = plan.merged["wall_s"] if plan.merged else time.perf_counter() - t0
    summary = make_summary(plan, results, wall_s)
    command.write_json(plan.run_dir / "summary.json", summary)
    return summary


def report(plan: Plan, summary: dict) -> str:
    width = max(len(n) for n in summary["results"])
    rows = [
        f"{'run':{width}s}  final [per seed]  final IQM [95% CI]  eval det  eval stoch  AUC  "
        "SPS  compile_s  split"
    ]
    for name, r in summary["results"].items():
        final = " ".join(f"{x:.2f}" for x in r["final_return_per_seed"])
        split = r.get("experts", {}).get("both_modes_split_fraction", math.nan)
        lo, hi = r.get("final_return_iqm_ci", [math.nan] * 2)
        rows.append(
            f"{name:{width}s}  {r['final_return_mean']:.2f} [{final}]  "
            f"{r.get('final_return_iqm', math.nan):.2f} [{lo:.2f}, {hi:.2f}]  "
            f"{r['eval_deterministic_mean']:.2f}  {r['eval_stochastic_mean']:.2f}  "
            f"{r['auc_mean']:.2f}  {r['sps']:.0f}  {r['compile_s']:.1f}  {split:.2f}"
        )
    if plan.merged:
        rows.append(f"merged {len(plan.settings['merged_from'])} folders into {plan.run_dir}")
    else:
        rows.append(f"wall {summary['wall_s']:.1f} s | run folder: {plan.run_dir}")
    return "\n".join(rows)


COMMAND = command.Command(
    prog="experiments.pmoe",
    description="Gaussian vs mixture policies (pmoe, gumbel, score) on SAC/PPO over seeds.",
    plan=plan,
    execute=execute,
    report=report,
    arguments=arguments,
    resume=False,
    epilog="Settings (key=value, --config) change every algo's base config; sac.key=value or "
    "ppo.key=value one algo's only.\nTasks, scales, merging and the run folder: "
    "docs/experiments.md.",
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
