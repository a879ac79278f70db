"""Gaussian vs mixture-of-experts policies (PMOE, Gumbel-softmax, score function) on SAC and PPO.

    python -m experiments.pmoe [--task multimodal|brax] [--algos sac ppo]
        [--methods gaussian pmoe gumbel score] [--seeds N] [--steps N] [--num-experts K]
        [--envs brax/hopper ...] [--scale cpu|paper] [--eval-episodes N] [--out DIR]
        [key=value | sac.key=value | ppo.key=value ...]

Methods: "gaussian" is the unimodal policy (SAC: policy="tanh_gaussian", PPO: policy="gaussian");
"pmoe", "gumbel" and "score" are policy="pmoe" with `num_experts` K (default 2) and that
`mixture_grad` (purejaxrl/pmoe.py). Each (algo, env, method) is one jitted program,
`jax.jit(jax.vmap(agent.train))(keys)` over the seeds, with the same keys for every method.
Overrides (`key=value`, YAML values) change the base config of every algo; `sac.key=value` or
`ppo.key=value` one algo's only. `--steps N` sets total_timesteps and caps SAC's random warm-up
(learning_starts) at N // 10.

Tasks and scales (base configs in `base_config`):
- `--task multimodal` (default): multimodal/bandit (envs/multimodal.py), SAC and PPO, 4 seeds,
  CPU-sized (SAC 5k env steps, PPO 50k env steps).
- `--task brax --scale cpu` (default scale): brax/inverted_double_pendulum and brax/hopper with
  the "spring" backend, SAC only, 3 seeds, 50k env steps.
- `--task brax --scale paper`: for accelerators. brax hopper, halfcheetah, walker2d, ant, humanoid,
  humanoidstandup, "generalized" backend, 1M env steps, 5 seeds, K = 2, 256x256 networks. SAC:
  lr 3e-4, batch 256, buffer 1M, 10k random warm-up steps, 8 envs with 8 gradient steps per vector
  step (utd 1). PPO: 32 envs x 64 steps, 10 epochs x 32 minibatches, lr 3e-4, normalised
  observations and rewards.

Merging: `python -m experiments.pmoe --merge DIR [DIR ...] --out OUT` writes one run folder
(config.yaml, metrics.csv, summary.json, curves.png, auc.png; checkpoints stay where they are and
summary.json points to them) from several runs of the same task, seeds and base seed, for
example methods trained as separate jobs. Run names must not repeat across the folders.

Run folder DIR (default runs/pmoe-<task>-<timestamp>):
    config.yaml    the settings and the full config of every run
    metrics.csv    long format: algo, env, method, seed, update, env_steps, episode_return
    summary.json   per run "<algo>-<method>" (brax: "<algo>-<env>-<method>"): final_return_per_seed
                   (mean over the last 10% of updates), eval_deterministic/stochastic_per_seed,
                   auc_per_seed (mean of the training curve), each with its mean, IQM and 95%
                   stratified-bootstrap CIs over seeds (<name>_iqm, _iqm_ci, _mean_ci;
                   experiments/aggregate.py), sps, compile_s, wall_s and, on the bandit, the
                   experts at the three contexts; top level: the best run's numbers
    curves.png     learning curves (mean, min-max band across seeds), one panel per algo/env
    auc.png        AUC per method with per-seed points, one panel per algo/env
    experts.png    bandit only: reward landscape, action density and weighted experts per context
    checkpoints/<run>/   orbax checkpoint of each run's seed-batched final state
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from envs import multimodal
from experiments import aggregate, runs
from experiments.train import Progress
from purejaxrl import checkpoint, evaluation, sac  # noqa: F401  (sac registers itself)
from purejaxrl import config as C

TASKS = ("multimodal", "brax")
ALGOS = ("sac", "ppo")
METHODS = ("gaussian", "pmoe", "gumbel", "score")
SCALES = ("cpu", "paper")
GAUSSIAN_POLICY = {"sac": "tanh_gaussian", "ppo": "gaussian"}
FINAL_FRACTION = 0.1  # final return: mean episode_return over the last 10% of updates
BRAX_CPU_ENVS = ("brax/inverted_double_pendulum", "brax/hopper")
BRAX_PAPER_ENVS = tuple(
    f"brax/{n}" for n in ("hopper", "halfcheetah", "walker2d", "ant", "humanoid", "humanoidstandup")
)
# Bandit contexts: observation [blocked_left, blocked_right, t / horizon] at the episode's start.
CONTEXTS = {"unblocked": (0.0, 0.0), "left_blocked": (1.0, 0.0), "right_blocked": (0.0, 1.0)}
MIN_WEIGHT = 0.2  # an expert "holds" a mode if its weight is at least this ...
MODE_TOL = 0.15  # ... and its (squashed) mean is within this of the mode

SAC_BANDIT = dict(
    total_timesteps=5_000,
    num_envs=4,
    buffer_size=20_000,
    batch_size=128,
    learning_starts=500,
    utd_ratio=0.5,
    hidden_sizes=(64, 64),
    learning_rate=1e-3,
)
PPO_BANDIT = dict(
    total_timesteps=49_152,
    num_envs=16,
    num_steps=16,
    update_epochs=4,
    num_minibatches=4,
    hidden_sizes=(64, 64),
    learning_rate=1e-3,
    ent_coef=0.0,
)
SAC_BRAX_CPU = dict(
    total_timesteps=50_000,
    num_envs=4,
    buffer_size=50_000,
    batch_size=256,
    learning_starts=5_000,
    utd_ratio=0.5,
    hidden_sizes=(256, 256),
    learning_rate=3e-4,
)
PPO_BRAX_CPU = dict(
    total_timesteps=50_000,
    num_envs=16,
    num_steps=64,
    update_epochs=4,
    num_minibatches=8,
    hidden_sizes=(64, 64),
    learning_rate=3e-4,
    normalize_obs=True,
    normalize_reward=True,
)
SAC_PAPER = dict(
    total_timesteps=1_000_000,
    num_envs=8,
    buffer_size=1_000_000,
    batch_size=256,
    learning_starts=10_000,
    utd_ratio=1.0,
    hidden_sizes=(256, 256),
    learning_rate=3e-4,
)
PPO_PAPER = dict(
    total_timesteps=1_000_000,
    num_envs=32,
    num_steps=64,
    update_epochs=10,
    num_minibatches=32,
    hidden_sizes=(256, 256),
    learning_rate=3e-4,
    normalize_obs=True,
    normalize_reward=True,
)


@dataclasses.dataclass
class Run:
    """One (algo, env, method): its name, config and agent (built, so validated)."""

    name: str
    algo: str
    env: str
    method: str
    config: Any
    agent: Any
    progress: Progress


@dataclasses.dataclass
class Plan:
    task: str
    scale: str
    seeds: int
    seed: int
    eval_episodes: int
    out: Path
    runs: list[Run]


# --------------------------------------------------------------------------- settings


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.pmoe",
        description="Gaussian vs mixture policies (pmoe, gumbel, score) on SAC/PPO over seeds.",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides")
    p.add_argument("--task", default="multimodal", help=f"one of {TASKS}")
    p.add_argument("--algos", nargs="+", help=f"from {ALGOS} (default: both; brax: sac)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"from {METHODS}")
    p.add_argument("--seeds", type=int, help="seeds per method (default 4; brax 3, paper 5)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the keys")
    p.add_argument("--steps", type=int, help="env steps per seed (total_timesteps)")
    p.add_argument("--num-experts", type=int, default=2, help="K for the mixture methods")
    p.add_argument("--envs", nargs="+", help="brax env ids (default: by --scale)")
    p.add_argument("--scale", default="cpu", help=f"one of {SCALES} (brax)")
    p.add_argument("--eval-episodes", type=int, help="evaluation episodes per seed (default 64)")
    p.add_argument("--out", help="run folder (default runs/pmoe-<task>-<timestamp>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge these run folders into --out")
    return p.parse_args(argv)


def _check_choices(flag: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"{flag} {v!r}: allowed values are {list(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{flag} {' '.join(values)}: repeated value")


def _check_positive(flag: str, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag}={value}: must be a positive integer")


def base_config(algo: str, task: str, scale: str, env: str) -> dict:
    """The algo's config fields (without policy/method fields) for this task, scale and env."""
    if task == "multimodal":
        values = dict(SAC_BANDIT if algo == "sac" else PPO_BANDIT)
    elif scale == "cpu":
        values = dict(SAC_BRAX_CPU if algo == "sac" else PPO_BRAX_CPU)
        values["env_kwargs"] = {"backend": "spring"}
    else:
        values = dict(SAC_PAPER if algo == "sac" else PPO_PAPER)
        values["env_kwargs"] = {"backend": "generalized"}
    values["env"] = env
    return values


def method_fields(algo: str, method: str, num_experts: int) -> dict:
    if method == "gaussian":
        return {"policy": GAUSSIAN_POLICY[algo], "num_experts": 1}
    return {"policy": "pmoe", "num_experts": num_experts, "mixture_grad": method}


def split_overrides(items) -> dict[str, dict]:
    """key=value -> every algo; sac.key=value / ppo.key=value -> that algo only."""
    parsed = runs.parse_overrides(items)
    out: dict[str, dict] = {a: {} for a in ALGOS}
    for key, value in parsed.items():
        if key in ALGOS and isinstance(value, dict):
            out[key].update(value)
        else:
            for a in ALGOS:
                out[a][key] = value
    return out


def prepare(args) -> Plan:
    """Checks every argument and builds every agent (validating its config) before compiling."""
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r}: allowed values are {list(TASKS)}")
    if args.scale not in SCALES:
        raise ValueError(f"--scale {args.scale!r}: allowed values are {list(SCALES)}")
    brax = args.task == "brax"
    algos = args.algos or (["sac"] if brax else list(ALGOS))
    _check_choices("--algos", algos, ALGOS)
    _check_choices("--methods", args.methods, METHODS)
    for flag in ("seeds", "steps", "num_experts", "eval_episodes"):
        _check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.num_experts < 2 and set(args.methods) - {"gaussian"}:
        raise ValueError(f"--num-experts={args.num_experts}: a mixture needs at least 2 experts")
    if brax:
        envs = args.envs or list(BRAX_PAPER_ENVS if args.scale == "paper" else BRAX_CPU_ENVS)
        bad = [e for e in envs if not e.startswith("brax/")]
        if bad:
            raise ValueError(f"--envs {bad}: --task brax takes brax/<name> ids")
    else:
        if args.envs and args.envs != [multimodal.BANDIT_ID]:
            raise ValueError(f"--envs: --task multimodal runs {multimodal.BANDIT_ID} only")
        if args.scale != "cpu":
            raise ValueError("--scale paper applies to --task brax only")
        envs = [multimodal.BANDIT_ID]
    seeds = args.seeds or (5 if args.scale == "paper" else 3 if brax else 4)
    overrides = split_overrides(args.overrides)
    if args.out:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"--out {out}: exists and is not an empty folder")
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"pmoe-{args.task}-{stamp}"

    planned = []
    for algo in algos:
        for env in envs:
            for method in args.methods:
                values = base_config(algo, args.task, args.scale, env)
                values.update(method_fields(algo, method, args.num_experts))
                values.update(overrides[algo])
                if args.steps is not None:
                    values["total_timesteps"] = args.steps
                    if algo == "sac":  # a short run keeps a warm-up of at most 10% of its steps
                        values["learning_starts"] = min(values["learning_starts"], args.steps // 10)
                config = runs.build_spec({"algo": algo, **values}).config
                name = f"{algo}-{method}" if not brax else f"{algo}-{env.split('/')[-1]}-{method}"
                progress = Progress(enabled=not args.no_progress)
                agent = checkpoint.make_agent(algo, config, progress_fn=progress.callback)
                planned.append(Run(name, algo, env, method, config, agent, progress))
    return Plan(
        task=args.task,
        scale=args.scale,
        seeds=seeds,
        seed=args.seed,
        eval_episodes=args.eval_episodes or 64,
        out=out,
        runs=planned,
    )


# --------------------------------------------------------------------------- one run


def train(run: Run, keys) -> tuple[Any, float, float]:
    """(TrainOutput with a leading seed axis, compile_s, train_s) of the run's one program."""
    fn = jax.jit(jax.vmap(run.agent.train))
    t = time.perf_counter()
    compiled = fn.lower(keys).compile()
    compile_s = time.perf_counter() - t
    cfg = run.config
    run.progress.start(run.agent.num_updates, 0, run.name, cfg.num_envs * cfg.num_steps)
    t = time.perf_counter()
    try:
        out = jax.block_until_ready(compiled(keys))
    finally:
        run.progress.close()
    return out, compile_s, time.perf_counter() - t


def episode_steps(agent) -> int:
    """The env's episode length in steps (gymnax/brax time limit, or the bandit's horizon)."""
    try:
        return evaluation.episode_horizon(agent.env_params)
    except ValueError:
        return int(agent.env_params.horizon)


def evaluate_seeds(agent, state, key, num_episodes: int) -> dict[str, np.ndarray]:
    """Mean evaluation return per seed `[S]`, deterministic (mode) and stochastic (sampled)."""
    steps = episode_steps(agent)
    out = {}
    for name, det in (("deterministic", True), ("stochastic", False)):
        fn = lambda s, k, det=det: evaluation.evaluate(agent, s, k, num_episodes, det, steps)
        num_seeds = jax.tree.leaves(state)[0].shape[0]
        returns = jax.jit(jax.vmap(fn))(state, jax.random.split(key, num_seeds))
        out[name] = np.asarray(returns, np.float64).mean(axis=1)
    return out


def mixture_outputs(agent, params, obs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actor outputs at `obs` [C, obs_dim] for seed-batched params, in mixture form:
    (weights [S, C, K], pre-squash mean [S, C, K, d], std [S, C, K, d]); a Gaussian is K = 1."""
    network = agent.network
    out = jax.vmap(lambda p: network.apply(p, obs, method=network.actor))(params)
    if len(out) == 3:
        logits, mean, log_std = out
    else:
        mean, log_std = out
        mean, log_std = mean[..., None, :], jnp.broadcast_to(log_std, mean.shape)[..., None, :]
        logits = jnp.zeros(mean.shape[:-1])
    weights = jax.nn.softmax(logits, axis=-1)
    return np.asarray(weights), np.asarray(mean), np.asarray(jnp.exp(log_std))


def squashed(agent) -> bool:
    """Whether the policy's action is tanh(u) (SAC, tanh heads) rather than clip(u) (PPO)."""
    return bool(np.allclose(agent.head.to_env(jnp.asarray(2.0)), np.tanh(2.0)))


def expert_stats(agent, state) -> dict:
    """Per bandit context: weights, means and stds per seed and expert, where the experts' means
    sit in action space, the weight near each mode, and the fraction of seeds whose two modes are
    held by different experts of weight >= MIN_WEIGHT (unblocked context)."""
    mode = float(agent.env_params.mode)
    obs = jnp.asarray([[bl, br, 0.0] for bl, br in CONTEXTS.values()], jnp.float32)
    weights, mean, std = mixture_outputs(agent, state.params, obs)
    u = mean[..., 0]  # [S, C, K], action dim 0
    action = np.tanh(u) if squashed(agent) else np.clip(u, -1.0, 1.0)
    near_left = np.abs(action + mode) < MODE_TOL
    near_right = np.abs(action - mode) < MODE_TOL
    stats: dict[str, Any] = {"contexts": {}}
    for c, name in enumerate(CONTEXTS):
        stats["contexts"][name] = {
            "weights": weights[:, c].tolist(),
            "mean": mean[:, c, :, 0].tolist(),
            "std": std[:, c, :, 0].tolist(),
            "action_mean": action[:, c].tolist(),
            "weight_near_left_mode": (weights[:, c] * near_left[:, c]).sum(-1).tolist(),
            "weight_near_right_mode": (weights[:, c] * near_right[:, c]).sum(-1).tolist(),
        }
    held = weights[:, 0] >= MIN_WEIGHT  # [S, K], unblocked context
    left, right = held & near_left[:, 0], held & near_right[:, 0]
    # Different experts: some expert on the left and another on the right.
    split = left.any(-1) & right.any(-1) & ((left.sum(-1) + right.sum(-1)) >= 2)
    stats["both_modes_split_per_seed"] = split.tolist()
    stats["both_modes_split_fraction"] = float(split.mean())
    top = np.take_along_axis(action[:, 0], weights[:, 0].argmax(-1)[:, None], axis=-1)[:, 0]
    stats["top_expert_location_unblocked"] = [
        "mode" if abs(abs(a) - mode) < MODE_TOL else "valley" if abs(a) < mode / 2 else "between"
        for a in top
    ]
    return stats


def seed_summary(name: str, per_seed: np.ndarray) -> dict:
    """<name>_iqm, <name>_iqm_ci and <name>_mean_ci ([lo, hi], 95% stratified bootstrap) over
    the seeds' values `per_seed` [S] (experiments/aggregate.py)."""
    s = aggregate.summarize(per_seed)
    return {f"{name}_iqm": s["iqm"], f"{name}_iqm_ci": s["iqm_ci"], f"{name}_mean_ci": s["mean_ci"]}


def curve_stats(returns: np.ndarray) -> dict:
    """Final return (last FINAL_FRACTION of updates) and AUC (mean over updates) per seed, with
    their mean, IQM and CIs over seeds."""
    window = max(1, math.ceil(FINAL_FRACTION * returns.shape[1]))
    final = returns[:, -window:].mean(axis=1)
    auc = returns.mean(axis=1)
    return {
        "final_return_per_seed": final.tolist(),
        "final_return_mean": float(final.mean()),
        "final_return_std": float(final.std()),
        **seed_summary("final_return", final),
        "final_window_updates": window,
        "auc_per_seed": auc.tolist(),
        "auc_mean": float(auc.mean()),
        **seed_summary("auc", auc),
    }


def run_one(run: Run, plan: Plan) -> tuple[dict, dict]:
    """Trains, evaluates and checkpoints one run -> (summary entry, curves {returns, env_steps})."""
    t0 = time.perf_counter()
    key = jax.random.key(plan.seed)
    keys = jax.random.split(key, plan.seeds)
    out, compile_s, train_s = train(run, keys)
    returns = np.asarray(out.metrics["episode_return"], np.float64)  # [S, U]
    env_steps = np.asarray(out.metrics["env_steps"][0], np.int64)  # [U]
    evals = evaluate_seeds(run.agent, out.state, jax.random.fold_in(key, 1), plan.eval_episodes)
    checkpoint.save(plan.out / "checkpoints" / run.name, out.state, run.config, {"seed": plan.seed})
    total_steps = int(env_steps[-1]) * plan.seeds
    entry = {
        "algo": run.algo,
        "env": run.env,
        "method": run.method,
        **curve_stats(returns),
        "eval_deterministic_per_seed": evals["deterministic"].tolist(),
        "eval_deterministic_mean": float(evals["deterministic"].mean()),
        **seed_summary("eval_deterministic", evals["deterministic"]),
        "eval_stochastic_per_seed": evals["stochastic"].tolist(),
        "eval_stochastic_mean": float(evals["stochastic"].mean()),
        **seed_summary("eval_stochastic", evals["stochastic"]),
        "sps": total_steps / train_s,
        "compile_s": compile_s,
        "train_s": train_s,
        "checkpoint": f"checkpoints/{run.name}",
    }
    if run.env == multimodal.BANDIT_ID:
        entry["experts"] = expert_stats(run.agent, out.state)
    entry["wall_s"] = time.perf_counter() - t0
    return entry, {"returns": returns, "env_steps": env_steps, "state": out.state}


# --------------------------------------------------------------------------- files


def write_config(plan: Plan) -> None:
    settings = {
        "task": plan.task,
        "scale": plan.scale,
        "num_seeds": plan.seeds,
        "seed": plan.seed,
        "eval_episodes": plan.eval_episodes,
        "final_fraction": FINAL_FRACTION,
        "runs": {r.name: {"algo": r.algo, **C.to_dict(r.config)} for r in plan.runs},
    }
    runs.atomic_write(plan.out / "config.yaml", yaml.safe_dump(settings, sort_keys=False))


def write_metrics(plan: Plan, curves: dict[str, dict]) -> None:
    lines = ["algo,env,method,seed,update,env_steps,episode_return"]
    for run in plan.runs:
        c = curves[run.name]
        for s, seed_returns in enumerate(c["returns"]):
            for u, (steps, ret) in enumerate(zip(c["env_steps"], seed_returns, strict=True)):
                lines.append(f"{run.algo},{run.env},{run.method},{s},{u + 1},{steps},{ret:.6g}")
    runs.atomic_write(plan.out / "metrics.csv", "\n".join(lines) + "\n")


def make_summary(plan: Plan, results: dict[str, dict], wall_s: float) -> dict:
    best = max(results, key=lambda n: results[n]["final_return_mean"])
    b = results[best]
    device = jax.devices()[0]
    return {
        "task": plan.task,
        "scale": plan.scale,
        "num_seeds": plan.seeds,
        "best_run": best,
        "final_return_mean": b["final_return_mean"],
        "final_return_iqm": b.get("final_return_iqm", float("nan")),
        "final_return_iqm_ci": b.get("final_return_iqm_ci", [float("nan")] * 2),
        "final_return_per_seed": b["final_return_per_seed"],
        "sps": b["sps"],
        "compile_s": sum(r["compile_s"] for r in results.values()),
        "wall_s": wall_s,
        "definitions": {
            "final_return": f"per seed, mean episode_return over the last {FINAL_FRACTION:.0%} "
            "of updates",
            "auc": "per seed, mean episode_return over all updates (warm-up included)",
            "eval": f"per seed, mean return of {plan.eval_episodes} fresh episodes",
            "iqm": "interquartile mean over seeds (mean of the middle 50%, rliable's; with "
            "fewer than 4 seeds the plain mean)",
            "ci": f"[lo, hi]: 95% percentile interval over {aggregate.REPS} bootstrap "
            "resamples of the seeds (seed 0)",
            "sps": "env steps of all seeds / train_s (compile excluded)",
            "both_modes_split": f"unblocked context: one expert with weight >= {MIN_WEIGHT} "
            f"within {MODE_TOL} of -mode, another within {MODE_TOL} of +mode (action space)",
        },
        "results": results,
        "device": f"{device.platform}: {device.device_kind}",
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


def _panels(plan: Plan) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.algo, r.env) for r in plan.runs))


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(returns: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` updates of returns `[S, U]` -> `[S, U - window + 1]`."""
    c = np.cumsum(np.pad(returns, ((0, 0), (1, 0))), axis=1)
    return (c[:, window:] - c[:, :-window]) / window


def plot_curves(plan: Plan, curves: dict[str, dict]) -> None:
    """curves.png: per algo/env, each method's mean return and min-max band across seeds, both
    of the per-seed moving average over 1% of the updates (SAC's per-update return is noisy)."""
    plt = _pyplot()
    panels = _panels(plan)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=90)
    for ax, (algo, env) in zip(np.atleast_1d(axes), panels, strict=True):
        for run in plan.runs:
            if (run.algo, run.env) != (algo, env):
                continue
            window = max(1, curves[run.name]["returns"].shape[1] // 100)
            c = curves[run.name]
            r = smooth(c["returns"], window)
            x = c["env_steps"][window - 1 :]
            (line,) = ax.plot(x, r.mean(0), lw=1.6, label=run.method)
            ax.fill_between(x, r.min(0), r.max(0), color=line.get_color(), alpha=0.15)
        title = f"{algo} on {env}" + (f" (moving average, {window} updates)" if window > 1 else "")
        ax.set(xlabel="env steps per seed", ylabel="episode return")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, plan.out / "curves.png")


def plot_auc(plan: Plan, results: dict[str, dict]) -> None:
    """auc.png: per algo/env, each method's mean AUC (bar) and per-seed AUCs (points)."""
    plt = _pyplot()
    panels = _panels(plan)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=90)
    for ax, (algo, env) in zip(np.atleast_1d(axes), panels, strict=True):
        names = [r.name for r in plan.runs if (r.algo, r.env) == (algo, env)]
        for i, name in enumerate(names):
            auc = np.asarray(results[name]["auc_per_seed"])
            ax.bar(i, auc.mean(), color=f"C{i}", alpha=0.5)
            ax.scatter(np.full(auc.shape, i) + np.linspace(-0.15, 0.15, len(auc)), auc, c="k", s=12)
        ax.set_xticks(range(len(names)), [results[n]["method"] for n in names])
        ax.set(ylabel="AUC (mean episode return)", title=f"{algo} on {env}")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, plan.out / "auc.png")


def action_density(weights, mean, std, squash: bool, a: np.ndarray):
    """Mixture density over actions a [N] in (-1, 1) for one state's weights [K], mean/std [K]
    (pre-squash, action dim 0) -> (total [N], weighted components [K, N])."""
    u = np.arctanh(a) if squash else a
    jac = 1.0 / (1.0 - a**2) if squash else 1.0
    z = (u[None] - mean[:, None]) / std[:, None]
    comps = weights[:, None] * np.exp(-0.5 * z**2) / (std[:, None] * np.sqrt(2 * np.pi)) * jac
    return comps.sum(0), comps


def plot_experts(plan: Plan, results: dict[str, dict]) -> None:
    """experts.png: per bandit run (rows) and context (columns), the reward landscape and the
    first seed's action density with its weighted experts (other seeds' densities faint)."""
    plt = _pyplot()
    bandit = [r for r in plan.runs if r.env == multimodal.BANDIT_ID]
    if not bandit:
        return
    a = np.linspace(-0.995, 0.995, 500)
    fig, axes = plt.subplots(len(bandit), 3, figsize=(11, 2.3 * len(bandit)), dpi=80, squeeze=False)
    for row, run in zip(axes, bandit, strict=True):
        params = run.agent.env_params
        ctx = results[run.name]["experts"]["contexts"]
        for ax, (name, blocked) in zip(row, CONTEXTS.items(), strict=True):
            reward = multimodal.bandit_reward(a[:, None], jnp.asarray(blocked, bool), params)
            ax.plot(a, np.asarray(reward), color="0.5", lw=1.2, label="reward")
            ax.set_ylim(-0.7, 1.2)
            dens = ax.twinx()
            c = ctx[name]
            for s in range(len(c["weights"]))[::-1]:
                w, m, sd = (np.asarray(c[k][s]) for k in ("weights", "mean", "std"))
                total, comps = action_density(w, m, sd, squashed(run.agent), a)
                if s == 0:
                    dens.plot(a, total, color="C0", lw=1.8, label="policy (seed 0)")
                    for k, comp in enumerate(comps):
                        dens.plot(a, comp, ls="--", lw=1.2, color=f"C{k + 1}")
                else:
                    dens.plot(a, total, color="C0", lw=0.8, alpha=0.3)
            dens.set_ylim(bottom=0)
            dens.tick_params(labelsize=7)
            ax.set_title(f"{run.name}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("action")
    fig.tight_layout()
    _save(fig, plan.out / "experts.png")


# --------------------------------------------------------------------------- merge


def read_run_folder(folder: Path) -> tuple[dict, dict, dict[str, dict]]:
    """(settings from config.yaml, summary.json, curves {run name: {returns [S, U], env_steps
    [U]}} from metrics.csv) of one finished run folder; ValueError naming what is missing."""
    files = {name: folder / name for name in ("config.yaml", "summary.json", "metrics.csv")}
    for name, path in files.items():
        if not path.is_file():
            raise ValueError(f"--merge {folder}: no {name} (not a finished experiments.pmoe run)")
    settings = yaml.safe_load(files["config.yaml"].read_text())
    summary = json.loads(files["summary.json"].read_text())
    name_of = {(r["algo"], r["env"], r["method"]): n for n, r in summary["results"].items()}
    rows: dict[str, dict[tuple[int, int], tuple[int, float]]] = {n: {} for n in name_of.values()}
    with files["metrics.csv"].open() as f:
        for row in csv.DictReader(f):
            name = name_of.get((row["algo"], row["env"], row["method"]))
            if name is None:
                raise ValueError(f"--merge {folder}: metrics.csv has a run summary.json lacks")
            key = (int(row["seed"]), int(row["update"]))
            rows[name][key] = (int(row["env_steps"]), float(row["episode_return"]))
    curves = {}
    for name, points in rows.items():
        if not points:
            raise ValueError(f"--merge {folder}: metrics.csv has no rows of run {name!r}")
        seeds, updates = 1 + max(s for s, _ in points), max(u for _, u in points)
        if len(points) != seeds * updates:
            raise ValueError(f"--merge {folder}: metrics.csv lacks updates of run {name!r}")
        returns = np.zeros((seeds, updates))
        env_steps = np.zeros(updates, np.int64)
        for (seed, update), (steps, ret) in points.items():
            returns[seed, update - 1] = ret
            env_steps[update - 1] = steps
        curves[name] = {"returns": returns, "env_steps": env_steps}
    return settings, summary, curves


def merge(folders: list[Path], out: Path) -> dict:
    """Merges finished run folders of the same task, seed count and base seed into `out`
    (see the module docstring); returns the merged summary."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder")
    loaded = [(Path(f), *read_run_folder(Path(f))) for f in folders]
    first_settings = loaded[0][1]
    plan_runs, results, curves, configs = [], {}, {}, {}
    for folder, settings, summary, folder_curves in loaded:
        for key in ("task", "scale", "num_seeds", "seed"):
            if settings.get(key) != first_settings.get(key):
                raise ValueError(
                    f"--merge {folder}: {key}={settings.get(key)!r} differs from "
                    f"{loaded[0][0]}'s {first_settings.get(key)!r}; only like runs can be merged"
                )
        for name, result in summary["results"].items():
            if name in results:
                raise ValueError(f"--merge {folder}: run {name!r} is also in another folder")
            result = dict(result)
            result["checkpoint"] = str((folder / result["checkpoint"]).resolve())
            results[name] = result
            curves[name] = folder_curves[name]
            configs[name] = settings["runs"][name]
            plan_runs.append(
                Run(name, result["algo"], result["env"], result["method"], None, None, None)
            )
    plan = Plan(
        task=first_settings["task"],
        scale=first_settings["scale"],
        seeds=first_settings["num_seeds"],
        seed=first_settings["seed"],
        eval_episodes=first_settings["eval_episodes"],
        out=out,
        runs=plan_runs,
    )
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in first_settings.items() if k != "runs"}
    settings["merged_from"] = [str(f.resolve()) for f, *_ in loaded]
    settings["runs"] = configs
    runs.atomic_write(out / "config.yaml", yaml.safe_dump(settings, sort_keys=False))
    write_metrics(plan, curves)
    plot_curves(plan, curves)
    plot_auc(plan, results)
    wall_s = sum(folder_summary["wall_s"] for _, _, folder_summary, _ in loaded)
    merged = make_summary(plan, results, wall_s)
    merged["merged_from"] = settings["merged_from"]
    runs.write_summary(out, merged)
    return merged


# --------------------------------------------------------------------------- main


def execute(plan: Plan) -> dict:
    t0 = time.perf_counter()
    plan.out.mkdir(parents=True, exist_ok=True)
    write_config(plan)
    results, curves = {}, {}
    for i, run in enumerate(plan.runs):
        results[run.name], curves[run.name] = run_one(run, plan)
        done = dataclasses.replace(plan, runs=plan.runs[: i + 1])  # files so far, if interrupted
        write_metrics(done, curves)
        runs.write_summary(plan.out, make_summary(done, results, time.perf_counter() - t0))
    plot_curves(plan, curves)
    plot_auc(plan, results)
    plot_experts(plan, results)
    summary = make_summary(plan, results, time.perf_counter() - t0)
    runs.write_summary(plan.out, summary)
    return summary


def format_table(summary: dict) -> str:
    width = max(len(n) for n in summary["results"])
    rows = [
        f"{'run':{width}s}  final [per seed]  final IQM [95% CI]  eval det  eval stoch  AUC  "
        "SPS  compile_s  split"
    ]
    nan = float("nan")
    for name, r in summary["results"].items():
        final = " ".join(f"{x:.2f}" for x in r["final_return_per_seed"])
        split = r.get("experts", {}).get("both_modes_split_fraction", nan)
        lo, hi = r.get("final_return_iqm_ci", [nan, nan])
        rows.append(
            f"{name:{width}s}  {r['final_return_mean']:.2f} [{final}]  "
            f"{r.get('final_return_iqm', nan):.2f} [{lo:.2f}, {hi:.2f}]  "
            f"{r['eval_deterministic_mean']:.2f}  {r['eval_stochastic_mean']:.2f}  "
            f"{r['auc_mean']:.2f}  {r['sps']:.0f}  {r['compile_s']:.1f}  {split:.2f}"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        try:
            if not args.out:
                raise ValueError("--merge needs --out, the folder to write")
            summary = merge([Path(f) for f in args.merge], Path(args.out))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_table(summary))
        print(f"merged {len(args.merge)} folders into {args.out}")
        return 0
    try:
        plan = prepare(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = execute(plan)
    print(format_table(summary))
    print(f"wall {summary['wall_s']:.1f} s | run folder: {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
