"""GROOVE: `python -m experiments.lpg` with the algorithmic-regret curriculum as its default.

    python -m experiments.groove [--config FILE.yaml] [key=value ...] [--time-aware]
        [--meta-optimizer meta_gradient|es] [--out DIR]
    python -m experiments.groove --resume DIR | --meta-test-only DIR

The same settings, run folder and meta-test as experiments.lpg (see its docstring); only the
default of `curriculum` differs: regret (GROOVE's algorithmic regret with a prioritised level
buffer, Jackson et al., NeurIPS 2023, arXiv 2310.02782) instead of dr. `curriculum=pvl` or
`curriculum=dr` still work.

The meta-optimiser defaults to meta_gradient: GROOVE as published (the public code,
EmptyJackson/groove: its meta-gradient LPG with `--score_function alg_regret`). `--meta-optimizer
es` (or `meta_optimizer=es`) runs ES-GROOVE, this repository's ES variant (OpenES over whole
lifetimes, one level per antithetic pair; named so in the output and summary.json). With
`--time-aware` the default is es (TA-LPG is meta-trained with ES in the TA paper).
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
