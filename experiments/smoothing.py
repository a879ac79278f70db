"""Policy smoothing (Kumar, Levine, Feizi, ICLR 2022): train smoothed PPO per env and sigma (and
undefended), then certify and attack each (purejaxrl/robust/protocol.py; docs/experiments.md)."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import numpy as np

from experiments import agent_runs, aggregate, command
from purejaxrl import checkpoint, scores
from purejaxrl.evaluation import episode_horizon
from purejaxrl.robust import certify, protocol

ENVS = ("CartPole-v1", "Pendulum-v1")
SCALES = ("cpu", "paper")
METHODS = ("auto", *certify.METHODS)
ATTACK_EPISODES = {"cpu": 100, "paper": 1000}
OBJECTIVES = ("auto", "scores", "lookahead", "log_prob")
# Attack settings per env: noise draws, gradient steps per time step, step sizes, objectives.
ATTACK_DEFAULTS = {
    "CartPole-v1": dict(noise_draws=128, attack_steps=100, step_sizes=[0.01], objectives=["auto"]),
    "Pendulum-v1": dict(
        noise_draws=16, attack_steps=20, step_sizes=[0.005, 0.01, 0.02],
        objectives=["lookahead", "log_prob"],
    ),
}  # fmt: skip
CARTPOLE_STEPS = 200  # the paper's CartPole horizon (CartPole-v0)
# 16 x 128 steps, 500k env steps per policy: ~10 s of training on 2 CPU cores.
_PPO = dict(total_timesteps=507_904, num_envs=16, num_steps=128, update_epochs=10,
            hidden_sizes=[64, 64], anneal_lr=True, gae_lambda=0.95)  # fmt: skip
BASE = {
    "CartPole-v1": dict(_PPO, env="CartPole-v1", num_minibatches=8, learning_rate=3.0e-4,
                        gamma=0.99, ent_coef=0.01,
                        env_kwargs={"max_steps_in_episode": CARTPOLE_STEPS}),
    # experiments/configs/ppo_pendulum.yaml
    "Pendulum-v1": dict(_PPO, env="Pendulum-v1", num_minibatches=32, policy="gaussian",
                        learning_rate=1.0e-3, gamma=0.95, ent_coef=0.0, normalize_obs=True,
                        normalize_reward=True),
}  # fmt: skip


@dataclasses.dataclass(kw_only=True)
class Run(agent_runs.Run):
    sigma: float  # the training and smoothing noise (0: undefended)


def arguments(p) -> None:
    count, number = command.positive_int, command.checked
    sigma = number(float, lambda v: v > 0, "> 0 (the undefended sigma = 0 policy runs anyway)")
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--sigmas", nargs="+", type=sigma, default=[0.2, 0.4], help="noise stds")
    budget = number(float, lambda v: v >= 0, "an l2 budget >= 0")
    p.add_argument("--budgets", nargs="+", type=budget, default=[0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--certify-episodes", type=count, default=10_000, help="clean episodes n")
    p.add_argument("--attack-episodes", type=count, help="attacked episodes per budget")
    p.add_argument("--scale", default="cpu", choices=SCALES, help="sets --attack-episodes")
    p.add_argument("--noise-draws", type=count, help="attacker's noise draws per step (per env)")
    p.add_argument("--attack-steps", type=count, help="gradient steps per time step (per env)")
    step = number(float, lambda v: v > 0, "> 0")
    p.add_argument("--step-sizes", nargs="+", type=step, help="attack step sizes (l2; per env)")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, help="attack objectives")
    p.add_argument("--lookahead", type=count, default=10, help="steps the lookahead simulates")
    alpha = number(float, lambda v: 0 < v < 1, "in (0, 1)")
    p.add_argument("--alpha", type=alpha, default=0.05, help="certificate failure probability")
    p.add_argument("--method", default="auto", choices=METHODS)
    p.add_argument("--seed", type=int, default=0, help="base seed of the keys")
    p.add_argument("--steps", type=count, help="training env steps per policy (total_timesteps)")


def plan(args) -> agent_runs.Plan:
    """Everything that can fail on bad input, checked before any training or file."""
    command.check_unique(args, "envs", "sigmas", "objectives")
    markers = ("config.yaml", "checkpoints")
    run_dir, values, _ = command.start(args, lambda v: "smoothing", markers=markers)
    for key in ("algo", "env", "obs_noise_sigma", "seed", "num_seeds"):
        if key in values:
            raise ValueError(f"{key}=...: set by the experiment, not an override")
    if args.steps is not None:
        values["total_timesteps"] = args.steps
    planned, attack = [], {}
    for env in args.envs:
        for sigma in [*args.sigmas, 0.0]:
            config = command.merge({"algo": "ppo", **BASE[env]}, values)
            name = f"{env}-sigma{sigma:g}"
            config["obs_noise_sigma"] = sigma
            planned.append(agent_runs.make(Run, name, config, not args.no_progress, sigma=sigma))
        given = {k: v for k in ATTACK_DEFAULTS[env] if (v := getattr(args, k)) is not None}
        attack[env] = {**ATTACK_DEFAULTS[env], **given, "lookahead": args.lookahead}
        protocol.check(planned[-1].agent, attack[env]["objectives"], args.certify_episodes,
                       args.alpha, args.method)  # fmt: skip
    # config.yaml's settings (summary.json repeats them but for method, scale and seed); attack:
    # per env, noise_draws, attack_steps, step_sizes, objectives and lookahead.
    settings = {"envs": list(args.envs), "sigmas": args.sigmas,
                "budgets": sorted(set(args.budgets)), "certify_episodes": args.certify_episodes,
                "attack_episodes": args.attack_episodes or ATTACK_EPISODES[args.scale],
                "attack": attack, "alpha": args.alpha, "method": args.method, "scale": args.scale,
                "seed": args.seed}  # fmt: skip
    return agent_runs.Plan(run_dir, "new", not args.no_progress, settings=settings, runs=planned)


def train(run: Run, plan: agent_runs.Plan, key) -> tuple[Any, dict, dict]:
    """Trains one policy (one jitted program) -> (state, training stats, curves)."""
    plan.say(f"compiling ppo on {run.env}, sigma={run.sigma:g} ...")
    out, compile_s, train_s = agent_runs.train(run, key, False, f"{run.env} sigma={run.sigma:g}")
    metrics = jax.device_get(out.metrics)
    returns = np.asarray(metrics["episode_return"], np.float64)  # [U]
    env_steps = run.agent.num_updates * run.config.num_envs * run.config.num_steps
    stats = {
        "final_return": float(scores.final_return(returns, metrics["episodes_finished"])),
        "final_window_updates": scores.final_window(returns.size),
        "env_steps": int(env_steps),
        "sps": env_steps / train_s,
        "compile_s": compile_s,
        "train_s": train_s,
        "checkpoint": f"checkpoints/{run.name}",
    }
    curves = {"env_steps": np.asarray(metrics["env_steps"], np.int64), "episode_return": returns,
              "episode_length": np.asarray(metrics["episode_length"], np.float64)}  # fmt: skip
    return out.state, stats, curves


def clean_returns(run: Run, s: dict, state, key) -> dict:
    """The clean smoothed returns' statistics and, for sigma > 0, the certificate."""
    n = s["certify_episodes"]
    returns, compile_s, seconds = protocol.clean_returns(run.agent, state, key, run.sigma, n)
    r = {**agent_runs.summarize("clean_return", returns, seeds=False),
         "clean_return_min": float(returns.min()), "clean_episodes": n}  # fmt: skip
    if run.sigma > 0:
        r.update(certify_s=seconds, certify_compile_s=compile_s)
        r.update(protocol.certificate(returns, run.sigma, s["budgets"], env=run.env,
                                      steps=episode_horizon(run.agent.env_params),
                                      alpha=s["alpha"], method=s["method"]))  # fmt: skip
    return r


def attacked(run: Run, s: dict, state, key, bar) -> dict:
    """protocol.attacked with every setting's statistics per budget, and the strongest's."""
    a, n = s["attack"][run.env], s["attack_episodes"]

    def progress(objective, step_size, budget, returns):
        bar.update(1)
        label = f"{run.name} {objective} {step_size:g} B={budget:g}"
        bar.set_postfix_str(f"{label}: {returns.mean():.1f}", refresh=False)

    out = protocol.attacked(run.agent, state, key, run.sigma, s["budgets"], n,
                            on_attack=progress, **a)  # fmt: skip
    per_setting = []
    for setting, returns, spent in zip(out.settings, out.returns, out.spent, strict=True):
        stats = [{**agent_runs.summarize("attacked_return", r, seeds=False),
                  "attacked_spent_budget_mean": float(sp.mean())}
                 for r, sp in zip(returns, spent, strict=True)]  # fmt: skip
        per_setting.append({**setting, **{k: [x[k] for x in stats] for k in stats[0]}})
    keys = [k for k in per_setting[0] if k.startswith("attacked_")]
    best = {k: [per_setting[j][k][i] for i, j in enumerate(out.strongest)] for k in keys}
    return {**best, "attacked_episodes": n,
            "attacked_strongest_setting": [{k: per_setting[j][k] for k in ("objective", "step_size")}
                                           for j in out.strongest],
            "attack_settings": per_setting, "attack_noise_draws": out.noise_draws,
            "attack_steps": a["attack_steps"], "attack_compile_s": out.compile_s,
            "attack_s": out.attack_s,
            "attack_s_per_episode": out.attack_s / out.returns.size}  # fmt: skip


def check_bounds(s: dict, results: dict) -> dict:
    """Every certified bound must lie below the mean attacked return; violations are printed."""
    violations = [{"env": env, "run": name, "budget": b, "bound": bound, "attacked": att}
                  for env, entry in results.items() for name, r in entry["smoothed"].items()
                  for b, bound, att in protocol.bound_violations(
                      s["budgets"], r["certified_expected_reward"], r["attacked_return_mean"])
                  ]  # fmt: skip
    for v in violations:
        print(
            f"WARNING: {v['env']} {v['run']} budget {v['budget']:g}: certified bound "
            f"{v['bound']:.3f} exceeds the mean attacked return {v['attacked']:.3f} over "
            f"{s['attack_episodes']} episodes; the certificate or the attack is wrong",
            flush=True,
        )
    return {"bound_below_attacked_everywhere": not violations, "violations": violations}


def write_metrics(plan: agent_runs.Plan, curves: dict[str, dict]) -> None:
    columns = ["env", "sigma", "update", "env_steps", "episode_return", "episode_length"]
    agent_runs.write_metrics(plan, columns, lambda r: (r.env, r.sigma), curves)


DEFINITIONS = {
    "final_return": "training episode_return (under the training noise, stochastic actions) "
    f"averaged over the last {scores.FINAL_FRACTION:.0%} of updates (purejaxrl.scores."
    "final_return: finished episodes only); one seed per policy; the top-level list follows "
    "final_return_runs",
    "clean_return": "smoothed policy (noise sigma on every observation, deterministic "
    "actions), no attack, over certify_episodes episodes",
    "certified_expected_reward": "per budget, lower bound on E[return] under any adaptive "
    "attack with total l2 budget B (observation units), valid with prob. >= 1 - alpha over the "
    "clean episodes; certified_clean_lower_bound is B = 0",
    "attacked_return": "greedy adaptive attack (purejaxrl/robust/attack.py) at each budget, "
    "same episodes' keys for every budget; mean/std over attacked_episodes of the strongest "
    "setting (objective x step size) at that budget; all settings in attack_settings",
    "low": "the smallest possible episode return used by the bound: CartPole 0; Pendulum "
    "-16.2736044 per step (-(pi^2 + 0.1 * 8^2 + 0.001 * 2^2)) x 200 steps",
    "iqm_and_ci": "clean_return_* and attacked_return_*: _iqm is the interquartile mean over "
    "the episodes (mean of the middle 50%, rliable's), _iqm_ci and _mean_ci the 95% percentile "
    f"intervals over {aggregate.REPS} bootstrap resamples of the episodes (seed 0); they "
    "describe this one policy's episode returns, not seeds",
    "certify_s": "seconds of the one jitted call producing the clean returns (compile "
    "excluded, in certify_compile_s)",
    "attack_s_per_episode": "attack seconds / (episodes x budgets x settings), compile excluded",
    "sps": "mean over runs of training env steps / train_s (compile excluded)",
}


def make_summary(s: dict, results: dict, check: dict | None, wall_s: float) -> dict:
    trained = [
        (f"{env}/{name}", r["train"])
        for env, entry in results.items()
        for name, r in [*entry["smoothed"].items(), ("undefended", entry.get("undefended"))]
        if r is not None
    ]
    final = [t["final_return"] for _, t in trained]
    return {
        **{k: v for k, v in s.items() if k not in ("method", "scale", "seed")},
        "final_return_runs": [name for name, _ in trained],
        "final_return_per_seed": final,
        "final_return_mean": float(np.mean(final)),
        "sps": float(np.mean([t["sps"] for _, t in trained])),
        "compile_s": float(sum(t["compile_s"] for _, t in trained)),
        "wall_s": wall_s,
        "certificate_check": check,
        "definitions": DEFINITIONS,
        "results": results,
        **command.environment(),
    }


def plot_files(plan: agent_runs.Plan, results: dict) -> None:
    """certificate_<env>.png: certified bound (line), attacked (markers, +- s.e.) and clean
    (dotted) returns vs budget per sigma, undefended (black); thresholds_<env>.png (CartPole)."""
    plt, budgets = command.pyplot(), plan.settings["budgets"]
    for env, entry in results.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
        b = np.asarray([0.0, *budgets])
        for i, r in enumerate(entry["smoothed"].values()):
            color, sigma = f"C{i}", f"sigma={r['sigma']:g}"
            bound = [r["certified_clean_lower_bound"], *r["certified_expected_reward"]]
            ax.plot(b, bound, color=color, lw=1.8, label=f"certified, {sigma}")
            se = np.asarray(r["attacked_return_std"]) / np.sqrt(r["attacked_episodes"])
            ax.errorbar(budgets, r["attacked_return_mean"], yerr=se, color=color, marker="o",
                        ls="--", lw=1, ms=4, capsize=2, label=f"attacked, {sigma}")  # fmt: skip
            ax.axhline(r["clean_return_mean"], color=color, ls=":", lw=1.2)
        u = entry.get("undefended")
        if u is not None:
            ax.plot(b, [u["clean_return_mean"], *u["attacked_return_mean"]], color="k",
                    marker="s", ls="-.", lw=1, ms=4,
                    label="undefended (sigma=0), attacked")  # fmt: skip
        ax.set(xlabel="l2 attack budget B (total over the episode)", ylabel="episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{env}: certified vs attacked (dotted: clean smoothed return)", fontsize=9)
        command.save_figure(fig, plan.run_dir / f"certificate_{env}.png")
        with_levels = [r for r in entry["smoothed"].values() if "threshold_bound" in r]
        if not with_levels:
            continue
        fig, axes = plt.subplots(1, len(with_levels), figsize=(4.6 * len(with_levels), 3.6), dpi=90)
        for ax, r in zip(np.atleast_1d(axes), with_levels, strict=True):
            v = np.asarray(r["threshold_levels"])
            per_budget = zip([0.0, *budgets], r["threshold_bound"], strict=True)
            for k, (b, p) in enumerate(per_budget):
                ax.plot(v, p, color=plt.cm.viridis(k / max(1, len(budgets))), label=f"B={b:g}")
            ax.set(xlabel="return threshold v", ylabel="certified P[R >= v]", ylim=(0, 1.02))
            ax.set_title(f"{env}, sigma={r['sigma']:g}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        command.save_figure(fig, plan.run_dir / f"thresholds_{env}.png")


def execute(plan: agent_runs.Plan) -> dict:
    """Trains, certifies and attacks every policy in turn; summary.json after each."""
    from tqdm.auto import tqdm

    t0, s = time.perf_counter(), plan.settings
    agent_runs.write_config(plan)
    train_key, certify_key, attack_key = (jax.random.fold_in(jax.random.key(s["seed"]), i)
                                          for i in range(3))  # fmt: skip
    results, curves = {}, {}  # curves per run: env_steps, episode_return, episode_length [U]
    attacks = [s["attack"][run.env] for run in plan.runs]
    total = len(s["budgets"]) * sum(len(a["objectives"]) * len(a["step_sizes"]) for a in attacks)
    with tqdm(total=total, desc="attacks", unit="budget", disable=not plan.progress) as bar:
        for run in plan.runs:
            state, stats, curves[run.name] = train(run, plan, train_key)
            checkpoint.save(plan.run_dir / stats["checkpoint"], state, run.config,
                            {"seed": s["seed"]})  # fmt: skip
            write_metrics(plan, curves)
            steps = episode_horizon(run.agent.env_params)
            low = protocol.low_return(run.env, steps)
            entry = results.setdefault(run.env, {"horizon": steps, "low": low, "smoothed": {},
                                                 "undefended": None})  # fmt: skip
            r = {"sigma": run.sigma, "train": stats, **clean_returns(run, s, state, certify_key)}
            r.update(attacked(run, s, state, attack_key, bar))
            if run.sigma > 0:
                entry["smoothed"][f"sigma={run.sigma:g}"] = r
            else:
                entry["undefended"] = r
            summary = make_summary(s, results, None, time.perf_counter() - t0)
            command.write_json(plan.run_dir / "summary.json", summary)
    check = check_bounds(s, results)
    plot_files(plan, results)
    summary = make_summary(s, results, check, time.perf_counter() - t0)
    command.write_json(plan.run_dir / "summary.json", summary)
    return summary


def report(plan: agent_runs.Plan, summary: dict) -> str:
    head = "  ".join(f"B={b:g}" for b in summary["budgets"])
    rows = []
    for env, entry in summary["results"].items():
        rows.append(f"{env} (low={entry['low']:g}, {summary['attack_episodes']} attacked episodes)")
        rows.append(f"  {'run':12s} {'train':>8s} {'clean':>8s}  what        {head}")
        for name, r in [*entry["smoothed"].items(), ("undefended", entry["undefended"])]:
            if r is None:
                continue
            lead = f"  {name:12s} {r['train']['final_return']:8.2f} {r['clean_return_mean']:8.2f}"
            if "certified_expected_reward" in r:
                cert = "  ".join(f"{x:7.2f}" for x in r["certified_expected_reward"])
                rows.append(f"{lead}  certified  {cert}")
            att = "  ".join(f"{x:7.2f}" for x in r["attacked_return_mean"])
            rows.append(f"{lead}  attacked   {att}")
            extra = f"certify {r['certify_s']:.2f} s, " if "certify_s" in r else ""
            rows.append(
                f"  {'':12s} {extra}attack {r['attack_s_per_episode']:.3f} s/episode, "
                f"train {r['train']['sps']:,.0f} sps, compile {r['train']['compile_s']:.1f} s"
            )
    n = len(summary["certificate_check"]["violations"])
    verdict = f"NO ({n} violations)" if n else "yes"
    rows.append(f"certified bound < mean attacked return at every budget and sigma: {verdict}")
    rows.append(f"wall {summary['wall_s']:.1f} s | run folder: {plan.run_dir}")
    return "\n".join(rows)


COMMAND = command.Command(
    prog="experiments.smoothing",
    description="Train smoothed PPO, certify it (policy smoothing) and attack it.",
    plan=plan,
    execute=execute,
    report=report,
    arguments=arguments,
    resume=False,
    epilog="Settings (key=value, --config) change every env's PPO config. The certificates, "
    "attacks and run folder: docs/experiments.md.",
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
