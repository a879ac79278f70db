"""The hang guard used by the long learning checks: restarts stalled children, keeps failures."""

import time

import pytest

from tests.isolated import run_isolated


def _add(a, b):
    return a + b


def _sleep_forever():
    time.sleep(3600)


def _fail():
    raise ArithmeticError("boom")


def test_result_comes_back():
    assert run_isolated(_add, 2, 3) == 5


def test_a_child_that_uses_no_cpu_is_restarted_then_given_up():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="2 attempts"):
        run_isolated(_sleep_forever, stall_s=3.0, attempts=2)
    assert time.monotonic() - start < 60


def test_an_exception_in_the_child_fails_the_caller():
    with pytest.raises(RuntimeError, match="ArithmeticError: boom"):
        run_isolated(_fail)
