"""The steps of a gateway's start-up (pool, routers, encoders, log store, judge, listening), announced as they run.

``with startup_step("loading routers"):`` logs a record on the ``poolgate.startup`` logger when the step begins and
one when it ends (with its duration, or the error). Nothing is printed unless someone listens: ``poolgate serve``
installs :class:`gateway.commands.progress.StartupDisplay` (a rich status line on a terminal, plain lines
otherwise); an app built in a test or behind another server stays quiet. Logging rather than a callback: the steps
run in uvicorn's lifespan task, a different task (and context) from the command that starts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("poolgate.startup")


@contextmanager
def startup_step(what: str) -> Iterator[None]:
    """Announce ``what`` (``"loading routers: pool auto (knn)"``) before it runs and its outcome after."""
    log.info("%s", what, extra={"step": what, "phase": "start"})
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        log.info("%s: failed (%s)", what, type(exc).__name__,
                 extra={"step": what, "phase": "failed", "seconds": time.perf_counter() - start})
        raise
    log.info("%s: done", what, extra={"step": what, "phase": "done", "seconds": time.perf_counter() - start})


def startup_note(what: str) -> None:
    """A one-off line without a duration (``"listening on http://127.0.0.1:8000/v1"``)."""
    log.info("%s", what, extra={"step": what, "phase": "note"})
