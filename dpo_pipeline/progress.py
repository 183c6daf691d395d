"""One progress bar for every long step: what, how far, elapsed, rate and time left.

rich's default columns show no elapsed time and no rate, which is what a user waiting on 2,000 samples
or judgments wants to see. It draws on stderr: stdout is a tool's answer (`--json`), which a bar must never run
into. Under CI (`CI` set) the bar's last state stays in the log; elsewhere a stderr that is not a terminal (a
file, a pipe) gets nothing from it.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, from rich's own speed estimate, in the task's unit."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def progress(unit: str = "it", console=None, refresh_per_second: float = 10) -> Progress:
    """`with progress("prompts") as p: bar = p.add_task("sampling", total=n); p.advance(bar, k)`. The bar redraws
    from its own thread `refresh_per_second` times a second."""
    console = console or Console(stderr=True)
    ci = bool(os.environ.get("CI"))
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), RateColumn(unit), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, refresh_per_second=refresh_per_second, transient=not ci,
                    disable=not (ci or console.is_terminal))

