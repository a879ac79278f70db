"""Run a long JAX computation in a fresh process, with a time limit and one retry.

Three times on this 2-core machine, under CPU contention, a freshly compiled multi-seed training
program never finished its first execution: XLA:CPU's thunk executor waited on a task that no
worker ran (every worker idle). It was not reproducible on demand (16 clean runs in a row). The
long learning checks therefore run in a child process: a hang costs one `timeout_s` and a rerun,
not a red CI, and a real failure still fails.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable


def _child(queue, fn, args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException:  # report everything to the parent, which re-raises
        queue.put(("error", traceback.format_exc()))


def run_isolated(fn: Callable, *args, timeout_s: float = 600.0, attempts: int = 2):
    """`fn(*args)` in a spawned process (fn must be importable, its result picklable).

    A run that produces no result within `timeout_s` is killed and started again, up to
    `attempts` times; an exception in the child is re-raised here as RuntimeError with its
    traceback.
    """
    ctx = mp.get_context("spawn")
    for attempt in range(1, attempts + 1):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(queue, fn, args), daemon=True)
        proc.start()
        try:
            status, value = queue.get(timeout=timeout_s)
        except Exception:  # queue.Empty: no result in time
            proc.kill()
            proc.join()
            print(f"run_isolated: no result after {timeout_s:.0f} s (attempt {attempt}), killed")
            continue
        proc.join()
        if status == "error":
            raise RuntimeError(f"isolated run failed:\n{value}")
        return value
    raise TimeoutError(f"no result in {attempts} attempts of {timeout_s:.0f} s each")
