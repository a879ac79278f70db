"""Aggregate metrics of RL results with stratified-bootstrap confidence intervals.

The metrics and conventions of rliable (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021): scores are `[runs, tasks]` (1-D `[runs]` is one task),

- `iqm`: interquartile mean, scipy.stats.trim_mean(x, 0.25): sort, drop floor(n / 4) scores at
  each end, average the rest (the IQM of 1..8 is mean(3, 4, 5, 6) = 4.5); pooled over runs and
  tasks unless `axis` is given;
- `optimality_gap`: mean of max(threshold - x, 0) over runs and tasks;
- `probability_of_improvement`: per task P(X > Y) + 0.5 P(X = Y) over all pairs of runs (the
  Mann-Whitney U statistic / (n_x n_y)), averaged over tasks;
- `performance_profile`: fraction of all scores > tau, per tau;
- `stratified_bootstrap_ci`: percentile interval of a statistic over resamples that draw each
  task's runs with replacement, every task independently (its run count fixed).

On top: `summarize` (IQM, mean, median with 95% CIs of one set of seeds, NaN excluded, JSON-ready)
and `curve_iqm` (IQM and CI band per update of learning curves, vectorised).

Why numpy and not the rliable package (checked 2026-12-02 in a fresh Python 3.11 venv with
`pip install rliable numpy scipy`: rliable 1.2.0, arch 7.2.0, numpy 2.4.6, scipy 1.17.1,
pandas 3.1.1, which is also this project's pandas):

1. `from rliable import library` fails at import: rliable pins arch<8, and arch 7.2.0 does not
   import with pandas 3 (`TypeError: deprecate_kwarg() missing 1 required positional argument:
   'new_arg_name'` in arch/univariate/base.py). It works only after downgrading to pandas<3.
2. Even then (pandas 2.3.3) its bootstrap (arch's, a Python loop over resamples) takes 0.13 s
   for 1000 resamples of one 16-run score set, so a 16 x 1000-update learning-curve band would
   take about 2 minutes; `curve_iqm` here takes about 0.3 s.
3. It would add arch, statsmodels, pandas and seaborn to the dependencies for ~150 lines of numpy.

Resampling: `np.random.default_rng(seed)`, so results are deterministic given `seed`. NaN:
`summarize` and `curve_iqm` drop NaN scores (each task or update resamples its own non-NaN
scores); the other functions reject NaN with a ValueError, except `iqm` and `optimality_gap`,
which return NaN like np.mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import ArrayLike

REPS = 2000  # bootstrap resamples
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 1 << 18  # resampled scores per chunk (2 MiB of float64: cache-sized, fastest)


# --------------------------------------------------------------------------- checks


def _scores(scores: ArrayLike, name: str = "scores", ndims=(1, 2), nan: bool = True) -> np.ndarray:
    """`scores` as float64, checked: ndim in `ndims`, not empty, NaN only if `nan`."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim not in ndims:
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


# --------------------------------------------------------------------------- building blocks


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
    """Stratified bootstrap resamples of `x` [R, T], in chunks [b, R, T] (b summing to `reps`).

    Task t's column draws n_t times with replacement from its n_t non-NaN scores (stratified:
    every task separately, its count fixed) and is padded with NaN to R rows. `per_rep` scales
    the chunk down for callers that expand each resample by that factor."""
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


# --------------------------------------------------------------------------- metrics


def iqm(scores: ArrayLike, axis: int | None = None):
    """Interquartile mean (scipy.stats.trim_mean(scores, 0.25, axis)) of any-shape `scores`:
    over all of them (axis None, rliable's aggregate) -> float, or along `axis` -> array of the
    other axes' shape. NaN along the axis gives NaN."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"scores: no scores (shape {x.shape})")
    x = x.reshape(-1) if axis is None else np.moveaxis(x, axis, -1)
    n = np.full(x.shape[:-1], x.shape[-1])
    out = np.where(np.isnan(x).any(axis=-1), np.nan, _sorted_iqm(np.sort(x, axis=-1), n))
    return float(out) if out.ndim == 0 else out


def optimality_gap(scores: ArrayLike, threshold: float) -> float:
    """Mean of max(threshold - x, 0) over all `scores` (any shape): how far below `threshold`
    the runs fall on average; scores above it count as 0."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"scores: no scores (shape {x.shape})")
    return float(np.mean(np.maximum(threshold - x, 0.0)))


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> float:
    """P(X > Y) + 0.5 P(X = Y) for algorithm X's `x` [runs_x] or [runs_x, tasks] against Y's
    `y` [runs_y] or [runs_y, tasks] (same tasks), over all run pairs of a task, averaged over
    tasks (rliable's probability_of_improvement)."""
    a = _scores(x, "x", nan=False)
    b = _scores(y, "y", nan=False)
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
    """Percentile `confidence` interval (lo, hi) of `statistic(scores)` under the stratified
    bootstrap: `reps` resamples, each drawing every task's runs with replacement, every task
    separately (a task's run count stays fixed).

    scores: [runs] or [runs, tasks], no NaN. statistic: takes an array shaped like `scores`
    and returns a scalar or array `[...]`; with `vectorized`, takes a batch [b, *scores.shape]
    and returns [b, ...]. Returns floats for a scalar statistic, else two arrays [...]."""
    x = _scores(scores, nan=False)
    _check_bootstrap(reps, confidence)
    stats = []
    for sample in _resamples(x.reshape(len(x), -1), reps, seed):
        sample = sample.reshape(len(sample), *x.shape)
        if vectorized:
            stats.append(np.asarray(statistic(sample), dtype=np.float64))
        else:
            stats.append(np.stack([np.asarray(statistic(s), dtype=np.float64) for s in sample]))
    return _percentile_ci(np.concatenate(stats), confidence)


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
    _check_bootstrap(reps, confidence)
    table = x.reshape(len(x), -1)
    stats = [
        np.mean(s.reshape(len(s), -1, 1) > t, axis=1)
        for s in _resamples(table, reps, seed, per_rep=t.size)
    ]
    lo, hi = _percentile_ci(np.concatenate(stats), confidence)
    return profile, lo, hi


# --------------------------------------------------------------------------- summaries


def _summary_stats(samples: np.ndarray, per_task_median: bool) -> dict[str, np.ndarray]:
    """IQM (pooled), mean (of per-task means) and median of NaN-padded `samples` [B, R, T] -> [B]
    each; median over tasks of the per-task means if `per_task_median`, else pooled."""
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
        tm = np.sort(task_mean, axis=1)
        median = _sorted_median(tm, has.sum(axis=1))
    else:
        median = _sorted_median(pooled, n)
    return {"iqm": _sorted_iqm(pooled, n), "mean": mean, "median": median}


def summarize(
    scores: ArrayLike, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> dict:
    """IQM, mean and median of `scores` [runs] (e.g. one number per seed) or [runs, tasks] with
    stratified-bootstrap percentile intervals, as plain Python floats/ints (JSON-ready):
    {iqm, iqm_ci: [lo, hi], mean, mean_ci, median, median_ci, num_runs, num_tasks,
    excluded_nan}.

    NaN scores are dropped (each task resamples its own non-NaN runs); `num_runs` counts the
    scores used, `excluded_nan` the dropped ones; with none left every statistic is NaN. IQM
    pools runs and tasks; [runs, tasks] follows rliable: mean and median are over the tasks'
    mean scores; [runs] gives the plain mean and median over runs."""
    x = _scores(scores)
    _check_bootstrap(reps, confidence)
    nan = np.isnan(x)
    # One task: drop the NaN runs outright (same draws as for the clean scores).
    table = x[~nan, None] if x.ndim == 1 else x
    out: dict = {}
    if nan.all():
        for name in ("iqm", "mean", "median"):
            out[name], out[f"{name}_ci"] = float("nan"), [float("nan"), float("nan")]
    else:
        per_task = x.ndim == 2
        point = _summary_stats(table[None], per_task)
        chunks = [_summary_stats(s, per_task) for s in _resamples(table, reps, seed)]
        for name in ("iqm", "mean", "median"):
            lo, hi = _percentile_ci(np.concatenate([c[name] for c in chunks]), confidence)
            out[name], out[f"{name}_ci"] = float(point[name][0]), [lo, hi]
    out["num_runs"] = int(nan.size - nan.sum())
    out["num_tasks"] = 1 if x.ndim == 1 else int(x.shape[1])
    out["excluded_nan"] = int(nan.sum())
    return out


def curve_iqm(
    returns: ArrayLike, reps: int = REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning-curve IQM over runs with a bootstrap band: `returns` [runs, updates] ->
    (iqm [U], lo [U], hi [U]).

    NaN entries (e.g. before a run's first finished episode) are ignored per update; an update
    with no finite run is NaN. Each update resamples its own non-NaN runs (the updates are the
    bootstrap's strata): the same per-update band as resampling whole curves, whose updates
    share the draws."""
    x = _scores(returns, "returns", ndims=(2,))
    _check_bootstrap(reps, confidence)
    n = (~np.isnan(x)).sum(axis=0)  # [U]
    point = _sorted_iqm(np.sort(x.T, axis=-1), n)
    stats = [
        _sorted_iqm(np.sort(s.transpose(0, 2, 1), axis=-1), n) for s in _resamples(x, reps, seed)
    ]
    lo, hi = _percentile_ci(np.concatenate(stats), confidence)
    return point, np.asarray(lo), np.asarray(hi)
