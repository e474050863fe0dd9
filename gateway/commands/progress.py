"""Progress bars for the long commands (``evaluate``, ``train-offline``, ``train``, ``embeddings build``).

``with progress_bars():`` around a command's work draws one rich bar per stage that ``routers.progress.report``
announces (folds, inner fits, embeddings, the token table) on stderr, and only when stderr is a terminal:
piped, redirected or under a test runner the command prints exactly what it printed before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


@contextmanager
def progress_bars(stream: IO[str] | None = None, force: bool = False) -> Iterator[None]:
    """Show rich progress for the work inside the ``with`` on ``stream`` (stderr) if it is a TTY (or ``force``)."""
    stream = stream or sys.stderr
    if not (force or stream.isatty()):
        yield
        return
    # why: `poolgate --help` imports every command module; rich loads only when a bar is drawn
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from routers.progress import reporting

    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(file=stream, force_terminal=force or None), transient=False)
    tasks: dict[str, Any] = {}

    def reporter(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars, reporting(reporter):
        yield
