"""Today's agents reproduce the metrics pinned before the loop refactor (tests/pinned.py).

Every case is bit-equal on this machine's CPU except where noted in `TOLERANCE`: a case there
differs by float rounding only (XLA fuses a restructured program differently), never by logic.
"""

import numpy as np
import pytest

from tests import pinned

PINNED = dict(np.load(pinned.PATH))
TOLERANCE = {}  # case -> (rtol, atol); bit-equal when absent


@pytest.mark.parametrize("case", sorted(pinned.CASES))
def test_case_reproduces_pinned_metrics(case):
    got = pinned.run_case(case)
    want = {k.split(":", 1)[1]: v for k, v in PINNED.items() if k.startswith(case + ":")}
    assert want, f"no pinned arrays for {case}"
    missing = sorted(set(want) - set(got))
    assert not missing, f"{case}: metrics no longer reported: {missing}"
    rtol, atol = TOLERANCE.get(case, (0.0, 0.0))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=f"{case}:{name}")
