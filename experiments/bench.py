"""Speed benchmark: SPS (compile excluded) and compile seconds, as ratios to same-run baselines.

    python -m experiments.bench                       # PPO + A2C on Pendulum-v1 and CartPole-v1
    python -m experiments.bench --peer rejax          # ... next to rejax PPO, run in the same session
    python -m experiments.bench --envs brax/ant --num-envs 2048 --total-timesteps 5000000 --algos ppo
    python -m experiments.bench --algos sac sac-64 pmoe-sac --envs Pendulum-v1 --peer rejax
    python -m experiments.bench --algos ppo pmoe-ppo --envs Pendulum-v1   # mixture overhead

For every env it times, in one process and one run: the env-only random-action rollout of the same
env and vector size (the ceiling: what the agent would reach if learning were free), then each
algorithm on the reference config (16 envs x 128 steps, 10 epochs x 8 minibatches, 64x64 tanh MLP,
lr 3e-4, 200k steps; A2C on the same rollout with one gradient step per rollout). With
`--peer rejax` it runs ../shared/bench/rejax_ppo.py (its own venv, made by setup_rejax.sh) right
after ours on the same env and reports our SPS / theirs and our compile / theirs.

SAC ("sac"): 1 env, buffer 100k, batch 256, one gradient step per env step, 1000 warm-up steps,
256x256 relu, lr 3e-4, 20k steps (the issue's reference; `--total-timesteps` is ignored).
Its peer is ../shared/bench/rejax_sac.py. That script asks for 256x256 via
`agent_kwargs["hidden_layer_sizes"]`, but rejax 0.1.3's SAC reads the sizes from the top-level
config and silently builds its 64x64 default (checked on its parameters), so "sac-64" (the same
config at 64x64) is the like-for-like comparison with that script and "sac" the issue's.
"pmoe-sac" / "pmoe-ppo": the same SAC / PPO reference configs with a K=4 PMOE mixture
(`mixture_grad="pmoe"`); their "x baseline" column is our time per update relative to the
Gaussian agent (the mixture overhead), timed in pairs: the two compiled programs are called in
alternation, `--repeats` times each, and the best calls are compared, so load that comes and goes
on a shared machine hits both alike.
Results are printed as a table and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

import envs
from envs.benchmark import random_rollout
from purejaxrl import a2c, ppo, sac

SHARED_BENCH = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench"


def reference_config(algo: str, env: str, num_envs: int, total_timesteps: int):
    common = dict(
        env=env,
        total_timesteps=total_timesteps,
        num_envs=num_envs,
        num_steps=128,
        hidden_sizes=(64, 64),
        activation="tanh",
        learning_rate=3e-4,
        max_grad_norm=0.5,
        gamma=0.99,
        gae_lambda=0.95,
        ent_coef=0.0,
        vf_coef=0.5,
    )
    if algo == "ppo":
        return ppo, ppo.PPOConfig(update_epochs=10, num_minibatches=8, clip_eps=0.2, **common)
    if algo == "a2c":
        return a2c, a2c.A2CConfig(**common)
    if algo == "pmoe-ppo":
        mixture = dict(policy="pmoe", num_experts=4, mixture_grad="pmoe")
        return ppo, ppo.PPOConfig(
            update_epochs=10, num_minibatches=8, clip_eps=0.2, **common, **mixture
        )
    if algo in ("sac", "sac-64", "pmoe-sac"):
        sac_cfg = sac.SACConfig(
            env=env,
            total_timesteps=20_000,
            num_envs=1,
            buffer_size=100_000,
            batch_size=256,
            learning_starts=1000,
            utd_ratio=1.0,
            hidden_sizes=(64, 64) if algo == "sac-64" else (256, 256),
            activation="relu",
            learning_rate=3e-4,
            tau=0.005,
        )
        if algo == "pmoe-sac":
            sac_cfg = dataclasses.replace(
                sac_cfg, policy="pmoe", num_experts=4, mixture_grad="pmoe"
            )
        return sac, sac_cfg
    raise ValueError(f"unknown algo {algo!r}: allowed values are {list(ALGOS)}")


ALGOS = ("ppo", "a2c", "sac", "sac-64", "pmoe-ppo", "pmoe-sac")
# For the mixture rows: the Gaussian agent they are compared with.
BASELINE_OF = {"pmoe-ppo": "ppo", "pmoe-sac": "sac"}


def best_call(compiled, args, repeats: int) -> tuple[float, object]:
    """(best wall seconds of `repeats` calls of `compiled(*args)`, last output)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


def time_compiled(fn, *args, repeats: int = 3) -> tuple[float, float, object, object]:
    """(best wall seconds per call, compile seconds, last output, compiled program) of
    `jax.jit(fn)(*args)`."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    best, out = best_call(compiled, args, repeats)
    return best, compile_s, out, compiled


def paired_time_ratio(program, baseline, repeats: int) -> float:
    """Best call time of `program` / best of `baseline` (each a (compiled, args) pair), timed in
    alternation so both see the same machine load."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, (compiled, args) in enumerate((program, baseline)):
            best[i] = min(best[i], best_call(compiled, args, 1)[0])
    return best[0] / best[1]


def bench_env_only(env_id: str, num_envs: int, total_timesteps: int) -> dict:
    env, params = envs.make(env_id)
    steps = max(1, total_timesteps // num_envs)
    fn = random_rollout(env, params, num_envs, steps)
    seconds, compile_s, _, _ = time_compiled(fn, jax.random.key(0))
    return {"sps": num_envs * steps / seconds, "compile_s": compile_s}


def bench_algo(
    algo: str, env_id: str, num_envs: int, total_timesteps: int, seeds: int, repeats: int = 3
) -> dict:
    module, cfg = reference_config(algo, env_id, num_envs, total_timesteps)
    train = module.make_train(cfg)
    # One seed runs unbatched: a size-1 vmap axis costs ~10% on CPU and buys nothing.
    keys = jax.random.split(jax.random.key(0), seeds) if seeds > 1 else jax.random.key(0)
    if seeds > 1:
        train = jax.vmap(train)
    seconds, compile_s, out, compiled = time_compiled(train, keys, repeats=repeats)
    steps = cfg.num_updates * cfg.num_envs * cfg.num_steps * seeds  # SAC: num_steps = 1
    final = float(np.mean(np.asarray(out.metrics["episode_return"])[..., -1]))
    result = {"sps": steps / seconds, "compile_s": compile_s, "final_return": final}
    return result, (compiled, (keys,))


def bench_rejax(env_id: str, total_timesteps: int, seeds: int, algo: str = "ppo") -> dict | None:
    setup = SHARED_BENCH / "setup_rejax.sh"
    script = SHARED_BENCH / f"rejax_{algo}.py"
    if not setup.exists():
        print(f"peer skipped: {setup} not found", file=sys.stderr)
        return None
    python = subprocess.run(["bash", str(setup)], capture_output=True, text=True, check=True)
    cmd = [
        python.stdout.strip().splitlines()[-1],
        str(script),
        "--env",
        env_id,
        "--total-timesteps",
        str(total_timesteps),
        "--seeds",
        str(seeds),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "CartPole-v1"])
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=ALGOS)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per program (best)")
    parser.add_argument("--peer", choices=["rejax"], default=None)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
    rows = []
    peer_runs: dict = {}
    programs: dict = {}  # (env, algo) -> (compiled, args), for paired timing
    header = f"{'env':24s} {'what':14s} {'SPS':>12s} {'compile s':>10s} {'x env-only':>11s} {'x peer SPS':>11s} {'x peer compile':>15s}"
    print(header)
    for env_id in args.envs:
        ceiling = bench_env_only(env_id, args.num_envs, args.total_timesteps)
        rows.append({"env": env_id, "what": "env-only", **ceiling})
        print(
            f"{env_id:24s} {'env-only':14s} {ceiling['sps']:>12,.0f} {ceiling['compile_s']:>10.1f}",
            flush=True,
        )
        for algo in args.algos:
            ours, programs[env_id, algo] = bench_algo(
                algo, env_id, args.num_envs, args.total_timesteps, args.seeds, args.repeats
            )
            row = {"env": env_id, "what": algo, **ours, "x_env_only": ours["sps"] / ceiling["sps"]}
            baseline = next(
                (r for r in rows if r["env"] == env_id and r["what"] == BASELINE_OF.get(algo)), None
            )
            if baseline is not None:
                row["x_baseline_time"] = paired_time_ratio(
                    programs[env_id, algo], programs[env_id, baseline["what"]], args.repeats
                )
            peer = None
            peer_algo = {"ppo": "ppo", "sac": "sac", "sac-64": "sac"}.get(algo)
            if args.peer == "rejax" and peer_algo and not env_id.startswith("brax/"):
                # One peer run per env and algorithm, shared by "sac" and "sac-64".
                fresh = (env_id, peer_algo) not in peer_runs
                if fresh:
                    steps = 20_000 if peer_algo == "sac" else args.total_timesteps
                    peer_runs[env_id, peer_algo] = bench_rejax(env_id, steps, args.seeds, peer_algo)
                peer = peer_runs[env_id, peer_algo]
            if peer is not None:
                row.update(
                    peer_sps=peer["sps"],
                    peer_compile_s=peer["compile_s"],
                    x_peer_sps=ours["sps"] / peer["sps"],
                    x_peer_compile=ours["compile_s"] / peer["compile_s"],
                )
            rows.append(row)
            if peer is not None and fresh:
                rows.append(
                    {
                        "env": env_id,
                        "what": f"rejax-{peer_algo}",
                        "sps": peer["sps"],
                        "compile_s": peer["compile_s"],
                        "final_return": peer["final_return"],
                    }
                )
            line = f"{env_id:24s} {algo:14s} {ours['sps']:>12,.0f} {ours['compile_s']:>10.1f} {row['x_env_only']:>11.3f}"
            if peer is not None:
                line += f" {row['x_peer_sps']:>11.2f} {row['x_peer_compile']:>15.2f}"
            if peer is not None and fresh:
                line += f"\n{env_id:24s} {'rejax-' + peer_algo:14s} {peer['sps']:>12,.0f} {peer['compile_s']:>10.1f}"
            if baseline is not None:
                line += f"   time/update x{row['x_baseline_time']:.2f} of {BASELINE_OF[algo]}"
            print(line, flush=True)
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "jax": jax.__version__,
                    "device": str(jax.devices()[0]),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                },
                indent=2,
            )
        )
    return rows


if __name__ == "__main__":
    main()
