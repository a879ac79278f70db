"""The measurement rule every benchmark shares: compile once and time it apart, then call the
sides in alternation several times and keep the best of each, so passing load hits all alike."""

import time
from collections.abc import Callable, Mapping

import jax


def stopwatch(fn, *args) -> tuple[float, object]:
    """(wall seconds, output) of `fn(*args)`, its arrays waited for."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def compile_timed(fn, *args) -> tuple[object, float]:
    """(`jax.jit(fn)` compiled for `args`, compile seconds)."""
    seconds, compiled = stopwatch(lambda: jax.jit(fn).lower(*args).compile())
    return compiled, seconds


def alternate(sides: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """{side: least seconds} over `repeats` rounds that call every side once (each returns the
    seconds it measured)."""
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(repeats):
        for name, side in sides.items():
            best[name] = min(best[name], side())
    return best


def timed(program) -> Callable[[], float]:
    """A side for `alternate`: one call of a (compiled, args) pair, its wall seconds."""
    compiled, args = program
    return lambda: stopwatch(compiled, *args)[0]


def paired_time_ratio(program, baseline, repeats: int) -> float:
    """Best call time of `program` / best of `baseline` ((compiled, args) pairs), alternated."""
    best = alternate({"program": timed(program), "baseline": timed(baseline)}, repeats)
    return best["program"] / best["baseline"]


def show(line: str, row: dict) -> dict:
    """Prints `line` filled in from `row` at once; returns `row`."""
    print(line.format(**row), flush=True)
    return row
