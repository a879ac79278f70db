"""Root pytest configuration: notebooks executed by the test suite run on tiny budgets (all but the
quickstart with the slow checks), and the long learning checks (`-m slow`) get a longer per-test time limit than the default 1200 s.

The slow checks guard themselves against hangs (tests/isolated.py restarts a stalled child), so
their pytest-timeout only has to stop a genuinely runaway test: 1200 s killed the xdist worker
running SAC's Pendulum check (~10 min alone) when the machine was shared with other jobs.

A run of the fast checks alone compiles with XLA's backend optimisation level 0 (see
`pytest_configure`; PUREJAXRL_TEST_OPTIMIZED=1 turns that off).
"""

import os

import pytest

os.environ.setdefault("PUREJAXRL_NOTEBOOK_SMOKE", "1")

SLOW_TEST_TIMEOUT_S = 3000


# The notebooks other than the quickstart (each a fresh kernel that compiles its programs, 20-70 s)
# run with the slow checks; the quickstart stays in the default suite.
FAST_NOTEBOOKS = ("01_quickstart.ipynb",)


# The fast checks compile a few hundred tiny programs that each run for well under a second, so
# LLVM optimising the generated code is much of their CPU time: a run of the default selection
# (`-m "not slow"`) compiles with XLA's backend optimisation level 0 (~35% less compile time).
# Runs that select slow checks (long learning runs need optimised code), or whose XLA_FLAGS set
# a level, keep theirs; PUREJAXRL_TEST_OPTIMIZED=1 keeps the default level for the fast checks too.
FAST_SUITE_XLA_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    fast_only = " ".join((config.getoption("markexpr", "") or "").split()) == "not slow"
    if (
        fast_only
        and os.environ.get("PUREJAXRL_TEST_OPTIMIZED") != "1"
        and "xla_backend_optimization_level" not in flags
    ):
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_SUITE_XLA_FLAG}".strip()
    # Start jax's backend now, with the XLA_FLAGS the run was given: a command that shards
    # (experiments.command.use_host_cores) run in-process by a test must not turn this worker
    # into a 2-device process for the tests that follow it. Tests of the host-device count run
    # the commands in fresh processes (tests/test_host_devices.py).
    import jax

    jax.devices()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".ipynb" and path.name not in FAST_NOTEBOOKS:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))
