"""Policy-smoothing certificates against independent loop-based references, by hand, and by
coverage simulation (the clean lower bounds fail at most ~alpha of the time)."""

import math
import time

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from purejaxrl.robust import certify, protocol
from purejaxrl.robust.certify import expected_reward_bound, min_returns, threshold_bound

SIGMA = 0.2
BUDGETS = np.array([0.0, 0.05, 0.2, 0.5, 1.0])


# ------------------------------------------------------------------ independent references


def cp_lower_ref(k, n, a):
    """One-sided Clopper-Pearson lower bound, straight from the Beta quantile."""
    return 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))


def certify_ref(p, budget, sigma):
    return 0.0 if p == 0 else float(stats.norm.cdf(stats.norm.ppf(p) - budget / sigma))


def threshold_ref(returns, thresholds, sigma, budget, alpha):
    n, m = len(returns), len(thresholds)
    out = []
    for v in thresholds:
        k = sum(1 for x in returns if x >= v)
        out.append(certify_ref(cp_lower_ref(k, n, alpha / m), budget, sigma))
    return np.array(out)


def clean_lower_ref(returns, alpha, low, method, levels=None):
    """[(v_i, p_lb(v_i))] over the levels above low, sorted."""
    n = len(returns)
    grid = sorted(set(levels if levels is not None else returns))
    grid = [v for v in grid if v > low]
    pairs = []
    for v in grid:
        frac = sum(1 for x in returns if x >= v) / n
        if method == "clopper_pearson":
            p = cp_lower_ref(round(frac * n), n, alpha / len(grid))
        else:
            p = max(frac - math.sqrt(math.log(2 / alpha) / (2 * n)), 0.0)
        pairs.append((v, p))
    return pairs


def expected_ref(returns, sigma, budget, alpha, low, method, levels=None):
    total, prev = low, low
    for v, p in clean_lower_ref(returns, alpha, low, method, levels):
        total += (v - prev) * certify_ref(p, budget, sigma)
        prev = v
    return total


def _samples():
    rng = np.random.default_rng(0)
    return {
        "cartpole_like": (rng.integers(9, 201, size=400).astype(float), 0.0),
        "all_max": (np.full(300, 200.0), 0.0),
        "signed_continuous": (rng.normal(1.0, 3.0, size=300), -20.0),
        "few_levels": (rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.3, 0.5], size=250), -1.0),
    }


SAMPLES = _samples()


# ------------------------------------------------------------------ against the references


@pytest.mark.parametrize("name", list(SAMPLES))
def test_threshold_bound_matches_reference(name):
    returns, _ = SAMPLES[name]
    thresholds = np.quantile(returns, [0.0, 0.1, 0.5, 0.9, 1.0]).tolist() + [returns.max() + 1]
    got = threshold_bound(returns, thresholds, SIGMA, BUDGETS, alpha=0.05)
    assert got.shape == (len(BUDGETS), len(thresholds))
    for i, b in enumerate(BUDGETS):
        want = threshold_ref(list(returns), thresholds, SIGMA, b, 0.05)
        np.testing.assert_allclose(got[i], want, atol=1e-6, rtol=0)
    assert np.all(got[:, -1] == 0.0)  # no episode reached it: p_lb = 0 -> bound 0


@pytest.mark.parametrize("method", certify.METHODS)
@pytest.mark.parametrize("name", list(SAMPLES))
def test_expected_reward_bound_matches_reference(name, method):
    returns, low = SAMPLES[name]
    got = expected_reward_bound(returns, SIGMA, BUDGETS, 0.05, low=low, method=method)
    want = [expected_ref(list(returns), SIGMA, b, 0.05, low, method) for b in BUDGETS]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", certify.METHODS)
def test_expected_reward_bound_on_a_given_grid_matches_reference(method):
    returns, low = SAMPLES["cartpole_like"]
    grid = np.arange(0.0, 201.0, 5.0)  # includes low = 0, which is skipped
    got = expected_reward_bound(returns, SIGMA, BUDGETS, 0.05, low=low, method=method, levels=grid)
    want = [expected_ref(list(returns), SIGMA, b, 0.05, low, method, list(grid)) for b in BUDGETS]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_shapes_for_scalar_budget_and_threshold():
    returns, low = SAMPLES["cartpole_like"]
    assert threshold_bound(returns, [50.0, 100.0], SIGMA, 0.1).shape == (2,)
    assert threshold_bound(returns, 100.0, SIGMA, [0.0, 0.1, 0.2]).shape == (3,)
    assert np.ndim(threshold_bound(returns, 100.0, SIGMA, 0.1)) == 0
    assert isinstance(expected_reward_bound(returns, SIGMA, 0.1, low=low), float)
    assert expected_reward_bound(returns, SIGMA, [0.1], low=low).shape == (1,)


def test_jax_arrays_give_the_same_bounds():
    returns, low = SAMPLES["cartpole_like"]
    np.testing.assert_array_equal(
        threshold_bound(jnp.asarray(returns), jnp.arange(0.0, 200.0), jnp.float32(0.25), BUDGETS),
        threshold_bound(returns, np.arange(0.0, 200.0), 0.25, BUDGETS),
    )
    np.testing.assert_allclose(
        expected_reward_bound(jnp.asarray(returns), SIGMA, jnp.asarray(BUDGETS), low=low),
        expected_reward_bound(returns.astype(np.float32), SIGMA, BUDGETS, low=low),
    )


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("method", certify.METHODS)
@pytest.mark.parametrize("name", list(SAMPLES))
def test_zero_budget_is_the_clean_lower_confidence_bound(name, method):
    returns, low = SAMPLES[name]
    got = expected_reward_bound(returns, SIGMA, 0.0, 0.05, low=low, method=method)
    want, prev = low, low
    for v, p in clean_lower_ref(list(returns), 0.05, low, method):
        want, prev = want + (v - prev) * p, v
    assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("method", certify.METHODS)
@pytest.mark.parametrize("name", list(SAMPLES))
def test_bounds_fall_with_budget_and_stay_below_the_empirical_mean(name, method):
    returns, low = SAMPLES[name]
    budgets = np.linspace(0.0, 2.0, 41)
    exp = expected_reward_bound(returns, SIGMA, budgets, 0.05, low=low, method=method)
    assert np.all(np.diff(exp) <= 1e-12)
    assert exp[0] <= returns.mean()
    assert exp[-1] >= low
    thr = threshold_bound(returns, np.unique(returns), SIGMA, budgets)
    assert np.all(np.diff(thr, axis=0) <= 1e-12)
    empirical = np.array([np.mean(returns >= v) for v in np.unique(returns)])
    assert np.all(thr[0] <= empirical)


def test_budget_much_larger_than_sigma_leaves_only_low():
    returns, low = SAMPLES["signed_continuous"]
    for method in certify.METHODS:
        assert expected_reward_bound(returns, SIGMA, 100.0, low=low, method=method) == (
            pytest.approx(low, abs=1e-6)
        )


def test_all_returns_at_low_certify_low_exactly():
    assert expected_reward_bound(np.zeros(5), SIGMA, [0.0, 1.0], low=0.0).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ by hand


def test_hand_case_all_returns_200():
    n, alpha, sigma, budget = 10_000, 0.05, 0.2, 0.2
    returns = np.full(n, 200.0)
    # One level (200) above low = 0, every episode reaches it: p_lb = alpha^(1/n).
    want = 200.0 * stats.norm.cdf(stats.norm.ppf(alpha ** (1.0 / n)) - budget / sigma)
    # By hand: 0.05^(1e-4) = 0.99970047, Phi^-1 of it = 3.43204, Phi(3.43204 - 1) = 0.992493.
    assert want == pytest.approx(198.4986, abs=1e-4)
    got = expected_reward_bound(returns, sigma, budget, alpha, low=0.0)
    assert got == pytest.approx(want, abs=1e-6)
    # The paper's CartPole grid: thresholds 0..199, Bonferroni alpha / 200.
    thr = threshold_bound(returns, np.arange(200.0), sigma, budget, alpha)
    p = (alpha / 200) ** (1.0 / n)
    np.testing.assert_allclose(thr, stats.norm.cdf(stats.norm.ppf(p) - 1.0), atol=1e-9)
    assert thr[0] == pytest.approx(0.984043, abs=1e-6)  # p = 0.99917094, Phi(3.14548 - 1)


def test_min_returns_is_the_boundary():
    for alpha, m in [(0.05, 1), (0.05, 200), (0.01, 7)]:
        n = min_returns(alpha, m)
        assert (alpha / m) ** (1 / n) > 0.5 >= (alpha / m) ** (1 / (n - 1))
        threshold_bound(np.ones(n), np.arange(m) * 0.0 + 1.0 / (m + 1), SIGMA, 0.1, alpha)
        with pytest.raises(ValueError, match=f"need at least {n} returns"):
            threshold_bound(np.ones(n - 1), np.arange(m) * 0.0, SIGMA, 0.1, alpha)
    n = min_returns(0.05, method="dkw")
    assert math.sqrt(math.log(40) / (2 * n)) < 0.5 <= math.sqrt(math.log(40) / (2 * (n - 1)))
    expected_reward_bound(np.ones(n), SIGMA, 0.1, low=0.0, method="dkw")
    with pytest.raises(ValueError, match=f"need at least {n} returns"):
        expected_reward_bound(np.ones(n - 1), SIGMA, 0.1, low=0.0, method="dkw")


def test_ten_thousand_returns_are_fast():
    rng = np.random.default_rng(1)
    returns = rng.normal(size=10_000)  # 10,000 distinct levels, the worst case
    start = time.perf_counter()
    expected_reward_bound(returns, SIGMA, np.linspace(0, 1, 11), low=-10.0)
    expected_reward_bound(returns, SIGMA, np.linspace(0, 1, 11), low=-10.0, method="dkw")
    threshold_bound(returns, np.linspace(-3, 3, 200), SIGMA, np.linspace(0, 1, 11))
    assert time.perf_counter() - start < 1.0  # ~0.05 s unloaded; loose for shared CPUs


# ------------------------------------------------------------------ coverage

DRAWS, N, ALPHA = 2000, 200, 0.05
# Miscoverage is at most alpha; allow three binomial standard errors over DRAWS draws.
TOLERANCE = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)


def test_threshold_bound_covers_all_thresholds_simultaneously():
    values = np.arange(6.0)
    probs = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
    thresholds = values[1:]
    truth = np.array([probs[values >= v].sum() for v in thresholds])
    rng = np.random.default_rng(2)
    failures = 0
    for _ in range(DRAWS):
        returns = rng.choice(values, p=probs, size=N)
        failures += np.any(threshold_bound(returns, thresholds, SIGMA, 0.0, ALPHA) > truth)
    assert failures / DRAWS <= TOLERANCE


@pytest.mark.parametrize("method", certify.METHODS)
@pytest.mark.parametrize("dist", ["bernoulli", "beta"])
def test_expected_reward_lower_bound_covers_the_true_mean(dist, method):
    rng = np.random.default_rng(3)
    if dist == "bernoulli":  # one level: the bound is exactly p_lb of P[R = 1]
        draw, truth = (lambda: (rng.random(N) < 0.3).astype(float)), 0.3
    else:  # continuous: n distinct data-chosen levels
        draw, truth = (lambda: 10.0 * rng.beta(2.0, 5.0, N)), 10.0 * 2.0 / 7.0
    failures = 0
    for _ in range(DRAWS):
        failures += expected_reward_bound(draw(), SIGMA, 0.0, ALPHA, low=0.0, method=method) > truth
    assert failures / DRAWS <= TOLERANCE


# ------------------------------------------------------------------ bad inputs

GOOD = dict(returns=np.arange(50.0), sigma=0.2, budget=0.1, alpha=0.05)
BAD = [
    ("sigma", 0.0, "sigma"),
    ("sigma", -1.0, "sigma"),
    ("sigma", np.nan, "sigma"),
    ("budget", -0.1, "budget"),
    ("budget", [0.1, -0.2], "budget"),
    ("budget", np.inf, "budget"),
    ("alpha", 0.0, "alpha"),
    ("alpha", 1.0, "alpha"),
    ("alpha", 1.5, "alpha"),
    ("returns", np.array([1.0, np.nan, 3.0]), "NaN or inf"),
    ("returns", np.array([1.0, np.inf]), "NaN or inf"),
    ("returns", np.array([]), "returns: empty"),
    ("returns", np.ones(3), "too few.*need at least"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD)
def test_threshold_bound_rejects_bad_inputs(field, value, message):
    kwargs = dict(GOOD, **{field: value})
    with pytest.raises(ValueError, match=message):
        threshold_bound(kwargs["returns"], [10.0, 20.0], kwargs["sigma"], kwargs["budget"], kwargs["alpha"])  # fmt: skip


@pytest.mark.parametrize(("field", "value", "message"), BAD)
def test_expected_reward_bound_rejects_bad_inputs(field, value, message):
    kwargs = dict(GOOD, **{field: value})
    returns = kwargs.pop("returns")
    with pytest.raises(ValueError, match=message):
        expected_reward_bound(returns, low=0.0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="hoeffding"), "method='hoeffding'.*allowed"),
        (dict(low=None), "low=None"),
        (dict(low=np.nan), "low=nan"),
        (dict(low=10.0), "returns: minimum 0 is below low=10"),
        (dict(levels=[-1.0, 5.0]), "levels: minimum -1 is below low=0"),
        (dict(levels=[]), "levels: empty"),
        (dict(levels=[1.0, np.nan]), "levels"),
    ],
)
def test_expected_reward_bound_rejects_bad_options(kwargs, message):
    kwargs = dict(dict(low=0.0), **kwargs)
    with pytest.raises(ValueError, match=message):
        expected_reward_bound(np.arange(50.0), 0.2, 0.1, **kwargs)


@pytest.mark.parametrize(("thresholds", "message"), [([], "thresholds: empty"), ([1.0, np.inf], "thresholds")])  # fmt: skip
def test_threshold_bound_rejects_bad_thresholds(thresholds, message):
    with pytest.raises(ValueError, match=message):
        threshold_bound(np.arange(50.0), thresholds, 0.2, 0.1)


def test_min_returns_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method='x'"):
        min_returns(0.05, method="x")
    with pytest.raises(ValueError, match="num_levels=0"):
        min_returns(0.05, 0)
    with pytest.raises(ValueError, match="alpha=2"):
        min_returns(2)


# ------------------------------------------------------------------ the protocol (protocol.py)


def test_protocol_low_return_and_certificate_per_env():
    assert protocol.low_return("CartPole-v1", 200) == 0.0
    assert protocol.low_return("Pendulum-v1", 200) == pytest.approx(-16.2736044 * 200)
    with pytest.raises(ValueError, match="Acrobot-v1"):
        protocol.low_return("Acrobot-v1", 200)
    returns = np.full(200, 200.0)  # CartPole: Clopper-Pearson over the integer levels 1..200
    cert = protocol.certificate(returns, 0.2, [0.2, 1.0], env="CartPole-v1", steps=200)
    assert cert["certify_method"] == "clopper_pearson" and cert["threshold_levels"][-1] == 200
    want = expected_reward_bound(returns, 0.2, [0.0, 0.2, 1.0], low=0.0, levels=np.arange(1, 201))
    assert [cert["certified_clean_lower_bound"], *cert["certified_expected_reward"]] == list(want)
    assert np.shape(cert["threshold_bound"]) == (3, 200)
    cert = protocol.certificate(-np.arange(1.0, 101), 0.2, [0.5], env="Pendulum-v1", steps=200)
    assert cert["certify_method"] == "dkw" and "threshold_bound" not in cert


def test_protocol_keeps_the_strongest_setting_per_budget():
    # 3 settings x 2 budgets x 2 episodes: per budget the lowest mean return wins.
    returns = np.array([[[5, 5], [1, 3]], [[2, 4], [4, 4]], [[6, 2], [3, 3]]], float)
    assert protocol.strongest(returns) == [1, 0]  # means [[5, 2], [3, 4], [4, 3]]
    got = protocol.bound_violations([0.2, 1.0], [2.5, 1.0], [2.0, 1.0])
    assert got == [(0.2, 2.5, 2.0)]  # a bound equal to the attacked mean is no violation
