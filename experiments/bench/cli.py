"""`python -m experiments.bench`: the options, host devices for the benchmarks that shard, the
benchmark asked for, and its rows written as JSON with --out."""

import argparse
import pathlib

import jax

from experiments.bench import agents, compare, metastep, scaling
from experiments.command import environment, use_host_cores, write_json

# The benchmarks that replace the agents table; the last three shard over every core.
MODES = {"compare": compare.run, "groove": metastep.run, "generation": scaling.run_generation,
         "sweep": scaling.run_sweep}  # fmt: skip
SHARDED = ("groove", "generation", "sweep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description="Speed benchmarks: SPS (compile excluded) and compile seconds, as ratios to "
        "baselines timed in the same run (each side called in alternation, best of each).",
        epilog="What each benchmark measures, examples and results: BENCHMARKS.md.",
    )
    add = parser.add_argument
    add("--envs", nargs="+", default=["Pendulum-v1", "CartPole-v1"])
    add("--algos", nargs="+", default=["ppo", "a2c"], choices=agents.ALGOS)
    add("--num-envs", type=int, default=16)
    add("--total-timesteps", type=int, default=200_000)
    add("--sac-timesteps", type=int, default=20_000, help="SAC rows (and their peer) only")
    add("--seeds", type=int, default=1)
    add("--repeats", type=int, default=3, help="alternated timed calls per side (best)")
    add("--out", type=pathlib.Path, help="write results as JSON")
    add("--calls", type=int, default=3, help="--compare: timed calls per worker run (best)")
    add("--devices", type=int, default=1, help="on-policy rows: one run data parallel over "
        "N devices (CPU: host devices), timed against the one-device program")  # fmt: skip
    add("--peer-dir", type=pathlib.Path, default=agents.PEER_DIR,
        help=f"--peer: folder with {', '.join(agents.PEER_FILES)} (%(default)s)")  # fmt: skip
    add("--population", type=int, default=16, help="--generation only")
    add("--es-groove", action="store_true", help="--groove: also the ES variant")
    add("--sweep-seeds", type=int, default=4)
    add("--sweep-timesteps", type=int, default=100_000, help="per run")
    one = parser.add_mutually_exclusive_group().add_argument
    one("--peer", choices=["rejax"], help="also time the peer library's agents")
    one("--compare", metavar="REV", help="time the commit REV against the working tree")
    one("--sweep", action="store_true", help="a sweep as one program vs its runs one by one")
    one("--generation", action="store_true", help="an LPO ES generation vs one by one")
    one("--groove", action="store_true", help="GROOVE vs LPG-DR meta-steps; vs A2C speed")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the benchmark `argv` asks for; its rows (also printed, and written with --out)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = next((m for m in MODES if getattr(args, m)), None)
    if min(args.repeats, args.calls, args.devices, args.seeds, args.population) < 1:
        parser.error("--repeats, --calls, --devices, --seeds and --population must be at least 1")
    if args.devices > 1 and args.compare is not None:
        parser.error("--compare and --devices cannot be combined")
    absent = [name for name in agents.PEER_FILES if not (args.peer_dir / name).is_file()]
    if args.peer is not None and absent:
        parser.error(
            f"--peer rejax: {', '.join(absent)} not in {args.peer_dir}: the peer scripts live in "
            "the project's shared folder (../shared/bench beside the checkout), not in this "
            "repository; copy them there or pass --peer-dir DIR"
        )
    try:
        if mode in SHARDED or args.devices > 1:
            use_host_cores(args.devices)  # before anything starts jax's backend
        if jax.device_count() < args.devices:
            raise ValueError(f"--devices {args.devices}: XLA_FLAGS makes {jax.device_count()}")
    except ValueError as e:
        parser.error(str(e))
    env = environment()
    print(f"jax {jax.__version__} on {env['device']} x{env['device_count']}")
    rows, extra = MODES.get(mode, agents.run)(args)
    if args.out is not None:
        info = {"jax": jax.__version__, **env, "args": {k: str(v) for k, v in vars(args).items()}}
        write_json(args.out, {**info, **extra, "rows": rows})
    return rows
