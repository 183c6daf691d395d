"""Tools beside the pipeline, not DVC stages: `python -m tools.<name>` (estimate, sweep, gate, pr_report,
make_data). The Makefile names each."""
