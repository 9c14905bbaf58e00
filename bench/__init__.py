"""Benchmarks (see bench/README.md): scripts run as `python bench/<name>.py`; the others reuse cycle.py's
harness as `bench.cycle`, and the tests' process helpers and fakes as `testkit`."""
