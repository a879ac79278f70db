"""Adaptive l2 attack on a smoothed policy with a total budget over the episode.

Threat model (policy smoothing, Kumar, Levine, Feizi, ICLR 2022): at each step t the adversary
sees the clean observation and the history, and adds eps_t to the raw observation before the
smoothing noise (and before frame stacking), with sqrt(sum_t ||eps_t||^2) <= B over the episode
(observation units). The policy then acts on obs_t + eps_t + N(0, sigma^2 I), fresh noise.

Greedy with carried-over budget, as the paper's attack code: the episode starts with B^2 left; at
step t the attacker searches eps_t in the l2 ball of radius sqrt(left) by projected,
normalised-gradient steps (eps <- proj(eps -/+ step_size * g / ||g||), at most
`num_steps_per_attack` steps), then left <- left - ||eps_t||^2. The target at step t is the
smoothed policy, estimated by `num_noise_draws` noise draws z_j ~ N(0, sigma^2 I) drawn once per
time step and shared by all of that step's gradient steps (a fixed Monte-Carlo objective).

Objectives:
- Discrete (categorical head): smoothed scores s(eps) = mean_j log_softmax(logits(obs + eps + z_j))
  `[A]`, the analogue of the paper's smoothed Q (mean over draws); a0 = argmax s(0). PPO has no
  Q(s, a), so the policy's own smoothed scores stand in for action values: the target is the
  action with the lowest smoothed score other than a0 (for two actions, the other one), and the
  steps ascend s_target - s_a0. The first iterate on the path whose smoothed argmax is not a0 is
  kept ("stop at the first flip": the path grows from 0 in steps of `step_size`, so that is the
  smallest flipping perturbation on it, to within one step); no flip within the ball: eps_t = 0,
  nothing spent.
- Continuous, SAC (a twin critic `critic(obs, action) -> [2, B]`): minimise
  mean_j min_i Q_i(x, a(obs + eps + z_j)), x the clean (unperturbed, noise-free) observation
  (with frame stacking: the earlier noisy frames and the clean current one) and a the policy's
  deterministic action; the iterate with the lowest objective on the path (0
  included) is kept, so eps_t = 0 unless it lowers the smoothed Q.
- Continuous with a state-value critic (PPO, A2C; "lookahead", their default when the env's
  dynamics are differentiable: gymnax Pendulum / MountainCarContinuous, brax, envs.multimodal):
  minimise the smoothed policy's predicted return from here, mean_j [sum_{h<H} gamma^h r_h +
  gamma^H V(x_H)], simulated from the true env state (white-box) with the perturbed observation at
  h = 0 and the smoothed policy's mode on noisy clean observations after it; V in reward units
  (times the frozen reward-normalisation std). The gradient flows through the env's dynamics
  (gymnax >= 1.0 detaches transitions unless asked, see envs.gymnax_env.with_transition_gradients).
  `lookahead` = H sets how far it looks before trusting the critic. Kept as for SAC.
- Continuous, "log_prob" (the fallback for non-differentiable envs): minimise
  mean_j log pi(a_clean | obs + eps + z_j), a_clean the mode on the clean observation: push the
  smoothed policy away from the action it would take unattacked. Kept as for SAC.
Each continuous step spends at most (num_steps_per_attack * step_size)^2, so the budget is spread
over the episode rather than thrown at the first step, and only when the best iterate lowers the
objective by at least `min_gain` (objective units, traced; the paper's q_threshold plays this
role): a threshold keeps the budget for the steps where it does damage. The experiment reports the
strongest of several (step_size, min_gain) settings, as the paper reports the min over thresholds.

With budget 0, the same key and the same sigma, the attacked run is `montecarlo.smoothed_returns`
bit for bit: same env, noise and action keys (the attacker's draws use their own key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs import wrappers
from envs.gymnax_env import with_transition_gradients
from purejaxrl.loop import Agent
from purejaxrl.robust import montecarlo as mc

OBJECTIVES = ("auto", "scores", "q", "lookahead", "log_prob")
_SHRINK = 1.0 - 1e-6  # projection radius margin: float32 rounding never overspends the budget


def _has_twin_q(agent: Agent) -> bool:
    from purejaxrl.sac import SACNetwork

    return isinstance(agent.network, SACNetwork)


def resolve_objective(agent: Agent, objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: allowed values are {list(OBJECTIVES)}")
    discrete = agent.head.discrete
    if objective == "auto":
        if discrete:
            return "scores"
        if _has_twin_q(agent):
            return "q"
        return "lookahead" if _differentiable(agent) else "log_prob"
    if (objective == "scores") != discrete:
        kind = "discrete" if discrete else "continuous"
        raise ValueError(f"objective={objective!r} does not apply to this {kind}-action agent")
    if objective == "q" and not _has_twin_q(agent):
        raise ValueError("objective='q' needs a SAC agent (a twin critic Q(obs, action))")
    if objective == "lookahead":
        if _has_twin_q(agent):
            raise ValueError("objective='lookahead' needs a state-value critic V(obs) (PPO, A2C)")
        with_transition_gradients(mc.clean_single_env(agent))  # raises, naming the env
    return objective


def _differentiable(agent: Agent) -> bool:
    try:
        with_transition_gradients(mc.clean_single_env(agent))
    except ValueError:
        return False
    return True


def value_scale(agent: Agent, state) -> jax.Array:
    """Reward units per unit of the critic's V: sqrt(var + eps) of the frozen `NormalizeReward`
    statistics when the agent trained on normalised rewards (V then predicts scaled returns), else
    1. The clip of normalised rewards at +-10 is ignored (V is the unclipped scale's estimate)."""
    if not agent.config.normalize_reward:
        return jnp.ones((), jnp.float32)
    # actor_critic.make_env puts NormalizeReward outermost on the training env.
    stats = wrappers.reward_norm_stats(state.env_state)
    return jnp.sqrt(stats.var + agent.env.epsilon)


def project(eps: jax.Array, radius: jax.Array) -> jax.Array:
    """`eps` scaled into the l2 ball of `radius` (all axes of one perturbation)."""
    norm = jnp.sqrt(jnp.sum(eps**2))
    scale = jnp.where(norm > radius, radius / jnp.maximum(norm, 1e-30), 1.0)
    return eps * scale


def _unit(g: jax.Array) -> jax.Array:
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    return g / jnp.maximum(jnp.sqrt(jnp.sum(g**2)), 1e-20)


def make_lookahead(agent, smoothing, state):
    """`value(eps, obs, frames, first, env_state, z, env_keys) -> []`: the smoothed policy's
    discounted reward over the next H steps (H = z.shape[1]) plus the discounted critic value
    after them, when the current observation is perturbed by `eps`, averaged over noise draws.

    z `[M, H, *obs_shape]`: the noise of each draw at each lookahead step (the first on the
    perturbed observation, the rest on the clean ones: the attacker plans one perturbation at a
    time); env_keys `[M, H]`. Draw j: a_0 = mode(actor(obs + eps + z_j0)), then the env steps
    from the true env state (the attacker is white-box), acting with the smoothed policy's mode
    on later steps; value = sum_h gamma^h r_h alive_h + gamma^H alive_H V_raw(x_H), alive_h = 0
    after the episode ended (its later rewards do not count towards this episode's total). V_raw:
    the critic in reward units (`value_scale`). Differentiable in eps through the env's dynamics
    (gymnax classic control and brax are pure JAX).
    """
    s, head, network = smoothing, agent.head, agent.network
    env = with_transition_gradients(s.env)
    gamma = jnp.asarray(agent.config.gamma, jnp.float32)
    scale = value_scale(agent, state)

    def one_draw(eps, obs, frames, first, env_state, z, env_keys):
        def step(carry, inputs):
            env_state, obs, frames, first, alive, total, discount, pert = carry
            z_h, key_h = inputs
            frames = s.push(frames, obs + pert + z_h, first)
            action = head.to_env(head.mode(s.actor(s.features(frames))))
            obs, env_state, reward, term, trunc, _ = env.step(
                key_h, env_state, action, s.env_params
            )
            total = total + discount * alive * reward
            alive = alive * (1.0 - jnp.logical_or(term, trunc).astype(jnp.float32))
            not_first = jnp.zeros_like(first)
            carry = (env_state, obs, frames, not_first, alive, total, discount * gamma, 0.0 * pert)
            return carry, None

        one = jnp.ones((), jnp.float32)
        init = (env_state, obs, frames, first, one, 0.0 * one, one, eps)
        carry, _ = jax.lax.scan(step, init, (z, env_keys))
        _, obs, frames, _, alive, total, discount, _ = carry
        x = s.features(s.push(frames, obs, jnp.zeros_like(first)))
        value = network.apply(state.params, x, method=network.critic) * scale
        return total + discount * alive * value

    draws = jax.vmap(one_draw, in_axes=(None, None, None, None, None, 0, 0))

    def value(eps, obs, frames, first, env_state, z, env_keys):
        return jnp.mean(draws(eps, obs, frames, first, env_state, z, env_keys))

    return value


def flip_search(scores, zeros, radius, num_steps, step_size):
    """The discrete ("scores") attack: from eps = 0, normalised-gradient steps that raise
    s_target - s_a0 (a0 = argmax s(0), target the lowest other score), stopped at the first
    iterate whose smoothed argmax is not a0; 0 when no iterate flips. scores(eps) -> `[A]`."""
    s0 = scores(zeros)
    a0 = jnp.argmax(s0)
    target = jnp.argmin(jnp.where(jnp.arange(s0.shape[-1]) == a0, jnp.inf, s0))

    def margin(eps):
        sc = scores(eps)
        return sc[target] - sc[a0], sc

    grad = jax.grad(margin, has_aux=True)

    def cond(c):
        i, _, found = c
        return (i <= num_steps) & ~found & (radius > 0)

    def body(c):
        i, eps, _ = c
        g, sc = grad(eps)
        flipped = jnp.argmax(sc) != a0
        moved = project(eps + step_size * _unit(g), radius)
        return i + 1, jnp.where(flipped, eps, moved), flipped

    init = (jnp.zeros((), jnp.int32), zeros, jnp.zeros((), bool))
    _, eps, found = jax.lax.while_loop(cond, body, init)
    return jnp.where(found, eps, 0.0)


def descend(loss, zeros, start, radius, num_steps, step_size, min_gain):
    """The continuous attacks: projected normalised-gradient descent on loss(eps) `[]` from
    `start`, keeping the lowest iterate on the path (eps = 0 the starting best); spent only for a
    gain loss(0) - best >= min_gain (objective units; the paper's q_threshold plays this role)."""
    value_and_grad = jax.value_and_grad(loss)

    def cond(c):
        return (c[0] <= num_steps) & (radius > 0)

    def body(c):
        i, eps, best_value, best_eps = c
        value, g = value_and_grad(eps)
        better = value < best_value
        best_value = jnp.where(better, value, best_value)
        best_eps = jnp.where(better, eps, best_eps)
        return i + 1, project(eps - step_size * _unit(g), radius), best_value, best_eps

    value0 = loss(zeros)
    init = (jnp.ones((), jnp.int32), start(), value0, zeros)
    _, _, best_value, best_eps = jax.lax.while_loop(cond, body, init)
    return jnp.where(value0 - best_value >= min_gain, best_eps, zeros)


def make_step_attack(
    agent,
    smoothing,
    state,
    objective,
    num_draws,
    num_steps,
    sigma,
    step_size,
    lookahead=1,
    min_gain=0.0,
):
    """`attack(obs, frames, first, radius, key, env_state) -> eps` for one episode's current step.

    obs `[*obs_shape]` (clean), frames `[k, *obs_shape]` (the previous noisy frames), first `[]`,
    radius `[]` (sqrt of the budget left; 0: no attack), env_state (the true state, used by the
    "lookahead" objective); returns eps `[*obs_shape]`, ||eps|| <= radius.
    """
    s, head, network = smoothing, agent.head, agent.network
    push_draws = jax.vmap(s.push, in_axes=(None, 0, None))
    if objective == "lookahead":
        lookahead_value = make_lookahead(agent, smoothing, state)

    def attack(obs, frames, first, radius, key, env_state):
        if objective == "lookahead":
            noise_key, env_key = jax.random.split(key)
            z = sigma * jax.random.normal(noise_key, (num_draws, lookahead, *obs.shape), obs.dtype)
            env_keys = jax.random.split(env_key, (num_draws, lookahead))
        else:
            z = sigma * jax.random.normal(key, (num_draws, *obs.shape), obs.dtype)

        def draws_input(eps):  # [M, *input_shape]
            return s.features(push_draws(frames, obs + eps + z, first))

        clean_x = s.features(s.push(frames, obs, first))[None]  # [1, *input_shape]
        zeros = jnp.zeros_like(obs)
        if objective == "scores":

            def scores(eps):
                return jnp.mean(jax.nn.log_softmax(s.actor(draws_input(eps)), axis=-1), axis=0)

            return flip_search(scores, zeros, radius, num_steps, step_size)

        if objective == "q":
            clean_rep = jnp.broadcast_to(clean_x, (num_draws, *clean_x.shape[1:]))

            def loss(eps):
                action = head.to_env(head.mode(s.actor(draws_input(eps))))
                q = network.apply(state.params, clean_rep, action, method=network.critic)
                return jnp.mean(jnp.min(q, axis=0))

        elif objective == "lookahead":

            def loss(eps):
                return lookahead_value(eps, obs, frames, first, env_state, z, env_keys)

        else:  # log_prob
            clean_action = jax.lax.stop_gradient(head.mode(s.actor(clean_x)))  # [1, d]

            def loss(eps):
                return jnp.mean(head.log_prob(s.actor(draws_input(eps)), clean_action))

        def start():
            if objective != "log_prob":
                return zeros
            # eps = 0 is the log-density's maximum (a stationary point: zero gradient without
            # noise), so the path starts one step away, in a random direction.
            direction = jax.random.normal(jax.random.fold_in(key, 7), obs.shape, obs.dtype)
            return project(step_size * _unit(direction), radius)

        return descend(loss, zeros, start, radius, num_steps, step_size, min_gain)

    return attack


def make_attacked_returns(
    agent: Agent,
    num_episodes: int,
    num_noise_draws: int = 128,
    num_steps_per_attack: int = 100,
    deterministic: bool = True,
    max_steps: int | None = None,
    objective: str = "auto",
    lookahead: int = 1,
):
    """jitted `fn(state, key, sigma, budget, step_size, min_gain=0.0) -> (returns [n],
    spent_budget_sq [n])`; sigma, budget, step_size and min_gain are traced (one compile for a
    sweep over them). min_gain: continuous objectives only (see the module docstring)."""
    mc.check_positive_int("num_episodes", num_episodes)
    mc.check_positive_int("num_noise_draws", num_noise_draws)
    mc.check_positive_int("num_steps_per_attack", num_steps_per_attack)
    mc.check_positive_int("lookahead", lookahead)
    mc.check_max_steps(max_steps)
    objective = resolve_objective(agent, objective)
    horizon = mc.resolve_horizon(agent, max_steps)

    def fn(state, key, sigma, budget, step_size, min_gain=0.0):
        smoothing = mc.make_smoothing(agent, state)
        sigma = jnp.asarray(sigma, jnp.float32)
        step_attack = make_step_attack(
            agent,
            smoothing,
            state,
            objective,
            num_noise_draws,
            num_steps_per_attack,
            sigma,
            jnp.asarray(step_size, jnp.float32),
            lookahead,
            jnp.asarray(min_gain, jnp.float32),
        )
        batched = jax.vmap(step_attack)

        def perturb(obs, frames, first, active, carry, key, env_state):
            left, spent = carry  # [n], [n]: squared budget left and spent
            radius = jnp.where(active, jnp.sqrt(left) * _SHRINK, 0.0)
            keys = jax.random.split(key, num_episodes)
            eps = batched(obs, frames, first, radius, keys, env_state)
            # Belt and braces: never spend more than is left, whatever rounding did.
            axes = tuple(range(1, eps.ndim))
            sq = jnp.sum(eps**2, axis=axes)
            over = sq > left
            shrink = jnp.where(over, jnp.sqrt(left / jnp.maximum(sq, 1e-30)) * _SHRINK, 1.0)
            eps = eps * shrink.reshape(-1, *([1] * (eps.ndim - 1)))
            sq = jnp.sum(eps**2, axis=axes)
            return eps, (jnp.maximum(left - sq, 0.0), spent + sq)

        budget_sq = jnp.asarray(budget, jnp.float32) ** 2
        carry = (jnp.full((num_episodes,), budget_sq), jnp.zeros((num_episodes,), jnp.float32))
        returns, (_, spent) = mc.run_episodes(
            agent, smoothing, key, sigma, num_episodes, horizon, deterministic, perturb, carry
        )
        return returns, spent

    return jax.jit(fn)


def attacked_returns(
    agent: Agent,
    state,
    key: jax.Array,
    sigma: float,
    budget: float,
    num_episodes: int,
    num_noise_draws: int = 128,
    num_steps_per_attack: int = 100,
    step_size: float = 0.01,
    deterministic: bool = True,
    max_steps: int | None = None,
    objective: str = "auto",
    lookahead: int = 1,
    min_gain: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Total rewards `[num_episodes]` of the smoothed policy (as `montecarlo.smoothed_returns`,
    same keys) under the greedy adaptive attack with total l2 budget `budget` (observation units),
    and each episode's spent squared budget sum_t ||eps_t||^2 `[num_episodes]` (<= budget^2).

    num_noise_draws: noise draws per step for the attacker's smoothed objective (the paper: 128);
    num_steps_per_attack, step_size: projected normalised-gradient steps per time step (the
    paper's step: 0.01); objective: "auto" (discrete: "scores"; SAC: "q"; other continuous:
    "lookahead"), see the module docstring; lookahead: env steps simulated by the "lookahead"
    objective before bootstrapping with the critic; min_gain: the least drop of a continuous
    objective worth spending budget on (traced). Only the first episode of each env is attacked
    and counted. Compiled once per (agent, sizes, objective, lookahead); sigma, budget and
    step_size are traced.
    Raises ValueError naming a bad argument (sigma < 0, budget < 0, step_size <= 0, counts <= 0).
    """
    for name, value in (("sigma", sigma), ("budget", budget), ("step_size", step_size),
                        ("min_gain", min_gain)):  # fmt: skip
        mc.check_nonnegative(name, value)
    if not isinstance(step_size, jax.core.Tracer) and not step_size > 0:
        raise ValueError(f"step_size={step_size!r}: must be > 0")
    sizes = (num_episodes, num_noise_draws, num_steps_per_attack, bool(deterministic), max_steps)
    sizes += (resolve_objective(agent, objective), lookahead)
    fn = mc.cached(
        agent, ("attacked_returns", *sizes), lambda: make_attacked_returns(agent, *sizes)
    )
    return fn(state, key, sigma, budget, step_size, min_gain)
