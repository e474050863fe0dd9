"""Progress of long work (folds, fits, embeddings, the token table), reported to whoever listens.

Pure: it prints nothing. Code deep in training and the encoders calls :func:`report`; a command that wants a
progress bar installs a reporter for the duration of its work with :func:`reporting` (``gateway/commands/
progress.py`` draws them with rich on a terminal). With no reporter, :func:`report` costs a context-variable
lookup. A context variable rather than a parameter on every function: the work is several calls deep, and
``asyncio.to_thread`` carries it into the worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: ``reporter(stage, done, total)``: ``stage`` names the work ("folds knn", "embeddings"), ``total`` may be None
Reporter = Callable[[str, int, int | None], None]

_REPORTER: ContextVar[Reporter | None] = ContextVar("poolgate_progress", default=None)


def report(stage: str, done: int, total: int | None = None) -> None:
    """``done`` of ``total`` steps of ``stage`` are finished (call again as it advances; done == total ends it)."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(stage, done, total)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send :func:`report` calls made inside the ``with`` (in this context) to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
