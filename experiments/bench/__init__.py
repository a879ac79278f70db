"""Speed benchmarks, one module per benchmark: `python -m experiments.bench --help`."""
