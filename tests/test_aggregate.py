"""experiments/aggregate.py: IQM, optimality gap, probability of improvement, performance
profiles and stratified-bootstrap intervals against plain numpy references."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import scipy.stats

from experiments import aggregate as agg


def ref_iqm(x) -> float:
    """Interquartile mean by hand: sort, drop floor(n / 4) at each end, average the rest."""
    s = np.sort(np.asarray(x, np.float64).ravel())
    cut = len(s) // 4
    return float(s[cut : len(s) - cut].mean())


def ref_probability_of_improvement(x, y) -> float:
    """Average over tasks of P(X > Y) + 0.5 P(X = Y), by looping over every pair of runs."""
    per_task = []
    for t in range(x.shape[1]):
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in x[:, t] for b in y[:, t]]
        per_task.append(np.mean(wins))
    return float(np.mean(per_task))


# --------------------------------------------------------------------------- point metrics


def test_iqm_by_hand():
    assert agg.iqm(np.arange(1, 9)) == 4.5  # mean(3, 4, 5, 6)
    assert agg.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # order does not matter
    assert agg.iqm([1.0, 2.0, 3.0, 100.0]) == 2.5  # the outlier is cut
    assert agg.iqm([1.0, 2.0, 30.0]) == 11.0  # n = 3: floor(3 / 4) = 0, nothing cut
    assert agg.iqm([[1, 2], [3, 4], [5, 6], [7, 8]]) == 4.5  # pooled over runs and tasks


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 13, 50])
def test_iqm_matches_trim_mean(n):
    x = np.random.default_rng(n).standard_cauchy((n, 3))
    assert agg.iqm(x) == pytest.approx(ref_iqm(x), rel=1e-12, abs=1e-12)
    assert agg.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25, axis=None), rel=1e-12)
    np.testing.assert_allclose(agg.iqm(x, axis=0), [ref_iqm(x[:, t]) for t in range(3)])
    np.testing.assert_allclose(agg.iqm(x, axis=1), scipy.stats.trim_mean(x, 0.25, axis=1))


def test_iqm_propagates_nan_along_the_axis():
    x = np.array([[1.0, 2.0], [np.nan, 3.0], [4.0, 5.0]])
    assert math.isnan(agg.iqm(x))
    out = agg.iqm(x, axis=0)
    assert math.isnan(out[0]) and out[1] == pytest.approx(10 / 3)  # n = 3: nothing cut


def test_optimality_gap_by_hand():
    assert agg.optimality_gap([0.2, 0.5, 1.5], 1.0) == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert agg.optimality_gap([[300.0, 500.0], [100.0, 50.0]], 200.0) == pytest.approx(250 / 4)
    x = np.random.default_rng(0).normal(size=(10, 4))
    assert agg.optimality_gap(x, 0.3) == pytest.approx(np.mean(np.maximum(0.3 - x, 0)))


def test_probability_of_improvement_by_hand():
    # Pairs (1, 2) x2: 0; (2, 2) x2: 0.5 each; (3, 2) x2: 1 each -> 3 / 6.
    assert agg.probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0]) == 0.5
    x = np.array([[3.0, 0.0], [4.0, 0.0]])
    y = np.array([[1.0, 0.0], [2.0, 5.0]])
    # Task 0: X always wins (1); task 1: ties 0.5 twice, losses twice (0.25).
    assert agg.probability_of_improvement(x, y) == 0.625
    assert agg.probability_of_improvement(y, x) == 0.375
    assert agg.probability_of_improvement(x, x) == 0.5


def test_probability_of_improvement_matches_references():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(7, 3)).astype(float)  # ties included
    y = rng.integers(0, 5, size=(5, 3)).astype(float)
    got = agg.probability_of_improvement(x, y)
    assert got == pytest.approx(ref_probability_of_improvement(x, y), abs=1e-12)
    u = [scipy.stats.mannwhitneyu(x[:, t], y[:, t]).statistic / (7 * 5) for t in range(3)]
    assert got == pytest.approx(np.mean(u), abs=1e-12)  # rliable's Mann-Whitney form
    assert got + agg.probability_of_improvement(y, x) == pytest.approx(1.0)


def test_performance_profile_by_hand():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(agg.performance_profile(scores, [0, 2, 4]), [1.0, 0.5, 0.0])
    two_tasks = np.array([[1.0, 10.0], [2.0, 20.0]])
    np.testing.assert_array_equal(agg.performance_profile(two_tasks, [1.5, 15.0]), [0.75, 0.25])


def test_performance_profile_band():
    x = np.random.default_rng(2).normal(size=(20, 2))
    taus = np.array([-10.0, -0.5, 0.0, 0.5, 10.0])
    profile, lo, hi = agg.performance_profile(x, taus, reps=300, seed=3)
    np.testing.assert_array_equal(profile, [np.mean(x > t) for t in taus])
    assert np.all(lo <= profile) and np.all(profile <= hi)
    assert (lo[0], hi[0], lo[-1], hi[-1]) == (1.0, 1.0, 0.0, 0.0)  # no resample crosses those
    assert np.all(hi[1:4] - lo[1:4] > 0)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_the_percentile_interval_of_stratified_resamples():
    """Every resample keeps each task's run count and draws only from that task's runs; the
    interval is the 2.5% / 97.5% quantile of the statistic over the resamples."""
    rng = np.random.default_rng(4)
    x = np.stack([rng.random(6), 1000.0 + rng.random(6)], axis=1)  # [6 runs, 2 tasks]
    seen = []

    def statistic(s):
        seen.append(s.copy())
        return s.mean()

    lo, hi = agg.stratified_bootstrap_ci(x, statistic, reps=400, seed=5)
    assert len(seen) == 400
    draws = np.stack(seen)  # [400, 6, 2]
    assert draws.shape == (400, 6, 2)
    assert np.isin(draws[..., 0], x[:, 0]).all() and np.isin(draws[..., 1], x[:, 1]).all()
    # Resampled with replacement: repeats occur, every run gets drawn about 1/6 of the time.
    assert any(len(np.unique(d[:, 0])) < 6 for d in draws)
    freq = np.mean(draws[..., 0][..., None] == x[:, 0], axis=(0, 1))
    np.testing.assert_allclose(freq, 1 / 6, atol=0.03)
    ref = np.quantile([d.mean() for d in draws], [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-9)
    # Stratified: the pooled mean only varies within each task, never by the tasks' mix.
    assert hi - lo < 1.0  # unstratified, it would span hundreds


def test_bootstrap_ci_vectorized_and_deterministic():
    x = np.random.default_rng(6).normal(size=(15, 3))
    loop = agg.stratified_bootstrap_ci(x, agg.iqm, reps=300, seed=7)
    vec = agg.stratified_bootstrap_ci(
        x, lambda s: np.stack([agg.iqm(r) for r in s]), reps=300, seed=7, vectorized=True
    )
    assert loop == vec == agg.stratified_bootstrap_ci(x, agg.iqm, reps=300, seed=7)
    assert loop != agg.stratified_bootstrap_ci(x, agg.iqm, reps=300, seed=8)
    lo, hi = agg.stratified_bootstrap_ci(x, lambda s: s.mean(axis=0), reps=300)
    assert lo.shape == hi.shape == (3,) and np.all(lo < x.mean(0)) and np.all(x.mean(0) < hi)


def test_bootstrap_ci_covers_the_true_iqm_and_shrinks_with_more_runs():
    """N(mu, 1) is symmetric, so its IQM is mu: the 95% interval covers it in most of 100
    datasets, and 10x the runs makes it about sqrt(10) times narrower."""
    rng = np.random.default_rng(8)
    stat = lambda s: agg.iqm(s, axis=1)
    covered, widths = 0, {10: [], 100: []}
    for i in range(100):
        x = 3.0 + rng.normal(size=40)
        lo, hi = agg.stratified_bootstrap_ci(x, stat, reps=500, seed=i, vectorized=True)
        covered += lo <= 3.0 <= hi
        assert lo <= agg.iqm(x) <= hi
    assert covered >= 85
    for n in widths:
        for i in range(10):
            x = rng.normal(size=n)
            lo, hi = agg.stratified_bootstrap_ci(x, stat, reps=500, seed=i, vectorized=True)
            widths[n].append(hi - lo)
    assert np.mean(widths[10]) > 2.0 * np.mean(widths[100])


# --------------------------------------------------------------------------- summaries


def test_summarize_one_task():
    x = np.array([5.0, 1.0, 3.0, 8.0, 2.0, 9.0, 4.0, 7.0])
    s = agg.summarize(x, reps=500, seed=1)
    assert s["iqm"] == ref_iqm(x) and s["mean"] == x.mean() and s["median"] == np.median(x)
    assert (s["num_runs"], s["num_tasks"], s["excluded_nan"]) == (8, 1, 0)
    for name in ("iqm", "mean", "median"):
        lo, hi = s[f"{name}_ci"]
        assert x.min() <= lo <= s[name] <= hi <= x.max(), name
    assert json.loads(json.dumps(s)) == s
    assert all(type(s[k]) is float for k in ("iqm", "mean", "median"))
    assert all(type(s[k]) is int for k in ("num_runs", "num_tasks", "excluded_nan"))
    assert all(type(b) is float for k in ("iqm_ci", "mean_ci", "median_ci") for b in s[k])
    assert agg.summarize(x, reps=500, seed=1) == s
    assert agg.summarize(x, reps=500, seed=2)["iqm_ci"] != s["iqm_ci"]


def test_summarize_tasks_follows_rliable():
    x = np.random.default_rng(9).normal(size=(10, 5)) * [1, 2, 3, 4, 5]
    s = agg.summarize(x, reps=300)
    assert s["iqm"] == pytest.approx(scipy.stats.trim_mean(x, 0.25, axis=None))
    assert s["mean"] == pytest.approx(x.mean(0).mean())
    assert s["median"] == pytest.approx(np.median(x.mean(0)))
    assert (s["num_runs"], s["num_tasks"]) == (50, 5)
    mean_ci = agg.stratified_bootstrap_ci(x, lambda r: r.mean(0).mean(), reps=300)
    assert s["mean_ci"] == pytest.approx(list(mean_ci))  # same draws as the generic bootstrap


def test_summarize_excludes_nan():
    x = np.array([5.0, 1.0, 3.0, 8.0, 2.0, 9.0])
    with_nan = np.array([5.0, np.nan, 1.0, 3.0, 8.0, np.nan, 2.0, 9.0])
    s = agg.summarize(with_nan, reps=400, seed=3)
    assert s["excluded_nan"] == 2 and s["num_runs"] == 6
    clean = agg.summarize(x, reps=400, seed=3)
    assert {k: v for k, v in s.items() if k not in ("excluded_nan",)} == {
        k: v for k, v in clean.items() if k != "excluded_nan"
    }
    # Tasks: each task resamples its own non-NaN runs.
    t = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0], [4.0, 40.0]])
    s = agg.summarize(t, reps=400)
    assert s["excluded_nan"] == 1 and s["num_runs"] == 7
    assert s["mean"] == pytest.approx((2.5 + 80 / 3) / 2)
    assert s["iqm"] == pytest.approx(ref_iqm([1, 2, 3, 4, 10, 30, 40]))
    assert all(math.isfinite(v) for k in ("iqm_ci", "mean_ci", "median_ci") for v in s[k])
    empty = agg.summarize([np.nan, np.nan])
    assert empty["num_runs"] == 0 and empty["excluded_nan"] == 2 and math.isnan(empty["iqm"])


def test_summarize_finite_drops_nonfinite_seeds_and_gives_none_without_any():
    s = agg.summarize_finite([5.0, np.nan, 1.0, np.inf, 3.0, 8.0], reps=300, seed=4)
    clean = agg.summarize([5.0, 1.0, 3.0, 8.0], reps=300, seed=4)
    assert {k: s[k] for k in ("iqm", "iqm_ci", "mean", "mean_ci", "median")} == {
        k: clean[k] for k in ("iqm", "iqm_ci", "mean", "mean_ci", "median")
    }
    assert (s["num_runs"], s["excluded_nan"]) == (4, 2)
    none = agg.summarize_finite([np.nan, -np.inf])
    assert none["iqm"] is None and none["iqm_ci"] is None and none["excluded_nan"] == 2
    assert json.loads(json.dumps(none)) == none  # JSON-ready: no NaN


def test_curve_iqm_matches_per_update_reference_and_ignores_nan():
    rng = np.random.default_rng(10)
    returns = rng.normal(size=(9, 30)) + np.linspace(0, 5, 30)
    returns[:4, 0] = np.nan  # runs without a finished episode yet
    returns[:, 1] = np.nan
    returns[:, 2] = 7.0  # every run equal: a zero-width band
    mid, lo, hi = agg.curve_iqm(returns, reps=300, seed=0)
    assert mid.shape == lo.shape == hi.shape == (30,)
    for u in range(30):
        col = returns[:, u][~np.isnan(returns[:, u])]
        if len(col):
            assert mid[u] == pytest.approx(ref_iqm(col))
            assert lo[u] <= mid[u] <= hi[u]
    assert np.isnan([mid[1], lo[1], hi[1]]).all()
    assert lo[2] == hi[2] == mid[2] == 7.0
    # Without NaN each update is one stratum of the generic stratified bootstrap.
    x = returns[:, 3:]
    _, lo, hi = agg.curve_iqm(x, reps=300, seed=4)
    ref_lo, ref_hi = agg.stratified_bootstrap_ci(
        x, lambda s: agg.iqm(s, axis=1), reps=300, seed=4, vectorized=True
    )
    np.testing.assert_allclose(lo, ref_lo)
    np.testing.assert_allclose(hi, ref_hi)


def test_curve_iqm_is_fast():
    returns = np.random.default_rng(11).normal(size=(16, 1000))
    agg.curve_iqm(returns[:, :10], reps=10)  # warm up
    t = time.perf_counter()
    mid, lo, hi = agg.curve_iqm(returns, reps=1000, seed=0)
    elapsed = time.perf_counter() - t
    assert np.all(lo <= mid) and np.all(mid <= hi)
    assert elapsed < 2.0, f"{elapsed:.2f} s"  # ~0.3 s unloaded; a per-update loop takes minutes


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: agg.summarize([]), "no scores"),
        (lambda: agg.summarize(np.zeros((0, 3))), "no scores"),
        (lambda: agg.summarize(np.zeros((2, 2, 2))), "expected shape"),
        (lambda: agg.summarize(3.0), "expected shape"),
        (lambda: agg.summarize([1.0, 2.0], confidence=1.0), "confidence"),
        (lambda: agg.summarize([1.0, 2.0], confidence=0.0), "confidence"),
        (lambda: agg.summarize([1.0, 2.0], reps=0), "reps"),
        (lambda: agg.summarize([1.0, 2.0], reps=2.5), "reps"),
        (lambda: agg.curve_iqm([1.0, 2.0]), "expected shape"),
        (lambda: agg.curve_iqm(np.ones((3, 4)), confidence=1.5), "confidence"),
        (lambda: agg.iqm([]), "no scores"),
        (lambda: agg.optimality_gap([], 1.0), "no scores"),
        (lambda: agg.stratified_bootstrap_ci([1.0, np.nan], np.mean), "NaN"),
        (lambda: agg.stratified_bootstrap_ci([1.0, 2.0], np.mean, reps=-1), "reps"),
        (lambda: agg.probability_of_improvement(np.ones((3, 2)), np.ones((3, 3))), "tasks"),
        (lambda: agg.probability_of_improvement([1.0, np.nan], [1.0]), "NaN"),
        (lambda: agg.performance_profile([1.0, 2.0], [[0.0]]), "taus"),
        (lambda: agg.performance_profile([1.0, 2.0], [0.0], reps=0), "reps"),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
