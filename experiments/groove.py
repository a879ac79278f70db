"""GROOVE: `python -m experiments.lpg` with `curriculum` defaulting to regret (GROOVE's
algorithmic regret with a prioritised level buffer, Jackson et al., NeurIPS 2023, arXiv
2310.02782), meta-gradient by default as published (EmptyJackson/groove); `--meta-optimizer es`
runs ES-GROOVE. The settings, run folder and meta-test are experiments.lpg's (docs/experiments.md).
"""

from __future__ import annotations

import sys

from experiments import command, lpg

PROG = "experiments.groove"
CURRICULUM = "regret"
COMMAND = lpg.command_for(PROG, CURRICULUM)


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
