"""Train PPO, A2C or SAC (the names in `purejaxrl.checkpoint.ALGOS`) on several seeds at once and
write a run folder.

    python -m experiments.train --config experiments/configs/ppo_cartpole.yaml [key=value ...]
        [--seeds N] [--out DIR] [--checkpoint-every K]
    python -m experiments.train --resume DIR [key=value ...]      # e.g. total_timesteps=2000000

The seeds' runs are one program, `jax.jit(jax.vmap(agent.run))`, compiled once (compile time is
measured apart from the run), fed by keys `jax.random.split(jax.random.key(seed), N)`. With
`--checkpoint-every K` the run goes in segments of K updates through the same compiled function
(a shorter last segment compiles once more), with a checkpoint after each, so an interrupted run
resumes from its last segment. `--resume DIR` continues from DIR/checkpoint with DIR/config.yaml
plus the overrides, appends to metrics.csv and rewrites summary.json, curve.png and the checkpoint;
if the checkpoint is missing, corrupt or does not fit the config, it stops with `error: ...`
(exit code 2) before anything in DIR changes. A resume that trains further renames an
`evaluation.json` (written by experiments.evaluate for the old checkpoint) to
`evaluation.stale.json` and says so on stderr. See experiments/runs.py for the folder's files.

Status lines ("building ...", "initialising ...", "compiling ...") go to stderr as each step
starts, the first one before jax is imported; `--no-progress` leaves out them and the bar, so
only errors, warnings (e.g. a seed that finished no episode) and the final line remain.

`--log tensorboard wandb` (default: none; metrics.csv is always written) also sends the progress
reports (every `progress_every` updates, ~100 per run) to TensorBoard event files in DIR/tb/
and/or a Weights & Biases run in DIR/wandb/ (`--wandb-project NAME`; WANDB_MODE=offline logs
without network or account): the mean over seeds of each metric against env steps per seed,
episode_return only once an episode has finished; see experiments/sinks.py. An unknown sink or
a missing package (pip install 'purejaxrl-research[log]') is an error before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import runs, sinks

# jax and purejaxrl are imported inside the functions that use them: importing them takes a few
# seconds, and `main` reports what it is doing before that.


class Progress:
    """tqdm bar fed by the agent's host callback (every `progress_every` updates, not per step).

    Under vmap the callback may come once per seed with unbatched values or once with batched
    values: the bar shows the largest update_step and the mean return of the calls for that step;
    "return -" until a report shows a finished episode (before it, the metric is a placeholder 0)
    or a nonzero return. With `logging`, the callback is compiled in even without the bar, and
    each report also goes to `reporter` (a `sinks.Reporter`, set once the sinks are started).
    """

    def __init__(self, enabled: bool = True, logging: bool = False):
        self.enabled = enabled
        self.logging = logging
        self.reporter: sinks.Reporter | None = None
        self.bar = None
        self._step = -1
        self._returns: list[float] = []
        self._seen_episode = False

    def status(self, message: str) -> None:
        """One line on stderr saying what is happening now (nothing when disabled)."""
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        """One line on stderr even when disabled (above the bar while it runs)."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def start(
        self, total: int, initial: int, desc: str, steps_per_update: int, seen_episode=False
    ) -> None:
        if not self.enabled:
            return
        self._seen_episode = seen_episode
        from tqdm.auto import tqdm

        self.steps_per_update = steps_per_update
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit="upd", mininterval=0.5, dynamic_ncols=True
        )
        self._step = initial

    def __call__(self, update_step, metrics) -> None:
        if self.reporter is not None:
            self.reporter(update_step, metrics)
        if self.bar is None:
            return
        step = int(np.max(update_step))
        ret = np.asarray(metrics["episode_return"], dtype=np.float64).ravel().tolist()
        # Reports are throttled, so a first episode may end between them: a nonzero carried
        # return (the placeholder is 0) shows it too.
        finished = np.asarray(metrics.get("episodes_finished", 1))
        self._seen_episode = self._seen_episode or bool(np.any(finished > 0) or np.any(ret))
        if step != self._step:
            self._returns = []
        self._returns.extend(ret)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        self._step = step
        shown = f"{np.mean(self._returns):.2f}" if self._seen_episode else "-"
        self.bar.set_postfix_str(
            f"env steps {step * self.steps_per_update:,} | return {shown}", refresh=False
        )

    @property
    def callback(self):
        """The agent's progress_fn: None (no host callback compiled) when neither the bar nor a
        logging sink is on."""
        return self if self.enabled or self.logging else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclasses.dataclass
class Plan:
    spec: runs.RunSpec
    run_dir: Path
    agent: Any
    progress: Progress
    checkpoint_every: int | None
    log: list[str] = dataclasses.field(default_factory=list)
    wandb_project: str | None = None
    resume: bool = False
    state: Any = None
    start_update: int = 0
    previous_summary: dict = dataclasses.field(default_factory=dict)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train PPO, A2C or SAC on N seeds in one jitted program; writes a run folder.",
        epilog=runs.METRICS_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (YAML values)"
    )
    p.add_argument("--config", help="YAML run spec: algo, seed, num_seeds and config fields")
    p.add_argument("--seeds", type=int, help="number of seeds trained in parallel (num_seeds)")
    p.add_argument("--out", help="run folder (default runs/<algo>-<env>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="K",
        help="checkpoint every K updates (default: end)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or status lines (errors, warnings and the final line remain)",
    )
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
        f"{sinks.DEFAULT_WANDB_PROJECT}); WANDB_MODE=offline logs without network or account",
    )
    args = p.parse_args(argv)
    # `--log tensorboard lr=1e-3`: a key=value after --log is an override, not a sink name.
    args.overrides += [x for x in args.log if "=" in x]
    args.log = [x for x in args.log if "=" not in x]
    return args


def _count(n, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def describe_new_run(args) -> str | None:
    """The first status line, e.g. "building ppo on CartPole-v1 (2 seeds x 8 envs) ...", from the
    YAML file and overrides alone (no jax import); None when they do not read (`prepare` then
    reports why)."""
    try:
        values = runs.merge(runs.load_yaml(args.config), runs.parse_overrides(args.overrides))
    except ValueError:
        return None
    seeds = args.seeds if args.seeds is not None else values.get("num_seeds", 1)
    shape = [_count(seeds, "seed")] if isinstance(seeds, int) else []
    if isinstance(values.get("num_envs"), int):
        shape.append(_count(values["num_envs"], "env"))
    where = f" on {values['env']}" if "env" in values else ""
    return f"building {values.get('algo')}{where} ({' x '.join(shape)}) ..."


def prepare(args) -> Plan:
    """Everything that can fail on bad input, done before any file is written."""
    from purejaxrl import checkpoint

    overrides = runs.parse_overrides(args.overrides)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every={args.checkpoint_every}: must be a positive integer")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}: must be a positive integer")
    log = sinks.check_sinks(args.log)  # SinkError (a ValueError) for an unknown or missing sink
    if args.wandb_project and "wandb" not in log:
        raise ValueError("--wandb-project is for --log wandb, which is not given")
    progress = Progress(enabled=not args.no_progress, logging=bool(log))
    logging = {"log": log, "wandb_project": args.wandb_project}

    if args.resume:
        if args.config or args.out:
            raise ValueError("--resume DIR takes neither --config nor --out (it uses DIR)")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ValueError(f"--resume {run_dir}: no such run folder")
        saved = runs.load_yaml(run_dir / "config.yaml")
        if args.seeds is not None:
            overrides["num_seeds"] = args.seeds
        for key in ("algo", "seed", "num_seeds"):
            if key in overrides and overrides[key] != saved.get(key):
                raise ValueError(
                    f"{key}={overrides[key]!r}: cannot change {key} when resuming "
                    f"(the run has {key}={saved.get(key)!r}); start a new run instead"
                )
        spec = runs.build_spec(runs.merge(saved, overrides))
        agent = checkpoint.make_agent(spec.algo, spec.config, progress_fn=progress.callback)
        state, info = checkpoint.load(run_dir / "checkpoint", agent, spec.num_seeds)
        try:
            columns, _ = runs.read_metrics(run_dir)
        except (ValueError, OSError) as e:
            raise ValueError(f"{run_dir}/metrics.csv is unreadable: {e}") from None
        if columns and sum(c.startswith("episode_return_seed") for c in columns) != spec.num_seeds:
            raise ValueError(f"{run_dir}/metrics.csv has columns for another number of seeds")
        return Plan(
            spec=spec,
            run_dir=run_dir,
            agent=agent,
            progress=progress,
            checkpoint_every=args.checkpoint_every,
            **logging,
            resume=True,
            state=state,
            start_update=int(info["update_step"]),
            previous_summary=runs.read_summary(run_dir),
        )

    if not args.config:
        raise ValueError("give --config FILE for a new run or --resume DIR to continue one")
    values = runs.merge(runs.load_yaml(args.config), overrides)
    if args.seeds is not None:
        values["num_seeds"] = args.seeds
    spec = runs.build_spec(values)
    run_dir = Path(args.out) if args.out else runs.default_run_dir(spec)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: exists and is not a folder")
    if (run_dir / "config.yaml").exists() or (run_dir / "checkpoint").exists():
        raise ValueError(
            f"--out {run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )
    agent = checkpoint.make_agent(spec.algo, spec.config, progress_fn=progress.callback)
    return Plan(
        spec=spec,
        run_dir=run_dir,
        agent=agent,
        progress=progress,
        checkpoint_every=args.checkpoint_every,
        **logging,
    )


def segments(total: int, every: int | None) -> list[int]:
    """[K, K, ..., remainder] summing to total."""
    if total <= 0:
        return []
    every = total if every is None else min(every, total)
    sizes = [every] * (total // every)
    return sizes + ([total % every] if total % every else [])


def retire_evaluation(run_dir: Path, checkpoint_update: int) -> str | None:
    """Renames DIR/evaluation.json to evaluation.stale.json (replacing an older one): it evaluated
    a checkpoint that a resume has just replaced. Returns the notice to print, or None."""
    path = run_dir / "evaluation.json"
    if not path.is_file():
        return None
    try:
        evaluated = json.loads(path.read_text()).get("checkpoint_update", "?")
    except (ValueError, OSError, AttributeError):
        evaluated = "?"
    path.replace(run_dir / "evaluation.stale.json")
    return (
        f"note: {path} was for the checkpoint at update {evaluated}; the checkpoint is now at "
        f"update {checkpoint_update}, so it is renamed evaluation.stale.json "
        f"(rerun python -m experiments.evaluate {run_dir})"
    )


def seeds_with_return(run_dir: Path, last_update: int, num_seeds: int) -> list[bool]:
    """Per seed, whether metrics.csv has a return for it up to `last_update` (it finished an
    episode in an earlier session)."""
    columns, data = runs.read_metrics(run_dir)
    if not len(data):
        return [False] * num_seeds
    rows = data[data[:, columns.index("update")] <= last_update]
    return [
        f"episode_return_seed{i}" in columns
        and bool(np.isfinite(rows[:, columns.index(f"episode_return_seed{i}")]).any())
        for i in range(num_seeds)
    ]


def start_sinks(plan: Plan) -> list:
    """The plan's logging sinks, fed by the progress callback; [] when none. Raises SinkError."""
    if not plan.log:
        return []
    steps_per_update = plan.spec.config.num_envs * plan.spec.config.num_steps
    started = sinks.make_sinks(
        plan.log,
        plan.run_dir,
        {**plan.spec.to_dict(), "run_dir": str(plan.run_dir)},
        wandb_project=plan.wandb_project,
        resume_step=plan.start_update * steps_per_update if plan.resume else None,
    )
    plan.progress.reporter = sinks.Reporter(
        started,
        num_seeds=plan.spec.num_seeds,
        started=(
            seeds_with_return(plan.run_dir, plan.start_update, plan.spec.num_seeds)
            if plan.resume
            else None
        ),
        on_error=plan.progress.notice,
    )
    return started


def execute(plan: Plan) -> dict:
    """Trains the plan; the logging sinks are started first (before config.yaml is written, so a
    sink that fails to start leaves no run behind) and closed at the end, also on error."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    active = start_sinks(plan)
    try:
        return _execute(plan)
    finally:
        if plan.progress.reporter is not None:
            plan.progress.reporter.flush()
            plan.progress.reporter = None
        try:
            sinks.close_sinks(active)
        except Exception as e:  # the run folder is complete; only the log may lack its tail
            plan.progress.notice(f"warning: closing the logging sinks failed: {e}")


def _execute(plan: Plan) -> dict:
    import jax

    from purejaxrl import checkpoint

    t_start = time.perf_counter()
    spec, agent, run_dir = plan.spec, plan.agent, plan.run_dir
    cfg = spec.config
    steps_per_update = cfg.num_envs * cfg.num_steps
    remaining = agent.num_updates - plan.start_update

    runs.write_config(run_dir, spec)
    compile_s = 0.0
    if plan.resume:
        runs.truncate_metrics(run_dir, plan.start_update)
        state = plan.state
    else:
        plan.progress.status(
            f"initialising {_count(spec.num_seeds, 'seed')} (compiles env reset, network init) ..."
        )
        t = time.perf_counter()
        keys = jax.random.split(jax.random.key(spec.seed), spec.num_seeds)
        state = jax.block_until_ready(jax.jit(jax.vmap(agent.init))(keys))
        compile_s += time.perf_counter() - t

    # Compile every distinct segment length (at most two) before the bar starts.
    sizes = segments(remaining, plan.checkpoint_every)
    lengths = sorted(set(sizes), reverse=True)
    compiled: dict[int, Any] = {}
    before = plan.previous_summary.get("compile_s")
    plan.progress.status(
        f"compiling the training loop, {' and '.join(map(str, lengths))} updates per call "
        + (
            f"(once per session; about {before:.0f} s last time) ..."
            if before
            else "(once per run) ..."
        )
    )
    t_compile = time.perf_counter()
    for n in lengths:
        t = time.perf_counter()
        fn = jax.jit(jax.vmap(lambda s, n=n: agent.run(s, n)))
        compiled[n] = fn.lower(state).compile()
        compile_s += time.perf_counter() - t
    plan.progress.status(f"compiled in {time.perf_counter() - t_compile:.1f} s")

    train_s = 0.0
    done = plan.start_update
    started = datetime.datetime.now().isoformat(timespec="seconds")
    title = f"{spec.algo.upper()} on {cfg.env} ({spec.num_seeds} seed{'s' * (spec.num_seeds > 1)})"
    summary: dict = {}
    plan.progress.start(
        agent.num_updates,
        done,
        f"{spec.algo} {cfg.env}",
        steps_per_update,
        seen_episode=plan.resume and runs.has_finished_episode(run_dir),
    )
    try:
        for n in sizes:
            t = time.perf_counter()
            out = jax.block_until_ready(compiled[n](state))
            train_s += time.perf_counter() - t
            if plan.progress.reporter is not None:
                jax.effects_barrier()  # every host callback of the segment has run
                plan.progress.reporter.flush()
            state = out.state
            runs.append_metrics(run_dir, jax.device_get(out.metrics), first_update=done)
            done += n
            checkpoint.save(run_dir / "checkpoint", state, cfg, {"seed": spec.seed})
            if plan.resume and done - n == plan.start_update:  # the first segment of a resume
                notice = retire_evaluation(run_dir, done)
                if notice:
                    plan.progress.notice(notice)
            session = {
                "started": started,
                "first_update": plan.start_update,
                "last_update": done,
                "sps": (done - plan.start_update) * steps_per_update * spec.num_seeds / train_s,
                "compile_s": compile_s,
                "train_s": train_s,
                "wall_s": time.perf_counter() - t_start,
            }
            summary = make_summary(plan, session)
            runs.write_summary(run_dir, summary)
    finally:
        plan.progress.close()
    runs.plot_curve(run_dir, title)
    summary["wall_s"] = summary["sessions"][-1]["wall_s"] = time.perf_counter() - t_start
    runs.write_summary(run_dir, summary)
    return summary


def make_summary(plan: Plan, session: dict) -> dict:
    import jax

    spec, cfg = plan.spec, plan.spec.config
    steps_per_seed = session["last_update"] * cfg.num_envs * cfg.num_steps
    sessions = [
        s
        for s in plan.previous_summary.get("sessions", [])
        if s["last_update"] <= plan.start_update
    ]
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
            f"per seed, mean episode_return over the last {runs.FINAL_FRACTION:.0%} of updates "
            "(at least one); final_return_mean/std are across seeds"
        ),
        "sps": session["sps"],
        "compile_s": session["compile_s"],
        "train_s": session["train_s"],
        "wall_s": session["wall_s"],
        "timing_note": "sps = env steps of all seeds / train_s of this session (compile excluded)",
        "resumed": plan.resume,
        "sessions": sessions + [session],
        "checkpoint": "checkpoint",
        "checkpoint_update": session["last_update"],
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    show = not args.no_progress
    if show and args.config and not args.resume:
        # At once, before the imports and the build (seconds): the first step a user sees.
        # (A resume reports after `prepare`, whose checkpoint errors must stay the first line.)
        message = describe_new_run(args)
        if message:
            print(message, file=sys.stderr, flush=True)
    try:
        plan = prepare(args)
    except ValueError as e:  # bad config, unknown env/key, bad or missing checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2
    if plan.resume and plan.start_update < plan.agent.num_updates:
        cfg = plan.spec.config
        plan.progress.status(
            f"resuming {plan.run_dir} at update {plan.start_update} of {plan.agent.num_updates}: "
            f"{plan.spec.algo} on {cfg.env} ({_count(plan.spec.num_seeds, 'seed')} x "
            f"{_count(cfg.num_envs, 'env')}) ..."
        )
    if plan.start_update >= plan.agent.num_updates:
        print(
            f"{plan.run_dir} is complete ({plan.start_update} of {plan.agent.num_updates} "
            "updates); extend it with a larger total_timesteps=...",
            file=sys.stderr,
        )
        return 0
    try:
        summary = execute(plan)
    except sinks.SinkError as e:  # a logging sink that failed to start (e.g. wandb.init)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue from the last checkpoint with "
            f"python -m experiments.train --resume {plan.run_dir}",
            file=sys.stderr,
        )
        return 130
    missing = summary.get("seeds_without_finished_episode")
    if missing:
        seeds = f"seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))}"
        print(
            f"warning: {seeds} finished no episode in {summary['num_updates']} updates, so the "
            "final return of each is NaN, and final_return_mean/std too (summary.json: "
            "seeds_without_finished_episode); train longer or shorten the episodes",
            file=sys.stderr,
        )
    per_seed = ", ".join(f"{r:.1f}" for r in summary["final_return_per_seed"])
    print(
        f"final return {summary['final_return_mean']:.2f} ± {summary['final_return_std']:.2f} "
        f"(per seed: {per_seed}) | {summary['sps']:,.0f} env steps/s | "
        f"compile {summary['compile_s']:.1f} s | wall {summary['wall_s']:.1f} s\n"
        f"run folder: {plan.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
