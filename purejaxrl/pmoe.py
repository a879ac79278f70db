"""Gradient estimators for mixture-of-experts policies (PMOE, Ren et al. 2021, arXiv 2104.09122).

A `distributions.GaussianMixture` policy picks expert k ~ Categorical(w(s)) and samples from it.
That discrete choice has no reparameterisation, so the mixing weights w need an estimator. Every
estimator here scores one reparameterised proposal per expert, u_k ~ N(mu_k, sigma_k), with a
critic, and the agents (SAC, PPO) build their losses from these pieces:

- "pmoe" (the paper's frequency-approximate gradient): k* = argmax_k Q(s, u_k); only expert k*
  receives the actor gradient (`only_expert`), and the weights regress onto one_hot(k*)
  (`weight_regression_loss`), so E[w_k(s)] is the frequency with which expert k wins at s.
- "gumbel": the one-hot expert choice relaxed by Gumbel-softmax, y = softmax((logits + g) /
  temperature) (`gumbel_softmax`), weighting the experts' objectives: sum_k y_k f(u_k)
  (`relaxed_choice`); gradients reach the weights through y. Biased for temperature > 0 (the bias
  vanishes as temperature -> 0, where the variance grows). The choice is relaxed, not the action:
  a blend sum_k y_k u_k of the experts' samples lands between the modes, where it is no sample of
  the policy and -log pi there is no entropy estimate (SAC then pushes the experts apart without
  bound: measured, it collapsed onto the box edges with zero return on multimodal/bandit).
- "score": k ~ w, and the score-function (REINFORCE) term stop_grad(f_k - b) log w_k with the
  baseline b = sum_j w_j f_j over all experts' proposals (`score_function_term`); unbiased.

Shapes: B states, K experts, d action dims. Everything is a pure function of arrays. The last
section reads a trained mixture's experts (weights, means, action density) back out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxrl import objectives

MIXTURE_GRADS = ("pmoe", "gumbel", "score")


def best_expert(scores: jax.Array) -> jax.Array:
    """k* = argmax_k scores `[B, K]` -> int32 `[B]` (no gradient)."""
    return jnp.argmax(jax.lax.stop_gradient(scores), axis=-1)


def select(x: jax.Array, k: jax.Array) -> jax.Array:
    """x[b, k[b]]: x `[B, K, ...]`, k int `[B]` -> `[B, ...]`."""
    idx = k.reshape(k.shape + (1,) * (x.ndim - k.ndim))
    return jnp.squeeze(jnp.take_along_axis(x, idx, axis=k.ndim), axis=k.ndim)


def weight_regression_loss(logits: jax.Array, target_expert: jax.Array) -> jax.Array:
    """mean_b sum_k (w_k(s_b) - one_hot(k*_b)_k)^2, w = softmax(logits `[B, K]`): PMOE's weight loss."""
    w = jax.nn.softmax(logits, axis=-1)
    target = jax.nn.one_hot(target_expert, logits.shape[-1], dtype=w.dtype)
    return jnp.mean(jnp.sum((w - target) ** 2, axis=-1))


def only_expert(out, k: jax.Array):
    """Mixture head outputs (logits, mean `[B, K, d]`, log_std `[B, K, d]`) through which only
    expert k `[B]` passes gradient: the other experts' parameters and the weights are constants."""
    logits, mean, log_std = out
    keep = jax.nn.one_hot(k, mean.shape[-2], dtype=bool)[..., None]
    sg = jax.lax.stop_gradient
    mask = lambda x: jnp.where(keep, x, sg(x))
    return sg(logits), mask(mean), mask(jnp.broadcast_to(log_std, mean.shape))


def frozen_weights(out):
    """Mixture head outputs whose weights pass no gradient (experts do)."""
    logits, mean, log_std = out
    return jax.lax.stop_gradient(logits), mean, log_std


def gumbel_softmax(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
    """Relaxed one-hot sample y = softmax((logits + g) / temperature), g ~ Gumbel(0, 1): `[B, K]`."""
    g = jax.random.gumbel(key, logits.shape, logits.dtype)
    return jax.nn.softmax((logits + g) / temperature, axis=-1)


def relaxed_choice(y: jax.Array, values: jax.Array) -> jax.Array:
    """sum_k y_k values_k per state: y `[B, K]` relaxed one-hot, values `[B, K]` -> `[B]`."""
    return jnp.sum(y * values, axis=-1)


def score_function_term(logits: jax.Array, k: jax.Array, f: jax.Array) -> jax.Array:
    """Scalar whose gradient in `logits` is the REINFORCE estimate of grad E_{k~w}[f_k]:
    mean_b stop_grad(f_bk - b_b) log w_k(s_b), baseline b_b = sum_j w_j f_bj (f `[B, K]`, k `[B]`).

    Its value is not the objective (add the objective separately); with the baseline built from
    every expert's proposal, E_k[term gradient] stays unbiased given the proposals."""
    log_w = jax.nn.log_softmax(logits, axis=-1)
    f = jax.lax.stop_gradient(f)
    baseline = jnp.sum(jax.lax.stop_gradient(jnp.exp(log_w)) * f, axis=-1)
    return jnp.mean((select(f, k) - baseline) * select(log_w, k))


def check_mixture_fields(cfg) -> None:
    """ValueError naming `num_experts` / `mixture_grad` / `gumbel_temperature` / `mixture_coef`."""
    from purejaxrl import config as C

    name = type(cfg).__name__
    k = cfg.num_experts
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}.num_experts={k!r}: must be an integer >= 1")
    if k > 1 and cfg.policy != "pmoe":
        raise ValueError(
            f"{name}.num_experts={k}: more than one expert needs policy='pmoe', got "
            f"policy={cfg.policy!r}"
        )
    C.check_choice(cfg, "mixture_grad", MIXTURE_GRADS)
    C.check_range(cfg, "gumbel_temperature", 0.0, float("inf"), low_open=True)
    C.check_range(cfg, "mixture_coef", 0.0, float("inf"))


# --------------------------------------------------------------------------- PPO plug-in


@dataclasses.dataclass(frozen=True)
class RoutedHead:
    """A policy head whose `log_prob` sees `route(out)` (same values, gradient routed by the
    estimator); every other method is the wrapped head's, on the unrouted outputs."""

    head: Any
    route: Callable[[Any], Any]

    def log_prob(self, out, action):
        return self.head.log_prob(self.route(out), action)

    def __getattr__(self, name):
        return getattr(self.head, name)


@dataclasses.dataclass(frozen=True)
class MixtureObjective(objectives.Objective):
    """Wraps an on-policy objective for a mixture policy of K > 1 experts (PPO's PMOE).

    An action-value Q(s, a) = V(s) + A(h(s), a) (the network's `mixture_q` advantage head on the
    critic's last hidden features h, `ActorCritic.action_value`) is trained on the base
    objective's return targets with weight `vf_coef`; h and V are held constant in its loss. In
    `targets`, one reparameterised proposal per expert is drawn and scored by the update-start
    policy and Q (`scores [T, N, K]`: constants of every minibatch loss). In `loss`, `estimator`
    credits the mixture: "pmoe" routes the base objective's policy gradient through the
    best-scoring expert only (`only_expert`) and regresses the weights onto one_hot(k*); "gumbel"
    and "score" route it to every expert (weights frozen) and train the weights to raise the
    batch-normalised Q of the chosen expert's proposal, by Gumbel-softmax relaxation or
    REINFORCE. The probability ratio uses the exact mixture likelihood; entropy the whole mixture.
    """

    base: objectives.Objective
    estimator: str
    vf_coef: Any
    mixture_coef: Any
    gumbel_temperature: Any

    @property
    def time_ordered(self):
        return self.base.time_ordered

    def check(self, cfg) -> None:
        self.base.check(cfg)

    def targets(self, rollout, ctx):
        out = self.base.targets(rollout, ctx)
        obs = rollout["obs"]
        flat = obs.reshape((-1, *obs.shape[2:]))
        outputs = ctx.apply(flat, method="outputs")
        proposals, _ = ctx.head.sample_experts(ctx.key, outputs["policy"])  # [B, K, d]
        scores = ctx.apply(
            outputs["features"],
            outputs["value"],
            ctx.head.to_env(proposals),
            method="action_value",
        )
        return {**out, "scores": scores.reshape((*obs.shape[:2], scores.shape[-1]))}

    def loss(self, outputs, batch, ctx):
        head, policy = ctx.head, outputs["policy"]
        action = head.to_env(batch["action"])
        q_taken = ctx.apply(outputs["features"], outputs["value"], action, method="action_value")
        q_loss = 0.5 * jnp.mean((q_taken - batch["targets"]) ** 2)
        scores, logits = batch["scores"], policy[0]
        if self.estimator == "pmoe":
            best = best_expert(scores)
            route = lambda out: only_expert(out, best)
            weight_loss = weight_regression_loss(logits, best)
        else:
            route = frozen_weights
            shaped = (scores - scores.mean()) / (scores.std() + 1e-8)
            if self.estimator == "gumbel":
                y = gumbel_softmax(ctx.key, logits, self.gumbel_temperature)
                weight_loss = -jnp.mean(relaxed_choice(y, shaped))
            else:
                chosen = head.sample_expert_index(ctx.key, policy)
                weight_loss = -score_function_term(logits, chosen, shaped)
        loss, aux = self.base.loss(outputs, batch, ctx._replace(head=RoutedHead(head, route)))
        loss = loss + (self.vf_coef * q_loss + self.mixture_coef * weight_loss)
        weight_max = jnp.mean(jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1))
        return loss, {**aux, "q_loss": q_loss, "weight_loss": weight_loss, "weight_max": weight_max}


def plug_into_objective(objective, cfg, head):
    """`objective` wrapped in `MixtureObjective` when `head` is a mixture of K > 1 experts (the
    network then has the Q head, networks.ActorCritic); otherwise unchanged."""
    from purejaxrl.distributions import GaussianMixture

    if not (isinstance(head, GaussianMixture) and head.num_experts > 1):
        return objective
    return MixtureObjective(
        base=objective,
        estimator=cfg.mixture_grad,
        vf_coef=cfg.vf_coef,
        mixture_coef=cfg.mixture_coef,
        gumbel_temperature=cfg.gumbel_temperature,
    )


# --------------------------------------------------------------------------- the trained experts

# The multimodal bandit's contexts (envs/multimodal.py): observation [blocked_left,
# blocked_right, t / horizon] at the episode's start.
CONTEXTS = {"unblocked": (0.0, 0.0), "left_blocked": (1.0, 0.0), "right_blocked": (0.0, 1.0)}
MIN_WEIGHT = 0.2  # an expert "holds" a mode if its weight is at least this ...
MODE_TOL = 0.15  # ... and its (squashed) mean is within this of the mode


def mixture_outputs(agent, params, obs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actor outputs at `obs` [C, obs_dim] for seed-batched params, in mixture form:
    (weights [S, C, K], pre-squash mean [S, C, K, d], std [S, C, K, d]); a Gaussian is K = 1."""
    network = agent.network
    out = jax.vmap(lambda p: network.apply(p, obs, method=network.actor))(params)
    if len(out) == 3:
        logits, mean, log_std = out
    else:
        mean, log_std = out
        mean, log_std = mean[..., None, :], jnp.broadcast_to(log_std, mean.shape)[..., None, :]
        logits = jnp.zeros(mean.shape[:-1])
    weights = jax.nn.softmax(logits, axis=-1)
    return np.asarray(weights), np.asarray(mean), np.asarray(jnp.exp(log_std))


def squashed(agent) -> bool:
    """Whether the policy's action is tanh(u) (SAC, tanh heads) rather than clip(u) (PPO)."""
    return bool(np.allclose(agent.head.to_env(jnp.asarray(2.0)), np.tanh(2.0)))


def action_density(weights, mean, std, squash: bool, a: np.ndarray):
    """Mixture density over actions a [N] in (-1, 1) for one state's weights [K], mean/std [K]
    (pre-squash, action dim 0) -> (total [N], weighted components [K, N])."""
    u = np.arctanh(a) if squash else a
    jac = 1.0 / (1.0 - a**2) if squash else 1.0
    z = (u[None] - mean[:, None]) / std[:, None]
    comps = weights[:, None] * np.exp(-0.5 * z**2) / (std[:, None] * np.sqrt(2 * np.pi)) * jac
    return comps.sum(0), comps


def expert_stats(agent, state) -> dict:
    """Per bandit context: weights, means and stds per seed and expert, where the experts' means
    sit in action space, the weight near each mode, and the fraction of seeds whose two modes are
    held by different experts of weight >= MIN_WEIGHT (unblocked context)."""
    mode = float(agent.env_params.mode)
    obs = jnp.asarray([[bl, br, 0.0] for bl, br in CONTEXTS.values()], jnp.float32)
    weights, mean, std = mixture_outputs(agent, state.params, obs)
    u = mean[..., 0]  # [S, C, K], action dim 0
    action = np.tanh(u) if squashed(agent) else np.clip(u, -1.0, 1.0)
    near_left, near_right = np.abs(action + mode) < MODE_TOL, np.abs(action - mode) < MODE_TOL
    contexts = {
        name: {
            "weights": weights[:, c].tolist(),
            "mean": mean[:, c, :, 0].tolist(),
            "std": std[:, c, :, 0].tolist(),
            "action_mean": action[:, c].tolist(),
            "weight_near_left_mode": (weights[:, c] * near_left[:, c]).sum(-1).tolist(),
            "weight_near_right_mode": (weights[:, c] * near_right[:, c]).sum(-1).tolist(),
        }
        for c, name in enumerate(CONTEXTS)
    }
    held = weights[:, 0] >= MIN_WEIGHT  # [S, K], unblocked context
    left, right = held & near_left[:, 0], held & near_right[:, 0]
    # Different experts: some expert on the left and another on the right.
    split = left.any(-1) & right.any(-1) & ((left.sum(-1) + right.sum(-1)) >= 2)
    top = np.take_along_axis(action[:, 0], weights[:, 0].argmax(-1)[:, None], axis=-1)[:, 0]
    where = lambda a: (
        "mode" if abs(abs(a) - mode) < MODE_TOL else "valley" if abs(a) < mode / 2 else "between"
    )
    return {
        "contexts": contexts,
        "both_modes_split_per_seed": split.tolist(),
        "both_modes_split_fraction": float(split.mean()),
        "top_expert_location_unblocked": [where(a) for a in top],
    }
