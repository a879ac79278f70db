"""GROOVE: meta-train an LPG rule with ES on levels picked by algorithmic regret.

GROOVE (Jackson et al., NeurIPS 2023, arXiv 2310.02782) trains a learned update rule (LPG,
`meta.lpg`) on a curriculum of grid-world levels: a prioritised level buffer (`meta.level_buffer`,
PLR) keeps the levels on which the rule does worst relative to a hand-designed learner, and the
ES population trains on them.

    from meta import groove, lpg
    cfg = groove.GrooveConfig(lpg=lpg.LPGConfig(env="gridworld/small", ...), score="regret")
    out = groove.make_meta_train(cfg)(jax.random.key(0))     # GrooveOutput
    out.params                      # the learned rule (ES mean): lpg.objective(out.params)
    out.curriculum["replay"]        # [G] per generation; out.buffer: the final level buffer

One generation (one step of the jitted `meta.es.evolve` scan, the buffer in its carry):

1. Levels, one per antithetic pair (P/2): with `buffer.replay_prob` (once the buffer holds
   `buffer.min_levels`) *replay*: draw them from the buffer (rank or proportional priority plus
   staleness); otherwise *new*: fresh random levels of the env's distribution
   (`envs.gridworld.sample_levels(key, P/2, name)` for `gridworld/<name>`).
2. Both members of a pair train an A2C agent with their candidate rule on the pair's level for
   the agent's lifetime; fitness = its final return (`meta.lpg.make_level_fitness`). The ES
   update follows (`cfg.lpg.es`; GROOVE's pairwise win signal is `fitness_shaping="pairwise"`).
3. Scores, per level: algorithmic regret AR = R_antagonist - R_rule, R_rule the mean final
   return of the pair's two agents, R_antagonist the final return of an A2C agent with the
   standard actor-critic objective (the *antagonist*: the same network and budget, `antagonist`
   overrides) trained on the level. Replayed levels are rescored; new levels are offered to the
   buffer, which admits a level if there is room or its score beats the lowest stored one
   (robust PLR).

The cache (what the public code does not do): the antagonist does not depend on the rule, so
its return is computed once, when a level is new, and kept in the buffer beside the level
(`BufferState.extra["antagonist_return"]`) until the level is replaced; a replayed level's AR
costs no antagonist training. The public code retrains an antagonist for every level at every
meta-step. Antagonist runs per generation: P/2 on a new-level generation, 0 on a replay one, so
with replay probability p about (1 - p) P/2 per generation against P/2 (the `antagonist_runs`
metric counts them; `GrooveOutput.antagonist_runs_saved` states the saving).

Scores (`score=`):
- "regret": GROOVE's AR (above).
- "pvl": positive value loss (PLR's score; Jiang et al. 2021): the mean positive GAE advantage
  of the level's A2C antagonist over its last 5% of updates, cached like AR. An LPG agent has no
  value function (its y is whatever the rule makes it), so the critic is the antagonist's; the
  score does not depend on the rule: a learnability curriculum, GROOVE's "other UED score".
- "dr": domain randomisation: fresh random levels every generation, no buffer, no antagonist.

A generation whose agents produce NaN (a non-finite fitness): its pairs' AR is NaN, which the
buffer never admits (new levels) or stores as -inf (replayed levels: ranked last, first to be
replaced); the ES driver ranks such candidates last and never keeps them as best.

Lifetimes: every agent trains for the inner config's N updates (a static shape); with
`LPGConfig.level_lifetime` a level's own lifetime L <= N is honoured (TA-LPG sees n/L and log L;
the rule's agents and the antagonist are scored by their final return at update L).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs import gridworld
from meta import es, level_buffer, lpg
from purejaxrl import a2c, actor_critic, losses, objectives
from purejaxrl import config as C

SCORES = ("regret", "pvl", "dr")
BUFFER_METRICS = (
    "replay",  # 1 on a replay generation, 0 on a new-level one
    "antagonist_runs",  # antagonists trained this generation
    "admitted",  # new levels admitted to the buffer
    "buffer_size",  # levels in the buffer after the generation
    "mean_score",  # mean score of this generation's levels (finite ones)
    "mean_buffer_score",  # mean score over the buffer's levels (finite ones)
    "mean_antagonist_return",  # mean cached or new antagonist return of the levels
    "mean_agent_return",  # mean final return of the rule's agents on the levels
)
DR_METRICS = ("mean_agent_return",)


def _default_lpg() -> lpg.LPGConfig:
    return lpg.LPGConfig(
        env="gridworld/small",
        es=es.ESConfig(
            population_size=16,
            num_generations=100,
            sigma=0.1,
            learning_rate=0.01,
            fitness_shaping="pairwise",
        ),
    )


@dataclasses.dataclass(frozen=True)
class GrooveConfig:
    """lpg: the rule, its agents (env, inner A2C config) and the ES settings; score: "regret",
    "pvl" or "dr" (see the module docstring); buffer: the level buffer (GROOVE: capacity 4000,
    replay 0.5; here smaller by default, sized for CPU runs); antagonist: A2CConfig overrides of
    the antagonist over the agents' inner config (same budget and network by default; its
    prediction head is dropped)."""

    lpg: lpg.LPGConfig = dataclasses.field(default_factory=_default_lpg)
    score: str = "regret"
    buffer: level_buffer.BufferConfig = dataclasses.field(
        default_factory=lambda: level_buffer.BufferConfig(
            capacity=256, replay_prob=0.5, prioritization="rank", min_fill=0.25
        )
    )
    antagonist: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.lpg, lpg.LPGConfig):
            raise ValueError(f"GrooveConfig.lpg must be an lpg.LPGConfig, got {type(self.lpg)}")
        C.check_choice(self, "score", SCORES)
        if not isinstance(self.buffer, level_buffer.BufferConfig):
            raise ValueError(
                f"GrooveConfig.buffer must be a level_buffer.BufferConfig, got {type(self.buffer)}"
            )
        if not self.lpg.es.antithetic:
            raise ValueError(
                "GrooveConfig.lpg.es: GROOVE evaluates both members of an antithetic pair on "
                "the same level; set antithetic=True (open_es or pgpe)"
            )
        self.antagonist_config()  # validates the overrides now

    def antagonist_config(self) -> a2c.A2CConfig:
        """The antagonist's A2CConfig: the agents' inner config, no prediction head, then
        `antagonist` overrides (validated)."""
        fields = {**C.to_dict(self.lpg.inner_config()), "prediction_size": 0}
        fields.update(dict(self.antagonist))
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        try:
            cfg = C.from_dict(a2c.A2CConfig, fields)
            actor_critic.validate(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"GrooveConfig.antagonist: {e}") from None
        return cfg


def distribution_sampler(env_id: str) -> Callable[[jax.Array, int], Any]:
    """`sample(key, n) -> levels [n]` of a grid-world id's distribution ("gridworld/<name>");
    ValueError for another env (pass `sample_levels` to `make_meta_train` instead)."""
    if not env_id.startswith("gridworld/"):
        raise ValueError(
            f"GROOVE needs random levels of {env_id!r}: for an env other than a grid world "
            "pass make_meta_train(cfg, sample_levels=fn) with fn(key, n) -> levels [n]"
        )
    name = env_id.split("/", 1)[1]
    gridworld.capacity(name)  # ValueError for an unknown name
    return lambda key, n: gridworld.sample_levels(key, n, name)


# --------------------------------------------------------------------------- the antagonist


def _scored_policy_gradient():
    """A2C's policy-gradient loss, also reporting the mean positive raw GAE advantage (PVL)."""
    pg = losses.policy_gradient()

    def loss(log_ratio, advantages, progress, extras):
        value, aux = pg(log_ratio, advantages, progress, extras)
        positive = jnp.mean(jnp.maximum(extras["raw_advantages"], 0.0))
        return value, {**aux, "positive_advantage": positive}

    return loss


def make_antagonist(cfg: GrooveConfig):
    """`antagonist(key, level) -> {"return": [], "pvl": []}`: an A2C agent (the standard
    objective, `cfg.antagonist_config()`) trained for its lifetime on `level` (the level's own
    with `cfg.lpg.level_lifetime`, as the rule's agents); its final return and its positive value
    loss (mean positive GAE advantage over the last 5% of updates). NaN when any of its updates
    was skipped for a non-finite loss."""
    acfg = cfg.antagonist_config()
    env, default = lpg.make_env(cfg.lpg)
    objective = objectives.actor_critic(acfg, _scored_policy_gradient())
    agent = a2c.make_agent(acfg, objective, env=env, env_params=default)

    def antagonist(key, level):
        out = agent.train(key, level)
        lifetime = lpg.level_lifetime(cfg.lpg, level, agent.num_updates)
        clean = jnp.sum(out.metrics["nan_skipped"]) == 0
        result = {
            "return": lpg.final_return_at(out.metrics["episode_return"], lifetime),
            "pvl": lpg.final_return_at(out.metrics["positive_advantage"], lifetime),
        }
        return jax.tree.map(lambda x: jnp.where(clean, x, jnp.nan), result)

    return antagonist


def regret(antagonist_return, agent_returns):
    """Algorithmic regret per level: `antagonist_return [n]` - mean over the rule's agents of
    `agent_returns [n, k]` (NaN if any is NaN)."""
    return antagonist_return - jnp.mean(agent_returns, axis=-1)


# --------------------------------------------------------------------------- curricula


@dataclasses.dataclass(frozen=True, eq=False)
class DomainRandomisation:
    """`meta.es` curriculum: fresh random levels every generation (no state)."""

    sample_levels: Callable
    metrics = DR_METRICS

    def init(self, key):
        del key
        return ()

    def propose(self, state, key, num, shard):
        return state, shard(self.sample_levels(key, num)), ()

    def update(self, state, tasks, info, fitness):
        del tasks, info
        return state, {"mean_agent_return": _finite_mean(fitness)}


@dataclasses.dataclass(frozen=True, eq=False)
class LevelReplay:
    """`meta.es` curriculum: GROOVE's prioritised level buffer scored by "regret" or "pvl", with
    the antagonist's return and PVL cached per level (see the module docstring). State: a
    `level_buffer.BufferState` whose `extra` holds {"antagonist_return", "pvl"} per slot."""

    buffer: level_buffer.BufferConfig
    score: str
    sample_levels: Callable
    antagonist: Callable
    example_level: Any
    metrics = BUFFER_METRICS

    def init(self, key):
        del key
        extra = {"antagonist_return": jnp.float32(0.0), "pvl": jnp.float32(0.0)}
        return level_buffer.init(self.buffer, self.example_level, extra)

    def propose(self, state, key, num, shard):
        """(state, levels [num], info): replayed levels with their cached antagonist results, or
        new levels with antagonists trained on them now."""
        k_decide, k_replay, k_new, k_agents = jax.random.split(key, 4)
        replay = level_buffer.decide_replay(k_decide, self.buffer, state)

        def replayed(state):
            state, slots, levels = level_buffer.sample(k_replay, self.buffer, state, num)
            cached = jax.tree.map(lambda x: x[slots], state.extra)
            return state, levels, slots, cached

        def new(state):
            levels = shard(self.sample_levels(k_new, num))
            keys = shard(jax.random.split(k_agents, num))
            results = jax.vmap(self.antagonist)(keys, levels)
            cached = {"antagonist_return": results["return"], "pvl": results["pvl"]}
            return state, levels, jnp.full((num,), -1, jnp.int32), cached

        state, levels, slots, cached = jax.lax.cond(replay, replayed, new, state)
        return state, levels, {"replay": replay, "slots": slots, "cached": cached}

    def scores(self, cached, fitness):
        """`[num]` scores of the levels: AR from the cached antagonist return and the agents'
        `fitness [num, k]`, or the cached PVL."""
        if self.score == "regret":
            return regret(cached["antagonist_return"], fitness)
        return cached["pvl"]

    def update(self, state, levels, info, fitness):
        cached, replay = info["cached"], info["replay"]
        scores = self.scores(cached, fitness)

        def rescore(state):
            state = level_buffer.update(self.buffer, state, info["slots"], scores)
            return state, jnp.zeros((), jnp.int32)

        def offer(state):
            state, slots = level_buffer.insert(self.buffer, state, levels, scores, cached)
            return state, jnp.sum(slots >= 0).astype(jnp.int32)

        state, admitted = jax.lax.cond(replay, rescore, offer, state)
        in_buffer = level_buffer.filled(state)
        metrics = {
            "replay": replay,
            "antagonist_runs": jnp.where(replay, 0, scores.shape[0]),
            "admitted": admitted,
            "buffer_size": state.size,
            "mean_score": _finite_mean(scores),
            "mean_buffer_score": _finite_mean(jnp.where(in_buffer, state.scores, jnp.nan)),
            "mean_antagonist_return": _finite_mean(cached["antagonist_return"]),
            "mean_agent_return": _finite_mean(fitness),
        }
        return state, metrics


def _finite_mean(x):
    finite = jnp.isfinite(x)
    return jnp.sum(jnp.where(finite, x, 0.0)) / jnp.maximum(jnp.sum(finite), 1)


def make_curriculum(cfg: GrooveConfig, sample_levels=None):
    """The `meta.es` curriculum of `cfg.score` (levels from `sample_levels(key, n)`, default the
    grid-world distribution of `cfg.lpg.env`)."""
    sample_levels = sample_levels or distribution_sampler(cfg.lpg.env)
    if cfg.score == "dr":
        return DomainRandomisation(sample_levels)
    shapes = jax.eval_shape(lambda key: sample_levels(key, 1), jax.random.key(0))
    example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    return LevelReplay(cfg.buffer, cfg.score, sample_levels, make_antagonist(cfg), example)


# --------------------------------------------------------------------------- meta-training


@dataclasses.dataclass
class GrooveOutput:
    """params: the learned rule (ES mean); best_params: the best candidate; es: es.ESOutput;
    curriculum: {metric: [G]} per generation; buffer: the final level buffer
    (level_buffer.BufferState, numpy; None for "dr"); info: what `lpg.save` records."""

    params: Any
    best_params: Any
    es: es.ESOutput
    curriculum: dict
    buffer: Any
    info: dict

    @property
    def antagonist_runs(self) -> int:
        """Antagonists trained over the run (0 for "dr")."""
        return int(np.sum(self.curriculum.get("antagonist_runs", 0)))

    @property
    def antagonist_runs_uncached(self) -> int:
        """Antagonists the public code's scheme would train: one per level per generation."""
        if "antagonist_runs" not in self.curriculum:
            return 0
        return int(self.es.fitness.shape[0] * self.es.fitness.shape[1] // 2)

    @property
    def antagonist_runs_saved(self) -> float:
        """Fraction of antagonist runs the cache avoided (0 for "dr")."""
        uncached = self.antagonist_runs_uncached
        return 1.0 - self.antagonist_runs / uncached if uncached else 0.0


def make_meta_train(cfg: GrooveConfig, sample_levels=None):
    """`meta_train(key, *, init=None, **evolve_kwargs) -> GrooveOutput`: ES over LPG / TA-LPG
    rules from `init` (default `cfg.lpg.init_params(k_init)`) with the curriculum of `cfg.score`;
    `evolve_kwargs` as `es.evolve`'s (devices, progress, checkpoint_dir, resume,
    on_generations: its metrics also hold "curriculum" and "task_state", the buffer);
    num_generations replaces the config's (with checkpoint_dir and resume=True: continue a run
    further, reusing the compiled program). `meta_train.fitness` is the
    candidates' fitness(params, key, level); `meta_train.curriculum` the curriculum."""
    fitness = lpg.make_level_fitness(cfg.lpg)
    curriculum = make_curriculum(cfg, sample_levels)

    def meta_train(key, *, init=None, num_generations=None, **evolve_kwargs) -> GrooveOutput:
        k_init, k_es = jax.random.split(key)
        init = cfg.lpg.init_params(k_init) if init is None else init
        es_cfg = cfg.lpg.es
        if num_generations is not None:  # e.g. to continue a checkpointed run further
            es_cfg = dataclasses.replace(es_cfg, num_generations=num_generations)
        out = es.evolve(fitness, init, es_cfg, k_es, curriculum=curriculum, **evolve_kwargs)
        result = GrooveOutput(
            out.mean_params, out.best_params, out, out.curriculum, out.task_state, {}
        )
        if cfg.score == "dr":
            result.buffer = None
        result.info = {
            "trained_on": {
                "method": "es",
                "curriculum": cfg.score,
                "env": cfg.lpg.env,
                "inner": C.to_dict(cfg.lpg.inner_config()),
                "es": dataclasses.asdict(cfg.lpg.es),
                "buffer": dataclasses.asdict(cfg.buffer) if cfg.score != "dr" else None,
                "generations": int(out.fitness.shape[0]),
                "final_mean_fitness": float(out.mean_fitness[-1]),
                "antagonist_runs": result.antagonist_runs,
                "antagonist_runs_uncached": result.antagonist_runs_uncached,
            }
        }
        return result

    meta_train.fitness = fitness
    meta_train.curriculum = curriculum
    return meta_train
