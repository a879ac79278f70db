"""Evaluate a run folder's checkpoint: deterministic and stochastic episode returns per seed
(`purejaxrl.evaluation.evaluate_seeds`, the agent built from the checkpoint's own config; usage:
docs/experiments.md); the table goes to stdout and DIR/evaluation.json."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import command, runs

MODES = {"deterministic": True, "stochastic": False}


@dataclasses.dataclass
class Plan(command.Plan):
    agent: Any = None
    state: Any = None  # the chosen seeds' TrainStates, stacked [S, ...]
    record: dict = dataclasses.field(default_factory=dict)  # evaluation.json's header


def _arguments(p) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder written by experiments.train")
    p.add_argument("--episodes", type=int, default=20, help="episodes per seed and mode (20)")
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="I", help="seed indices to evaluate (default all)"
    )
    p.add_argument("--seed", type=int, default=1234, help="base PRNG seed of the evaluation")


def _plan(args) -> Plan:
    """The checkpoint's agent and the chosen seeds' states; ValueError for a missing or corrupt
    checkpoint, an unknown objective or a bad seed index."""
    if args.overrides or args.config or args.out:
        raise ValueError(
            "experiments.evaluate takes a run folder DIR (no settings, --config, --out)"
        )
    command.positive_flags(args, "episodes")
    import jax

    from purejaxrl import checkpoint

    runs.register_objectives()
    run_dir = Path(args.run_dir)
    info = checkpoint.read_info(run_dir / "checkpoint")
    config = checkpoint.config_from_dict(info["algo"], info["config"])
    agent = checkpoint.make_agent(info["algo"], config)
    state, info = checkpoint.load(run_dir / "checkpoint", agent)
    num_seeds = info["num_seeds"]
    if num_seeds is None:  # an unbatched state: treat it as one seed
        state, num_seeds = jax.tree.map(lambda x: x[None], state), 1
    chosen = list(range(num_seeds)) if args.seeds is None else list(args.seeds)
    bad = [i for i in chosen if not 0 <= i < num_seeds]
    if bad:
        raise ValueError(f"--seeds {bad}: the checkpoint holds seeds 0..{num_seeds - 1}")
    record = {"run_dir": str(run_dir), "algo": info["algo"], "env": config.env}
    record.update(checkpoint_update=info["update_step"], episodes_per_seed=args.episodes)
    record.update(seeds=chosen, eval_seed=args.seed)
    state = jax.tree.map(lambda x: x[np.asarray(chosen)], state)
    return Plan(run_dir, "evaluate", not args.no_progress, agent=agent, state=state, record=record)


def _stats(x: np.ndarray, **more) -> dict:
    return {**more, "mean": float(np.mean(x)), "std": float(np.std(x))}


def _execute(plan: Plan) -> dict:
    """Both modes' returns [seeds, episodes] -> DIR/evaluation.json (returned)."""
    import jax

    from purejaxrl import evaluation

    record, episodes = dict(plan.record), plan.record["episodes_per_seed"]
    key = jax.random.key(record["eval_seed"])
    for mode, deterministic in MODES.items():
        t = time.perf_counter()
        returns = evaluation.evaluate_seeds(plan.agent, plan.state, key, episodes, deterministic)
        returns = np.asarray(jax.device_get(returns), np.float64)
        record[mode] = {
            **_stats(returns),
            "per_seed": [
                _stats(r, seed=i) | {"returns": r.tolist()}
                for i, r in zip(record["seeds"], returns, strict=True)
            ],
            "seconds": time.perf_counter() - t,
        }
    command.write_json(plan.run_dir / "evaluation.json", record)
    return record


def format_table(record: dict) -> str:
    head = f"{'seed':>6}  " + "  ".join(f"{m:>22}" for m in MODES)
    cell = lambda s: f"{s['mean']:>12.2f} ± {s['std']:<7.2f}"  # noqa: E731
    title = (
        f"{record['algo']} on {record['env']} at update {record['checkpoint_update']}, "
        f"{record['episodes_per_seed']} episodes per seed (mean ± std of episode return)"
    )
    rows = [
        f"{seed:>6}  " + "  ".join(cell(record[m]["per_seed"][j]) for m in MODES)
        for j, seed in enumerate(record["seeds"])
    ]
    last = f"{'all':>6}  " + "  ".join(cell(record[m]) for m in MODES)
    return "\n".join([title, head, "-" * len(head), *rows, "-" * len(head), last])


COMMAND = command.Command(
    prog="experiments.evaluate",
    description="Evaluate the checkpoint of a run folder; writes DIR/evaluation.json.",
    plan=_plan,
    execute=_execute,
    report=lambda plan, record: f"{format_table(record)}\nwrote {plan.run_dir / 'evaluation.json'}",
    arguments=_arguments,
    resume=False,
    continue_with=lambda plan: f"--episodes {plan.record['episodes_per_seed']}",
)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
