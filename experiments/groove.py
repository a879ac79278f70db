"""GROOVE: `python -m experiments.lpg` with the algorithmic-regret curriculum as its default.

    python -m experiments.groove [--config FILE.yaml] [key=value ...] [--time-aware] [--out DIR]
    python -m experiments.groove --resume DIR | --meta-test-only DIR

The same settings, run folder and meta-test as experiments.lpg (see its docstring); only the
default of `curriculum` differs: regret (GROOVE's algorithmic regret with a prioritised level
buffer, Jackson et al. 2023) instead of dr. `curriculum=pvl` or `curriculum=dr` still work.
"""

from __future__ import annotations

import sys

from experiments import lpg

PROG = "experiments.groove"
CURRICULUM = "regret"


def main(argv=None) -> int:
    return lpg.main(argv, prog=PROG, curriculum=CURRICULUM)


if __name__ == "__main__":
    sys.exit(main())
