"""The agents table (the default): per env, a random-action rollout (the ceiling), then each
algorithm's reference config: SPS, compile seconds and ratios to the ceiling, to one device
(`--devices`), to the Gaussian agent (mixture rows) and to rejax (`--peer rejax`)."""

import json
import pathlib
import subprocess

import jax

import envs
from envs import spaces
from envs.benchmark import random_rollout
from experiments.bench import worker
from experiments.bench.timing import alternate, compile_timed, paired_time_ratio, timed

ALGOS = ("ppo", "a2c", "sac", "sac-64", "pmoe-ppo", "pmoe-sac")
DATA_PARALLEL = ("ppo", "a2c", "pmoe-ppo")  # the rows `--devices` runs over several devices
CONTINUOUS_ONLY = ("sac", "sac-64", "pmoe-ppo", "pmoe-sac")
BASELINE_OF = {"pmoe-ppo": "ppo", "pmoe-sac": "sac"}  # a mixture row's Gaussian agent
PEER_DIR = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "bench"
PEER_FILES = ("setup_rejax.sh", "rejax_ppo.py", "rejax_sac.py")
PEER_SCRIPT = {"ppo": "ppo", "sac": "sac", "sac-64": "sac"}  # "sac" and "sac-64" share one run
HEADER = (
    f"{'env':24s} {'what':14s} {'SPS':>12s} {'compile s':>10s} {'x env-only':>11s}"
    f" {'x peer SPS':>11s} {'x peer compile':>15s}"
)
ROW = "{env:24s} {what:14s} {sps:>12,.0f} {compile_s:>10.1f}"
SUFFIXES = {  # the columns and notes a row has when it has the key
    "x_env_only": " {x_env_only:>11.3f}",
    "x_peer_sps": " {x_peer_sps:>11.2f} {x_peer_compile:>15.2f}",
    "x_one_device": "   {devices} devices: x{x_one_device:.2f} of 1 device (paired;"
    " 1 device {one_device_sps:,.0f} SPS)",
    "x_baseline_time": "   time/update x{x_baseline_time:.2f} of {baseline}",
}

# The reference configs' fixed fields (BENCHMARKS.md); env and sizes come from the options.
ROLLOUT = dict(num_steps=128, hidden_sizes=(64, 64), activation="tanh", learning_rate=3e-4)
LOSS = dict(max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, ent_coef=0.0, vf_coef=0.5)
PPO_ONLY = dict(update_epochs=10, num_minibatches=8, clip_eps=0.2)
SAC = dict(num_envs=1, buffer_size=100_000, batch_size=256, learning_starts=1000, utd_ratio=1.0)
SAC_NET = dict(activation="relu", learning_rate=3e-4, tau=0.005)
MIXTURE = dict(policy="pmoe", num_experts=4, mixture_grad="pmoe")


def config_spec(algo: str, env: str, num_envs: int, total_timesteps: int, sac_timesteps=20_000):
    """{module (in purejaxrl), config (class name), fields} of the reference config: plain data for
    `worker.build`, with fields the configs have had since the loop refactor."""
    sizes = dict(env=env, total_timesteps=total_timesteps, num_envs=num_envs)
    mixture = MIXTURE if algo.startswith("pmoe") else {}
    if algo == "a2c":
        module, fields = "a2c", {**sizes, **ROLLOUT, **LOSS}
    elif algo in ("ppo", "pmoe-ppo"):
        module, fields = "ppo", {**sizes, **ROLLOUT, **LOSS, **PPO_ONLY, **mixture}
    else:
        hidden = (64, 64) if algo == "sac-64" else (256, 256)
        sizes.update(total_timesteps=sac_timesteps, hidden_sizes=hidden)
        module, fields = "sac", {**sizes, **SAC, **SAC_NET, **mixture}
    return {"module": module, "config": f"{module.upper()}Config", "fields": fields}


def runnable(env_id: str, algos, width: int):
    """The `algos` that can train on `env_id`, in order; a "skipped" line for each other one."""
    env, params = envs.make(env_id)
    discrete = spaces.is_discrete(env.action_space(params))
    for algo in algos:
        if discrete and algo in CONTINUOUS_ONLY:
            print(f"{env_id:24s} {algo:{width}s} skipped: needs continuous actions")
        else:
            yield algo


def bench_env_only(env_id: str, num_envs: int, total_timesteps: int) -> dict:
    """{sps, compile_s} of a random-action rollout of `num_envs` envs (best of 3 calls)."""
    env, params = envs.make(env_id)
    steps = max(1, total_timesteps // num_envs)
    key = jax.random.key(0)
    compiled, compile_s = compile_timed(random_rollout(env, params, num_envs, steps), key)
    seconds = alternate({"env-only": timed((compiled, (key,)))}, repeats=3)["env-only"]
    return {"sps": num_envs * steps / seconds, "compile_s": compile_s}


def bench_algo(algo: str, env_id: str, args, devices: int = 1) -> tuple[dict, tuple]:
    """({sps, compile_s, final_return[, devices]}, (compiled, args)) of one reference run."""
    spec = config_spec(algo, env_id, args.num_envs, args.total_timesteps, args.sac_timesteps)
    parallel = {"devices": devices} if devices > 1 else {}
    result, compiled, key = worker.measure(worker.build(spec, **parallel), args.seeds, args.repeats)
    row = {k: result[k] for k in ("sps", "compile_s", "final_return")}
    return row | parallel, (compiled, (key,))


def algo_row(args, env_id: str, algo: str, ceiling: dict, programs: dict) -> dict:
    """`algo`'s row on `env_id`; keeps its program in `programs[env_id, algo]` for the pairs."""
    devices = args.devices if algo in DATA_PARALLEL else 1
    ours, program = bench_algo(algo, env_id, args, devices)
    programs[env_id, algo] = program
    row = {"env": env_id, "what": algo, **ours, "x_env_only": ours["sps"] / ceiling["sps"]}
    if devices > 1:
        one, one_program = bench_algo(algo, env_id, args)
        row["x_one_device"] = paired_time_ratio(one_program, program, args.repeats)  # speed-up
        row["one_device_sps"] = one["sps"]
    if (env_id, BASELINE_OF.get(algo)) in programs:
        baseline = programs[env_id, BASELINE_OF[algo]]
        row["x_baseline_time"] = paired_time_ratio(program, baseline, args.repeats)
    return row


def add_peer(args, row: dict, runs: dict) -> list[dict]:
    """Adds rejax's SPS and compile seconds and our ratios to them to `row` (one of ours) when it
    has a peer; returns the peer's own row when its script ran just now (`runs` caches them)."""
    script = PEER_SCRIPT.get(row["what"])
    if args.peer != "rejax" or script is None or row["env"].startswith("brax/"):
        return []
    fresh = (row["env"], script) not in runs
    if fresh:
        folder = args.peer_dir
        setup = subprocess.run(["bash", str(folder / "setup_rejax.sh")], capture_output=True,
                               text=True, check=True)  # fmt: skip
        steps = args.sac_timesteps if script == "sac" else args.total_timesteps
        options = ["--env", row["env"], "--total-timesteps", str(steps), "--seeds", str(args.seeds)]
        command = [setup.stdout.strip().splitlines()[-1], str(folder / f"rejax_{script}.py")]
        out = subprocess.run([*command, *options], capture_output=True, text=True, check=True)
        runs[row["env"], script] = json.loads(out.stdout.strip().splitlines()[-1])
    peer = runs[row["env"], script]
    row.update(peer_sps=peer["sps"], peer_compile_s=peer["compile_s"],
               x_peer_sps=row["sps"] / peer["sps"],
               x_peer_compile=row["compile_s"] / peer["compile_s"])  # fmt: skip
    own = {k: peer[k] for k in ("sps", "compile_s", "final_return")}
    return [{"env": row["env"], "what": f"rejax-{script}", **own}] if fresh else []


def show_row(row: dict) -> dict:
    """Prints the row's line of the table (columns it lacks left out); returns `row`."""
    fields = {**row, "baseline": BASELINE_OF.get(row["what"])}
    suffixes = [text for key, text in SUFFIXES.items() if key in row]
    print("".join([ROW, *suffixes]).format(**fields), flush=True)
    return row


def run(args) -> tuple[list[dict], dict]:
    """The table's rows for `args.envs` x `args.algos`, printed as they come."""
    rows, programs, peer_runs = [], {}, {}
    print(HEADER)
    for env_id in args.envs:
        ceiling = bench_env_only(env_id, args.num_envs, args.total_timesteps)
        rows.append(show_row({"env": env_id, "what": "env-only", **ceiling}))
        for algo in runnable(env_id, args.algos, 14):
            row = algo_row(args, env_id, algo, ceiling, programs)
            peer_rows = add_peer(args, row, peer_runs)  # adds the peer's columns to `row`
            rows += [show_row(r) for r in [row, *peer_rows]]
    return rows, {}
