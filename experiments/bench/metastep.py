"""`--groove`: a meta-gradient GROOVE meta-step against an LPG-DR one, and the meta-gradient's
agent throughput against A2C's (rule GRUs 256 and 64); `--es-groove` adds ES generations."""

import dataclasses
import functools

import jax

from experiments.bench.timing import alternate, compile_timed, show, timed

META_GRADIENT_LINE = (
    "meta-gradient, rule GRU {hidden}, {agents} agents x K={num_agent_updates}, {meta_steps} "
    "meta-steps per call: LPG-DR {lpg_dr_s:.2f} s, GROOVE {groove_s:.2f} s "
    "(x{x_lpg_dr_groove:.2f}); agent env steps/s: meta-gradient {lpg_dr_sps:,.0f}, LPG agents "
    "without the meta-gradient {lpg_forward_sps:,.0f}, A2C {a2c_sps:,.0f} (meta-gradient / A2C "
    "x{x_a2c_meta_gradient_sps:.2f}, LPG forward / A2C x{x_a2c_lpg_forward_sps:.2f}); compile "
    "LPG-DR {lpg_dr_compile_s:.1f} s, GROOVE {groove_compile_s:.1f} s"
)
ES_LINE = (
    "ES-GROOVE generation, population {population} over {devices} devices: LPG-DR "
    "{dr_generation_s:.2f} s, GROOVE {groove_generation_s:.2f} s (x{x_dr_groove:.2f}; "
    "{antagonist_runs} antagonists in {generations} generations), GROOVE without the cache "
    "{uncached_generation_s:.2f} s (x{x_dr_uncached:.2f}; {antagonist_runs_uncached} "
    "antagonists); LPG-DR with levels drawn from the candidates' keys "
    "{dr_key_generation_s:.2f} s (GROOVE x{x_dr_key_groove:.2f}, uncached "
    "x{x_dr_key_uncached:.2f}); compile DR {dr_compile_s:.1f} s, GROOVE {groove_compile_s:.1f} s"
)


def per_side(**columns: dict) -> dict:
    """{"<side>_<column>": value} for each column's {side: value}."""
    return {f"{side}_{name}": v for name, values in columns.items() for side, v in values.items()}


def bench_es_groove(repeats: int, generations: int = 10) -> dict:
    """Seconds per generation of `meta.groove`'s ES config, `generations` a call: "dr" (fresh
    levels), "dr_key" (drawn from each candidate's key, as `lpg.make_meta_train` does), "groove"
    (antagonist returns cached per level), "uncached" (an antagonist for every level)."""
    from envs import gridworld
    from meta import groove, level_buffer, lpg

    base = groove.GrooveConfig(meta_optimizer="es")
    es_cfg = dataclasses.replace(
        base.lpg.es, num_generations=generations, generations_per_call=generations
    )
    lpg_cfg = dataclasses.replace(base.lpg, es=es_cfg)
    buffer = level_buffer.BufferConfig(capacity=64, replay_prob=0.5, min_fill=0.125)
    changes = {"dr": {"score": "dr"}, "groove": {"buffer": buffer},
               "uncached": {"buffer": dataclasses.replace(buffer, replay_prob=0.0)}}  # fmt: skip
    programs = {name: groove.make_meta_train(dataclasses.replace(base, lpg=lpg_cfg, **change))
                for name, change in changes.items()}  # fmt: skip
    distribution = lpg_cfg.env.split("/", 1)[1]
    sample = lambda key: gridworld.sample_level(key, distribution)
    programs["dr_key"] = lpg.make_meta_train(lpg_cfg, sample)
    compile_s = dict.fromkeys(programs, float("nan"))
    antagonists = {}

    def call(name: str) -> float:  # one side's call: seconds per generation
        out = programs[name](jax.random.key(0), progress=False)
        if out.es.compile_s > 0:  # later calls reuse the program compiled by the first
            compile_s[name] = out.es.compile_s
        antagonists[name] = getattr(out, "antagonist_runs", 0)
        return out.es.run_s / generations

    best = alternate({name: functools.partial(call, name) for name in programs}, repeats)
    return {"population": es_cfg.population_size, "generations": generations,
            "devices": jax.device_count(), **per_side(generation_s=best, compile_s=compile_s),
            "x_dr_groove": best["groove"] / best["dr"],
            "x_dr_uncached": best["uncached"] / best["dr"],
            "x_dr_key_groove": best["groove"] / best["dr_key"],
            "x_dr_key_uncached": best["uncached"] / best["dr_key"],
            "antagonist_runs": antagonists["groove"],
            "antagonist_runs_uncached": antagonists["uncached"]}  # fmt: skip


def bench_meta_gradient(repeats: int, steps: int = 10, agents: int = 16, hidden: int = 256) -> dict:
    """`steps` meta-steps of `meta.groove`'s LPG config (rule GRU `hidden`, `agents` agents, K=5)
    from one state: "lpg_dr", "groove", "lpg_forward" (the agents' K updates by a fixed rule, not
    differentiated), "a2c" (A2C agents on the same levels); SPS: the agents' update env steps."""
    from meta import groove, lpg
    from purejaxrl import a2c

    base = groove.GrooveConfig(
        lpg=dataclasses.replace(groove.GrooveConfig().lpg, hidden=hidden),
        meta_gradient=lpg.MetaGradientConfig(num_agents=agents, num_agent_updates=5),
    )
    k, inner = base.meta_gradient.num_agent_updates, base.lpg.inner_config()
    programs = {}
    for name, cfg in (("lpg_dr", dataclasses.replace(base, score="dr")), ("groove", base)):
        curriculum = groove.make_curriculum(cfg)
        trainer = lpg.make_meta_gradient_train(cfg.lpg, cfg.meta_gradient, curriculum=curriculum)
        state = jax.jit(trainer.init)(jax.random.key(0))
        keys = jax.random.split(jax.random.key(1), steps)
        run = lambda st, ks, t=trainer: jax.lax.scan(t.step, st, ks)[1]["meta_loss"]
        programs[name] = (run, (state, keys))
    env, default = lpg.make_env(base.lpg)
    objective = lpg.objective(state.rule, base.lpg.kl_weight, inner.gamma)  # the groove run's rule
    lpg_agent = a2c.make_agent(inner, objective, env=env, env_params=default)
    agent_keys = jax.random.split(jax.random.key(2), agents)
    for name, agent in (("lpg_forward", lpg_agent), ("a2c", groove.antagonist_agent(base))):
        agent_state = jax.jit(jax.vmap(agent.init))(agent_keys, state.agents.env_params)
        run = lambda st, a=agent: jax.vmap(lambda s: a.run(s, steps * k).metrics["loss"])(st)
        programs[name] = (run, (agent_state,))
    compiled = {name: compile_timed(fn, *args) for name, (fn, args) in programs.items()}
    sides = {name: timed((compiled[name][0], args)) for name, (_, args) in programs.items()}
    best = alternate(sides, repeats)
    steps_per_call = agents * steps * k * inner.num_envs * inner.num_steps
    sps = {name: steps_per_call / seconds for name, seconds in best.items()}
    compile_s = {name: seconds for name, (_, seconds) in compiled.items()}
    return {"agents": agents, "hidden": hidden, "meta_steps": steps, "num_agent_updates": k,
            **per_side(s=best, sps=sps, compile_s=compile_s),
            "x_lpg_dr_groove": best["groove"] / best["lpg_dr"],
            "x_a2c_meta_gradient_sps": sps["lpg_dr"] / sps["a2c"],
            "x_a2c_lpg_forward_sps": sps["lpg_forward"] / sps["a2c"]}  # fmt: skip


def run(args) -> tuple[list[dict], dict]:
    """`--groove`: the meta-gradient rows for rule GRUs 256 and 64, then the ES row."""
    rows = [show(META_GRADIENT_LINE, bench_meta_gradient(args.repeats, hidden=hidden))
            for hidden in (256, 64)]  # fmt: skip
    if args.es_groove:
        rows.append(show(ES_LINE, bench_es_groove(args.repeats)))
    return rows, {}
