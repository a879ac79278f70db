"""Train PPO, A2C or SAC (`purejaxrl.algos.ALGOS`) on several seeds in one jitted program and
write a run folder (usage, files, segments, resume, logging: docs/experiments.md). jax is imported
inside the functions that use it, so the first status line comes before it."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from pathlib import Path
from typing import Any

from experiments import command, runs


@dataclasses.dataclass
class Plan(command.Plan):
    args: Any = None  # --checkpoint-every, --log (checked sink names), --wandb-project
    spec: runs.RunSpec | None = None
    agent: Any = None
    bar: Any = None  # a purejaxrl.progress.Progress
    state: Any = None  # a resume's restored TrainState
    start_update: int = 0
    previous: dict = dataclasses.field(default_factory=dict)  # a resume's summary.json


def _arguments(p) -> None:
    from purejaxrl.sinks import DEFAULT_WANDB_PROJECT  # numpy and yaml, not jax

    p.add_argument("--seeds", type=int, help="number of seeds trained in parallel (num_seeds)")
    every = "checkpoint every K updates (default: end)"
    p.add_argument("--checkpoint-every", type=int, metavar="K", help=every)
    p.add_argument(
        "--log",
        nargs="+",
        default=[],
        metavar="SINK",
        help="also log the progress reports to: tensorboard (DIR/tb/), wandb (DIR/wandb/); "
        "default none (metrics.csv is always written)",
    )
    p.add_argument(
        "--wandb-project",
        metavar="NAME",
        help="W&B project of --log wandb (default $WANDB_PROJECT or "
        f"{DEFAULT_WANDB_PROJECT}); WANDB_MODE=offline logs without network or account",
    )


def _split_log(args):
    """`--log tensorboard lr=1e-3`: a key=value after --log is an override, not a sink name."""
    args.overrides = [*args.overrides, *(x for x in args.log if "=" in x)]
    args.log = [x for x in args.log if "=" not in x]
    return args


def parse_args(argv):
    return _split_log(command.parser(COMMAND).parse_args(argv))


def _count(n, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _shape(values: dict) -> str:
    """ "ppo on CartPole-v1 (2 seeds x 8 envs)" from run spec values (what of it they give)."""
    counts = (("num_seeds", "seed"), ("num_envs", "env"))
    shape = [_count(values[k], w) for k, w in counts if isinstance(values.get(k), int)]
    where = f" on {values['env']}" if "env" in values else ""
    return f"{values.get('algo')}{where} ({' x '.join(shape)})"


def _describe(args) -> str | None:
    """The first status line of a new run, from its settings alone (no jax); None if they do not
    read (`plan` says why) and for a resume."""
    if args.resume:
        return None
    try:
        values = _settings(_split_log(args))[0]
    except ValueError:
        return None
    return f"building {_shape({'num_seeds': 1, **values})} ..."


def _settings(args) -> tuple[dict, str]:
    """(run spec values, mode): --config + overrides for a new run; for --resume DIR, DIR's
    config.yaml + overrides, which may not change algo, seed or num_seeds."""
    seeds = {} if args.seeds is None else {"num_seeds": args.seeds}
    if not args.resume:
        if not args.config:
            raise ValueError("give --config FILE for a new run or --resume DIR to continue one")
        return command.merge(command.settings(args), seeds), "new"
    if args.config or args.out:
        raise ValueError("--resume DIR takes neither --config nor --out (it uses DIR)")
    saved = command.read_run_config(args.resume)
    values = command.merge(saved, {**command.parse_overrides(args.overrides), **seeds})
    fixed = lambda v: {k: v.get(k) for k in runs.RUN_KEYS}  # noqa: E731
    command.check_unchanged(fixed(saved), fixed(values))
    return values, "resume"


def _plan(args) -> Plan:
    """Everything that can fail on bad input (settings, sinks, checkpoint); nothing written."""
    from purejaxrl import checkpoint, sinks
    from purejaxrl.progress import Progress

    _split_log(args)
    command.positive_flags(args, "seeds", "checkpoint_every")
    args.log = sinks.check_sinks(args.log)  # SinkError (a ValueError): unknown or missing sink
    if args.wandb_project and "wandb" not in args.log:
        raise ValueError("--wandb-project is for --log wandb, which is not given")
    values, mode = _settings(args)
    spec, markers = runs.build_spec(values), ("config.yaml", "checkpoint")
    name = f"{spec.algo}-{spec.config.env}"
    run_dir = Path(args.resume) if args.resume else command.new_run_dir(args.out, name, markers)
    bar = Progress(enabled=not args.no_progress, logging=bool(args.log))
    agent = checkpoint.make_agent(spec.algo, spec.config, progress_fn=bar.callback)
    plan = Plan(run_dir, mode, not args.no_progress, args=args, spec=spec, agent=agent, bar=bar)
    return _restore(plan) if mode == "resume" else plan


def _restore(plan: Plan) -> Plan:
    """A resume's checkpoint and summary; `done` when the run has all its updates already."""
    from purejaxrl import checkpoint

    spec, run_dir, total = plan.spec, plan.run_dir, plan.agent.num_updates
    plan.state, info = checkpoint.load(run_dir / "checkpoint", plan.agent, spec.num_seeds)
    plan.start_update = int(info["update_step"])
    columns, _ = runs.read_metrics(run_dir)  # ValueError if unreadable
    if columns and len(runs.seed_columns(columns)) != spec.num_seeds:
        raise ValueError(f"{run_dir}/metrics.csv has columns for another number of seeds")
    plan.previous = command.read_json(run_dir / "summary.json")
    if plan.start_update >= total:
        plan.done = (
            f"{run_dir} is complete ({plan.start_update} of {total} updates); extend it with a "
            "larger total_timesteps=..."
        )
    else:
        shape = _shape(spec.to_dict())
        plan.say(f"resuming {run_dir} at update {plan.start_update} of {total}: {shape} ...")
    return plan


def segments(total: int, every: int | None) -> list[int]:
    """[K, K, ..., remainder] summing to total."""
    every = max(1, total if every is None else min(every, total))
    return [min(every, total - start) for start in range(0, total, every)]


def retire_evaluation(run_dir: Path, checkpoint_update: int, notice) -> None:
    """Renames DIR/evaluation.json, of a checkpoint a resume replaced, to evaluation.stale.json."""
    path = run_dir / "evaluation.json"
    if not path.is_file():
        return
    record = command.read_json(path)
    evaluated = record.get("checkpoint_update", "?") if isinstance(record, dict) else "?"
    path.replace(run_dir / "evaluation.stale.json")
    notice(
        f"note: {path} was for the checkpoint at update {evaluated}; the checkpoint is now at "
        f"update {checkpoint_update}, so it is renamed evaluation.stale.json "
        f"(rerun python -m experiments.evaluate {run_dir})"
    )


def _execute(plan: Plan) -> dict:
    """Trains the plan. The logging sinks start before config.yaml is written (one that fails to
    start, exit 2, leaves no run behind) and are closed at the end, also on error."""
    from purejaxrl import sinks

    plan.run_dir.mkdir(parents=True, exist_ok=True)
    cfg, config = plan.spec.config, {**plan.spec.to_dict(), "run_dir": str(plan.run_dir)}
    step = plan.start_update * cfg.num_envs * cfg.num_steps if plan.mode == "resume" else None
    logs = sinks.make_sinks(plan.args.log, plan.run_dir, config, resume_step=step,
                            wandb_project=plan.args.wandb_project)  # fmt: skip
    try:
        return _train(plan, logs)
    finally:
        plan.bar.close()  # the last reports go to the bar and the sinks
        sinks.close_sinks(logs, on_error=plan.bar.notice)


def _prepare(plan: Plan, sizes: list[int]) -> tuple[Any, dict[int, Any], float]:
    """(seed-batched TrainState (a resume's or `agent.init`'s), {updates: compiled segment} per
    segment length, seconds spent on both)."""
    import jax

    t_init = time.perf_counter()
    state = plan.state
    if plan.mode != "resume":
        seeds = plan.spec.num_seeds
        plan.say(f"initialising {_count(seeds, 'seed')} (compiles env reset, network init) ...")
        keys = jax.random.split(jax.random.key(plan.spec.seed), seeds)
        state = jax.block_until_ready(jax.jit(jax.vmap(plan.agent.init))(keys))
    lengths = sorted(set(sizes), reverse=True)
    before = plan.previous.get("compile_s")
    when = f"(once per session; about {before:.0f} s last time)" if before else "(once per run)"
    plan.say(
        f"compiling the training loop, {' and '.join(map(str, lengths))} updates per call {when} ..."
    )
    t = time.perf_counter()
    compiled = {
        n: jax.jit(jax.vmap(lambda s, n=n: plan.agent.run(s, n))).lower(state).compile()
        for n in lengths
    }
    plan.say(f"compiled in {time.perf_counter() - t:.1f} s")
    return state, compiled, time.perf_counter() - t_init


def _train(plan: Plan, logs: list) -> dict:
    """Runs the segments (metrics.csv, checkpoint and summary.json after each), then curve.png."""
    import jax

    from purejaxrl import checkpoint

    t_start = time.perf_counter()
    spec, run_dir, cfg, first = plan.spec, plan.run_dir, plan.spec.config, plan.start_update
    resumed = plan.mode == "resume"
    runs.write_config(run_dir, spec)
    if resumed:
        runs.truncate_metrics(run_dir, first)
    sizes = segments(plan.agent.num_updates - first, plan.args.checkpoint_every)
    state, compiled, compile_s = _prepare(plan, sizes)
    session = {"started": datetime.datetime.now().isoformat(timespec="seconds")}
    session.update(first_update=first, last_update=first, sps=0.0, compile_s=compile_s)
    session.update(train_s=0.0, wall_s=0.0)
    started = runs.seeds_with_return(run_dir, first) if resumed else None
    plan.bar.start(plan.agent.num_updates, first, f"{spec.algo} {cfg.env}", logs=logs,
                   num_seeds=spec.num_seeds, started=started)  # fmt: skip
    done, summary = first, {}
    for n in sizes:
        t = time.perf_counter()
        out = jax.block_until_ready(compiled[n](state))
        session["train_s"] += time.perf_counter() - t
        jax.effects_barrier()  # every host callback of the segment has run
        plan.bar.reporter.flush()
        state = out.state
        runs.append_metrics(run_dir, jax.device_get(out.metrics), first_update=done)
        checkpoint.save(run_dir / "checkpoint", state, cfg, {"seed": spec.seed})
        if resumed and done == first:  # the first checkpoint of a resume replaces the old one
            retire_evaluation(run_dir, done + n, plan.bar.notice)
        done += n
        new_steps = (done - first) * cfg.num_envs * cfg.num_steps * spec.num_seeds
        session.update(last_update=done, sps=new_steps / session["train_s"])
        session.update(wall_s=time.perf_counter() - t_start)
        summary = make_summary(plan, session)
        command.write_json(run_dir / "summary.json", summary)
    plan.bar.close()
    runs.plot_curve(run_dir, f"{spec.algo.upper()} on {cfg.env} ({_count(spec.num_seeds, 'seed')})")
    summary["wall_s"] = summary["sessions"][-1]["wall_s"] = time.perf_counter() - t_start
    command.write_json(run_dir / "summary.json", summary)
    return summary


def make_summary(plan: Plan, session: dict) -> dict:
    """summary.json after the updates up to session["last_update"] (docs/experiments.md)."""
    from purejaxrl import scores

    spec, cfg, first = plan.spec, plan.spec.config, plan.start_update
    steps_per_seed = session["last_update"] * cfg.num_envs * cfg.num_steps
    earlier = [s for s in plan.previous.get("sessions", []) if s["last_update"] <= first]
    return {
        "algo": spec.algo,
        "env": cfg.env,
        "num_seeds": spec.num_seeds,
        "seed": spec.seed,
        "num_updates": session["last_update"],
        "planned_updates": plan.agent.num_updates,
        "env_steps_per_seed": steps_per_seed,
        "total_env_steps": steps_per_seed * spec.num_seeds,
        **runs.final_returns(plan.run_dir),
        "final_return_definition": (
            f"per seed, mean episode_return over the last {scores.FINAL_FRACTION:.0%} of updates "
            "(at least one; purejaxrl.scores.final_return); final_return_mean/std are across seeds"
        ),
        **{k: session[k] for k in ("sps", "compile_s", "train_s", "wall_s")},
        "timing_note": "sps = env steps of all seeds / train_s of this session (compile excluded)",
        "resumed": plan.mode == "resume",
        "sessions": [*earlier, dict(session)],
        "checkpoint": "checkpoint",
        "checkpoint_update": session["last_update"],
        **{k: v for k, v in command.environment().items() if k in ("device", "versions")},
    }


def _report(plan: Plan, summary: dict) -> str:
    """The final lines; first a warning on stderr for each seed that finished no episode."""
    missing = summary.get("seeds_without_finished_episode")
    if missing:
        plan.bar.notice(
            f"warning: seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} finished no "
            f"episode in {summary['num_updates']} updates, so the final return of each is NaN, "
            "and final_return_mean/std too (summary.json: seeds_without_finished_episode); "
            "train longer or shorten the episodes"
        )
    per_seed = ", ".join(f"{r:.1f}" for r in summary["final_return_per_seed"])
    return (
        f"final return {summary['final_return_mean']:.2f} ± {summary['final_return_std']:.2f} "
        f"(per seed: {per_seed}) | {summary['sps']:,.0f} env steps/s | "
        f"compile {summary['compile_s']:.1f} s | wall {summary['wall_s']:.1f} s\n"
        f"run folder: {plan.run_dir}"
    )


COMMAND = command.Command(
    prog="experiments.train",
    description="Train PPO, A2C or SAC on N seeds in one jitted program; writes a run folder.",
    plan=_plan,
    execute=_execute,
    report=_report,
    arguments=_arguments,
    describe=_describe,
    epilog=runs.METRICS_DOC,
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
