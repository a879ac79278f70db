"""Root pytest configuration: notebooks executed by the test suite run on tiny budgets."""

import os

os.environ.setdefault("PUREJAXRL_NOTEBOOK_SMOKE", "1")
