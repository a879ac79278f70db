"""One reference config timed: compiled once, then the best of several calls. `--compare` runs
`python -P worker.py SPEC` on an old tree's PYTHONPATH, so this file imports only what every tree
since the loop refactor has; SPEC: JSON {module, config, fields, seeds, calls}, or {module, probe:
true} for where the module was imported from. Prints one JSON line."""

import importlib
import json
import sys
import time


def build(spec: dict, **kwargs):
    """`make_train` of the config in `spec` ({module in purejaxrl, config class name, fields})."""
    module = importlib.import_module("purejaxrl." + spec["module"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["fields"].items()}
    return module.make_train(getattr(module, spec["config"])(**fields), **kwargs)


def measure(train, seeds: int, calls: int) -> tuple[dict, object, object]:
    """({sps, best_s, compile_s, steps, final_return}, compiled program, its key) of `train` over
    `seeds` seeds (one runs unbatched: a size-1 vmap axis costs ~10% on CPU)."""
    import jax
    import numpy as np

    key = jax.random.key(0)
    if seeds > 1:
        key = jax.random.split(key, seeds)
        train = jax.vmap(train)
    t0 = time.perf_counter()
    compiled = jax.jit(train).lower(key).compile()
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(key))
        best = min(best, time.perf_counter() - t0)
    steps = int(np.sum(np.asarray(out.metrics["env_steps"])[..., -1]))
    final = float(np.mean(np.asarray(out.metrics["episode_return"])[..., -1]))
    result = dict(
        sps=steps / best, best_s=best, compile_s=compile_s, steps=steps, final_return=final
    )
    return result, compiled, key


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    module = importlib.import_module("purejaxrl." + spec["module"])
    result = {} if spec.get("probe") else measure(build(spec), spec["seeds"], spec["calls"])[0]
    print(json.dumps({**result, "module_file": module.__file__}))
