"""The two kinds of failure a user sees. Library code raises them; only the entry point (dpo_pipeline.cli)
turns them into one line and an exit code."""


class UserError(Exception):
    """A mistake the user can fix (bad params, bad data). The entry point prints it as one line, exit 2."""


class ServiceError(Exception):
    """A remote service failed after retries, or a budget stopped the run; finished work is kept.
    The entry point prints it as one line, exit 1."""
