"""Evaluate a run folder's checkpoint: deterministic and stochastic episode returns per seed.

    python -m experiments.evaluate DIR [--episodes N] [--seeds 0 2 ...] [--seed K]

Loads DIR/checkpoint (its own saved config builds the agent), runs `purejaxrl.evaluation.evaluate`
vmapped over the selected seeds' states, once with the mean/argmax action (deterministic) and once
sampling from the policy (stochastic), prints a table and writes DIR/evaluation.json (with the
checkpoint's `checkpoint_update`). `--seeds` picks seed indices of the checkpoint; `--seed` is the
evaluation's own PRNG seed. A later `experiments.train --resume DIR` that trains further renames
evaluation.json to evaluation.stale.json, since it describes the replaced checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

import meta.lpo  # noqa: F401  (registers the learned / hand-written objectives by name)
from experiments import runs
from purejaxrl import checkpoint

MODES = {"deterministic": True, "stochastic": False}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description="Evaluate the checkpoint of a run folder; writes DIR/evaluation.json.",
    )
    p.add_argument("run_dir", metavar="DIR", help="run folder written by experiments.train")
    p.add_argument("--episodes", type=int, default=20, help="episodes per seed and mode (20)")
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="I", help="seed indices to evaluate (default all)"
    )
    p.add_argument("--seed", type=int, default=1234, help="base PRNG seed of the evaluation")
    return p.parse_args(argv)


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def evaluate_run(run_dir, episodes: int = 20, seeds=None, eval_seed: int = 1234) -> dict:
    """The evaluation record of DIR's checkpoint (also written to DIR/evaluation.json)."""
    run_dir = Path(run_dir)
    if episodes < 1:
        raise ValueError(f"--episodes={episodes}: must be a positive integer")
    info = checkpoint.read_info(run_dir / "checkpoint")
    config = checkpoint.config_from_dict(info["algo"], info["config"])
    agent = checkpoint.make_agent(info["algo"], config)
    state, info = checkpoint.load(run_dir / "checkpoint", agent)
    from purejaxrl import evaluation  # after the checks: a bad DIR fails fast

    num_seeds = info["num_seeds"]
    if num_seeds is None:  # an unbatched state: treat it as one seed
        state = jax.tree.map(lambda x: x[None], state)
        num_seeds = 1
    chosen = list(range(num_seeds)) if seeds is None else list(seeds)
    bad = [i for i in chosen if not 0 <= i < num_seeds]
    if bad:
        raise ValueError(f"--seeds {bad}: the checkpoint holds seeds 0..{num_seeds - 1}")
    state = jax.tree.map(lambda x: x[np.asarray(chosen)], state)

    record = {
        "run_dir": str(run_dir),
        "algo": info["algo"],
        "env": config.env,
        "checkpoint_update": info["update_step"],
        "episodes_per_seed": episodes,
        "seeds": chosen,
        "eval_seed": eval_seed,
    }
    for mode, deterministic in MODES.items():
        fn = jax.jit(
            jax.vmap(lambda s, k, d=deterministic: evaluation.evaluate(agent, s, k, episodes, d))
        )
        keys = jax.random.split(jax.random.key(eval_seed), len(chosen))
        t = time.perf_counter()
        returns = np.asarray(jax.device_get(fn(state, keys)), dtype=np.float64)  # [seeds, episodes]
        record[mode] = {
            **_stats(returns),
            "per_seed": [
                {"seed": i, **_stats(r), "returns": [float(x) for x in r]}
                for i, r in zip(chosen, returns, strict=True)
            ],
            "seconds": time.perf_counter() - t,
        }
    runs.atomic_write(run_dir / "evaluation.json", json.dumps(record, indent=2) + "\n")
    return record


def format_table(record: dict) -> str:
    head = f"{'seed':>6}  " + "  ".join(f"{m:>22}" for m in MODES)
    lines = [
        f"{record['algo']} on {record['env']} at update {record['checkpoint_update']}, "
        f"{record['episodes_per_seed']} episodes per seed (mean ± std of episode return)",
        head,
        "-" * len(head),
    ]
    for j, seed in enumerate(record["seeds"]):
        cells = []
        for m in MODES:
            s = record[m]["per_seed"][j]
            cells.append(f"{s['mean']:>12.2f} ± {s['std']:<7.2f}")
        lines.append(f"{seed:>6}  " + "  ".join(cells))
    lines.append("-" * len(head))
    overall = [f"{record[m]['mean']:>12.2f} ± {record[m]['std']:<7.2f}" for m in MODES]
    lines.append(f"{'all':>6}  " + "  ".join(overall))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        record = evaluate_run(args.run_dir, args.episodes, args.seeds, args.seed)
    except ValueError as e:  # missing/corrupt checkpoint, bad seed index
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(record))
    print(f"wrote {Path(args.run_dir) / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
