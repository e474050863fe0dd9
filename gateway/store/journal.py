"""Write-ahead journal of log rows: what ``LogWriter`` holds in memory is also on disk, so SIGKILL loses no row.

Protocol (``gateway/store/writer.py``):

- ``LogWriter.submit`` queues a row and ``append``s its spool line (``encode_row``) to the open journal file with
  one ``os.write`` on an ``O_APPEND`` descriptor. The chat route submits before the client can have the
  complete answer (before the body of a plain response, before a stream's ``[DONE]``).
- Each writer cycle first ``rotate``s (rows submitted from then on go to a new file), then drains the queue to
  the database or the spool, then ``discard``s the rotated files: every row in them is then committed, spooled,
  rejected, or dropped by the spool's full policy. If the cycle fails half way, the rotated files are handed to
  the spool instead (``hand_over``): they may hold the only copy of a batch that was taken from the queue.
- A row submitted during a cycle may be in the next journal file and already in the database. That is
  harmless: a journal is only read back after a crash, and inserts skip ids already stored, so no row is doubled.
- ``recover`` (at start) hands every journal file in the directory that this journal did not write to the spool
  as a segment (``Spool.adopt``): after a SIGKILL, the ordinary replay writes those rows, each once.
  This relies on the spool's rule of one process per spool directory (a journal found there is a dead one's).

Held rows (``LogWriter.hold``; a pool with shadow routers): a row whose final version comes later (once the shadow
choices are computed, possibly after the response went out) is journaled at once in a provisional version
(``hold``), not queued, and ``hold`` pins the file it went to. ``discard`` defers a pinned file: it stays on disk
(still this journal's, so ``recover`` leaves it alone) until its last pin is ``release``d, which the writer's
caller does once the final row is submitted (journaled and queued). So at every moment the request's row is in a
journal file: the provisional line, the final one, or both. A pinned file that is ``hand_over``ed (a failed
cycle) or still pinned at ``close`` (a shadow that outlived shutdown's drain) goes to the spool like any other:
its provisional row is then replayed, and a release of it does nothing. Which version wins when both reach the
database: the final one, in any order (the insert lets a later row replace a stored provisional row's ``shadow``;
``gateway/store/writer.py``).

Durability: no fsync. Once ``os.write`` returns, the bytes are in the kernel's page cache, so they survive the
death of the process (SIGKILL, an OOM kill, a crash), not the death of the machine (power loss, kernel panic);
neither does the spool. An fsync per row would cost milliseconds per request.

Failure: a write that fails (disk full, a read-only or deleted directory, a row that cannot be encoded) never
fails the request. It is logged (once per streak) and counted (``unjournaled_rows``); the row stays queued in
memory, as without a journal, and the journal rests until the next rotation, so a full disk costs one failed
write per cycle rather than one per request (and a torn line is never followed by more rows in its file).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gateway.store.spool import Spool, encode_row, ordered_file_name

log = logging.getLogger(__name__)

JOURNAL_GLOB = "journal-*.jsonl"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND  # os.open makes it close-on-exec (PEP 446)


class Journal:
    """Journal files of one writer under ``directory`` (the spool directory). Not thread-safe: event loop only."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        #: Rows submitted but not journaled (failed writes, and rows while the journal rests after one).
        self.unjournaled_rows = 0
        self._fd: int | None = None
        self._seq = 0
        self._resting = False  # a write failed: no more attempts until the next rotation
        self._failing = False  # in a streak of failures (logged once, at its start)
        self._unrotated: list[Path] = []  # files written since the last rotation (the open one last)
        self._mine: set[Path] = set()  # every file of this journal not yet discarded or handed over
        self._pins: dict[Path, int] = {}  # files holding rows whose final version is not submitted yet
        self._deferred: set[Path] = set()  # pinned files already discarded: deleted at their last release

    def append(self, row: dict[str, Any]) -> bool:
        """Write one row's line to the open journal file (opened on first use); False when it is not journaled."""
        if self._resting:
            self.unjournaled_rows += 1
            return False
        try:
            line = encode_row(row)
            fd = self._fd if self._fd is not None else self._open()
            written = os.write(fd, line)
            if written != len(line):  # disk full part way: the line is torn
                raise OSError(f"short write, {written} of {len(line)} bytes")
        except Exception as exc:  # never fail the request: the row is still queued in memory
            self.unjournaled_rows += 1
            self._resting = True
            self._close()  # later rows go to a new file, not after a torn line
            if not self._failing:
                self._failing = True
                log.error("log journal write failed (%s: %s): rows are kept in memory only (lost on SIGKILL) "
                          "until a write succeeds; retried every writer cycle", type(exc).__name__, exc)
            return False
        if self._failing:
            self._failing = False
            log.warning("log journal writes work again; %d rows were not journaled", self.unjournaled_rows)
        return True

    def hold(self, row: dict[str, Any]) -> Path | None:
        """``append`` the provisional version of a row and pin its file; the file is the token for ``release``.

        None when the row is not journaled (the pin would protect nothing).
        """
        if not self.append(row):
            return None
        path = self._unrotated[-1]  # append succeeded: its file is open, and the open file is the last one
        self._pins[path] = self._pins.get(path, 0) + 1
        return path

    def release(self, path: Path) -> None:
        """Drop one pin of ``path``; delete it if that was the last and its cycle discarded it already.

        A file no longer pinned (handed to the spool meanwhile) is left alone.
        """
        left = self._pins.get(path, 0) - 1
        if left > 0:
            self._pins[path] = left
            return
        self._pins.pop(path, None)
        if path in self._deferred:
            self._deferred.discard(path)
            self._delete(path)

    @property
    def pinned_files(self) -> int:
        """Files kept past their cycle because they hold a row whose final version is not submitted yet."""
        return len(self._deferred)

    def _open(self) -> int:
        self._seq += 1
        path = self.directory / ordered_file_name("journal", self._seq)
        try:
            fd = os.open(path, _FLAGS, 0o600)  # rows may carry prompts: owner only, like the process's data
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, _FLAGS, 0o600)
        self._fd = fd
        self._unrotated.append(path)
        self._mine.add(path)
        return fd

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("closing a log journal file failed: %s", exc)

    def rotate(self) -> list[Path]:
        """Close the open file; return the files written since the last rotation (later rows go to a new one)."""
        self._close()
        self._resting = False
        rotated, self._unrotated = self._unrotated, []
        return rotated

    def discard(self, paths: list[Path]) -> None:
        """Delete rotated files whose queued rows are all durable now; a pinned one waits for its last release."""
        for path in paths:
            if path in self._pins:
                self._deferred.add(path)
            else:
                self._delete(path)

    def _delete(self, path: Path) -> None:
        self._mine.discard(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # left behind: a restart replays it, and inserts skip the ids already stored
            log.warning("could not delete log journal %s: %s", path, exc)

    def hand_over(self, paths: list[Path], spool: Spool) -> list[Path]:
        """Give rotated files whose rows may not all be durable to the spool as segments (replayed, ids skipped).

        Pins of these files end here: the spool replays their held rows, and a final version wins over them.
        Returns the segments they became (a file the disk would not let go is logged, not returned).
        """
        adopted = []
        for path in paths:
            self._mine.discard(path)
            self._pins.pop(path, None)
            self._deferred.discard(path)
            try:
                if path.stat().st_size:
                    adopted.append(spool.adopt(path))
                else:
                    path.unlink()
            except OSError as exc:
                log.error("could not hand log journal %s to the spool: %s", path, exc)
        return adopted

    def recover(self, spool: Spool) -> int:
        """At start: journal files this journal did not write (a killed process's) become spool segments.

        Returns how many files were found (empty ones are deleted rather than adopted).
        """
        if not self.directory.is_dir():
            return 0
        leftovers = sorted(p for p in self.directory.glob(JOURNAL_GLOB) if p not in self._mine)
        if leftovers:
            log.warning("found %d log journal files left by a process that did not stop cleanly; their rows "
                        "are replayed from the spool", len(leftovers))
            self.hand_over(leftovers, spool)
        return len(leftovers)

    def close(self, spool: Spool, kept: list[Path] | None = None) -> list[Path]:
        """End of the writer: hand any file still holding rows to the spool (normally there is none), with ``kept``
        (rotated files the writer kept because their rows could not be made durable); returns the segments.

        A file still pinned holds a row whose final version never came (its wait outlived shutdown): the spool
        gets it, so the next process writes the provisional row, and the final one if it arrives later (a row
        submitted after ``stop`` is spooled) replaces its ``shadow``.
        """
        return self.hand_over([*(kept or []), *self.rotate(), *sorted(self._deferred)], spool)
