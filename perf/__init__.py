"""Load scenarios for the inference backend: `python -m perf` (or `make perf`) runs them against a stack
each one starts itself, and writes figures, raw data and plots to perf/results/."""
