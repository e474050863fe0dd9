"""Progress bars for the long commands (``evaluate``, ``train-offline``, ``train``, ``embeddings build``), and the
start-up steps of ``poolgate serve`` (:func:`startup_display`).

``with progress_bars():`` around a command's work draws one rich bar per stage that ``routers.progress.report``
announces (folds, inner fits, embeddings, the token table) on stderr, and only when stderr is a terminal:
piped, redirected or under a test runner the command prints exactly what it printed before.
"""

from __future__ import annotations

import logging
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


class StartupDisplay(logging.Handler):
    """Shows ``gateway.startup`` steps on ``stream`` (stderr): on a terminal (or ``force``) a rich spinner on the
    step in progress and a tick line with its duration when it ends; otherwise one plain line when a step starts
    and one when it ends (``poolgate: loading routers ...`` / ``poolgate: loading routers: 0.21 s``), so a log file
    says where a slow or stuck start is."""

    def __init__(self, stream: IO[str] | None = None, force: bool = False) -> None:
        super().__init__(logging.INFO)
        self.stream = stream or sys.stderr
        self.console: Any = None
        self._status: Any = None
        if force or self.stream.isatty():
            # why: `poolgate --help` imports every command module; rich loads only when a terminal shows it
            from rich.console import Console

            self.console = Console(file=self.stream, force_terminal=True if force else None)

    def emit(self, record: logging.LogRecord) -> None:
        step, phase = str(getattr(record, "step", record.getMessage())), getattr(record, "phase", "note")
        seconds = getattr(record, "seconds", None)
        try:
            if self.console is None:
                line = step
                if phase == "start":
                    line = f"{step} ..."
                elif phase in ("done", "failed"):
                    line = f"{step}: {seconds:.2f} s" if phase == "done" else f"{step}: FAILED after {seconds:.2f} s"
                self.stream.write(f"poolgate: {line}\n")
                self.stream.flush()
            else:
                self._rich(step, phase, seconds)
        except Exception:  # a display must never stop the gateway from starting
            self.handleError(record)

    def _rich(self, step: str, phase: str, seconds: float | None) -> None:
        if phase == "start":
            self._stop()
            self._status = self.console.status(f"{step} ...")
            self._status.start()
            return
        self._stop()
        if phase == "done":
            self.console.print(f"[green]✓[/green] {step} [dim]({seconds:.2f} s)[/dim]", highlight=False)
        elif phase == "failed":
            self.console.print(f"[red]✗[/red] {step} [dim](after {seconds:.2f} s)[/dim]", highlight=False)
        else:
            self.console.print(f"[bold]→[/bold] {step}", highlight=False)

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        self._stop()
        super().close()


@contextmanager
def startup_display(stream: IO[str] | None = None, force: bool = False) -> Iterator[StartupDisplay]:
    """Show the ``poolgate.startup`` steps for the duration of the ``with`` (``poolgate serve``)."""
    handler = StartupDisplay(stream, force)
    logger = logging.getLogger("poolgate.startup")
    logger.addHandler(handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # shown here only, not again by whatever handler the root logger has
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        handler.close()
