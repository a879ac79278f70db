"""Root pytest configuration.

- Notebooks executed by the test suite run on tiny budgets.
- XLA:CPU runs each computation inline on the calling thread (no async dispatch). Twice, under
  heavy CPU contention, a freshly compiled multi-seed program never finished its first execution
  (every XLA worker idle, the caller waiting on the result): a lost wake-up in the asynchronous
  path we could not reproduce on demand. Inline execution avoids that path, costs nothing
  measurable here, and pytest-timeout (pyproject) turns any hang left into a failure.
"""

import os

os.environ.setdefault("PUREJAXRL_NOTEBOOK_SMOKE", "1")

import jax  # noqa: E402

jax.config.update("jax_cpu_enable_async_dispatch", False)
