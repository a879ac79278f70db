"""`--sweep` and `--generation`: many runs as one program sharded over every device (a PPO sweep,
an LPO ES generation) against the same runs one after another through the single-run program."""

import dataclasses
import pathlib

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.bench.agents import config_spec
from experiments.bench.timing import alternate, compile_timed, show, stopwatch

LPO_CPU = pathlib.Path(__file__).resolve().parents[1] / "configs" / "lpo_cpu.yaml"
SWEEP_SPACE = {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3], "ent_coef": [0.0, 0.003, 0.01, 0.03]}
SWEEP_LINE = (
    "{env}: {runs} runs over {devices} devices: sweep {sweep_sps:,.0f} SPS vs one after another "
    "{sequential_sps:,.0f} (x{x_sequential:.2f}); compile {sweep_compile_s:.1f} s vs "
    "{single_compile_s:.1f} s (x{x_compile:.2f})"
)
GENERATION_LINE = (
    "LPO generation, population {population} over {devices} devices: {generation_s:.1f} s vs "
    "{sequential_s:.1f} s one after another (x{x_sequential_time:.2f} the time; "
    "{generations_per_min:.2f} generations/min, {inner_sps:,.0f} inner env steps/s); compile "
    "{generation_compile_s:.1f} s vs {single_compile_s:.1f} s"
)


def sharded_vs_sequential(sharded, single, inputs: list, repeats: int) -> tuple[dict, dict]:
    """({sharded, sequential}: best seconds, {sharded, single}: compile seconds) of `sharded()`
    (all runs in one program; returns run_s, and compile_s > 0 when it compiled) against `single`
    compiled once and called on each tuple of `inputs` in turn."""
    one, single_compile = compile_timed(single, *inputs[0])
    compiles = []

    def whole() -> float:
        out = sharded()
        compiles.append(out.compile_s)
        return out.run_s

    def one_by_one() -> float:
        return stopwatch(lambda: [jax.block_until_ready(one(*x)) for x in inputs])[0]

    best = alternate({"sequential": one_by_one, "sharded": whole}, repeats)
    return best, {"sharded": min(c for c in compiles if c > 0), "single": single_compile}


def bench_sweep(env_id: str, total_timesteps: int, seeds: int, repeats: int) -> dict:
    """SWEEP_SPACE x `seeds` runs of the reference PPO config: `sweep.run` against the single-run
    program taking the swept values as arguments."""
    from purejaxrl import ppo, sweep

    cfg = ppo.PPOConfig(**config_spec("ppo", env_id, 16, total_timesteps)["fields"])
    batch = sweep.grid(cfg, SWEEP_SPACE, seeds=seeds)
    lrs, ents = (batch.values[f].astype(np.float32) for f in ("learning_rate", "ent_coef"))

    def single(learning_rate, ent_coef, key):
        c = dataclasses.replace(cfg, learning_rate=learning_rate, ent_coef=ent_coef)
        return ppo.make_agent(c).train(key).metrics["episode_return"]

    sharded = lambda: sweep.run(batch, ppo.make_agent, progress=False)
    inputs = list(zip(lrs, ents, batch.keys, strict=True))
    best, compile_s = sharded_vs_sequential(sharded, single, inputs, repeats)
    steps = batch.num_runs * cfg.num_updates * cfg.num_envs * cfg.num_steps
    return {"env": env_id, "runs": batch.num_runs, "devices": jax.device_count(),
            "sweep_sps": steps / best["sharded"], "sequential_sps": steps / best["sequential"],
            "x_sequential": best["sequential"] / best["sharded"],
            "sweep_compile_s": compile_s["sharded"], "single_compile_s": compile_s["single"],
            "x_compile": compile_s["sharded"] / compile_s["single"]}  # fmt: skip


def bench_generation(repeats: int, population: int = 16) -> dict:
    """One ES generation of LPO meta-training (configs/lpo_cpu.yaml, `population` drift candidates)
    against the single-candidate fitness program."""
    from experiments import command, lpo
    from meta import drift, es, lpo_train

    cfg = lpo.resolve(command.load_yaml(LPO_CPU)).cfg
    es_cfg = dataclasses.replace(
        cfg.es, population_size=population, num_generations=1, generations_per_call=1
    )
    # Baselines only rescale the fitness: fixed ones keep the program and its cost unchanged.
    fitness = lpo_train.make_fitness(cfg, {t: {"ppo": 1.0, "low": 0.0} for t in cfg.tasks})
    init = drift.init_params(jax.random.key(1), time_aware=cfg.time_aware, hidden=cfg.hidden)
    flat, unravel = ravel_pytree(init)
    noise = jax.random.normal(jax.random.key(2), (population, flat.size))
    keys = jax.random.split(jax.random.key(3), population)
    inputs = [(unravel(flat + es_cfg.sigma * noise[i]), keys[i]) for i in range(population)]
    generation = lambda: es.evolve(fitness, init, es_cfg, jax.random.key(0), progress=False)
    best, compile_s = sharded_vs_sequential(generation, fitness, inputs, repeats)
    seconds = best["sharded"]
    inner_steps = population * sum(cfg.inner_config(t).total_timesteps for t in cfg.tasks)
    return {"population": population, "tasks": list(cfg.tasks), "devices": jax.device_count(),
            "generation_s": seconds, "sequential_s": best["sequential"],
            "x_sequential_time": seconds / best["sequential"],
            "generations_per_min": 60.0 / seconds, "inner_sps": inner_steps / seconds,
            "generation_compile_s": compile_s["sharded"],
            "single_compile_s": compile_s["single"]}  # fmt: skip


def run_sweep(args) -> tuple[list[dict], dict]:
    """`--sweep`: one row per env in `args.envs`."""
    sizes = (args.sweep_timesteps, args.sweep_seeds, args.repeats)
    return [show(SWEEP_LINE, bench_sweep(env_id, *sizes)) for env_id in args.envs], {}


def run_generation(args) -> tuple[list[dict], dict]:
    """`--generation`: one row."""
    return [show(GENERATION_LINE, bench_generation(args.repeats, args.population))], {}
