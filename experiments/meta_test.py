"""The meta-test's statistics and plots (experiments.lpo, experiments.lpg): IQM / CI
(experiments.aggregate) of the per-seed final returns (meta.meta_test), summary and bar plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import aggregate, command


def progress_bar(plan: command.Plan, total: int):
    """The meta-test's tqdm bar over its programs (disabled without progress)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="meta-test", unit="prog", dynamic_ncols=True,
                disable=not plan.progress)  # fmt: skip


def stats(final: np.ndarray, reps: int) -> dict:
    """aggregate.summarize_finite of the per-seed values `[S]`, and those values (None: NaN)."""
    return {
        **aggregate.summarize_finite(final, reps=reps),
        "per_seed": [command.num(x) for x in final],
    }


def definition(what: str, reps: int) -> str:
    """The meta-test's definition text, after `what` (the learners' specifics)."""
    from purejaxrl import scores

    return (
        f"per seed, mean episode_return over the last {scores.FINAL_FRACTION:.0%} of updates "
        "(from its first finished episode on; NaN if none); per cell, IQM over seeds with a 95% "
        f"stratified bootstrap CI ({reps} resamples; NaN seeds excluded); {what}"
    )


def test_summary(cells: list[dict], axis: str, series, learned: str, extra=None) -> dict:
    """summary.json's meta_test ({"task@<axis>x": {series: iqm, iqm_ci, mean (+ extra(cell,
    name))}}) and `learned`'s final_return_mean and final_return_per_seed of meta_test.json's
    `cells` (axis: "horizon" or "lifetime")."""
    cells = {f"{c['task']}@{c[axis]:g}x": c for c in cells}
    extra = extra or (lambda c, name: {})
    pick = lambda r: {k: r[k] for k in ("iqm", "iqm_ci", "mean")}  # noqa: E731
    return {
        "meta_test": {
            key: {o: pick(c["results"][o]) | extra(c, o) for o in series}
            for key, c in cells.items()
        },
        "final_return_mean": {k: c["results"][learned]["mean"] for k, c in cells.items()},
        "final_return_per_seed": {k: c["results"][learned]["per_seed"] for k, c in cells.items()},
    }


def ci_text(s: Mapping[str, Any] | None, width: int = 24) -> str:
    """ "iqm [lo, hi]" of a stats dict, right-aligned in `width`; "-" where there is none."""
    if not s or s.get("iqm") is None:
        return f"{'-':>{width}}"
    lo, hi = s["iqm_ci"]
    return f"{s['iqm']:>8.4g} [{lo:.4g}, {hi:.4g}]".rjust(width)


def plot_cells(path: Path, panels: Mapping[str, Sequence[dict]], series: Sequence[str], **text):
    """IQM bars with 95% CI whiskers: one panel per key of `panels` (its title), a group of bars
    per cell {"tick": label, "values": {name: stats or None}}, a bar per name in `series`.
    `text`: xlabel, ylabel, suptitle."""
    plt = command.pyplot()
    n = len(panels)
    cols = min(max(n, 1), 3)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for i, (title, cells) in enumerate(panels.items()):
        ax = axes[i // cols][i % cols]
        if all((c["values"].get(s) or {}).get("iqm") is None for c in cells for s in series):
            ax.text(0.5, 0.5, "no finished episode", ha="center", transform=ax.transAxes)
        for j, name in enumerate(series):
            bars = [(k, c["values"].get(name) or {}) for k, c in enumerate(cells)]
            bars = [(k, s) for k, s in bars if s.get("iqm") is not None]
            mid = np.array([s["iqm"] for _, s in bars])
            ci = np.array([s.get("iqm_ci") or [s["iqm"]] * 2 for _, s in bars]).reshape(-1, 2)
            xs = [k + (j - (len(series) - 1) / 2) * width for k, _ in bars]
            ax.bar(xs, mid, width, yerr=[mid - ci[:, 0], ci[:, 1] - mid], capsize=2, label=name)
        ax.set_xticks(range(len(cells)), [c["tick"] for c in cells])
        ax.set_title(title, fontsize=10)
        ax.set(xlabel=text.get("xlabel", ""), ylabel=text.get("ylabel", ""))
        if i == 0:
            ax.legend(fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    return command.save_figure(fig, path, 110, text.get("suptitle", ""))
