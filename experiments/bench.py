"""Speed benchmark: SPS (compile excluded) and compile seconds, as ratios to same-run baselines.

    python -m experiments.bench                       # PPO + A2C on Pendulum-v1 and CartPole-v1
    python -m experiments.bench --peer rejax          # ... next to rejax PPO, run in the same session
    python -m experiments.bench --envs brax/ant --num-envs 2048 --total-timesteps 5000000 --algos ppo
    python -m experiments.bench --algos sac sac-64 pmoe-sac --envs Pendulum-v1 --peer rejax
    python -m experiments.bench --algos ppo pmoe-ppo --envs Pendulum-v1   # mixture overhead
    python -m experiments.bench --compare HEAD~1 --algos ppo a2c sac  # new tree vs a commit
    python -m experiments.bench --compare main --total-timesteps 4096 --repeats 2  # quick check
    python -m experiments.bench --compare HEAD --algos sac --sac-timesteps 2000 --calls 1
    python -m experiments.bench --algos ppo --devices 2   # one run data parallel over 2 devices
    python -m experiments.bench --sweep --envs CartPole-v1   # 64-run sweep vs one after another
    python -m experiments.bench --generation   # one LPO ES generation vs its candidates one by one
    python -m experiments.bench --groove       # a GROOVE meta-step vs an LPG-DR one; vs A2C speed
    python -m experiments.bench --groove --es-groove   # ... and ES-GROOVE vs ES-LPG-DR generations

For every env it times, in one process and one run: the env-only random-action rollout of the same
env and vector size (the ceiling: what the agent would reach if learning were free), then each
algorithm on the reference config (16 envs x 128 steps, 10 epochs x 8 minibatches, 64x64 tanh MLP,
lr 3e-4, 200k steps; A2C on the same rollout with one gradient step per rollout). With
`--peer rejax` it runs ../shared/bench/rejax_ppo.py (its own venv, made by setup_rejax.sh) right
after ours on the same env and reports our SPS / theirs and our compile / theirs.

SAC ("sac"): 1 env, buffer 100k, batch 256, one gradient step per env step, 1000 warm-up steps,
256x256 relu, lr 3e-4, 20k steps (the issue's reference; `--total-timesteps` is ignored, set
`--sac-timesteps` instead: one 256x256 call takes minutes on 2 CPU cores, ~130 SPS).
Its peer is ../shared/bench/rejax_sac.py. That script asks for 256x256 via
`agent_kwargs["hidden_layer_sizes"]`, but rejax 0.1.3's SAC reads the sizes from the top-level
config and silently builds its 64x64 default (checked on its parameters), so "sac-64" (the same
config at 64x64) is the like-for-like comparison with that script and "sac" the issue's.
"pmoe-sac" / "pmoe-ppo": the same SAC / PPO reference configs with a K=4 PMOE mixture
(`mixture_grad="pmoe"`); their "x baseline" column is our time per update relative to the
Gaussian agent (the mixture overhead), timed in pairs: the two compiled programs are called in
alternation, `--repeats` times each, and the best calls are compared, so load that comes and goes
on a shared machine hits both alike.

`--compare REV` times the commit REV ("the old tree", checked out in a temporary `git worktree`
that is removed afterwards, also on error or Ctrl-C) against the current working tree ("new",
uncommitted edits included) on each requested algorithm and env, in fresh subprocesses run
alternately old, new, old, new, ... (`--repeats` each). Every subprocess runs a self-contained
worker script (WORKER below, written to a temporary file, so the old tree needs no worker mode of
its own) with cwd and PYTHONPATH set to its tree, compiles the reference config once with
`<module>.make_train(cfg)` and times `--calls` calls; the best SPS and the best compile seconds of
each side are kept and reported as new / old ratios, next to "(pairs)": the median over the
adjacent old/new runs of their SPS ratio, steadier when the load drifts. On a loaded 2-core
machine even identical trees can land 10-25% apart with the defaults: use more `--repeats` and
`--calls` (or a quiet machine) before reading a 3% difference. The last column says whether the
final returns are equal (same seed and config: a hint that the change is bit-equal). Before
timing, each side's worker reports the file it imported `purejaxrl` from, and the run stops if
that is not under its own tree (the venv's editable install points at this checkout). No env-only
or peer rows in this mode.
`--devices N` (N > 1) runs the on-policy rows (ppo, a2c, pmoe-ppo) data parallel: one run
whose envs and minibatches are split over N devices (purejaxrl/parallel.py); on CPU the bench asks
XLA for N host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set before jax starts
its backend). Each such row also compiles the one-device program in the same process and reports
"x 1 device": the one-device best call time over the N-device one, the two timed in alternation
(`--repeats` calls each, as the mixture rows). SAC rows stay on one device.
Results are printed as a table and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import envs
from envs import spaces
from envs.benchmark import random_rollout
from purejaxrl import a2c, ppo, sac

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO_ROOT.parent / "shared" / "bench"


def config_spec(
    algo: str, env: str, num_envs: int, total_timesteps: int, sac_timesteps: int = 20_000
):
    """(module name in purejaxrl, config class name, config fields) of the reference config.

    Plain data, so `--compare` can rebuild the same config in another tree's worker; it uses only
    fields that the config classes have had since before the loop refactor."""
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
    ppo_fields = dict(update_epochs=10, num_minibatches=8, clip_eps=0.2, **common)
    if algo == "ppo":
        return "ppo", "PPOConfig", ppo_fields
    if algo == "a2c":
        return "a2c", "A2CConfig", common
    mixture = dict(policy="pmoe", num_experts=4, mixture_grad="pmoe")
    if algo == "pmoe-ppo":
        return "ppo", "PPOConfig", {**ppo_fields, **mixture}
    if algo in ("sac", "sac-64", "pmoe-sac"):
        sac_fields = dict(
            env=env,
            total_timesteps=sac_timesteps,
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
            sac_fields.update(mixture)
        return "sac", "SACConfig", sac_fields
    raise ValueError(f"unknown algo {algo!r}: allowed values are {list(ALGOS)}")


def reference_config(
    algo: str, env: str, num_envs: int, total_timesteps: int, sac_timesteps: int = 20_000
):
    """(module, config) of `algo`'s reference config on `env` (see the module docstring)."""
    module_name, config_name, fields = config_spec(
        algo, env, num_envs, total_timesteps, sac_timesteps
    )
    module = {"ppo": ppo, "a2c": a2c, "sac": sac}[module_name]
    return module, getattr(module, config_name)(**fields)


ALGOS = ("ppo", "a2c", "sac", "sac-64", "pmoe-ppo", "pmoe-sac")
# The rows `--devices` runs data parallel (the on-policy agents); SAC rows stay on one device.
DATA_PARALLEL = ("ppo", "a2c", "pmoe-ppo")
# For the mixture rows: the Gaussian agent they are compared with.
BASELINE_OF = {"pmoe-ppo": "ppo", "pmoe-sac": "sac"}


def needs_continuous(algo: str, env_id: str) -> bool:
    """True for a SAC row on a discrete-action env (which SAC cannot train): skipped."""
    if "sac" not in algo:
        return False
    env, params = envs.make(env_id)
    return spaces.is_discrete(env.action_space(params))


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
    algo: str,
    env_id: str,
    num_envs: int,
    total_timesteps: int,
    seeds: int,
    repeats: int = 3,
    sac_timesteps: int = 20_000,
    devices: int = 1,
) -> dict:
    module, cfg = reference_config(algo, env_id, num_envs, total_timesteps, sac_timesteps)
    train = module.make_train(cfg, **({"devices": devices} if devices > 1 else {}))
    # One seed runs unbatched: a size-1 vmap axis costs ~10% on CPU and buys nothing.
    keys = jax.random.split(jax.random.key(0), seeds) if seeds > 1 else jax.random.key(0)
    if seeds > 1:
        train = jax.vmap(train)
    seconds, compile_s, out, compiled = time_compiled(train, keys, repeats=repeats)
    steps = cfg.num_updates * cfg.num_envs * cfg.num_steps * seeds  # SAC: num_steps = 1
    final = float(np.mean(np.asarray(out.metrics["episode_return"])[..., -1]))
    result = {"sps": steps / seconds, "compile_s": compile_s, "final_return": final}
    if devices > 1:
        result["devices"] = devices
    return result, (compiled, (keys,))


def ask_for_host_devices(count: int) -> None:
    """On CPU, makes `count` host devices: XLA reads XLA_FLAGS when jax starts its backend (on the
    first call that needs a device, not at `import jax`), so this must run before that."""
    flag = f"--xla_force_host_platform_device_count={count}"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count=" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, flag])


SWEEP_SPACE = {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3], "ent_coef": [0.0, 0.003, 0.01, 0.03]}


def bench_sweep(env_id: str, total_timesteps: int, seeds: int, repeats: int) -> dict:
    """SWEEP_SPACE's 16 configurations x `seeds` runs of the reference PPO config: one program
    sharded over every device (`sweep.run`) vs the same runs one after another through the
    single-run program, compiled once with the swept values as its arguments. The two sides
    alternate `repeats` times; best of each. Returns SPS over all runs, compile seconds, ratios."""
    from purejaxrl import sweep

    _, cfg = reference_config("ppo", env_id, 16, total_timesteps)
    batch = sweep.grid(cfg, SWEEP_SPACE, seeds=seeds)
    lrs = batch.values["learning_rate"].astype(np.float32)
    ents = batch.values["ent_coef"].astype(np.float32)
    keys = batch.keys

    def single(learning_rate, ent_coef, key):
        c = dataclasses.replace(cfg, learning_rate=learning_rate, ent_coef=ent_coef)
        return ppo.make_agent(c).train(key).metrics["episode_return"]

    t0 = time.perf_counter()
    one = jax.jit(single).lower(lrs[0], ents[0], keys[0]).compile()
    single_compile = time.perf_counter() - t0
    best_seq = best_sweep = sweep_compile = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in range(batch.num_runs):
            jax.block_until_ready(one(lrs[r], ents[r], keys[r]))
        best_seq = min(best_seq, time.perf_counter() - t0)
        res = sweep.run(batch, ppo.make_agent, progress=False)
        best_sweep, sweep_compile = min(best_sweep, res.run_s), min(sweep_compile, res.compile_s)
    steps = batch.num_runs * cfg.num_updates * cfg.num_envs * cfg.num_steps
    return {
        "env": env_id,
        "runs": batch.num_runs,
        "devices": jax.device_count(),
        "sweep_sps": steps / best_sweep,
        "sequential_sps": steps / best_seq,
        "x_sequential": best_seq / best_sweep,
        "sweep_compile_s": sweep_compile,
        "single_compile_s": single_compile,
        "x_compile": sweep_compile / single_compile,
    }


def bench_generation(repeats: int, population: int = 16) -> dict:
    """One ES generation of LPO meta-training on the CPU config (experiments/configs/lpo_cpu.yaml:
    `population` drift candidates x inner PPO on CartPole-v1 and Acrobot-v1, 64k steps each; the
    population sharded over every device, then the ES update) vs training the same candidates one
    after another with the single-candidate fitness program compiled once. The two sides
    alternate `repeats` times; best of each. Returns seconds per generation and their ratio."""
    from experiments import lpo as lpo_cli
    from experiments import runs
    from meta import drift, es, lpo_train

    values = runs.load_yaml(REPO_ROOT / "experiments" / "configs" / "lpo_cpu.yaml")
    cfg = lpo_cli.resolve(values).cfg
    es_cfg = dataclasses.replace(
        cfg.es, population_size=population, num_generations=1, generations_per_call=1
    )
    # Baselines only rescale the fitness: fixed ones keep the program and its cost unchanged.
    fitness = lpo_train.make_fitness(cfg, {t: {"ppo": 1.0, "low": 0.0} for t in cfg.tasks})
    init = drift.init_params(jax.random.key(1), time_aware=cfg.time_aware, hidden=cfg.hidden)
    flat, unravel = ravel_pytree(init)
    noise = jax.random.normal(jax.random.key(2), (population, flat.size))
    candidates = [unravel(flat + es_cfg.sigma * noise[i]) for i in range(population)]
    keys = jax.random.split(jax.random.key(3), population)

    t0 = time.perf_counter()
    one = jax.jit(fitness).lower(candidates[0], keys[0]).compile()
    single_compile = time.perf_counter() - t0
    best_seq = best_gen = gen_compile = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(population):
            jax.block_until_ready(one(candidates[i], keys[i]))
        best_seq = min(best_seq, time.perf_counter() - t0)
        out = es.evolve(fitness, init, es_cfg, jax.random.key(0), progress=False)
        best_gen = min(best_gen, out.run_s)
        if out.compile_s > 0:  # later calls reuse the program compiled by the first
            gen_compile = out.compile_s
    inner_steps = sum(cfg.inner_config(t).total_timesteps for t in cfg.tasks)
    return {
        "population": population,
        "tasks": list(cfg.tasks),
        "devices": jax.device_count(),
        "generation_s": best_gen,
        "sequential_s": best_seq,
        "x_sequential_time": best_gen / best_seq,
        "generations_per_min": 60.0 / best_gen,
        "inner_sps": population * inner_steps / best_gen,
        "generation_compile_s": gen_compile,
        "single_compile_s": single_compile,
    }


def bench_es_groove(repeats: int, generations: int = 10) -> dict:
    """Generation cost of ES-GROOVE against ES-LPG with domain randomisation, on `meta.groove`'s
    default config (LPG rule, population 16 = 8 pairs, tabular A2C agents on gridworld/small, 50 updates
    of 8 x 16 steps each), the population sharded over every device. Four sides, each
    `generations` ES generations in one call, alternated `repeats` times, best of each:

    - "dr": fresh random levels, no antagonists (LPG-DR), through the same curriculum hook;
    - "dr_key": LPG-DR as `meta.lpg.make_meta_train(cfg, sampler)` runs it, each candidate
      drawing its level from its key inside the vmapped fitness (measured faster than "dr": a
      curriculum hands the levels in as a batched input);
    - "groove": algorithmic regret with the antagonist's return cached per level (buffer of 64,
      replay 0.5, replay once 8 levels are in: from the second generation on), so an antagonist
      is trained only for each new level;
    - "uncached": the same with replay probability 0, an antagonist for every level at every
      generation: what the public code pays (it retrains antagonists at every meta-step).

    Returns seconds per generation of each and the ratios of GROOVE to both LPG-DR sides."""
    from envs import gridworld
    from meta import groove, level_buffer, lpg

    base = groove.GrooveConfig(meta_optimizer="es")
    es_cfg = dataclasses.replace(
        base.lpg.es, num_generations=generations, generations_per_call=generations
    )
    lpg_cfg = dataclasses.replace(base.lpg, es=es_cfg)
    buffer = level_buffer.BufferConfig(capacity=64, replay_prob=0.5, min_fill=0.125)
    scored = {
        "dr": dataclasses.replace(base, lpg=lpg_cfg, score="dr"),
        "groove": dataclasses.replace(base, lpg=lpg_cfg, buffer=buffer),
        "uncached": dataclasses.replace(
            base, lpg=lpg_cfg, buffer=dataclasses.replace(buffer, replay_prob=0.0)
        ),
    }
    programs = {name: groove.make_meta_train(cfg) for name, cfg in scored.items()}
    distribution = lpg_cfg.env.split("/", 1)[1]
    programs["dr_key"] = lpg.make_meta_train(
        lpg_cfg, lambda key: gridworld.sample_level(key, distribution)
    )
    best = dict.fromkeys(programs, float("inf"))
    compile_s, antagonists = {}, {}
    for _ in range(repeats):
        for name, meta_train in programs.items():
            out = meta_train(jax.random.key(0), progress=False)
            best[name] = min(best[name], out.es.run_s / generations)
            if out.es.compile_s > 0:
                compile_s[name] = out.es.compile_s
            antagonists[name] = getattr(out, "antagonist_runs", 0)
    return {
        "population": es_cfg.population_size,
        "generations": generations,
        "devices": jax.device_count(),
        **{f"{name}_generation_s": best[name] for name in programs},
        **{f"{name}_compile_s": compile_s.get(name, float("nan")) for name in programs},
        "x_dr_groove": best["groove"] / best["dr"],
        "x_dr_uncached": best["uncached"] / best["dr"],
        "x_dr_key_groove": best["groove"] / best["dr_key"],
        "x_dr_key_uncached": best["uncached"] / best["dr_key"],
        "antagonist_runs": antagonists["groove"],
        "antagonist_runs_uncached": antagonists["uncached"],
    }


def bench_meta_gradient(repeats: int, steps: int = 10, agents: int = 16, hidden: int = 256) -> dict:
    """GROOVE as published (meta-gradient, algorithmic regret) against meta-gradient LPG with
    domain randomisation, and the meta-gradient's agent throughput against A2C's.

    Setup: `meta.groove`'s default LPG config (tabular agents on gridworld/small, 8 envs x 16
    steps per update, 50-update lives) with a rule GRU `hidden` wide (256: the paper's; 64: the
    CPU config's), `agents` agents, K = 5. Sides, each a jitted
    program of `steps` meta-steps (or the same agent updates) from one fixed state, called in
    alternation `repeats` times, best of each:

    - "lpg_dr": meta-gradient LPG, fresh random levels at every reset, no antagonist;
    - "groove": the same with the regret-scored level buffer and lockstep antagonists;
    - "lpg_forward": the agents' K updates with a fixed rule, not differentiated (no meta-loss,
      no rule step): the cost of the LPG agent update itself;
    - "a2c": `agents` A2C agents (the antagonist's config: the standard objective, same network,
      envs and levels) running the same number of updates.

    Throughput counts the agents' update env steps, agents x K x 8 x 16 per meta-step (the fresh
    rollout of each meta-step, another 8 x 16 per agent, is not counted)."""
    from meta import groove, lpg
    from purejaxrl import a2c

    default = groove.GrooveConfig()
    base = groove.GrooveConfig(
        lpg=dataclasses.replace(default.lpg, hidden=hidden),
        meta_gradient=lpg.MetaGradientConfig(num_agents=agents, num_agent_updates=5),
    )
    k = base.meta_gradient.num_agent_updates
    inner = base.lpg.inner_config()
    per_update = inner.num_envs * inner.num_steps
    trainers = {
        "lpg_dr": dataclasses.replace(base, score="dr"),
        "groove": base,
    }
    programs, compile_s = {}, {}
    for name, cfg in trainers.items():
        trainer = lpg.make_meta_gradient_train(
            cfg.lpg, cfg.meta_gradient, curriculum=groove.make_curriculum(cfg)
        )
        state = jax.jit(trainer.init)(jax.random.key(0))
        keys = jax.random.split(jax.random.key(1), steps)
        run = lambda st, ks, t=trainer: jax.lax.scan(t.step, st, ks)[1]["meta_loss"]
        t0 = time.perf_counter()
        programs[name] = (jax.jit(run).lower(state, keys).compile(), (state, keys))
        compile_s[name] = time.perf_counter() - t0
        if name == "groove":
            levels = state.agents.env_params
            rule = state.rule
    # the LPG agents' K updates with a fixed rule, and A2C agents, on the same levels
    updates = steps * k
    env, default = lpg.make_env(base.lpg)
    lpg_agent = a2c.make_agent(
        inner, lpg.objective(rule, base.lpg.kl_weight, inner.gamma), env=env, env_params=default
    )
    a2c_agent = groove.antagonist_agent(base)
    for name, agent in (("lpg_forward", lpg_agent), ("a2c", a2c_agent)):
        keys = jax.random.split(jax.random.key(2), agents)
        state = jax.jit(jax.vmap(agent.init))(keys, levels)
        run = lambda st, a=agent: jax.vmap(lambda s: a.run(s, updates).metrics["loss"])(st)
        t0 = time.perf_counter()
        programs[name] = (jax.jit(run).lower(state).compile(), (state,))
        compile_s[name] = time.perf_counter() - t0
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(repeats):
        for name, (compiled, args) in programs.items():
            best[name] = min(best[name], best_call(compiled, args, 1)[0])
    env_steps = agents * updates * per_update
    sps = {name: env_steps / best[name] for name in programs}
    return {
        "agents": agents,
        "hidden": hidden,
        "meta_steps": steps,
        "num_agent_updates": k,
        **{f"{name}_s": best[name] for name in programs},
        **{f"{name}_sps": sps[name] for name in programs},
        **{f"{name}_compile_s": compile_s[name] for name in programs},
        "x_lpg_dr_groove": best["groove"] / best["lpg_dr"],
        "x_a2c_meta_gradient_sps": sps["lpg_dr"] / sps["a2c"],
        "x_a2c_lpg_forward_sps": sps["lpg_forward"] / sps["a2c"],
    }


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


# --compare: the worker each tree runs. Self-contained on purpose: the old tree's bench.py may
# predate this mode, and it must use only the API both trees share (`make_train(cfg)` ->
# `train(key)` -> TrainOutput with metrics["env_steps"] and metrics["episode_return"]).
WORKER = r'''"""experiments/bench.py --compare worker: times one config of the tree on its sys.path.

argv[1]: JSON {"module", "config", "fields", "seeds", "calls"}, or {"module", "probe": true} to
report only where the module was imported from. Prints one JSON line on stdout.
"""
import importlib
import json
import sys
import time

spec = json.loads(sys.argv[1])
module = importlib.import_module("purejaxrl." + spec["module"])
if spec.get("probe"):
    print(json.dumps({"module_file": module.__file__}))
    sys.exit(0)

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["fields"].items()}
cfg = getattr(module, spec["config"])(**fields)
train = module.make_train(cfg)
key = jax.random.key(0)
if spec["seeds"] > 1:
    key = jax.random.split(key, spec["seeds"])
    train = jax.vmap(train)
t0 = time.perf_counter()
compiled = jax.jit(train).lower(key).compile()
compile_s = time.perf_counter() - t0
best = float("inf")
for _ in range(spec["calls"]):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(key))
    best = min(best, time.perf_counter() - t0)
steps = int(np.sum(np.asarray(out.metrics["env_steps"])[..., -1]))
final = float(np.mean(np.asarray(out.metrics["episode_return"])[..., -1]))
print(json.dumps({"sps": steps / best, "best_s": best, "compile_s": compile_s, "steps": steps,
                  "final_return": final, "module_file": module.__file__}))
'''


def git(*args: str, repo: pathlib.Path = REPO_ROOT) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def old_worktree(rev: str, repo: pathlib.Path = REPO_ROOT):
    """Yields (tree, commit): a temporary detached `git worktree` of `rev`, removed on exit
    (also on an exception or KeyboardInterrupt) together with its temporary folder."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", repo=repo)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-compare-"))
    tree = tmp / "old"
    try:
        git("worktree", "add", "--detach", "--quiet", str(tree), commit, repo=repo)
        yield tree, commit
    finally:
        if tree.exists():
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def alternation(repeats: int) -> list[str]:
    """The order of the worker runs: old, new, old, new, ... `repeats` of each."""
    return [side for _ in range(repeats) for side in ("old", "new")]


def run_worker(tree: pathlib.Path, worker: pathlib.Path, spec: dict) -> dict:
    """Runs the worker script on `tree`'s packages (cwd and PYTHONPATH = tree); its JSON line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, str(worker), json.dumps(spec)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"bench worker failed in {tree} on {spec.get('module')}: {result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_imports(trees: dict, worker: pathlib.Path) -> dict:
    """{side: file its worker imported purejaxrl.ppo from}; stops unless it is under its tree."""
    found = {}
    for side, tree in trees.items():
        spec = {"module": "ppo", "probe": True}
        found[side] = pathlib.Path(run_worker(tree, worker, spec)["module_file"])
        if not found[side].resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"the {side} worker imported {found[side]}, not from {tree}")
    return found


def compare(args) -> tuple[list[dict], dict]:
    """`--compare REV`: rows of new-tree vs old-tree timings (see the module docstring)."""
    rows = []
    with old_worktree(args.compare) as (old_tree, commit):
        worker = old_tree.parent / "bench_worker.py"
        worker.write_text(WORKER)
        trees = {"old": old_tree, "new": REPO_ROOT}
        check_imports(trees, worker)
        info = {"rev": args.compare, "commit": commit}
        print(f"old: {args.compare} = {commit[:12]} (worktree {old_tree}); new: {REPO_ROOT}")
        print(
            f"{'env':24s} {'what':10s} {'old SPS':>10s} {'new SPS':>10s} {'x old SPS':>10s}"
            f" {'(pairs)':>8s} {'old comp s':>10s} {'new comp s':>10s} {'x old comp':>10s}"
            "  final return",
            flush=True,
        )
        for env_id in args.envs:
            for algo in args.algos:
                if needs_continuous(algo, env_id):
                    print(f"{env_id:24s} {algo:10s} skipped: SAC needs continuous actions")
                    continue
                module_name, config_name, fields = config_spec(
                    algo, env_id, args.num_envs, args.total_timesteps, args.sac_timesteps
                )
                spec = dict(
                    module=module_name,
                    config=config_name,
                    fields=fields,
                    seeds=args.seeds,
                    calls=args.calls,
                )
                runs = []
                for side in alternation(args.repeats):
                    runs.append({"side": side, **run_worker(trees[side], worker, spec)})
                best = {
                    side: {
                        "sps": max(r["sps"] for r in runs if r["side"] == side),
                        "compile_s": min(r["compile_s"] for r in runs if r["side"] == side),
                        "final_return": [r["final_return"] for r in runs if r["side"] == side][-1],
                    }
                    for side in ("old", "new")
                }
                old, new = best["old"], best["new"]
                # Each (old, new) pair of runs is adjacent in time: the median of their ratios is
                # robust to load that drifts over the whole comparison.
                pairs = zip(runs[0::2], runs[1::2], strict=True)
                median_ratio = float(np.median([n["sps"] / o["sps"] for o, n in pairs]))
                row = {
                    "env": env_id,
                    "what": algo,
                    **new,
                    "old_sps": old["sps"],
                    "old_compile_s": old["compile_s"],
                    "old_final_return": old["final_return"],
                    "x_old_sps": new["sps"] / old["sps"],
                    "x_old_sps_median_of_pairs": median_ratio,
                    "x_old_compile": new["compile_s"] / old["compile_s"],
                    # Same seed and config: equal returns hint that the change is bit-equal.
                    "same_final_return": new["final_return"] == old["final_return"],
                    "runs": runs,
                }
                rows.append(row)
                print(
                    f"{env_id:24s} {algo:10s} {old['sps']:>10,.0f} {new['sps']:>10,.0f}"
                    f" {row['x_old_sps']:>10.3f} {median_ratio:>8.3f} {old['compile_s']:>10.1f}"
                    f" {new['compile_s']:>10.1f} {row['x_old_compile']:>10.3f}"
                    f"  {'same' if row['same_final_return'] else 'differs'}",
                    flush=True,
                )
    return rows, info


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "CartPole-v1"])
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=ALGOS)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument(
        "--sac-timesteps", type=int, default=20_000, help="SAC rows (and their peer) only"
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per program (best)")
    parser.add_argument("--peer", choices=["rejax"], default=None)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write results as JSON")
    parser.add_argument(
        "--compare",
        metavar="REV",
        default=None,
        help="time the commit REV against the working tree, alternately in subprocesses",
    )
    parser.add_argument(
        "--calls", type=int, default=3, help="--compare: timed calls per worker run (best)"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="on-policy rows: one run data parallel over N devices (CPU: N forced host devices),"
        " timed against the one-device program",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="only the sweep benchmark: 16 PPO configurations x --sweep-seeds as one program "
        "sharded over the host's cores vs the same runs one after another",
    )
    parser.add_argument(
        "--generation",
        action="store_true",
        help="only the ES benchmark: one LPO generation (population 16, lpo_cpu.yaml) sharded "
        "over the host's cores vs its 16 candidates trained one after another",
    )
    parser.add_argument("--population", type=int, default=16, help="--generation only")
    parser.add_argument(
        "--groove",
        action="store_true",
        help="only the GROOVE benchmark: meta-gradient steps of GROOVE vs LPG-DR, and the "
        "meta-gradient's agent throughput vs A2C (with --es-groove also ES-GROOVE generations "
        "vs ES-LPG-DR, population 16, over the cores)",
    )
    parser.add_argument("--es-groove", action="store_true", help="--groove: also the ES variant")
    parser.add_argument("--sweep-seeds", type=int, default=4)
    parser.add_argument("--sweep-timesteps", type=int, default=100_000, help="per run")
    args = parser.parse_args(argv)
    if args.groove:
        ask_for_host_devices(max(args.devices, os.cpu_count() or 1))
        print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
        rows = []
        for hidden in (256, 64):
            row = bench_meta_gradient(args.repeats, hidden=hidden)
            rows.append(row)
            print(
                f"meta-gradient, rule GRU {hidden}, {row['agents']} agents x "
                f"K={row['num_agent_updates']}, {row['meta_steps']} meta-steps per call: LPG-DR "
                f"{row['lpg_dr_s']:.2f} s, GROOVE {row['groove_s']:.2f} s "
                f"(x{row['x_lpg_dr_groove']:.2f}); agent env steps/s: meta-gradient "
                f"{row['lpg_dr_sps']:,.0f}, LPG agents without the meta-gradient "
                f"{row['lpg_forward_sps']:,.0f}, A2C {row['a2c_sps']:,.0f} (meta-gradient / A2C "
                f"x{row['x_a2c_meta_gradient_sps']:.2f}, LPG forward / A2C "
                f"x{row['x_a2c_lpg_forward_sps']:.2f}); compile LPG-DR "
                f"{row['lpg_dr_compile_s']:.1f} s, GROOVE {row['groove_compile_s']:.1f} s",
                flush=True,
            )
        if args.es_groove:
            es_row = bench_es_groove(args.repeats)
            rows.append(es_row)
            row = es_row
        else:
            write_json(args, rows)
            return rows
        print(
            f"ES-GROOVE generation, population {row['population']} over {row['devices']} devices: LPG-DR "
            f"{row['dr_generation_s']:.2f} s, GROOVE {row['groove_generation_s']:.2f} s "
            f"(x{row['x_dr_groove']:.2f}; {row['antagonist_runs']} antagonists in "
            f"{row['generations']} generations), GROOVE without the cache "
            f"{row['uncached_generation_s']:.2f} s (x{row['x_dr_uncached']:.2f}; "
            f"{row['antagonist_runs_uncached']} antagonists); LPG-DR with levels drawn from "
            f"the candidates' keys {row['dr_key_generation_s']:.2f} s (GROOVE "
            f"x{row['x_dr_key_groove']:.2f}, uncached x{row['x_dr_key_uncached']:.2f}); compile DR "
            f"{row['dr_compile_s']:.1f} s, GROOVE {row['groove_compile_s']:.1f} s",
            flush=True,
        )
        write_json(args, rows)
        return rows
    if args.generation:
        ask_for_host_devices(max(args.devices, os.cpu_count() or 1))
        print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
        row = bench_generation(args.repeats, args.population)
        print(
            f"LPO generation, population {row['population']} over {row['devices']} devices: "
            f"{row['generation_s']:.1f} s vs {row['sequential_s']:.1f} s one after another "
            f"(x{row['x_sequential_time']:.2f} the time; {row['generations_per_min']:.2f} "
            f"generations/min, {row['inner_sps']:,.0f} inner env steps/s); compile "
            f"{row['generation_compile_s']:.1f} s vs {row['single_compile_s']:.1f} s",
            flush=True,
        )
        write_json(args, [row])
        return [row]
    if args.sweep:
        ask_for_host_devices(max(args.devices, os.cpu_count() or 1))
        print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
        rows = []
        for env_id in args.envs:
            row = bench_sweep(env_id, args.sweep_timesteps, args.sweep_seeds, args.repeats)
            print(
                f"{env_id}: {row['runs']} runs over {row['devices']} devices: sweep "
                f"{row['sweep_sps']:,.0f} SPS vs one after another {row['sequential_sps']:,.0f} "
                f"(x{row['x_sequential']:.2f}); compile {row['sweep_compile_s']:.1f} s vs "
                f"{row['single_compile_s']:.1f} s (x{row['x_compile']:.2f})",
                flush=True,
            )
            rows.append(row)
        write_json(args, rows)
        return rows
    if args.compare is not None and args.peer is not None:
        parser.error("--compare and --peer cannot be combined")
    if args.repeats < 1 or args.calls < 1:
        parser.error("--repeats and --calls must be at least 1")
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.devices > 1 and args.compare is not None:
        parser.error("--compare and --devices cannot be combined")
    if args.devices > 1:
        ask_for_host_devices(args.devices)
        if jax.device_count() < args.devices:
            parser.error(
                f"--devices {args.devices}: only {jax.device_count()} device(s); jax started its"
                " backend before the bench could ask for host devices (set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={args.devices} yourself)"
            )

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
    if args.compare is not None:
        rows, info = compare(args)
        write_json(args, rows, compare=info)
        return rows
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
            if needs_continuous(algo, env_id):
                print(f"{env_id:24s} {algo:14s} skipped: SAC needs continuous actions")
                continue
            devices = args.devices if algo in DATA_PARALLEL else 1
            ours, programs[env_id, algo] = bench_algo(
                algo,
                env_id,
                args.num_envs,
                args.total_timesteps,
                args.seeds,
                args.repeats,
                args.sac_timesteps,
                devices,
            )
            row = {"env": env_id, "what": algo, **ours, "x_env_only": ours["sps"] / ceiling["sps"]}
            if devices > 1:
                one, one_program = bench_algo(
                    algo, env_id, args.num_envs, args.total_timesteps, args.seeds, args.repeats
                )
                # one-device time / N-device time, timed in alternation: the speed-up
                row["x_one_device"] = paired_time_ratio(
                    one_program, programs[env_id, algo], args.repeats
                )
                row["one_device_sps"] = one["sps"]
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
                    steps = args.sac_timesteps if peer_algo == "sac" else args.total_timesteps
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
            if devices > 1:
                line += (
                    f"   {devices} devices: x{row['x_one_device']:.2f} of 1 device (paired;"
                    f" 1 device {row['one_device_sps']:,.0f} SPS)"
                )
            if peer is not None and fresh:
                line += f"\n{env_id:24s} {'rejax-' + peer_algo:14s} {peer['sps']:>12,.0f} {peer['compile_s']:>10.1f}"
            if baseline is not None:
                line += f"   time/update x{row['x_baseline_time']:.2f} of {BASELINE_OF[algo]}"
            print(line, flush=True)
    write_json(args, rows)
    return rows


def write_json(args, rows: list[dict], **extra) -> None:
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "jax": jax.__version__,
                    "device": str(jax.devices()[0]),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    **extra,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
