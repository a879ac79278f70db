"""Policy-smoothing certificates (Kumar, Levine, Feizi, ICLR 2022) from clean episode returns.

Setting: the agent sees `obs_t + N(0, sigma^2 I)` at every step; an adaptive adversary perturbs the
observations by `eps_t` with total l2 budget `sqrt(sum_t ||eps_t||^2) <= B` (observation units).
The paper's theorem: for any event S of the episode (here `R >= v`, R the total reward),

    P_adv[R >= v] >= Phi(Phi^-1(p_v) - B / sigma),     p_v = P_clean[R >= v].

`p_v` is estimated from n i.i.d. clean smoothed episodes; using a lower confidence bound `p_lb(v)`
in its place keeps the certificate valid with probability >= 1 - alpha over those episodes.

Units: returns, thresholds, levels and `low` are total rewards per episode; `sigma` and `budget`
are in observation units (the same units as each other). Outputs are float64 numpy arrays.

The functions run on the host (numpy/scipy, vectorised: 10,000 returns take milliseconds); they
accept numpy or (concrete) jax arrays, but not tracers: call them outside `jax.jit`. Producing
the returns (many smoothed episodes in one jitted rollout) is done elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

METHODS = ("clopper_pearson", "dkw")


# ------------------------------------------------------------------ validation


def _as_returns(returns) -> np.ndarray:
    arr = np.asarray(returns, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("returns: empty; need at least one episode's total reward")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"returns: {bad} of {arr.size} values are NaN or inf; must all be finite")
    return arr


def _as_points(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"{name}: shape {arr.shape}; must be a scalar or a 1-D array")
    if arr.size == 0:
        raise ValueError(f"{name}: empty; need at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={values!r}: must all be finite")
    return arr


def _check_sigma(sigma) -> float:
    arr = np.asarray(sigma, dtype=np.float64)
    if arr.ndim != 0 or not np.isfinite(arr) or arr <= 0:
        raise ValueError(f"sigma={sigma!r}: must be a finite positive scalar (the noise std)")
    return float(arr)


def _check_budget(budget) -> np.ndarray:
    arr = np.asarray(budget, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"budget: shape {arr.shape}; must be a scalar or a 1-D array")
    if arr.size == 0:
        raise ValueError("budget: empty; need at least one l2 budget")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"budget={budget!r}: must be finite and >= 0 (a total l2 norm)")
    return arr


def _check_alpha(alpha) -> float:
    arr = np.asarray(alpha, dtype=np.float64)
    if arr.ndim != 0 or not (0 < arr < 1):
        raise ValueError(f"alpha={alpha!r}: must lie in (0, 1)")
    return float(arr)


# ------------------------------------------------------------------ statistics


def min_returns(alpha: float, num_levels: int = 1, method: str = "clopper_pearson") -> int:
    """The fewest returns n for which some probability can be certified above 1/2.

    Clopper-Pearson with all n episodes reaching a level gives `p_lb = (alpha / num_levels)^(1/n)`
    (Bonferroni over `num_levels`), which exceeds 1/2 iff `n > log2(num_levels / alpha)`. DKW's
    best case is `1 - sqrt(ln(2/alpha) / (2n))`, above 1/2 iff `n > 2 ln(2/alpha)`. With fewer
    returns every clean lower bound is <= 1/2, so not even the median reward is certified; the
    bound functions refuse such inputs.
    """
    alpha = _check_alpha(alpha)
    if method == "clopper_pearson":
        if isinstance(num_levels, bool) or int(num_levels) != num_levels or num_levels < 1:
            raise ValueError(f"num_levels={num_levels!r}: must be a positive integer")
        need = math.log2(num_levels / alpha)
    elif method == "dkw":
        need = 2.0 * math.log(2.0 / alpha)
    else:
        raise ValueError(f"method={method!r}: allowed values are {list(METHODS)}")
    return math.floor(need) + 1


def _check_enough(n: int, alpha: float, num_levels: int, method: str) -> None:
    need = min_returns(alpha, num_levels, method)
    if n < need:
        what = (
            f"alpha={alpha:g} Bonferroni-split over {num_levels} level(s)"
            if method == "clopper_pearson"
            else f"the DKW band at alpha={alpha:g}"
        )
        raise ValueError(
            f"returns: {n} episodes are too few for {what}: every lower confidence bound "
            f"stays <= 1/2, so nothing can be certified; need at least {need} returns"
        )


def _survival_counts(sorted_returns: np.ndarray, v: np.ndarray) -> np.ndarray:
    """k(v) = #{returns >= v}, for sorted returns `[n]` and levels `[m]` -> `[m]` ints."""
    n = sorted_returns.size
    return n - np.searchsorted(sorted_returns, v, side="left")


def _clopper_pearson_lower(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a success probability from k of n.

    The alpha-quantile of Beta(k, n - k + 1); 0 when k = 0.
    """
    k = np.asarray(k, dtype=np.float64)
    safe_k = np.maximum(k, 1.0)
    lower = special.betaincinv(safe_k, n - safe_k + 1.0, alpha)
    return np.where(k > 0, lower, 0.0)


def _smooth(p_lb: np.ndarray, budget: np.ndarray, sigma: float) -> np.ndarray:
    """Phi(Phi^-1(p_lb) - B / sigma) for p_lb `[m]`, budgets `[K]` -> `[K, m]`.

    Exact at B = 0 (returns p_lb itself, no round trip) and 0 where p_lb = 0.
    """
    shift = (budget / sigma)[:, None]
    out = special.ndtr(special.ndtri(p_lb)[None, :] - shift)
    out = np.where(shift == 0, p_lb[None, :], out)
    return np.where(p_lb[None, :] > 0, out, 0.0)


# ------------------------------------------------------------------ certificates


def threshold_bound(returns, thresholds, sigma, budget, alpha: float = 0.05) -> np.ndarray:
    """Certified lower bounds on P_adv[R >= v] for each threshold v and each budget B.

    Args:
      returns: `[n]` clean smoothed episodes' total rewards (any shape is flattened; every entry
        is one i.i.d. episode).
      thresholds: `[m]` reward thresholds v (a scalar counts as m = 1), total-reward units.
      sigma: the smoothing noise std (observation units), > 0.
      budget: `[K]` or scalar adversary total l2 budgets B >= 0 (observation units).
      alpha: the family-wise error: every one of the m bounds holds simultaneously with
        probability >= 1 - alpha over the n episodes (Bonferroni, alpha / m per threshold).

    Returns:
      `[K, m]` float64 `Phi(Phi^-1(p_lb(v)) - B / sigma)`, where `p_lb(v)` is the one-sided
      Clopper-Pearson lower bound at level alpha / m on P_clean[R >= v] from
      `k = #{returns >= v}`. A scalar budget drops the K axis, a scalar threshold the m axis.
      `p_lb = 0` (no episode reached v) gives 0.

    Raises ValueError on bad sigma/budget/alpha, empty or non-finite returns or thresholds, and
    too few returns (see `min_returns`).
    """
    r = np.sort(_as_returns(returns))
    v = _as_points(thresholds, "thresholds")
    sigma = _check_sigma(sigma)
    b = _check_budget(budget)
    alpha = _check_alpha(alpha)
    v1, b1 = np.atleast_1d(v), np.atleast_1d(b)
    p_lb = _survival_lower(r, v1, alpha, "clopper_pearson")
    out = _smooth(p_lb, b1, sigma)
    if v.ndim == 0:
        out = out[:, 0]
    if b.ndim == 0:
        out = out[0]
    return out


def expected_reward_bound(
    returns,
    sigma,
    budget,
    alpha: float = 0.05,
    *,
    low,
    method: str = "clopper_pearson",
    levels=None,
) -> np.ndarray | float:
    """Certified lower bound on the expected total reward E_adv[R] under any budget-B attack.

    For R >= low surely, `E[R] = low + integral_{low}^{inf} P[R >= v] dv`, and with levels
    `low = v_0 < v_1 < ... < v_m`, P[R >= v] >= P[R >= v_i] on (v_{i-1}, v_i], so

        E_adv[R] >= low + sum_i (v_i - v_{i-1}) Phi(Phi^-1(p_lb(v_i)) - B / sigma).

    Args:
      returns: `[n]` clean smoothed episodes' total rewards (any shape is flattened).
      sigma: the smoothing noise std (observation units), > 0.
      budget: `[K]` or scalar adversary total l2 budgets B >= 0 (observation units).
      alpha: the bound holds with probability >= 1 - alpha over the n episodes.
      low: the smallest total reward an episode can possibly get, attacked or not (e.g. 0 for
        CartPole or Freeway, -21 for a full Pong game). Required, not guessed: the observed
        minimum is not a valid choice, as an attack can push rewards below every clean episode.
        Returns below `low` raise ValueError.
      method: how `p_lb(v) <= P_clean[R >= v]` is obtained.
        "clopper_pearson": one-sided Clopper-Pearson bounds, Bonferroni alpha / m over the m
          levels above `low` (the paper's CartPole certificate).
        "dkw": the Dvoretzky-Kiefer-Wolfowitz band, simultaneous over all v, no Bonferroni:
          `p_lb(v) = max(S_hat(v) - sqrt(ln(2 / alpha) / (2n)), 0)`, S_hat(v) the fraction of
          returns >= v (so P[R >= v] = 1 - F(v^-) is bounded, not 1 - F(v)); the paper's Freeway
          certificate.
      levels: `[m]` the levels v_i (sorted and deduplicated here; each must be >= low, those
        equal to low are skipped as P[R >= low] = 1). Default: the distinct returns above `low`,
        which is the best choice for both methods (the empirical survival is constant between
        them). Pass a fixed grid (e.g. every integer reward) to match a pre-registered set.

    Returns:
      `[K]` float64 bounds for a `[K]` budget, a float for a scalar budget. Non-increasing in B;
      at B = 0 it is the (1 - alpha) lower confidence bound on the clean expectation,
      `low + sum_i (v_i - v_{i-1}) p_lb(v_i)`; when no level lies above `low`, it is `low`.

    Raises ValueError on bad sigma/budget/alpha/method/low/levels, empty or non-finite returns,
    returns below `low`, and too few returns for the confidence level (see `min_returns`).
    """
    r = np.sort(_as_returns(returns))
    sigma = _check_sigma(sigma)
    b = _check_budget(budget)
    alpha = _check_alpha(alpha)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: allowed values are {list(METHODS)}")
    low = _check_low(low, r)
    v = _levels(r, levels, low)
    b1 = np.atleast_1d(b)
    if v.size == 0:
        out = np.full(b1.shape, low)
    else:
        widths = np.diff(v, prepend=low)
        out = low + _smooth(_survival_lower(r, v, alpha, method), b1, sigma) @ widths
    return out if b.ndim else float(out[0])


def _check_low(low, sorted_returns: np.ndarray) -> float:
    low_arr = np.asarray(low, dtype=np.float64) if low is not None else None
    if low_arr is None or low_arr.ndim != 0 or not np.isfinite(low_arr):
        raise ValueError(
            f"low={low!r}: must be a finite scalar, the smallest total reward an episode can get"
        )
    low = float(low_arr)
    if sorted_returns[0] < low:
        raise ValueError(
            f"returns: minimum {sorted_returns[0]:g} is below low={low:g}; low must bound every "
            "possible return"
        )
    return low


def _levels(sorted_returns: np.ndarray, levels, low: float) -> np.ndarray:
    """The sorted distinct levels above `low` `[m]`: `levels`, or the distinct returns."""
    if levels is None:
        v = np.unique(sorted_returns)
    else:
        v = np.unique(_as_points(levels, "levels"))
        if v[0] < low:
            raise ValueError(
                f"levels: minimum {v[0]:g} is below low={low:g}; levels must be >= low"
            )
    return v[v > low]


def _survival_lower(sorted_returns: np.ndarray, v: np.ndarray, alpha: float, method: str):
    """p_lb(v) `[m]`: Clopper-Pearson (Bonferroni over the m levels) or the DKW band."""
    n, m = sorted_returns.size, v.size
    k = _survival_counts(sorted_returns, v)
    if method == "clopper_pearson":
        _check_enough(n, alpha, m, method)
        return _clopper_pearson_lower(k, n, alpha / m)
    _check_enough(n, alpha, 1, method)
    eps = math.sqrt(math.log(2.0 / alpha) / (2.0 * n))
    return np.maximum(k / n - eps, 0.0)
