"""Root pytest configuration: notebooks executed by the test suite run on tiny budgets, and the
long learning checks (`-m slow`) get a longer per-test time limit than the default 1200 s.

The slow checks guard themselves against hangs (tests/isolated.py restarts a stalled child), so
their pytest-timeout only has to stop a genuinely runaway test: 1200 s killed the xdist worker
running SAC's Pendulum check (~10 min alone) when the machine was shared with other jobs.
"""

import os

import pytest

os.environ.setdefault("PUREJAXRL_NOTEBOOK_SMOKE", "1")

SLOW_TEST_TIMEOUT_S = 3000


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))
