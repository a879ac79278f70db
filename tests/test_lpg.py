"""meta.lpg: the LPG / TA-LPG rule network (backward core reset at episode ends), the agent-side
objective in the on-policy loop, ES and meta-gradient meta-training, save / load and the "lpg"
objective; the loop's opt-in next_obs.

Programs are compiled once per module (fixtures): the ES generation loop, the population fitness
(vmapped) and one candidate's fitness, one meta-gradient step, a tiny loop for next_obs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from meta import es, lpg, lpg_rule
from meta import objectives as meta_objectives
from purejaxrl import a2c, checkpoint, losses, objectives
from purejaxrl.distributions import Categorical
from purejaxrl.networks import ActorCritic

HIDDEN = 16  # GRU width of the test rules
INNER = dict(lpg.CPU_INNER, num_envs=8, num_steps=16, total_timesteps=8 * 16 * 30)
POPULATION = 16
ES_CFG = lpg.LPGConfig(
    env="Catch-bsuite",
    hidden=HIDDEN,
    inner=INNER,
    es=es.ESConfig(
        population_size=POPULATION,
        num_generations=50,
        generations_per_call=50,
        sigma=0.1,
        learning_rate=0.1,
    ),
)
# A fixed small level set: Catch params with two time limits (the episode ends at 9 steps, so
# both levels are winnable); a batch of env params with a leading axis [L].
_, CATCH = envs.make("Catch-bsuite")
LEVELS = jax.tree.map(lambda x: jnp.asarray([x, 20]), CATCH)


def rule(key=0, time_aware=False, y_size=lpg.Y_SIZE, hidden=HIDDEN):
    return lpg.init_params(jax.random.key(key), time_aware, y_size, hidden)


def stack(trees):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


# --------------------------------------------------------------------------- the network


def random_rollout(key, T, N, m=lpg.Y_SIZE):
    k = jax.random.split(jax.random.key(key), 4)
    return {
        "reward": jax.random.normal(k[0], (T, N)),
        "pi": jax.random.uniform(k[1], (T, N), minval=0.1, maxval=0.9),
        "y": jax.nn.softmax(jax.random.normal(k[2], (T, N, m))),
        "y_next": jax.nn.softmax(jax.random.normal(k[3], (T, N, m))),
    }


def test_backward_core_resets_at_episode_ends():
    """Hand case, T = 6, two env columns: column 0 terminates at t = 2, column 1 is truncated at
    t = 3. Going backwards, a step where the episode ended starts a fresh carry, so the outputs
    at t depend on the inputs of steps t..e(t) exactly, e(t) the first end at or after t (else
    the last step): the Jacobian of pi_hat and y_hat in the rewards has that pattern, nothing
    crosses columns, and without the ends every earlier step sees every later one."""
    T, N = 6, 2
    data = random_rollout(0, T, N)
    terminated = jnp.zeros((T, N), bool).at[2, 0].set(True)
    truncated = jnp.zeros((T, N), bool).at[3, 1].set(True)
    params = rule(1)

    def outputs(reward, terminated, truncated):
        pi_hat, y_hat = lpg.apply(
            params,
            reward,
            terminated,
            data["pi"],
            data["y"],
            data["y_next"],
            truncated=truncated,
        )
        return pi_hat, y_hat

    jacobian = jax.jit(lambda d, u: jax.jacobian(lambda r: outputs(r, d, u))(data["reward"]))

    def dependence(terminated, truncated):
        jac = jacobian(terminated, truncated)
        pi_dep = np.abs(np.asarray(jac[0])) > 0  # [T, N, T, N]
        y_dep = np.any(np.abs(np.asarray(jac[1])) > 0, axis=2)  # [T, N, T, N]
        return pi_dep, y_dep

    ends = {0: [2, 5], 1: [3, 5]}  # per column: the steps that start a fresh carry (+ the last)
    expected = np.zeros((T, N, T, N), bool)
    for n, column_ends in ends.items():
        for t in range(T):
            e = min(x for x in column_ends if x >= t)
            expected[t, n, t : e + 1, n] = True
    pi_dep, y_dep = dependence(terminated, truncated)
    np.testing.assert_array_equal(pi_dep, expected)
    np.testing.assert_array_equal(y_dep, expected)
    # no ends: every step depends on itself and all later steps of its column
    pi_dep, _ = dependence(jnp.zeros((T, N), bool), jnp.zeros((T, N), bool))
    for n in range(N):
        np.testing.assert_array_equal(pi_dep[:, n, :, n], np.triu(np.ones((T, T), bool)))


def test_next_prediction_is_zeroed_at_termination_not_at_truncation():
    """y(s_t+1) reaches the outputs of step t unless the episode terminated at t; on a
    truncation it is the pre-reset state to bootstrap from and is kept."""
    T, N = 4, 2
    data = random_rollout(1, T, N)
    terminated = jnp.zeros((T, N), bool).at[1, 0].set(True)
    truncated = jnp.zeros((T, N), bool).at[1, 1].set(True)
    params = rule(2)
    jac = jax.jit(
        jax.jacobian(
            lambda yn: lpg.apply(
                params,
                data["reward"],
                terminated,
                data["pi"],
                data["y"],
                yn,
                truncated=truncated,
            )[0]
        )
    )(data["y_next"])  # [T, N, T, N, m]
    touched = np.any(np.abs(np.asarray(jac)) > 0, axis=(0, 1, 4))  # which y_next[t, n] matter
    assert not touched[1, 0]  # terminated: zeroed
    assert touched[1, 1]  # truncated: kept
    assert touched[0, 0] and touched[2, 0]


def test_time_aware_inputs_are_progress_and_log_lifetime(monkeypatch):
    """TA-LPG's extra step inputs are n/N and log N (not raw step counts), and the objective
    passes the loop's progress n/N and number of updates N."""
    T, N = 3, 2
    reward = jnp.arange(T * N, dtype=jnp.float32).reshape(T, N)
    terminated = jnp.zeros((T, N), bool).at[1, 0].set(True)
    pi = jnp.full((T, N), 0.5)
    x = np.asarray(lpg.step_features(reward, terminated, 0.9, pi, progress=0.25, num_updates=40))
    assert x.shape == (T, N, 6)
    np.testing.assert_allclose(x[..., 0], reward)
    np.testing.assert_array_equal(x[..., 1], np.asarray(terminated, np.float32))
    np.testing.assert_allclose(x[..., 2], 0.9)
    np.testing.assert_allclose(x[..., 3], 0.5)
    np.testing.assert_allclose(x[..., 4], 0.25)
    np.testing.assert_allclose(x[..., 5], np.log(40.0), rtol=1e-6)
    assert lpg.step_features(reward, terminated, 0.9, pi).shape == (T, N, 4)
    assert lpg.describe(rule(time_aware=True)).time_aware
    assert not lpg.describe(rule()).time_aware

    # the objective's targets, with a Context as the loop builds it (progress n/N, N)
    cfg = a2c.A2CConfig(
        env="Catch-bsuite",
        hidden_sizes=(),
        shared_torso=True,
        num_envs=N,
        num_steps=T,
        prediction_size=lpg.Y_SIZE,
    )
    agent = a2c.make_agent(cfg, lpg.objective(rule(time_aware=True)))
    obs = (jax.random.uniform(jax.random.key(2), (T, N, 50)) < 0.1).astype(jnp.float32)
    init = jax.jit(lambda k, o: agent.network.init(k, o, method=ActorCritic.init_all))
    agent_params = init(jax.random.key(0), obs[0])
    seen = []
    real = lpg.step_features

    def spy(*args, **kwargs):
        features = real(*args, **kwargs)
        jax.debug.callback(lambda x: seen.append(np.asarray(x)), features)
        return features

    monkeypatch.setattr(lpg_rule, "step_features", spy)  # where lpg.forward looks it up
    rollout = {
        "obs": obs,
        "next_obs": obs,
        "action": jnp.zeros((T, N), jnp.int32),
        "log_prob": jnp.log(pi),
        "reward": reward,
        "terminated": terminated,
        "truncated": jnp.zeros((T, N), bool),
    }
    apply = lambda *args, method=None: agent.network.apply(agent_params, *args, method=method)
    ctx = objectives.Context(agent.head, apply, jnp.float32(0.3), 50, jax.random.key(1))
    targets = jax.jit(lambda r: lpg.objective(r).targets(rollout, ctx))(rule(time_aware=True))
    assert targets["pi_hat"].shape == (T, N) and targets["log_y_hat"].shape == (T, N, 8)
    (features,) = seen
    np.testing.assert_allclose(features[..., 4], 0.3, rtol=1e-6)
    np.testing.assert_allclose(features[..., 5], np.log(50.0), rtol=1e-6)
    np.testing.assert_allclose(features[..., 3], 0.5, rtol=1e-6)  # pi = exp(log_prob)
    with pytest.raises(ValueError, match="TA-LPG params need progress"):
        lpg.apply(rule(time_aware=True), reward, terminated, pi, obs[..., :8], obs[..., :8])


# --------------------------------------------------------------------------- agent objective


def test_lpg_loss_gradient_matches_hand_computation():
    """loss = mean_b(log pi(a_b) pi_hat_b) + w mean_b KL(y_b || y_hat_b), B samples:
    d/d logits_b = (onehot(a_b) - softmax(logits_b)) pi_hat_b / B;
    d/d z_b (y = softmax(z)) = w y_b (log y_b - log y_hat_b - KL_b) / B."""
    B, A, m, w = 5, 3, 4, 0.5
    k = jax.random.split(jax.random.key(3), 5)
    logits = jax.random.normal(k[0], (B, A))
    z = jax.random.normal(k[1], (B, m))
    action = jax.random.randint(k[2], (B,), 0, A)
    pi_hat = jax.random.normal(k[3], (B,))
    log_y_hat = jax.nn.log_softmax(jax.random.normal(k[4], (B, m)))
    batch = {"action": action, "pi_hat": pi_hat, "log_y_hat": log_y_hat}
    ctx = objectives.Context(Categorical(A), None, 0.0, 1, jax.random.key(0))
    obj = lpg.objective(rule(y_size=m), kl_weight=w)

    def loss(logits, z):
        return obj.loss({"policy": logits, "prediction": z}, batch, ctx)[0]

    g_logits, g_z = jax.jit(jax.grad(loss, argnums=(0, 1)))(logits, z)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    onehot = np.eye(A)[np.asarray(action)]
    want_logits = (onehot - p) * np.asarray(pi_hat)[:, None] / B
    y = np.asarray(jax.nn.softmax(z), np.float64)
    log_ratio = np.log(y) - np.asarray(log_y_hat, np.float64)
    kl = np.sum(y * log_ratio, axis=-1, keepdims=True)
    want_z = w * y * (log_ratio - kl) / B
    np.testing.assert_allclose(g_logits, want_logits, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_z, want_z, rtol=1e-5, atol=1e-7)
    value, metrics = obj.loss({"policy": logits, "prediction": z}, batch, ctx)
    log_pi = np.log(p[np.arange(B), np.asarray(action)])
    np.testing.assert_allclose(value, np.mean(log_pi * pi_hat) + w * kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["pi_hat_sq"], np.mean(np.asarray(pi_hat) ** 2), rtol=1e-5)


def test_objective_refuses_a_mismatched_prediction_size():
    cfg = a2c.A2CConfig(
        env="Catch-bsuite", hidden_sizes=(), shared_torso=True, num_envs=2, num_steps=4
    )
    with pytest.raises(ValueError, match=r"prediction_size=4: the LPG rule's y width is 8"):
        a2c.make_agent(dataclasses.replace(cfg, prediction_size=4), lpg.objective(rule()))
    with pytest.raises(ValueError, match=r"prediction_size=0.*set prediction_size=8"):
        a2c.make_agent(cfg, lpg.objective(rule()))
    with pytest.raises(ValueError, match="LPG params"):
        lpg.objective({"params": {}})
    a2c.make_agent(dataclasses.replace(cfg, prediction_size=8), lpg.objective(rule()))


SEEN: list = []  # rollout arrays `targets` saw (at trace time)
CAPTURED: list = []  # (obs, next_obs, ended) of a run


class _Spy(objectives.ActorCritic):
    """A2C's objective that records which rollout arrays `targets` sees."""

    def targets(self, rollout, ctx):
        SEEN.append(sorted(rollout))
        return super().targets(rollout, ctx)


class _WantsNextObs(objectives.ActorCritic):
    """A2C's objective that opts in to next_obs and captures it."""

    needs_next_obs = True

    def targets(self, rollout, ctx):
        ended = rollout["terminated"] | rollout["truncated"]
        jax.debug.callback(
            lambda *a: CAPTURED.append([np.asarray(x) for x in a]),
            rollout["obs"],
            rollout["next_obs"],
            ended,
        )
        return super().targets(rollout, ctx)


def test_next_obs_is_opt_in():
    """Only an objective with needs_next_obs gets rollout["next_obs"]: the pre-reset next
    observations, equal to the following step's observation unless the episode ended there
    (tests/test_pinned.py checks that other objectives' runs are unchanged bit for bit)."""
    cfg = a2c.A2CConfig(
        env="Catch-bsuite", hidden_sizes=(4,), num_envs=2, num_steps=12, total_timesteps=24
    )
    SEEN.clear()
    jax.eval_shape(a2c.make_agent(cfg, _Spy(losses.policy_gradient())).train, jax.random.key(0))
    assert "next_obs" not in SEEN[-1] and not objectives.Objective.needs_next_obs
    CAPTURED.clear()
    jax.jit(a2c.make_agent(cfg, _WantsNextObs(losses.policy_gradient())).train)(jax.random.key(0))
    ((obs, next_obs, ended),) = CAPTURED
    assert next_obs.shape == obs.shape == (12, 2, 50)
    keep = ~ended[:-1]
    assert ended.any() and keep.any()
    np.testing.assert_array_equal(next_obs[:-1][keep], obs[1:][keep])
    assert not np.array_equal(next_obs[:-1][~keep], obs[1:][~keep])  # pre-reset, not the reset


# --------------------------------------------------------------------------- ES


@pytest.fixture(scope="module")
def es_run():
    meta_train = lpg.make_meta_train(ES_CFG, levels=LEVELS)
    out = meta_train(jax.random.key(0), progress=False)
    return meta_train, out


@pytest.fixture(scope="module")
def population_fitness(es_run):
    """The population's fitness, vmapped as es.evolve does: params `[P]`, keys `[P]`."""
    meta_train, _ = es_run
    return jax.jit(jax.vmap(meta_train.fitness))


@pytest.mark.slow  # 50 ES generations, ~40 s
def test_es_meta_training_beats_the_initial_rule_on_the_same_keys(es_run, population_fitness):
    """On 64 common keys (level and agent seed), the meta-trained rule's agents end with a higher
    return than the initial rule's: the paired mean difference is above 0.05 and above twice its
    standard error (Catch returns are multiples of 1/16 per update, so a single key is noisy; a
    paired test rather than a raw threshold, which another CPU's rounding of the ES trajectory
    can move by a few hundredths)."""
    meta_train, out = es_run
    assert out.es.fitness.shape == (50, POPULATION) and out.es.num_nonfinite == 0
    init = ES_CFG.init_params(jax.random.split(jax.random.key(0))[0])
    n = 4 * POPULATION
    keys = jax.random.split(jax.random.key(123), n)
    replicate = lambda p: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), p)
    before = np.asarray(population_fitness(replicate(init), keys))
    after = np.asarray(population_fitness(replicate(out.params), keys))
    gain = after - before
    se = gain.std(ddof=1) / np.sqrt(n)
    assert gain.mean() > max(0.05, 2 * se), (before.mean(), after.mean(), se)
    assert np.mean(after > before) >= np.mean(after < before)
    assert out.info["trained_on"]["levels"] == "set"


@pytest.mark.slow  # shares the ES run's fixture
def test_population_fitness_equals_candidates_one_by_one(es_run, population_fitness):
    """The vmapped fitness of a population (one level drawn per key, pairs share keys) equals
    each candidate's fitness alone; a candidate whose training produces NaN gets a non-finite
    fitness (es.evolve gives it the worst of its generation)."""
    meta_train, out = es_run
    candidates = [
        jax.tree.map(
            lambda x, i=i: x + 0.1 * i * jnp.sin(jnp.arange(x.size).reshape(x.shape)), out.params
        )
        for i in range(POPULATION)
    ]
    candidates[2] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), candidates[2])
    keys = es.candidate_keys(jax.random.key(7), POPULATION, antithetic=True)
    together = np.asarray(population_fitness(stack(candidates), keys))
    single = jax.jit(meta_train.fitness)
    alone = np.array([float(single(c, k)) for c, k in zip(candidates, keys, strict=True)])
    # Different programs (vmapped vs one candidate) round differently on some CPUs (AVX-512 vs
    # AVX2 reductions); a rounding difference can flip one sampled action and with it an episode
    # of Catch (1/16 of a return): equal on most candidates, off by an episode or two at most.
    np.testing.assert_array_equal(np.isnan(alone), np.isnan(together))
    finite = np.isfinite(alone)
    assert np.mean(alone[finite] == together[finite]) >= 0.75
    np.testing.assert_allclose(alone[finite], together[finite], atol=0.125 + 1e-6)
    assert np.isnan(together[2]) and np.isfinite(np.delete(together, 2)).all()
    clean, bad = es.replace_nonfinite(jnp.asarray(together))
    assert int(bad) == 1 and float(clean[2]) == float(np.min(np.delete(together, 2)))


def test_levels_are_drawn_from_the_key():
    sample = lpg.level_sampler(LEVELS)
    drawn = [int(sample(jax.random.key(i)).max_steps_in_episode) for i in range(20)]
    assert set(drawn) == {int(CATCH.max_steps_in_episode), 20}
    assert int(sample(jax.random.key(3)).max_steps_in_episode) == drawn[3]  # same key, same level
    custom = lambda key: CATCH
    assert lpg.level_sampler(custom) is custom
    with pytest.raises(ValueError, match="leading axis"):
        lpg.level_sampler(jax.tree.map(lambda x: jnp.asarray(x), CATCH))


# --------------------------------------------------------------------------- meta-gradient

MG_SETTINGS = lpg.MetaGradientConfig(num_agents=2, num_agent_updates=3, learning_rate=1e-3)


@pytest.mark.slow  # differentiates through K updates, ~40 s
def test_one_meta_gradient_step_decreases_the_meta_loss():
    """An Adam step on the rule, on the meta-gradient through K agent updates, lowers the
    meta-loss of the same agents on the same key."""
    cfg = dataclasses.replace(ES_CFG, inner=dict(INNER, num_envs=4, num_steps=8))
    mg = lpg.make_meta_gradient_train(cfg, MG_SETTINGS, levels=LEVELS)
    k_init, key = jax.random.key(0), jax.random.key(5)
    # one program: fresh agents (as mg.init(k_init)) with the given rule, then one meta-step
    step_from_start = jax.jit(lambda rule: mg.step(mg.init(k_init).replace(rule=rule), key))
    rule0 = cfg.init_params(jax.random.split(k_init)[0])  # the rule mg.init(k_init) makes
    new, metrics = step_from_start(rule0)
    assert int(metrics["rule_skipped"]) == 0 and float(metrics["rule_grad_norm"]) > 0
    moved = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(new.rule), jax.tree.leaves(rule0), strict=True)
    )
    assert moved > 0
    _, again = step_from_start(new.rule)  # the meta-loss of the new rule
    assert float(again["meta_loss"]) < float(metrics["meta_loss"])
    start = mg.init(k_init).agents.update_step  # staggered: agent i at about i/A of its life
    np.testing.assert_array_equal(new.agents.update_step, start + MG_SETTINGS.num_agent_updates)
    assert int(new.step) == 1


def _tiny_mg(time_aware=False, K=1, num_agents=2, **settings):
    cfg = dataclasses.replace(
        ES_CFG, inner=dict(INNER, num_envs=2, num_steps=4), hidden=8, time_aware=time_aware
    )
    settings = lpg.MetaGradientConfig(num_agents=num_agents, num_agent_updates=K, **settings)
    return lpg.make_meta_gradient_train(cfg, settings, levels=LEVELS)


@pytest.fixture(scope="module")
def ta_meta_gradient():
    """A TA-LPG meta-gradient with K = 1: the meta-loss, its aux and its gradient in the rule,
    from fresh agents (update counters given), one program."""
    mg = _tiny_mg(time_aware=True, K=1)

    @jax.jit
    def run(update_step):
        state = mg.init(jax.random.key(0))
        state = state.replace(agents=state.agents.replace(update_step=update_step))
        grad_fn = jax.value_and_grad(mg.meta_loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.rule, state, jax.random.key(1))
        return state, loss, aux, grads

    return mg, run


def test_ta_lpg_meta_gradient_reads_progress_and_regularises_the_updated_agent(ta_meta_gradient):
    """TA-LPG is allowed with meta-gradients: the rule's n/N and log N inputs get gradient, and
    the meta-loss depends on where the agents are in their lives. With K = 1 the entropy
    regulariser is the entropy of the *updated* agent theta_1 on the fresh rollout (by hand),
    not that of theta_0."""
    mg, run = ta_meta_gradient
    state, loss, (agents, data, _, stats, _), grads = run(jnp.zeros(2, jnp.int32))
    assert np.isfinite(float(loss))
    time_rows = grads["params"]["core"]["gru"]["ir"]["kernel"][4:6]  # n/N and log N
    assert float(jnp.abs(time_rows).sum()) > 0
    _, later, *_ = run(jnp.full(2, 7, jnp.int32))  # 7 of 12 updates done
    assert float(later) != float(loss)

    def entropy_of(params):
        actor = lambda p, obs: mg.agent.network.apply(p, obs, method=ActorCritic.actor)
        logits = jax.vmap(actor)(params, data["obs"])  # agents [A]
        p = np.asarray(jax.nn.softmax(logits), np.float64)
        return np.mean(-np.sum(p * np.log(p), axis=-1), axis=(-1, -2))  # [A]

    updated = entropy_of(agents.params)  # theta_1 on the fresh rollout, per agent
    np.testing.assert_allclose(float(stats["entropy"].mean()), updated.mean(), rtol=1e-5)
    before = entropy_of(state.agents.params)  # theta_0: the old definition
    assert not np.allclose(updated, before, rtol=1e-5, atol=0)
    assert np.all(np.asarray(agents.update_step) == 1)


def test_meta_gradient_bad_input_is_refused_before_compiling():
    with pytest.raises(ValueError, match="num_agents=6 is not divisible by agent_chunks=4"):
        lpg.MetaGradientConfig(num_agents=6, agent_chunks=4)
    with pytest.raises(ValueError, match="num_agent_updates=0"):
        lpg.MetaGradientConfig(num_agent_updates=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        lpg.MetaGradientConfig(max_grad_norm=-1.0)
    short = dataclasses.replace(ES_CFG, inner=dict(INNER, total_timesteps=8 * 16 * 3))
    with pytest.raises(ValueError, match="lifetime of 3 updates is shorter than the K = "):
        lpg.make_meta_gradient_train(short, lpg.MetaGradientConfig(num_agent_updates=5))
    with pytest.raises(ValueError, match="cannot pick the levels of agent resets"):
        lpg.make_meta_gradient_train(ES_CFG, curriculum=object())
    with pytest.raises(ValueError, match="levels or a curriculum, not both"):
        lpg.make_meta_gradient_train(
            ES_CFG, levels=LEVELS, curriculum=lpg.SampledLevels(lambda k, n: None)
        )


def test_stagger_offsets_spread_first_lives_in_multiples_of_k():
    offsets = lpg.stagger_offsets(jnp.array([12, 12, 12, 12]), 3)
    np.testing.assert_array_equal(offsets, [0, 3, 6, 9])
    offsets = lpg.stagger_offsets(jnp.array([10, 250, 250, 250, 250]), 5)
    np.testing.assert_array_equal(offsets, [0, 50, 100, 150, 200])


@pytest.mark.slow  # two compiles of a meta-step, ~60 s
def test_agent_chunks_give_the_unchunked_meta_gradient():
    one = _tiny_mg(K=2, num_agents=4)
    two = lpg.make_meta_gradient_train(
        one.config, dataclasses.replace(one.settings, agent_chunks=2), levels=LEVELS
    )
    key = jax.random.key(3)
    a, ma = jax.jit(lambda k: one.step(one.init(k), k))(key)
    b, mb = jax.jit(lambda k: two.step(two.init(k), k))(key)
    np.testing.assert_allclose(float(ma["meta_loss"]), float(mb["meta_loss"]), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a.rule), jax.tree.leaves(b.rule), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)


def test_no_finished_episode_gives_a_nan_fitness_never_zero():
    """Catch episodes last 9 steps; an agent living 4 env steps finishes none: its fitness is
    NaN (es.evolve ranks it worst and counts it), not the loop's placeholder 0."""
    cfg = dataclasses.replace(ES_CFG, inner=dict(INNER, num_envs=2, num_steps=4, total_timesteps=8))
    fitness = jax.jit(lpg.make_level_fitness(cfg))
    value = float(fitness(rule(), jax.random.key(0), CATCH))
    assert np.isnan(value)
    clean, bad = es.replace_nonfinite(jnp.array([0.3, value, -0.2]))
    assert int(bad) == 1 and float(clean[1]) <= -0.2


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("time_aware", [False, True])
def test_save_load_round_trip(tmp_path, time_aware):
    params = rule(4, time_aware=time_aware)
    lpg.save(tmp_path / "rule", params, {"trained_on": {"env": "Catch-bsuite"}})
    loaded, info = lpg.load(tmp_path / "rule")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert info["time_aware"] is time_aware and info["y_size"] == 8 and info["hidden"] == HIDDEN
    assert info["trained_on"] == {"env": "Catch-bsuite"}


def test_loading_for_another_y_width_is_refused(tmp_path):
    lpg.save(tmp_path / "rule", rule(y_size=6))
    with pytest.raises(ValueError, match="predicts y of width 6, but y_size=8"):
        lpg.load(tmp_path / "rule", y_size=8)
    cfg = a2c.A2CConfig(
        env="Catch-bsuite",
        hidden_sizes=(),
        shared_torso=True,
        num_envs=2,
        num_steps=4,
        prediction_size=8,
    )
    spec = {"name": "lpg", "path": str(tmp_path / "rule")}
    meta_objectives.register()
    with pytest.raises(ValueError, match="'lpg': the LPG rule .* width 6"):
        objectives.build(spec, cfg)
    built = objectives.build(spec, dataclasses.replace(cfg, prediction_size=6))
    assert isinstance(built, lpg.LPGObjective) and built.shape.y_size == 6
    with pytest.raises(ValueError, match="needs path"):
        objectives.build({"name": "lpg"}, cfg)


def test_corrupt_or_missing_rules_are_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no saved LPG rule"):
        lpg.load(tmp_path / "missing")
    path = lpg.save(tmp_path / "rule", rule())
    victim = next(p for p in sorted(path.rglob("*")) if p.is_file() and "ocdbt" in str(p))
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(checkpoint.CheckpointError, match="saved LPG rule.*fails its checksum"):
        lpg.load(path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="is not a saved LPG rule; not overwriting"):
        lpg.save(tmp_path / "other", rule())


def test_grid_world_levels_drop_in():
    """A batch of `envs.gridworld` levels (env-params pytrees) is a level set for the ES
    fitness (traced only: shapes)."""
    from envs import gridworld

    cfg = lpg.LPGConfig(
        env="gridworld/all", hidden=HIDDEN, inner=dict(INNER, num_steps=20, total_timesteps=160)
    )
    levels = gridworld.sample_levels(jax.random.key(0), 4, "all")
    fitness = lpg.make_fitness(cfg, levels)
    out = jax.eval_shape(fitness, cfg.init_params(jax.random.key(0)), jax.random.key(1))
    assert out.shape == () and out.dtype == jnp.float32


# --------------------------------------------------------------------------- per-level lifetimes


def test_lifetime_features_are_progress_through_the_level_lifetime():
    ctx = objectives.Context(None, None, jnp.float32(10 / 50), 50, None)
    assert lpg.lifetime_features(ctx) == (ctx.progress, 50)
    progress, n = lpg.lifetime_features(ctx, 20)
    assert float(progress) == 0.5 and float(n) == 20.0
    progress, _ = lpg.lifetime_features(ctx, 8)  # past the lifetime: clipped at 1
    assert float(progress) == 1.0


def test_a_level_lifetime_equals_a_config_lifetime_for_its_updates():
    """A TA-LPG agent run for 20 updates on a level of lifetime 10 (level_lifetime=True) sees
    n/10 and log 10 and is scored at update 10: the same fitness as an agent configured for 10
    updates (learning rate not annealed, so the first 10 updates are the same)."""
    from envs import gridworld

    params = rule(3, time_aware=True)
    level = gridworld.default_level("small").replace(lifetime=jnp.int32(10))
    base = dict(INNER, num_envs=4, num_steps=8, anneal_lr=False)
    long = lpg.LPGConfig(env="gridworld/small", hidden=HIDDEN, time_aware=True,
                         inner=dict(base, total_timesteps=4 * 8 * 20), level_lifetime=True)  # fmt: skip
    short = dataclasses.replace(long, inner=dict(base, total_timesteps=4 * 8 * 10),
                                level_lifetime=False)  # fmt: skip
    key = jax.random.key(4)
    got = jax.jit(lpg.make_level_fitness(long))(params, key, level)
    want = jax.jit(lpg.make_level_fitness(short))(params, key, level)
    assert np.isfinite(float(want))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    # without the flag the long agent is scored at its own 20 updates
    other = jax.jit(lpg.make_level_fitness(dataclasses.replace(long, level_lifetime=False)))
    assert float(other(params, key, level)) != float(want)


def test_level_lifetime_needs_levels_with_a_lifetime():
    cfg = lpg.LPGConfig(env="Catch-bsuite", hidden=HIDDEN, inner=INNER, level_lifetime=True)
    with pytest.raises(ValueError, match="no `lifetime` field"):
        jax.eval_shape(lpg.make_fitness(cfg), rule(), jax.random.key(0))
