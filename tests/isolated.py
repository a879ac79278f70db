"""Run a long JAX computation in a fresh process, restarting it if it hangs.

Several freshly compiled multi-seed training programs once never finished their first execution on
this 2-core machine. The cause, found with gdb: jaxlib's batched LAPACK QR (from flax's orthogonal
init under `vmap`) splits its batch over XLA's 2-thread intra-op pool and blocks both threads
waiting for sub-tasks nobody can run. `purejaxrl/initializers.py` now builds orthogonal matrices
without LAPACK, which removed the hang. The long learning checks still run in a watched child
process, so that any future hang of this kind fails fast instead of eating CI's time limit: a child
whose CPU time stops advancing for `stall_s` seconds is hung (a working JAX process, compiling or
running, keeps a core busy), so it is killed and started again. A real failure still fails.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_lib
import time
import traceback
from collections.abc import Callable


def _child(queue, fn, args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException:  # report everything to the parent, which re-raises
        queue.put(("error", traceback.format_exc()))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_isolated(
    fn: Callable, *args, timeout_s: float = 1800.0, stall_s: float = 90.0, attempts: int = 3
):
    """`fn(*args)` in a spawned process (fn importable, result picklable).

    The child is restarted (up to `attempts` runs) when it uses no CPU for `stall_s` seconds or
    gives no result within `timeout_s`; an exception in the child is re-raised here as
    RuntimeError with its traceback.
    """
    ctx = mp.get_context("spawn")
    for attempt in range(1, attempts + 1):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(queue, fn, args), daemon=True)
        proc.start()
        start = last_progress = time.monotonic()
        last_cpu = -1.0
        result = None
        while result is None:
            try:
                result = queue.get(timeout=min(10.0, stall_s / 3))
                break
            except queue_lib.Empty:
                pass
            now = time.monotonic()
            try:
                cpu = _cpu_seconds(proc.pid)
            except (OSError, IndexError):  # the child died without a result
                break
            if cpu > last_cpu + 0.5:
                last_cpu, last_progress = cpu, now
            if now - last_progress > stall_s or now - start > timeout_s:
                break
        if result is None:
            proc.kill()
            proc.join()
            print(
                f"run_isolated: attempt {attempt} hung or died after {time.monotonic() - start:.0f} s, restarting"
            )
            continue
        proc.join()
        status, value = result
        if status == "error":
            raise RuntimeError(f"isolated run failed:\n{value}")
        return value
    raise TimeoutError(f"no result in {attempts} attempts")
