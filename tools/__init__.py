"""Tools beside the pipeline, not DVC stages: `python -m tools.<name>` (estimate, gate, make_data, pr_report,
rounds, seeds, sweep), each with an argparse command line (`--help`; a bad flag is one line, exit 2). The
Makefile names each."""
