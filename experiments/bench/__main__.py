"""`python -m experiments.bench`: see experiments/bench/cli.py."""

from experiments.bench.cli import main

main()
