"""The test suite; a package so that `tests.support` imports from the repository root (tests and benches)."""
