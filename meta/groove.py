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
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs import gridworld
from meta import es, level_buffer, lpg, saved
from purejaxrl import a2c, losses, objectives
from purejaxrl import config as C
from purejaxrl.scores import final_return

SCORES = ("regret", "pvl", "dr")
META_OPTIMIZERS = ("meta_gradient", "es")
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
    """meta_optimizer: "meta_gradient" (GROOVE as published: meta-gradient LPG over a persistent
    population of agents, `lpg.make_meta_gradient_train`, settings in `meta_gradient`) or "es"
    (ES-GROOVE: whole lifetimes per antithetic pair inside `meta.es.evolve`, settings in
    `lpg.es`); lpg: the rule and its agents (env, inner A2C config, ES settings); score:
    "regret", "pvl" or "dr" (see the module docstring); buffer: the level buffer (each
    default's source beside it: the public GROOVE code's replay 0.5 and rank prioritisation,
    PLR's temperature and staleness; 256 slots, sized for CPU runs, where the code has 4000);
    antagonist: A2CConfig overrides of the antagonist over the agents' inner config (same
    budget and network by default; its prediction head is dropped)."""

    lpg: lpg.LPGConfig = dataclasses.field(default_factory=_default_lpg)
    score: str = "regret"
    meta_optimizer: str = "meta_gradient"
    meta_gradient: lpg.MetaGradientConfig = dataclasses.field(
        default_factory=lambda: lpg.MetaGradientConfig()
    )
    buffer: level_buffer.BufferConfig = dataclasses.field(
        default_factory=lambda: level_buffer.BufferConfig(
            capacity=256,  # GROOVE's code: 4000; sized for CPU runs
            replay_prob=0.5,  # GROOVE's code
            prioritization="rank",  # GROOVE's code (its rank is a deterministic top-k)
            temperature=0.1,  # PLR (Jiang et al. 2021); GROOVE's code softmaxes raw scores
            staleness_coef=0.1,  # PLR; GROOVE's code has no staleness term
            min_fill=0.25,  # replay once a quarter full (GROOVE's code: once it can fill a batch)
        )
    )
    antagonist: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        C.check_types(self)
        C.check_choice(self, "score", SCORES)
        C.check_choice(self, "meta_optimizer", META_OPTIMIZERS)
        if self.meta_optimizer == "es" and not self.lpg.es.antithetic:
            raise ValueError(
                "GrooveConfig.lpg.es: ES-GROOVE evaluates both members of an antithetic pair on "
                "the same level; set antithetic=True (open_es or pgpe)"
            )
        if self.meta_optimizer == "meta_gradient":
            num, k = self.lpg.inner.num_updates, self.meta_gradient.num_agent_updates
            if num < k:
                raise ValueError(
                    f"GrooveConfig: an agent's lifetime of {num} updates (lpg.inner) is shorter "
                    f"than meta_gradient.num_agent_updates={k}, the updates of one meta-step"
                )
        self.antagonist_config()  # validates the overrides now

    def antagonist_config(self) -> a2c.A2CConfig:
        """The antagonist's A2CConfig: the agents' inner config, no prediction head, then
        `antagonist` overrides (validated)."""
        fields = {**C.to_dict(self.lpg.inner), "prediction_size": 0, **self.antagonist}
        try:
            cfg = C.from_dict(a2c.A2CConfig, fields)
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


def antagonist_agent(cfg: GrooveConfig):
    """The antagonist as an `a2c` Agent (`cfg.antagonist_config()`, the standard objective, its
    metrics also holding "positive_advantage"), on the env of the rule's agents."""
    acfg = cfg.antagonist_config()
    env, default = lpg.make_env(cfg.lpg)
    objective = objectives.actor_critic(acfg, _scored_policy_gradient())
    return a2c.make_agent(acfg, objective, env=env, env_params=default)


def make_antagonist(cfg: GrooveConfig):
    """`antagonist(key, level) -> {"return": [], "pvl": []}`: an A2C agent (the standard
    objective, `cfg.antagonist_config()`) trained for its lifetime on `level` (the level's own
    with `cfg.lpg.level_lifetime`, as the rule's agents); its final return and its positive value
    loss (mean positive GAE advantage over the last 5% of updates). NaN when any of its updates
    was skipped for a non-finite loss."""
    agent = antagonist_agent(cfg)

    def antagonist(key, level):
        out = agent.train(key, level)
        lifetime = lpg.level_lifetime(cfg.lpg, level, agent.num_updates)
        clean = jnp.sum(out.metrics["nan_skipped"]) == 0
        m = out.metrics
        result = {
            "return": final_return(m["episode_return"], m["episodes_finished"], lifetime),
            "pvl": final_return(
                m["positive_advantage"], jnp.ones_like(m["positive_advantage"]), lifetime
            ),
        }
        return jax.tree.map(lambda x: jnp.where(clean, x, jnp.nan), result)

    return antagonist


def regret(antagonist_return, agent_returns):
    """Algorithmic regret per level: `antagonist_return [n]` - mean over the rule's agents of
    `agent_returns [n, k]` (NaN if any is NaN)."""
    return antagonist_return - jnp.mean(agent_returns, axis=-1)


# --------------------------------------------------------------------------- curricula


@dataclasses.dataclass(frozen=True, eq=False)
class DomainRandomisation(lpg.SampledLevels):
    """Fresh random levels, no state: for `meta.es`, every generation; for the meta-gradient
    (`lpg.SampledLevels`), every agent reset."""

    metrics = DR_METRICS

    def propose(self, state, key, num, shard):
        return state, shard(self.sample_levels(key, num)), ()

    def update(self, state, tasks, info, fitness):
        del tasks, info
        return state, {"mean_agent_return": lpg.masked_mean(fitness)}


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
    antagonist_agent: Any = None
    metrics = BUFFER_METRICS
    needs_antagonist = True

    def init(self, key):
        del key
        extra = {"antagonist_return": jnp.float32(0.0), "pvl": jnp.float32(0.0), "uid": _NO_UID}
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
            cached = {
                "antagonist_return": results["return"],
                "pvl": results["pvl"],
                "uid": jnp.full((num,), _NO_UID),
            }
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
            "mean_score": lpg.masked_mean(scores),
            "mean_buffer_score": lpg.masked_mean(jnp.where(in_buffer, state.scores, jnp.nan)),
            "mean_antagonist_return": lpg.masked_mean(cached["antagonist_return"]),
            "mean_agent_return": lpg.masked_mean(fitness),
        }
        return state, metrics

    # ---- the meta-gradient's interface (lpg.make_meta_gradient_train; see lpg.SampledLevels)

    def first_levels(self, state, key, n, step):
        """New levels for the n initial agents (their antagonists train beside them)."""
        levels = self.sample_levels(key, n)
        return state, levels, self._new_tags(n, step)

    def _new_tags(self, n, step):
        nan = jnp.full((n,), jnp.nan, jnp.float32)
        return {
            "slot": jnp.full((n,), -1, jnp.int32),
            "uid": step * n + jnp.arange(n, dtype=jnp.int32) + 1,
            "cached": {"antagonist_return": nan, "pvl": nan},
        }

    def reset(self, state, key, done, levels, tags, results, step):
        """Scores the levels of the agents that finished (`done [A]`) and draws theirs anew.

        A finished agent's level is scored by AR = R_antagonist - R_agent (or the antagonist's
        PVL), R_antagonist the cached return when the level was replayed from the buffer, else
        that of its lockstep antagonist; R_agent its own final return. A replayed level still in
        its slot (same uid) is rescored there; a new level, or a replayed one that was evicted
        meanwhile, is offered to the buffer (robust PLR: admitted if there is room or it beats
        the lowest score; a NaN score is never admitted). Then each finished agent replays a
        level from the buffer with probability `replay_prob` (once the buffer holds
        `min_levels`), else gets a fresh one. Antagonists run beside replayed levels too (vmap
        lanes cannot be skipped); their results are used only for new levels."""
        num = done.shape[0]
        k_replay, k_slots, k_new = jax.random.split(key, 3)
        replayed = tags["slot"] >= 0
        pick = lambda cached, fresh: jnp.where(replayed, cached, fresh)
        used = {
            "antagonist_return": pick(
                tags["cached"]["antagonist_return"], results["antagonist_return"]
            ),
            "pvl": pick(tags["cached"]["pvl"], results["pvl"]),
        }
        if self.score == "regret":
            scores = regret(used["antagonist_return"], results["agent_return"][:, None])
        else:
            scores = used["pvl"]
        slot = jnp.clip(tags["slot"], 0, self.buffer.capacity - 1)
        in_place = replayed & (state.extra["uid"][slot] == tags["uid"])
        rescore = done & in_place
        state = level_buffer.update(
            self.buffer, state, jnp.where(rescore, tags["slot"], -1), scores
        )
        offer = done & ~in_place
        extras = {**used, "uid": tags["uid"]}
        state, slots = level_buffer.insert(
            self.buffer, state, levels, scores, extras, offered=offer
        )
        # new levels for the finished agents
        ready = state.size >= self.buffer.min_levels
        replay = done & ready & (jax.random.uniform(k_replay, (num,)) < self.buffer.replay_prob)
        state, drawn, replay_levels = level_buffer.sample(
            k_slots, self.buffer, state, num, played=replay
        )
        fresh = self.sample_levels(k_new, num)
        chosen = jax.tree.map(lambda r, f: lpg.pick(replay, r, f), replay_levels, fresh)
        levels = jax.tree.map(lambda n, o: lpg.pick(done, n, o), chosen, levels)
        new_tags = self._new_tags(num, step)
        cached = jax.tree.map(lambda x: x[drawn], state.extra)
        replay_tags = {
            "slot": drawn,
            "uid": cached["uid"],
            "cached": {"antagonist_return": cached["antagonist_return"], "pvl": cached["pvl"]},
        }
        chosen_tags = jax.tree.map(lambda r, f: jnp.where(replay, r, f), replay_tags, new_tags)
        tags = jax.tree.map(lambda n, o: jnp.where(done, n, o), chosen_tags, tags)
        in_buffer = level_buffer.filled(state)
        metrics = {
            "replay": jnp.sum(replay) / jnp.maximum(jnp.sum(done), 1),
            "antagonist_runs": jnp.sum(offer & ~replayed),
            "admitted": jnp.sum(slots >= 0),
            "buffer_size": state.size,
            "mean_score": lpg.masked_mean(scores, done),
            "mean_buffer_score": lpg.masked_mean(jnp.where(in_buffer, state.scores, jnp.nan)),
            "mean_antagonist_return": lpg.masked_mean(used["antagonist_return"], done),
            "mean_agent_return": lpg.masked_mean(results["agent_return"], done),
        }
        return state, levels, tags, metrics


_NO_UID = np.int32(0)  # the uid of buffer slots written by ES (which keeps no level across steps)


def make_curriculum(cfg: GrooveConfig, sample_levels=None):
    """The `meta.es` curriculum of `cfg.score` (levels from `sample_levels(key, n)`, default the
    grid-world distribution of `cfg.lpg.env`)."""
    sample_levels = sample_levels or distribution_sampler(cfg.lpg.env)
    if cfg.score == "dr":
        return DomainRandomisation(sample_levels)
    shapes = jax.eval_shape(lambda key: sample_levels(key, 1), jax.random.key(0))
    example = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), shapes)
    return LevelReplay(
        cfg.buffer, cfg.score, sample_levels, make_antagonist(cfg), example, antagonist_agent(cfg)
    )


# --------------------------------------------------------------------------- meta-training


@dataclasses.dataclass
class GrooveOutput:
    """params: the learned rule (ES: the search mean; meta-gradient: the rule after the last
    step); best_params: ES's best candidate (see `meta.es`; None for the meta-gradient); es:
    es.ESOutput (None for the meta-gradient); curriculum: {metric: [G]} per generation or
    meta-step; buffer: the final level buffer (level_buffer.BufferState, numpy; None for "dr");
    info: what `lpg.save` records; metrics: the meta-gradient's {metric: [S]} per meta-step ({}
    for ES); state: the final `lpg.MetaGradientState` (None for ES)."""

    params: Any
    best_params: Any
    es: es.ESOutput | None
    curriculum: dict
    buffer: Any
    info: dict
    metrics: dict = dataclasses.field(default_factory=dict)
    state: Any = None

    @property
    def antagonist_runs(self) -> int:
        """Antagonist results used over the run: one per new level (0 for "dr")."""
        return int(np.sum(self.curriculum.get("antagonist_runs", 0)))

    @property
    def antagonist_runs_uncached(self) -> int:
        """Antagonists the public code's scheme would train: ES, one per level per generation;
        meta-gradient, one per agent per meta-step (it retrains the whole batch's antagonists
        at every step)."""
        if "antagonist_runs" not in self.curriculum:
            return 0
        if self.es is not None:
            return int(self.es.fitness.shape[0] * self.es.fitness.shape[1] // 2)
        return int(self.info["trained_on"]["meta_steps"] * self.info["trained_on"]["num_agents"])

    @property
    def antagonist_runs_saved(self) -> float:
        """Fraction of antagonist runs the cache avoided (0 for "dr")."""
        uncached = self.antagonist_runs_uncached
        return 1.0 - self.antagonist_runs / uncached if uncached else 0.0


def make_meta_train(cfg: GrooveConfig, sample_levels=None):
    """The meta-training of `cfg.meta_optimizer`: "meta_gradient" (GROOVE as published;
    `meta_train(key, *, init=None, num_steps=None, steps_per_call=None, progress=True,
    on_steps=None) -> GrooveOutput`) or "es" (ES-GROOVE; `meta_train(key, *, init=None,
    num_generations=None, **evolve_kwargs) -> GrooveOutput`). Levels come from the curriculum of
    `cfg.score` (`make_curriculum`; new levels from `sample_levels(key, n)`, default the grid-world
    distribution of `cfg.lpg.env`). `meta_train.curriculum` is the curriculum."""
    if cfg.meta_optimizer == "es":
        return _make_es_meta_train(cfg, sample_levels)
    return _make_meta_gradient_train(cfg, sample_levels)


def _make_meta_gradient_train(cfg: GrooveConfig, sample_levels=None):
    """GROOVE: meta-gradient LPG (`lpg.make_meta_gradient_train`) whose agents restart on levels
    of the curriculum. `meta_train(key, *, init=None, num_steps=None, steps_per_call=None,
    progress=True, on_steps=None, checkpoint_dir=None, resume=False)`: `num_steps` meta-steps
    (default `cfg.meta_gradient.num_steps`; meta-step i uses the key fold_in(k, i), so a run
    continued further is the run made longer) from the rule `init` (default: drawn from the
    key), run as jitted chunks of `steps_per_call` meta-steps (default min(num_steps, 100));
    `on_steps(done, metrics)` is called after each chunk with its metrics {name: [n]} (numpy).
    With `checkpoint_dir`, the whole state (rule, optimiser, agents, critics, antagonists,
    buffer) and the metrics so far are saved there after every chunk (orbax + SHA-256 manifest,
    `meta/saved.py`, replaced atomically); `resume=True` continues from it exactly (refused when
    the saved config or key differ). `meta_train.trainer` is the `lpg.MetaGradient`."""
    curriculum = make_curriculum(cfg, sample_levels)
    trainer = lpg.make_meta_gradient_train(cfg.lpg, cfg.meta_gradient, curriculum=curriculum)
    program = functools.lru_cache(maxsize=None)(functools.partial(_chunk_program, trainer.step))
    record = _config_record(cfg)

    def meta_train(
        key,
        *,
        init=None,
        num_steps=None,
        steps_per_call=None,
        progress=True,
        on_steps=None,
        checkpoint_dir=None,
        resume=False,
    ) -> GrooveOutput:
        total = cfg.meta_gradient.num_steps if num_steps is None else int(num_steps)
        per_call = min(total, 100) if steps_per_call is None else int(steps_per_call)
        if total < 1 or per_call < 1:
            raise ValueError(f"num_steps={total}, steps_per_call={per_call}: must be >= 1")
        if resume and checkpoint_dir is None:
            raise ValueError("meta_train: resume=True needs checkpoint_dir")
        k_init, k_steps = jax.random.split(key)
        key_data = np.asarray(jax.random.key_data(key)).tolist()
        path = None if checkpoint_dir is None else Path(checkpoint_dir).absolute() / "meta_gradient"
        if resume and path is not None and path.exists():
            state, metrics, done = _restore_run(path, trainer, k_init, record, key_data)
            chunks = [metrics]
            if done > total:
                raise ValueError(
                    f"meta_train: the saved run has {done} meta-steps > num_steps={total}"
                )
        else:
            state, chunks, done = jax.jit(trainer.init)(k_init), [], 0
            if init is not None:
                opt_init = jax.jit(lpg.rule_optimizer(cfg.meta_gradient).init)
                state = state.replace(rule=init, rule_opt=opt_init(init))
        bar = _bar(progress, total, done)
        while done < total:
            n = min(per_call, total - done)
            state, metrics = program(n)(state, k_steps, jnp.int32(done))
            metrics = jax.tree.map(np.asarray, metrics)
            chunks.append(metrics)
            done += n
            if path is not None:
                so_far = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
                _save_run(path, state, so_far, done, record, key_data)
            if on_steps is not None:
                on_steps(done, metrics)
            if bar is not None:
                bar.set_postfix(finished_return=_nanmean(metrics["finished_return"]), refresh=False)
                bar.update(n)
        if bar is not None:
            bar.close()
        metrics = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        return _meta_gradient_output(cfg, curriculum, state, metrics, total)

    meta_train.curriculum = curriculum
    meta_train.trainer = trainer
    return meta_train


def _chunk_program(step, n):
    """jitted `run(state, k_steps, first) -> (state, metrics [n])`: meta-steps first .. first +
    n - 1, step i with the key fold_in(k_steps, i); `state` is donated."""

    def run(state, k_steps, first):
        keys = jax.vmap(lambda i: jax.random.fold_in(k_steps, i))(first + jnp.arange(n))
        return jax.lax.scan(step, state, keys)

    return jax.jit(run, donate_argnums=0)


def _meta_gradient_output(cfg: GrooveConfig, curriculum, state, metrics, total) -> GrooveOutput:
    """The GrooveOutput of a meta-gradient run: final `state`, per-step `metrics` {name: [S]}."""
    result = GrooveOutput(
        params=state.rule,
        best_params=None,
        es=None,
        curriculum={k: metrics[k] for k in curriculum.metrics},
        buffer=None if cfg.score == "dr" else jax.device_get(state.curriculum),
        info={},
        metrics=metrics,
        state=state,
    )
    result.info = {
        "trained_on": {
            "method": "meta_gradient",
            "curriculum": cfg.score,
            "env": cfg.lpg.env,
            "inner": C.to_dict(cfg.lpg.inner),
            "meta_gradient": dataclasses.asdict(cfg.meta_gradient),
            "buffer": dataclasses.asdict(cfg.buffer) if cfg.score != "dr" else None,
            "meta_steps": total,
            "num_agents": cfg.meta_gradient.num_agents,
            "final_finished_return": _nanmean(metrics["finished_return"][-50:]),
        }
    }
    result.info["trained_on"]["antagonist_runs"] = result.antagonist_runs
    return result


_RUN_KIND = saved.Kind("GROOVE meta-gradient checkpoint", "groove.make_meta_train")
_RUN_FORMAT = "groove-meta-gradient/1"
_RUN_INFO = {"format", "config", "key", "done", "metrics", "shapes", "digest"}


def _config_record(cfg: GrooveConfig) -> str:
    """The config as canonical JSON (what a checkpoint must match to be resumed), less
    `meta_gradient.num_steps`: a run may be continued further."""
    record = dataclasses.asdict(cfg)
    del record["meta_gradient"]["num_steps"]
    return json.dumps(record, sort_keys=True, default=str)


def checkpoint_steps(checkpoint_dir) -> int:
    """Meta-steps held by the meta-gradient checkpoint in `checkpoint_dir` (0 when there is none;
    CheckpointError when it is damaged or not one)."""
    path = Path(checkpoint_dir).absolute() / "meta_gradient"
    if not path.exists():
        return 0
    return int(saved.read_info(path, _RUN_KIND, _RUN_INFO, _RUN_FORMAT)["done"])


def _save_run(path, state, metrics, done, record, key_data) -> None:
    info = {
        "format": _RUN_FORMAT,
        "config": record,
        "key": key_data,
        "done": int(done),
        "metrics": {k: str(np.asarray(v).dtype) for k, v in metrics.items()},
    }
    saved.write(path, {"state": state, "metrics": metrics}, info, _RUN_KIND)


def _restore_run(path, trainer, k_init, record, key_data):
    """(state, metrics, done) of the checkpoint at `path`; ValueError if it is another run's."""
    info = saved.read_info(path, _RUN_KIND, _RUN_INFO, _RUN_FORMAT)
    if info["config"] != record:
        raise ValueError(
            f"cannot resume from {path}: it was saved with another GrooveConfig (saved "
            f"{info['config'][:200]}...); start a new run or use the same config"
        )
    if info["key"] != key_data:
        raise ValueError(f"cannot resume from {path}: it was saved for another key / seed")
    done = int(info["done"])
    abstract = {
        "state": jax.eval_shape(trainer.init, k_init),
        "metrics": {
            k: jax.ShapeDtypeStruct((done,), np.dtype(d)) for k, d in info["metrics"].items()
        },
    }
    tree = saved.read_params(path, _RUN_KIND, abstract, info)
    return tree["state"], tree["metrics"], done


def _make_es_meta_train(cfg: GrooveConfig, sample_levels=None):
    """ES-GROOVE: `meta_train(key, *, init=None, **evolve_kwargs) -> GrooveOutput`: ES over LPG / TA-LPG
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
                "inner": C.to_dict(cfg.lpg.inner),
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


def _bar(progress: bool, total: int, initial: int = 0):
    """A tqdm bar over meta-steps (progress=True), or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="meta-gradient steps", unit="step")


def _nanmean(x) -> float:
    """Mean of the finite entries (NaN if none), without numpy's empty-slice warning."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")
