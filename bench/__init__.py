"""Benchmarks a user can rerun, each a module: `python -m bench.<name> --help` from the repository root."""
