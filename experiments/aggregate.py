"""Aggregate metrics of RL results with stratified-bootstrap confidence intervals, after rliable
(Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021), on scores
`[runs, tasks]` (1-D `[runs]` is one task): `iqm`, `optimality_gap`, `probability_of_improvement`,
`performance_profile`, `stratified_bootstrap_ci` (each task's runs drawn with replacement, every
task independently, its run count fixed), `summarize` / `summarize_finite` (IQM, mean, median
with 95% CIs, JSON-ready) and `curve_iqm` (learning-curve bands, vectorised). Why numpy and not
the rliable package: docs/experiments.md, "Statistics".

Resampling uses `np.random.default_rng(seed)` (deterministic). `summarize`, `summarize_finite`
and `curve_iqm` drop NaN scores (each task or update resamples its own); `iqm` and
`optimality_gap` return NaN like np.mean; the other functions reject NaN with a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import ArrayLike

REPS = 2000  # bootstrap resamples
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 1 << 18  # resampled scores per chunk (2 MiB of float64: cache-sized, fastest)


def _scores(scores: ArrayLike, name: str = "scores", ndims=(1, 2), nan: bool = True) -> np.ndarray:
    """`scores` as float64, checked: ndim in `ndims` (None: any), not empty, NaN only if `nan`."""
    x = np.asarray(scores, dtype=np.float64)
    if ndims is not None and x.ndim not in ndims:
        shapes = {1: "[runs]", 2: "[runs, tasks]"}
        want = " or ".join(shapes[d] for d in ndims)
        raise ValueError(f"{name}: expected shape {want}, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: no scores (shape {x.shape})")
    if not nan and np.isnan(x).any():
        raise ValueError(f"{name}: contains NaN; drop those runs first (summarize drops them)")
    return x


def _check_bootstrap(reps: int, confidence: float) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int | np.integer) or reps < 1:
        raise ValueError(f"reps={reps!r}: must be an integer >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must lie strictly between 0 and 1")


def _sorted_iqm(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """IQM along the last axis of `s` [..., N], sorted with its `n` [...] non-NaN entries first;
    NaN where n = 0."""
    cut = n // 4
    pos = np.arange(s.shape[-1])
    keep = (pos >= cut[..., None]) & (pos < (n - cut)[..., None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(keep, s, 0.0).sum(axis=-1) / (n - 2 * cut)


def _sorted_median(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median along the last axis of `s` [..., N], sorted with its `n` [...] non-NaN entries
    first; NaN where n = 0."""
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(s, (n // 2)[..., None], axis=-1)[..., 0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def _resamples(x: np.ndarray, reps: int, seed: int, per_rep: int = 1) -> Iterator[np.ndarray]:
    """Stratified bootstrap resamples of `x` [R, T] in chunks [b, R, T] (b summing to `reps`):
    task t draws n_t times with replacement from its n_t non-NaN scores, padded with NaN to R
    rows. `per_rep` shrinks the chunks for callers that expand each resample by that factor."""
    rng = np.random.default_rng(seed)
    valid = ~np.isnan(x)
    packed = np.take_along_axis(x, np.argsort(~valid, axis=0, kind="stable"), axis=0)
    n = valid.sum(axis=0)  # [T]
    pad = np.arange(x.shape[0])[:, None] >= n  # [R, T]
    tasks = np.arange(x.shape[1])
    step = max(1, _CHUNK_ELEMENTS // (x.size * per_rep))
    for start in range(0, reps, step):
        b = min(step, reps - start)
        rows = (rng.random((b, *x.shape)) * n).astype(np.intp)  # uniform on 0..n_t - 1
        sample = packed[rows, tasks]
        if pad.any():
            sample[:, pad] = np.nan
        yield sample


def _percentile_ci(stats: np.ndarray, confidence: float):
    """Percentile interval over the leading (resample) axis: (lo, hi), floats for scalars."""
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a], axis=0)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def _bootstrap_ci(x, statistic: Callable, reps: int, seed: int, confidence: float, per_rep=1):
    """Percentile interval of `statistic` over the stratified resamples of `x` [R, T]: statistic
    maps a chunk [b, R, T] to [b, ...]; returns (lo, hi) as `_percentile_ci`."""
    _check_bootstrap(reps, confidence)
    stats = [statistic(sample) for sample in _resamples(x, reps, seed, per_rep)]
    return _percentile_ci(np.concatenate(stats), confidence)


def iqm(scores: ArrayLike, axis: int | None = None):
    """Interquartile mean (scipy.stats.trim_mean(scores, 0.25, axis): sort, drop floor(n / 4)
    scores at each end, average the rest; the IQM of 1..8 is 4.5) of any-shape `scores`:
    over all of them (axis None, rliable's aggregate) -> float, or along `axis` -> array of the
    other axes' shape. NaN along the axis gives NaN."""
    x = _scores(scores, ndims=None)
    x = x.reshape(-1) if axis is None else np.moveaxis(x, axis, -1)
    n = np.full(x.shape[:-1], x.shape[-1])
    out = np.where(np.isnan(x).any(axis=-1), np.nan, _sorted_iqm(np.sort(x, axis=-1), n))
    return float(out) if out.ndim == 0 else out


def optimality_gap(scores: ArrayLike, threshold: float) -> float:
    """Mean of max(threshold - x, 0) over all `scores` (any shape): how far below `threshold`
    the runs fall on average; scores above it count as 0."""
    x = _scores(scores, ndims=None)
    return float(np.mean(np.maximum(threshold - x, 0.0)))


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> float:
    """P(X > Y) + 0.5 P(X = Y) for algorithm X's `x` [runs_x] or [runs_x, tasks] against Y's
    `y` [runs_y] or [runs_y, tasks] (same tasks), over all run pairs of a task, averaged over
    tasks (rliable's; the Mann-Whitney U statistic / (n_x n_y))."""
    a, b = _scores(x, "x", nan=False), _scores(y, "y", nan=False)
    if a.ndim != b.ndim or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"x {a.shape} and y {b.shape}: need the same tasks")
    a, b = a.reshape(len(a), 1, -1), b.reshape(1, len(b), -1)
    per_task = np.mean(a > b, axis=(0, 1)) + 0.5 * np.mean(a == b, axis=(0, 1))  # [T]
    return float(per_task.mean())


def stratified_bootstrap_ci(
    scores: ArrayLike,
    statistic: Callable,
    reps: int = REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    vectorized: bool = False,
):
    """Percentile `confidence` interval (lo, hi) of `statistic(scores)` over `reps` stratified
    bootstrap resamples. scores: [runs] or [runs, tasks], no NaN. statistic: an array shaped like
    `scores` -> a scalar or `[...]`; with `vectorized`, a batch [b, *scores.shape] -> [b, ...].
    Returns floats for a scalar statistic, else two arrays [...]."""
    x = _scores(scores, nan=False)

    def batch(sample):  # [b, R*T] -> the statistic of each resample, [b, ...]
        sample = sample.reshape(len(sample), *x.shape)
        if vectorized:
            return np.asarray(statistic(sample), dtype=np.float64)
        return np.stack([np.asarray(statistic(s), dtype=np.float64) for s in sample])

    return _bootstrap_ci(x.reshape(len(x), -1), batch, reps, seed, confidence)


def performance_profile(
    scores: ArrayLike,
    taus: ArrayLike,
    reps: int | None = None,
    confidence: float = CONFIDENCE,
    seed: int = 0,
):
    """Run-score distribution: fraction of all `scores` ([runs] or [runs, tasks], no NaN) above
    each threshold of `taus` [K] -> profile [K]. With `reps`, also the stratified-bootstrap
    percentile band -> (profile [K], lo [K], hi [K])."""
    x = _scores(scores, nan=False)
    t = np.asarray(taus, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"taus: expected a non-empty 1-D array, got shape {t.shape}")
    profile = np.mean(x.reshape(-1, 1) > t, axis=0)
    if reps is None:
        return profile
    above = lambda s: np.mean(s.reshape(len(s), -1, 1) > t, axis=1)  # noqa: E731
    lo, hi = _bootstrap_ci(x.reshape(len(x), -1), above, reps, seed, confidence, t.size)
    return profile, lo, hi


STATS = ("iqm", "mean", "median")


def _summary_stats(samples: np.ndarray, per_task_median: bool) -> np.ndarray:
    """[B, 3]: IQM (pooled), mean (of per-task means) and median of NaN-padded `samples`
    [B, R, T]; the median is over tasks of the per-task means if `per_task_median`, else pooled."""
    b = len(samples)
    valid = ~np.isnan(samples)
    pooled = np.sort(samples.reshape(b, -1), axis=1)  # NaN last
    n = valid.reshape(b, -1).sum(axis=1)
    count = valid.sum(axis=1)  # [B, T]
    with np.errstate(invalid="ignore", divide="ignore"):
        task_mean = np.where(valid, samples, 0.0).sum(axis=1) / count  # NaN for an empty task
    has = count > 0
    mean = np.where(has, task_mean, 0.0).sum(axis=1) / has.sum(axis=1)
    if per_task_median:
        median = _sorted_median(np.sort(task_mean, axis=1), has.sum(axis=1))
    else:
        median = _sorted_median(pooled, n)
    return np.stack([_sorted_iqm(pooled, n), mean, median], axis=-1)


def _summary(table: np.ndarray, per_task: bool, reps: int, seed: int, confidence: float) -> dict:
    """{iqm, iqm_ci: [lo, hi], mean, mean_ci, median, median_ci} of NaN-padded `table` [R, T]
    (`_summary_stats`), all NaN when it holds no score."""
    _check_bootstrap(reps, confidence)
    if np.isnan(table).all():  # also when empty
        point, lo, hi = np.full((3, len(STATS)), np.nan)
    else:
        point = _summary_stats(table[None], per_task)[0]
        stats = lambda s: _summary_stats(s, per_task)  # noqa: E731
        lo, hi = _bootstrap_ci(table, stats, reps, seed, confidence)
    out = {}
    for i, name in enumerate(STATS):
        out[name], out[f"{name}_ci"] = float(point[i]), [float(lo[i]), float(hi[i])]
    return out


def summarize(
    scores: ArrayLike, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> dict:
    """IQM, mean and median of `scores` [runs] or [runs, tasks] with stratified-bootstrap
    percentile intervals, JSON-ready: {iqm, iqm_ci: [lo, hi], mean, mean_ci, median, median_ci,
    num_runs (scores used), num_tasks, excluded_nan (NaN scores dropped)}; every statistic NaN
    when none is left. IQM pools runs and tasks; for [runs, tasks], mean and median are over the
    tasks' mean scores (rliable)."""
    x = _scores(scores)
    nan = np.isnan(x)
    # One task: drop the NaN runs outright (same draws as for the clean scores).
    table = x[~nan, None] if x.ndim == 1 else x
    out = _summary(table, x.ndim == 2, reps, seed, confidence)
    tasks = 1 if x.ndim == 1 else int(x.shape[1])
    return out | {"num_runs": int((~nan).sum()), "num_tasks": tasks, "excluded_nan": int(nan.sum())}


def summarize_finite(scores: ArrayLike, reps: int = REPS, seed: int = 0) -> dict:
    """`summarize` of the finite entries of `scores` [runs] (e.g. per-seed final returns; NaN for
    a run with no finished episode), as {iqm, iqm_ci, mean, mean_ci, median, num_runs,
    excluded_nan}; the statistics are None when no entry is finite (JSON has no NaN)."""
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    s = _summary(finite[:, None], False, reps, seed, CONFIDENCE)
    names = ("iqm", "iqm_ci", "mean", "mean_ci", "median")
    out = {k: s[k] if finite.size else None for k in names}
    return out | {"num_runs": int(finite.size), "excluded_nan": int(x.size - finite.size)}


def curve_iqm(
    returns: ArrayLike, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning-curve IQM over runs with a bootstrap band: `returns` [runs, updates] -> (iqm [U],
    lo [U], hi [U]). NaN entries (before a run's first finished episode) are ignored; an update
    with none finite is NaN. Each update resamples its own runs (the updates are the strata):
    the same per-update band as resampling whole curves."""
    x = _scores(returns, "returns", ndims=(2,))
    n = (~np.isnan(x)).sum(axis=0)  # [U]
    per_update = lambda s: _sorted_iqm(np.sort(np.swapaxes(s, -1, -2), axis=-1), n)  # noqa: E731
    lo, hi = _bootstrap_ci(x, per_update, reps, seed, confidence)
    return per_update(x[None])[0], np.asarray(lo), np.asarray(hi)
