"""Policy smoothing (Kumar, Levine, Feizi, ICLR 2022): train, certify and attack smoothed PPO.

    python -m experiments.smoothing [--envs CartPole-v1 Pendulum-v1] [--sigmas 0.2 0.4]
        [--budgets 0.2 0.4 0.6 0.8 1.0] [--certify-episodes 10000] [--attack-episodes N]
        [--scale cpu|paper] [--noise-draws M] [--attack-steps S] [--step-sizes 0.01 ...]
        [--objectives auto|scores|lookahead|log_prob ...] [--lookahead H] [--alpha 0.05]
        [--method auto|clopper_pearson|dkw] [--seed S] [--steps N] [--out DIR]
        [key=value ...]

For each env, PPO is trained once per sigma with `obs_noise_sigma = sigma` (the smoothing noise,
N(0, sigma^2 I) on every raw observation, training and evaluation alike), plus once with sigma = 0
(the undefended policy, for contrast). One seed per policy: a certificate is about one policy.

- Certify: n = `--certify-episodes` clean smoothed episodes (deterministic actions) in one jitted
  call (purejaxrl/robust/montecarlo.py; its seconds are reported apart from its compile). From
  them, certify.expected_reward_bound gives a lower bound on the expected total reward under any
  adaptive attack with total l2 budget B (observation units), valid with probability 1 - alpha
  over the n episodes, and certify.threshold_bound bounds P_adv[R >= v] per threshold.
  CartPole (200-step episodes, as in the paper): integer returns in [0, 200], so low = 0 and the
  levels are v = 1..200, i.e. the paper's thresholds R > 0..199, Clopper-Pearson with a Bonferroni
  split over the 200 levels. Pendulum-v1: every reward is >= -(pi^2 + 0.1 * 8^2 + 0.001 * 2^2) =
  -16.2736044 per step, so low = -16.2736044 * 200 per episode is the minimum possible return;
  returns are continuous, so `--method auto` uses the DKW band there (no Bonferroni), and
  Clopper-Pearson over the distinct returns if asked.
- Attack: the greedy adaptive attack of purejaxrl/robust/attack.py at each budget on the same
  smoothed policy (`--noise-draws` draws per step, `--attack-steps` normalised-gradient steps),
  over `--attack-episodes` episodes, once per attack setting (objective x step size; as the paper
  reports the min over its q_thresholds, the reported attacked return per budget is the lowest
  mean over the settings, and every setting's numbers are kept in summary.json). Defaults per env:
  CartPole: objective "scores", 128 draws x 100 steps of 0.01 (the paper's); Pendulum:
  objectives "lookahead" (H = `--lookahead` = 10 simulated steps through the differentiable
  dynamics, then the critic) and "log_prob", step sizes 0.005, 0.01 and 0.02 (at most 0.1, 0.2,
  0.4 of l2 per time step), 16 draws x 20 steps (the lookahead's cost is H times a policy step
  per draw; smaller per-step caps were stronger on Pendulum than larger ones). The undefended policy is attacked at the
  same budgets with sigma = 0 (one noise draw: there is no noise). Every budget uses the same
  key, so episodes differ only by the attack. `--attack-episodes` defaults to 100 on CPU
  (`--scale cpu`, about 1 s per CartPole episode on 2 loaded CPU cores at 128 draws x 100 steps),
  1000 with `--scale paper` (for accelerators, the paper's count).
- Check: the certified bound must lie below the mean attacked return at every budget and sigma;
  a violation is printed as a WARNING line with the numbers and recorded in summary.json.

Overrides `key=value` (YAML values) change every env's PPO config; `--steps N` sets
total_timesteps. Bad input (sigma <= 0, budget < 0, alpha outside (0, 1), attack episodes < 1,
too few certify episodes for alpha, see certify.min_returns) stops with `error: ...` (exit 2)
before any training.

Run folder DIR (default runs/smoothing-<timestamp>):
    config.yaml          the settings and every run's full PPO config
    metrics.csv          training curves, long format: env, sigma, update, env_steps,
                         episode_return, episode_length
    summary.json         per env and sigma: training (final return, sps, compile_s), clean
                         smoothed return, certified expected-reward bound per budget, attacked
                         return (mean, std, n) per budget, certify/attack seconds; per env the
                         undefended policy's clean and attacked returns; the bound check. Clean
                         and attacked returns also get their IQM and 95% bootstrap CIs over
                         episodes (_iqm, _iqm_ci, _mean_ci; experiments/aggregate.py)
    certificate_<env>.png   certified bound vs budget per sigma, attacked and clean returns, and
                         the undefended policy's attacked return
    thresholds_<env>.png    CartPole: certified P_adv[R >= v] vs v per budget, per sigma
    checkpoints/<env>-sigma<sigma>/   orbax checkpoint of each trained policy
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from experiments import aggregate, runs
from experiments.train import Progress
from purejaxrl import checkpoint
from purejaxrl import config as C
from purejaxrl.evaluation import episode_horizon
from purejaxrl.robust import attack, certify
from purejaxrl.robust import montecarlo as mc

ENVS = ("CartPole-v1", "Pendulum-v1")
SCALES = ("cpu", "paper")
METHODS = ("auto", *certify.METHODS)
ATTACK_EPISODES = {"cpu": 100, "paper": 1000}
OBJECTIVES = ("auto", "scores", "lookahead", "log_prob")
# Attack settings per env: noise draws, gradient steps per time step, step sizes, objectives.
ATTACK_DEFAULTS = {
    "CartPole-v1": dict(noise_draws=128, attack_steps=100, step_sizes=[0.01], objectives=["auto"]),
    "Pendulum-v1": dict(
        noise_draws=16,
        attack_steps=20,
        step_sizes=[0.005, 0.01, 0.02],
        objectives=["lookahead", "log_prob"],
    ),
}
CARTPOLE_STEPS = 200  # the paper's CartPole horizon (CartPole-v0)
# Pendulum-v1's reward is -(theta^2 + 0.1 thetadot^2 + 0.001 u^2), |theta| <= pi, |thetadot| <= 8,
# |u| <= 2: at least -(pi^2 + 0.1 * 64 + 0.001 * 4) per step.
PENDULUM_MIN_REWARD = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # -16.2736044

BASE = {
    # 16 x 128 steps, 500k env steps: ~10 s of training on 2 CPU cores.
    "CartPole-v1": dict(
        env="CartPole-v1",
        env_kwargs={"max_steps_in_episode": CARTPOLE_STEPS},
        total_timesteps=507_904,
        num_envs=16,
        num_steps=128,
        update_epochs=10,
        num_minibatches=8,
        hidden_sizes=[64, 64],
        learning_rate=3.0e-4,
        anneal_lr=True,
        gamma=0.99,
        gae_lambda=0.95,
        ent_coef=0.01,
    ),
    # experiments/configs/ppo_pendulum.yaml
    "Pendulum-v1": dict(
        env="Pendulum-v1",
        total_timesteps=507_904,
        num_envs=16,
        num_steps=128,
        update_epochs=10,
        num_minibatches=32,
        hidden_sizes=[64, 64],
        policy="gaussian",
        learning_rate=1.0e-3,
        anneal_lr=True,
        gamma=0.95,
        gae_lambda=0.95,
        ent_coef=0.0,
        normalize_obs=True,
        normalize_reward=True,
    ),
}


@dataclasses.dataclass
class Run:
    """One trained policy: env, training sigma (0: undefended), config and agent."""

    name: str
    env: str
    sigma: float
    config: Any
    agent: Any
    progress: Progress


@dataclasses.dataclass
class Plan:
    envs: list[str]
    sigmas: list[float]
    budgets: list[float]
    certify_episodes: int
    attack_episodes: int
    noise_draws: int | None  # None: per env (ATTACK_DEFAULTS)
    attack_steps: int | None
    step_sizes: list[float] | None
    objectives: list[str] | None
    lookahead: int
    alpha: float
    method: str
    scale: str
    seed: int
    out: Path
    runs: list[Run]
    show_progress: bool


# --------------------------------------------------------------------------- settings


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.smoothing",
        description="Train smoothed PPO, certify it (policy smoothing) and attack it.",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="PPO config overrides")
    p.add_argument("--envs", nargs="+", default=list(ENVS), help=f"from {ENVS}")
    p.add_argument("--sigmas", nargs="+", type=float, default=[0.2, 0.4], help="noise stds > 0")
    p.add_argument(
        "--budgets", nargs="+", type=float, default=[0.2, 0.4, 0.6, 0.8, 1.0], help="l2 budgets"
    )
    p.add_argument("--certify-episodes", type=int, default=10_000, help="clean episodes n")
    p.add_argument("--attack-episodes", type=int, help="attacked episodes per budget")
    p.add_argument("--scale", default="cpu", help=f"one of {SCALES}: default attack episodes")
    p.add_argument("--noise-draws", type=int, help="attacker's noise draws per step (per env)")
    p.add_argument("--attack-steps", type=int, help="gradient steps per time step (per env)")
    p.add_argument("--step-sizes", nargs="+", type=float, help="attack step sizes (l2; per env)")
    p.add_argument("--objectives", nargs="+", help=f"attack objectives from {OBJECTIVES} (per env)")
    p.add_argument(
        "--lookahead", type=int, default=10, help="steps the lookahead objective simulates"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="certificate failure probability")
    p.add_argument("--method", default="auto", help=f"one of {METHODS}")
    p.add_argument("--seed", type=int, default=0, help="base seed of the keys")
    p.add_argument("--steps", type=int, help="training env steps per policy (total_timesteps)")
    p.add_argument("--out", help="run folder (default runs/smoothing-<timestamp>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _finite(flag: str, values) -> None:
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{flag} {v!r}: must be finite")


def _positive_int(flag: str, value) -> None:
    if value is None or isinstance(value, bool) or value < 1:
        raise ValueError(f"{flag}={value!r}: must be a positive integer")


def horizon(config) -> int:
    """Steps per episode of the run's env (its time limit)."""
    from envs import make

    _, params = make(config.env, **dict(config.env_kwargs))
    return episode_horizon(params)


def low_return(env: str, steps: int) -> float:
    """The smallest total reward an episode of `steps` steps can possibly get."""
    return 0.0 if env == "CartPole-v1" else PENDULUM_MIN_REWARD * steps


def resolve_method(method: str, env: str) -> str:
    if method != "auto":
        return method
    return "clopper_pearson" if env == "CartPole-v1" else "dkw"


def levels(env: str, steps: int) -> np.ndarray | None:
    """Pre-registered levels for CartPole (every integer return 1..steps); None elsewhere (the
    distinct returns, certify's default)."""
    return np.arange(1, steps + 1, dtype=np.float64) if env == "CartPole-v1" else None


def run_name(env: str, sigma: float) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', env)}-sigma{sigma:g}"


def prepare(args) -> Plan:
    """Everything that can fail on bad input, checked before any training or file."""
    if not args.envs or len(set(args.envs)) != len(args.envs):
        raise ValueError(f"--envs {args.envs}: give distinct env ids")
    for env in args.envs:
        if env not in ENVS:
            raise ValueError(f"--envs {env!r}: allowed values are {list(ENVS)}")
    if args.scale not in SCALES:
        raise ValueError(f"--scale {args.scale!r}: allowed values are {list(SCALES)}")
    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r}: allowed values are {list(METHODS)}")
    sigmas, budgets = list(args.sigmas), list(args.budgets)
    if not sigmas or not budgets:
        raise ValueError("--sigmas and --budgets need at least one value each")
    _finite("--sigmas", sigmas)
    _finite("--budgets", budgets)
    for s in sigmas:
        if s <= 0:
            raise ValueError(
                f"--sigmas {s!r}: smoothing needs sigma > 0 (the undefended sigma = 0 policy is "
                "trained and attacked anyway)"
            )
    if len(set(sigmas)) != len(sigmas):
        raise ValueError(f"--sigmas {sigmas}: repeated value")
    for b in budgets:
        if b < 0:
            raise ValueError(f"--budgets {b!r}: an l2 budget must be >= 0")
    budgets = sorted(set(budgets))
    if not (0.0 < args.alpha < 1.0):
        raise ValueError(f"--alpha={args.alpha!r}: must lie in (0, 1)")
    attack_episodes = (
        args.attack_episodes if args.attack_episodes is not None else ATTACK_EPISODES[args.scale]
    )
    _positive_int("--attack-episodes", attack_episodes)
    _positive_int("--certify-episodes", args.certify_episodes)
    for flag, value in (("--noise-draws", args.noise_draws), ("--attack-steps", args.attack_steps)):
        if value is not None:
            _positive_int(flag, value)
    _positive_int("--lookahead", args.lookahead)
    if args.steps is not None:
        _positive_int("--steps", args.steps)
    for step_size in args.step_sizes or []:
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"--step-sizes {step_size!r}: must be a finite number > 0")
    for objective in args.objectives or []:
        if objective not in OBJECTIVES:
            raise ValueError(f"--objectives {objective!r}: allowed values are {list(OBJECTIVES)}")

    overrides = runs.parse_overrides(args.overrides)
    for key in ("algo", "env", "obs_noise_sigma", "seed", "num_seeds"):
        if key in overrides:
            raise ValueError(f"{key}=...: set by the experiment, not an override")
    if args.steps is not None:
        overrides["total_timesteps"] = args.steps

    show = not args.no_progress
    plan_runs = []
    for env in args.envs:
        for sigma in [*sigmas, 0.0]:
            values = runs.merge({"algo": "ppo", **BASE[env]}, overrides)
            values["obs_noise_sigma"] = sigma
            config = runs.build_spec(values).config
            progress = Progress(enabled=show)
            agent = checkpoint.make_agent("ppo", config, progress_fn=progress.callback)
            plan_runs.append(Run(run_name(env, sigma), env, sigma, config, agent, progress))
        objectives = args.objectives or ATTACK_DEFAULTS[env]["objectives"]
        for objective in objectives:
            try:
                attack.resolve_objective(plan_runs[-1].agent, objective)
            except ValueError as err:
                raise ValueError(f"--objectives {objective!r} on {env}: {err}") from None
        steps = horizon(plan_runs[-1].config)
        method = resolve_method(args.method, env)
        grid = levels(env, steps)
        num_levels = len(grid) if grid is not None else args.certify_episodes
        need = certify.min_returns(args.alpha, num_levels if method != "dkw" else 1, method)
        if args.certify_episodes < need:
            raise ValueError(
                f"--certify-episodes={args.certify_episodes}: too few for alpha={args.alpha:g} "
                f"with {method} on {env} ({num_levels} levels); nothing above 1/2 could be "
                f"certified; need at least {need}"
            )

    out = (
        Path(args.out)
        if args.out
        else Path("runs") / ("smoothing-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if (out / "config.yaml").exists() or (out / "checkpoints").exists():
        raise ValueError(f"--out {out} already holds a run; choose another --out")
    return Plan(
        envs=list(args.envs),
        sigmas=sigmas,
        budgets=budgets,
        certify_episodes=args.certify_episodes,
        attack_episodes=attack_episodes,
        noise_draws=args.noise_draws,
        attack_steps=args.attack_steps,
        step_sizes=args.step_sizes,
        objectives=args.objectives,
        lookahead=args.lookahead,
        alpha=args.alpha,
        method=args.method,
        scale=args.scale,
        seed=args.seed,
        out=out,
        runs=plan_runs,
        show_progress=show,
    )


# --------------------------------------------------------------------------- the work


def _log(plan: Plan, text: str) -> None:
    if plan.show_progress:
        print(text, file=sys.stderr, flush=True)


def train(run: Run, plan: Plan, key) -> tuple[Any, dict, dict]:
    """Trains one policy (one jitted program) -> (state, training stats, curves)."""
    cfg, agent = run.config, run.agent
    _log(plan, f"compiling ppo on {run.env}, sigma={run.sigma:g} ...")
    t = time.perf_counter()
    compiled = jax.jit(agent.train).lower(key).compile()
    compile_s = time.perf_counter() - t
    steps_per_update = cfg.num_envs * cfg.num_steps
    run.progress.start(agent.num_updates, 0, f"{run.env} sigma={run.sigma:g}", steps_per_update)
    try:
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(key))
        train_s = time.perf_counter() - t
    finally:
        run.progress.close()
    metrics = jax.device_get(out.metrics)
    returns = np.asarray(metrics["episode_return"], np.float64)  # [U]
    window = max(1, math.ceil(runs.FINAL_FRACTION * returns.size))
    stats = {
        "final_return": float(returns[-window:].mean()),
        "final_window_updates": window,
        "env_steps": int(agent.num_updates * steps_per_update),
        "sps": agent.num_updates * steps_per_update / train_s,
        "compile_s": compile_s,
        "train_s": train_s,
        "checkpoint": f"checkpoints/{run.name}",
    }
    curves = {
        "env_steps": np.asarray(metrics["env_steps"], np.int64),
        "episode_return": returns,
        "episode_length": np.asarray(metrics["episode_length"], np.float64),
    }
    return out.state, stats, curves


def clean_returns(run: Run, plan: Plan, state, key, num_episodes: int) -> tuple[np.ndarray, dict]:
    """`[n]` clean smoothed returns (deterministic actions) in one jitted call, timed apart from
    its compile."""
    fn = mc.make_smoothed_returns(run.agent, num_episodes)
    sigma = np.float32(run.sigma)
    t = time.perf_counter()
    compiled = fn.lower(state, key, sigma).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    returns = np.asarray(jax.block_until_ready(compiled(state, key, sigma)), np.float64)
    return returns, {"compile_s": compile_s, "run_s": time.perf_counter() - t}


def attack_settings(plan: Plan, env: str) -> dict:
    """The attack settings for `env`: the command line's where given, else ATTACK_DEFAULTS."""
    d = ATTACK_DEFAULTS[env]
    pick = lambda given, name: given if given is not None else d[name]
    return {
        "noise_draws": pick(plan.noise_draws, "noise_draws"),
        "attack_steps": pick(plan.attack_steps, "attack_steps"),
        "step_sizes": list(pick(plan.step_sizes, "step_sizes")),
        "objectives": list(pick(plan.objectives, "objectives")),
        "lookahead": plan.lookahead,
    }


def attacked(run: Run, plan: Plan, state, key, bar) -> dict:
    """The attack at every budget over `plan.attack_episodes` episodes (same key per budget), once
    per setting (objective x step size); per budget the strongest setting's (lowest) mean."""
    settings = attack_settings(plan, run.env)
    draws = settings["noise_draws"] if run.sigma > 0 else 1  # no noise: one draw is exact
    per_setting, compile_s, seconds = [], 0.0, 0.0
    for objective in settings["objectives"]:
        resolved = attack.resolve_objective(run.agent, objective)
        lookahead = settings["lookahead"] if resolved == "lookahead" else 1
        fn = attack.make_attacked_returns(
            run.agent,
            plan.attack_episodes,
            draws,
            settings["attack_steps"],
            objective=resolved,
            lookahead=lookahead,
        )
        sigma = np.float32(run.sigma)
        t = time.perf_counter()
        compiled = fn.lower(state, key, sigma, np.float32(0.0), np.float32(0.01)).compile()
        compile_s += time.perf_counter() - t
        for step_size in settings["step_sizes"]:
            means, stds, spent, iqms, iqm_cis, mean_cis = [], [], [], [], [], []
            for budget in plan.budgets:
                t = time.perf_counter()
                returns, sq = compiled(state, key, sigma, np.float32(budget), np.float32(step_size))
                returns = np.asarray(jax.block_until_ready(returns), np.float64)
                seconds += time.perf_counter() - t
                means.append(float(returns.mean()))
                stds.append(float(returns.std()))
                spent.append(float(np.sqrt(np.asarray(sq, np.float64)).mean()))
                over_episodes = aggregate.summarize(returns)
                iqms.append(over_episodes["iqm"])
                iqm_cis.append(over_episodes["iqm_ci"])
                mean_cis.append(over_episodes["mean_ci"])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(
                        f"{run.name} {resolved} {step_size:g} B={budget:g}: {means[-1]:.1f}",
                        refresh=False,
                    )
            per_setting.append(
                {
                    "objective": resolved,
                    "step_size": step_size,
                    "lookahead": lookahead,
                    "attacked_return_mean": means,
                    "attacked_return_std": stds,
                    "attacked_return_mean_ci": mean_cis,
                    "attacked_return_iqm": iqms,
                    "attacked_return_iqm_ci": iqm_cis,
                    "attacked_spent_budget_mean": spent,
                }
            )
    strongest = [
        int(np.argmin([p["attacked_return_mean"][i] for p in per_setting]))
        for i in range(len(plan.budgets))
    ]
    pick = lambda field: [per_setting[j][field][i] for i, j in enumerate(strongest)]
    num_runs = plan.attack_episodes * len(plan.budgets) * len(per_setting)
    return {
        "attacked_return_mean": pick("attacked_return_mean"),
        "attacked_return_std": pick("attacked_return_std"),
        "attacked_return_mean_ci": pick("attacked_return_mean_ci"),
        "attacked_return_iqm": pick("attacked_return_iqm"),
        "attacked_return_iqm_ci": pick("attacked_return_iqm_ci"),
        "attacked_episodes": plan.attack_episodes,
        "attacked_spent_budget_mean": pick("attacked_spent_budget_mean"),
        "attacked_strongest_setting": [
            {k: per_setting[j][k] for k in ("objective", "step_size")} for j in strongest
        ],
        "attack_settings": per_setting,
        "attack_noise_draws": draws,
        "attack_steps": settings["attack_steps"],
        "attack_compile_s": compile_s,
        "attack_s": seconds,
        "attack_s_per_episode": seconds / num_runs,
    }


def certify_run(run: Run, plan: Plan, returns: np.ndarray, steps: int) -> dict:
    """Certified expected reward per budget (B = 0 first) and, for CartPole, P_adv[R >= v]."""
    method = resolve_method(plan.method, run.env)
    grid = levels(run.env, steps)
    low = low_return(run.env, steps)
    budgets = np.asarray([0.0, *plan.budgets])
    bound = certify.expected_reward_bound(
        returns, run.sigma, budgets, plan.alpha, low=low, method=method, levels=grid
    )
    entry = {
        "certify_method": method,
        "certified_clean_lower_bound": float(bound[0]),
        "certified_expected_reward": [float(b) for b in bound[1:]],
    }
    if grid is not None:
        entry["threshold_levels"] = grid.tolist()
        entry["threshold_bound"] = certify.threshold_bound(
            returns, grid, run.sigma, budgets, plan.alpha
        ).tolist()  # [1 + K budgets, m levels], B = 0 first
    return entry


def check_bounds(plan: Plan, results: dict) -> dict:
    """Every certified bound must lie below the mean attacked return; violations are printed."""
    violations = []
    for env, entry in results.items():
        for name, r in entry["smoothed"].items():
            for b, bound, att in zip(
                plan.budgets,
                r["certified_expected_reward"],
                r["attacked_return_mean"],
                strict=True,
            ):
                if bound > att:
                    violations.append(
                        {"env": env, "run": name, "budget": b, "bound": bound, "attacked": att}
                    )
                    print(
                        f"WARNING: {env} {name} budget {b:g}: certified bound {bound:.3f} exceeds "
                        f"the mean attacked return {att:.3f} over {r['attacked_episodes']} "
                        "episodes; the certificate or the attack is wrong",
                        flush=True,
                    )
    return {"bound_below_attacked_everywhere": not violations, "violations": violations}


# --------------------------------------------------------------------------- files


def write_config(plan: Plan) -> None:
    settings = {
        "envs": plan.envs,
        "sigmas": plan.sigmas,
        "budgets": plan.budgets,
        "certify_episodes": plan.certify_episodes,
        "attack_episodes": plan.attack_episodes,
        "attack": {env: attack_settings(plan, env) for env in plan.envs},
        "alpha": plan.alpha,
        "method": plan.method,
        "scale": plan.scale,
        "seed": plan.seed,
        "runs": {r.name: {"algo": "ppo", **C.to_dict(r.config)} for r in plan.runs},
    }
    runs.atomic_write(plan.out / "config.yaml", yaml.safe_dump(settings, sort_keys=False))


def write_metrics(plan: Plan, curves: dict[str, dict]) -> None:
    lines = ["env,sigma,update,env_steps,episode_return,episode_length"]
    for run in plan.runs:
        if run.name not in curves:
            continue
        c = curves[run.name]
        for u, (s, r, n) in enumerate(
            zip(c["env_steps"], c["episode_return"], c["episode_length"], strict=True)
        ):
            lines.append(f"{run.env},{run.sigma:g},{u + 1},{s},{r:.6g},{n:.6g}")
    runs.atomic_write(plan.out / "metrics.csv", "\n".join(lines) + "\n")


def make_summary(plan: Plan, results: dict, check: dict | None, wall_s: float) -> dict:
    trained = [
        (env, name, r["train"])
        for env, entry in results.items()
        for name, r in [*entry["smoothed"].items(), ("undefended", entry.get("undefended"))]
        if r is not None
    ]
    device = jax.devices()[0]
    return {
        "envs": plan.envs,
        "sigmas": plan.sigmas,
        "budgets": plan.budgets,
        "alpha": plan.alpha,
        "certify_episodes": plan.certify_episodes,
        "attack_episodes": plan.attack_episodes,
        "attack": {env: attack_settings(plan, env) for env in plan.envs},
        "final_return_runs": [f"{env}/{name}" for env, name, _ in trained],
        "final_return_per_seed": [t["final_return"] for _, _, t in trained],
        "final_return_mean": float(np.mean([t["final_return"] for _, _, t in trained]))
        if trained
        else float("nan"),
        "sps": float(np.mean([t["sps"] for _, _, t in trained])) if trained else float("nan"),
        "compile_s": float(sum(t["compile_s"] for _, _, t in trained)),
        "wall_s": wall_s,
        "certificate_check": check,
        "definitions": {
            "final_return": f"training episode_return (under the training noise, stochastic "
            f"actions) averaged over the last {runs.FINAL_FRACTION:.0%} of updates; one seed "
            "per policy; the top-level list follows final_return_runs",
            "clean_return": "smoothed policy (noise sigma on every observation, deterministic "
            "actions), no attack, over certify_episodes episodes",
            "certified_expected_reward": "per budget, lower bound on E[return] under any "
            "adaptive attack with total l2 budget B (observation units), valid with prob. "
            ">= 1 - alpha over the clean episodes; certified_clean_lower_bound is B = 0",
            "attacked_return": "greedy adaptive attack (purejaxrl/robust/attack.py) at each "
            "budget, same episodes' keys for every budget; mean/std over attacked_episodes of "
            "the strongest setting (objective x step size) at that budget; all settings in "
            "attack_settings",
            "low": "the smallest possible episode return used by the bound: CartPole 0; "
            "Pendulum -16.2736044 per step (-(pi^2 + 0.1 * 8^2 + 0.001 * 2^2)) x 200 steps",
            "iqm_and_ci": "clean_return_* and attacked_return_*: _iqm is the interquartile mean "
            "over the episodes (mean of the middle 50%, rliable's), _iqm_ci and _mean_ci the 95% "
            f"percentile intervals over {aggregate.REPS} bootstrap resamples of the episodes "
            "(seed 0); they describe this one policy's episode returns, not seeds",
            "certify_s": "seconds of the one jitted call producing the clean returns "
            "(compile excluded, in certify_compile_s)",
            "attack_s_per_episode": "attack seconds / (episodes x budgets x settings), compile "
            "excluded",
            "sps": "mean over runs of training env steps / train_s (compile excluded)",
        },
        "results": results,
        "device": f"{device.platform}: {device.device_kind}",
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_certificate(ax, budgets, entry: dict) -> None:
    """Certified bound vs budget per sigma (line, B = 0 included), attacked mean returns
    (markers, +- standard error), clean return (dotted), undefended attacked return (black)."""
    b = np.asarray([0.0, *budgets])
    for i, r in enumerate(entry["smoothed"].values()):
        color = f"C{i}"
        bound = [r["certified_clean_lower_bound"], *r["certified_expected_reward"]]
        ax.plot(b, bound, color=color, lw=1.8, label=f"certified, sigma={r['sigma']:g}")
        se = np.asarray(r["attacked_return_std"]) / np.sqrt(r["attacked_episodes"])
        ax.errorbar(
            budgets,
            r["attacked_return_mean"],
            yerr=se,
            color=color,
            marker="o",
            ls="--",
            lw=1,
            ms=4,
            capsize=2,
            label=f"attacked, sigma={r['sigma']:g}",
        )
        ax.axhline(r["clean_return_mean"], color=color, ls=":", lw=1.2)
    u = entry.get("undefended")
    if u is not None:
        ax.plot(
            b,
            [u["clean_return_mean"], *u["attacked_return_mean"]],
            color="k",
            marker="s",
            ls="-.",
            lw=1,
            ms=4,
            label="undefended (sigma=0), attacked",
        )
    ax.set(xlabel="l2 attack budget B (total over the episode)", ylabel="episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_files(plan: Plan, results: dict) -> None:
    plt = _pyplot()
    for env, entry in results.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
        plot_certificate(ax, plan.budgets, entry)
        ax.set_title(f"{env}: certified vs attacked (dotted: clean smoothed return)", fontsize=9)
        fig.tight_layout()
        _save(fig, plan.out / f"certificate_{env}.png")
        with_levels = [r for r in entry["smoothed"].values() if "threshold_bound" in r]
        if not with_levels:
            continue
        fig, axes = plt.subplots(1, len(with_levels), figsize=(4.6 * len(with_levels), 3.6), dpi=90)
        for ax, r in zip(np.atleast_1d(axes), with_levels, strict=True):
            v = np.asarray(r["threshold_levels"])
            for k, (b, p) in enumerate(
                zip([0.0, *plan.budgets], r["threshold_bound"], strict=True)
            ):
                ax.plot(v, p, color=plt.cm.viridis(k / max(1, len(plan.budgets))), label=f"B={b:g}")
            ax.set(xlabel="return threshold v", ylabel="certified P[R >= v]", ylim=(0, 1.02))
            ax.set_title(f"{env}, sigma={r['sigma']:g}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, plan.out / f"thresholds_{env}.png")


# --------------------------------------------------------------------------- main


def execute(plan: Plan) -> dict:
    t0 = time.perf_counter()
    plan.out.mkdir(parents=True, exist_ok=True)
    write_config(plan)
    key = jax.random.key(plan.seed)
    train_key, certify_key, attack_key = (jax.random.fold_in(key, i) for i in range(3))
    results: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    bar = None
    if plan.show_progress:
        from tqdm.auto import tqdm

        total = 0
        for run in plan.runs:
            settings = attack_settings(plan, run.env)
            total += len(plan.budgets) * len(settings["objectives"]) * len(settings["step_sizes"])
        bar = tqdm(total=total, desc="attacks", unit="budget")
    try:
        for run in plan.runs:
            state, train_stats, curves[run.name] = train(run, plan, train_key)
            checkpoint.save(
                plan.out / "checkpoints" / run.name, state, run.config, {"seed": plan.seed}
            )
            write_metrics(plan, curves)
            steps = horizon(run.config)
            entry = results.setdefault(
                run.env,
                {
                    "horizon": steps,
                    "low": low_return(run.env, steps),
                    "smoothed": {},
                    "undefended": None,
                },
            )
            n = plan.certify_episodes
            returns, timing = clean_returns(run, plan, state, certify_key, n)
            r: dict[str, Any] = {
                "sigma": run.sigma,
                "train": train_stats,
                "clean_return_mean": float(returns.mean()),
                "clean_return_std": float(returns.std()),
                "clean_return_min": float(returns.min()),
                "clean_episodes": n,
            }
            over_episodes = aggregate.summarize(returns)
            r["clean_return_mean_ci"] = over_episodes["mean_ci"]
            r["clean_return_iqm"] = over_episodes["iqm"]
            r["clean_return_iqm_ci"] = over_episodes["iqm_ci"]
            if run.sigma > 0:
                r["certify_s"] = timing["run_s"]
                r["certify_compile_s"] = timing["compile_s"]
                r.update(certify_run(run, plan, returns, steps))
            r.update(attacked(run, plan, state, attack_key, bar))
            if run.sigma > 0:
                entry["smoothed"][f"sigma={run.sigma:g}"] = r
            else:
                entry["undefended"] = r
            runs.write_summary(
                plan.out, make_summary(plan, results, None, time.perf_counter() - t0)
            )
    finally:
        if bar is not None:
            bar.close()
    check = check_bounds(plan, results)
    plot_files(plan, results)
    summary = make_summary(plan, results, check, time.perf_counter() - t0)
    runs.write_summary(plan.out, summary)
    return summary


def format_table(summary: dict) -> str:
    budgets = summary["budgets"]
    head = "  ".join(f"B={b:g}" for b in budgets)
    rows = []
    for env, entry in summary["results"].items():
        rows.append(f"{env} (low={entry['low']:g}, {summary['attack_episodes']} attacked episodes)")
        rows.append(f"  {'run':12s} {'train':>8s} {'clean':>8s}  what        {head}")
        for name, r in [*entry["smoothed"].items(), ("undefended", entry["undefended"])]:
            if r is None:
                continue
            tr, clean = r["train"]["final_return"], r["clean_return_mean"]
            if "certified_expected_reward" in r:
                cert = "  ".join(f"{x:7.2f}" for x in r["certified_expected_reward"])
                rows.append(f"  {name:12s} {tr:8.2f} {clean:8.2f}  certified  {cert}")
            att = "  ".join(f"{x:7.2f}" for x in r["attacked_return_mean"])
            rows.append(f"  {name:12s} {tr:8.2f} {clean:8.2f}  attacked   {att}")
            extra = f"certify {r['certify_s']:.2f} s, " if "certify_s" in r else ""
            rows.append(
                f"  {'':12s} {extra}attack {r['attack_s_per_episode']:.3f} s/episode, "
                f"train {r['train']['sps']:,.0f} sps, compile {r['train']['compile_s']:.1f} s"
            )
    check = summary["certificate_check"]
    ok = check["bound_below_attacked_everywhere"]
    rows.append(
        "certified bound < mean attacked return at every budget and sigma: "
        + ("yes" if ok else f"NO ({len(check['violations'])} violations)")
    )
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
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
