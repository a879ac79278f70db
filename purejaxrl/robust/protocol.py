"""Certify and attack one smoothed policy (policy smoothing, Kumar, Levine, Feizi, ICLR 2022): the
evaluation protocol of experiments.smoothing, one trained policy at a time, with plain arguments and
results. Returns are total rewards per episode; sigma and budgets are in observation units (l2)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from purejaxrl.evaluation import episode_horizon
from purejaxrl.robust import attack, certify
from purejaxrl.robust import montecarlo as mc

# Pendulum-v1's reward is -(theta^2 + 0.1 thetadot^2 + 0.001 u^2), |theta| <= pi, |thetadot| <= 8,
# |u| <= 2: at least -(pi^2 + 0.1 * 64 + 0.001 * 4) per step.
PENDULUM_MIN_REWARD = -(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2)  # -16.2736044
MIN_REWARD = {"CartPole-v1": 0.0, "Pendulum-v1": PENDULUM_MIN_REWARD}  # per step


def low_return(env: str, steps: int) -> float:
    """The smallest total reward an episode of `steps` steps of `env` can possibly get."""
    if env not in MIN_REWARD:
        raise ValueError(f"env={env!r}: no known smallest reward; known: {list(MIN_REWARD)}")
    return MIN_REWARD[env] * steps


def certify_setup(method: str, env: str, steps: int) -> tuple[str, np.ndarray | None]:
    """(method, "auto" resolved: Clopper-Pearson on CartPole, DKW elsewhere; the bound's levels:
    every integer return 1..steps on CartPole, else None: the distinct returns)."""
    if env == "CartPole-v1":
        return "clopper_pearson" if method == "auto" else method, np.arange(1.0, steps + 1)
    return "dkw" if method == "auto" else method, None


def check(agent, objectives: Sequence[str], num_episodes: int, alpha: float, method: str):
    """ValueError if an attack objective does not fit the agent, or if `num_episodes` clean
    returns could certify nothing above 1/2 (certify.min_returns)."""
    env, steps = agent.config.env, episode_horizon(agent.env_params)
    for objective in objectives:
        try:
            attack.resolve_objective(agent, objective)
        except ValueError as err:
            raise ValueError(f"objective {objective!r} on {env}: {err}") from None
    method, levels = certify_setup(method, env, steps)
    num_levels = len(levels) if levels is not None else num_episodes
    need = certify.min_returns(alpha, num_levels, method)
    if num_episodes < need:
        raise ValueError(
            f"{num_episodes} clean episodes are too few for alpha={alpha:g} with {method} on "
            f"{env} ({num_levels} levels): nothing above 1/2 could be certified; need at least "
            f"{need}"
        )


def clean_returns(agent, state, key, sigma: float, num_episodes: int):
    """(returns `[n]` float64 of the smoothed policy's deterministic episodes, compile_s, run_s):
    one jitted call, timed apart from its compile."""
    args = (state, key, np.float32(sigma))
    t = time.perf_counter()
    compiled = mc.make_smoothed_returns(agent, num_episodes).lower(*args).compile()
    compile_s, t = time.perf_counter() - t, time.perf_counter()
    returns = np.asarray(jax.block_until_ready(compiled(*args)), np.float64)
    return returns, compile_s, time.perf_counter() - t


def certificate(returns, sigma: float, budgets, *, env: str, steps: int, alpha=0.05,
                method="auto") -> dict:  # fmt: skip
    """The certificate from clean returns `[n]` for budgets `[K]`: certify_method,
    certified_clean_lower_bound (B = 0), certified_expected_reward `[K]` and, on CartPole,
    threshold_levels `[m]` and threshold_bound `[1 + K, m]` (P_adv[R >= v], B = 0 first)."""
    method, levels = certify_setup(method, env, steps)
    b = np.asarray([0.0, *budgets])
    bound = certify.expected_reward_bound(returns, sigma, b, alpha, low=low_return(env, steps),
                                          method=method, levels=levels)  # fmt: skip
    out = {"certify_method": method, "certified_clean_lower_bound": float(bound[0]),
           "certified_expected_reward": bound[1:].tolist()}  # fmt: skip
    if levels is not None:
        out["threshold_levels"] = levels.tolist()
        out["threshold_bound"] = certify.threshold_bound(returns, levels, sigma, b, alpha).tolist()
    return out


class Attack(NamedTuple):
    """S settings (objective x step size) x K budgets x n episodes of one policy's attack."""

    settings: list[dict]  # [S] objective (resolved), step_size, lookahead
    returns: np.ndarray  # [S, K, n] float64 attacked returns
    spent: np.ndarray  # [S, K, n] l2 norm each episode spent (<= its budget)
    strongest: list[int]  # [K] the setting with the lowest mean return per budget
    noise_draws: int  # the attacker's draws per step (1 at sigma = 0: no noise)
    compile_s: float
    attack_s: float  # seconds of the S x K attacked calls, compile excluded


def strongest(returns: np.ndarray) -> list[int]:
    """Per budget, the setting whose mean return is lowest: returns `[S, K, n]` -> `[K]`."""
    return np.asarray(returns).mean(axis=-1).argmin(axis=0).tolist()


def attacked(agent, state, key, sigma: float, budgets: Sequence[float], num_episodes: int, *,
             objectives: Sequence[str], step_sizes: Sequence[float], noise_draws: int,
             attack_steps: int, lookahead: int = 1,
             on_attack: Callable | None = None) -> Attack:  # fmt: skip
    """The greedy adaptive attack (attack.py) at every budget, once per setting (objective x step
    size), the same `key` for every budget; one compile per objective. `lookahead` applies to
    the "lookahead" objective. on_attack(objective, step_size, budget, returns [n]) after each."""
    draws = noise_draws if sigma > 0 else 1  # no noise: one draw is exact
    args = (state, key, np.float32(sigma))
    settings, returns, spent, compile_s, seconds = [], [], [], 0.0, 0.0
    for objective in objectives:
        resolved = attack.resolve_objective(agent, objective)
        h = lookahead if resolved == "lookahead" else 1
        fn = attack.make_attacked_returns(agent, num_episodes, draws, attack_steps,
                                          objective=resolved, lookahead=h)  # fmt: skip
        t = time.perf_counter()
        compiled = fn.lower(*args, np.float32(0.0), np.float32(0.01)).compile()
        compile_s += time.perf_counter() - t
        for step_size in step_sizes:
            settings.append({"objective": resolved, "step_size": step_size, "lookahead": h})
            for budget in budgets:
                t = time.perf_counter()
                out = compiled(*args, np.float32(budget), np.float32(step_size))
                r, sq = (np.asarray(x, np.float64) for x in jax.block_until_ready(out))
                seconds += time.perf_counter() - t
                returns.append(r)
                spent.append(np.sqrt(sq))
                if on_attack is not None:
                    on_attack(resolved, step_size, budget, r)
    returns = np.reshape(returns, (len(settings), len(budgets), num_episodes))
    spent = np.reshape(spent, returns.shape)
    return Attack(settings, returns, spent, strongest(returns), draws, compile_s, seconds)


def bound_violations(budgets, bounds, attacked_means) -> list[tuple[float, float, float]]:
    """(budget, bound, attacked mean) wherever a certified bound exceeds the attacked mean
    return, which a correct certificate and attack never give (beyond sampling error)."""
    return [
        (b, bound, att)
        for b, bound, att in zip(budgets, bounds, attacked_means, strict=True)
        if bound > att
    ]
