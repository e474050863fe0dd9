"""``poolgate serve --workers N``: N gateway processes on one port, each with its own event loop and spool.

Why processes: one gateway process is one event loop on one core (the GIL), so a second core serves more only
through a second process. Each worker binds the port itself with ``SO_REUSEPORT``; the kernel spreads new
connections over the listening workers (a hash of the connection's addresses), so no process sits in front of
them and a keep-alive connection stays with the worker that accepted it.

The first process supervises: it applies the embedded (SQLite) migrations and starts the demo replay backend once,
starts the workers (``serve --worker-index i``, the settings passed as ``POOLGATE_*`` environment), forwards SIGTERM
and SIGINT to them (each drains and flushes its log rows as a single gateway does), and restarts a worker that
dies on its own, on the same spool directory, so the rows in its write-ahead journal are replayed.

State per worker (docs/architecture.md, "Workers and replicas"): each has its own spool directory
``<spool_dir>/worker-<i>`` (the journal's recovery adopts every journal file in its directory that it did not
write, so two live processes must never share one), circuit breakers, embedding batcher and its cache, the
Responses ``previous_response_id`` store, loaded router versions (each hot-reloads on its own), in-process limits
(without Redis) and metrics. What is shared goes through the database or Redis, as between replicas.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger("poolgate")

#: a worker that exits this soon after it started is failing at start: restarting it in a loop would spin
FAST_EXIT_S = 5.0
#: consecutive fast exits of one worker after which the supervisor stops everything and exits with an error
MAX_FAST_EXITS = 3
WORKER_DIR_PREFIX = "worker-"


def worker_spool_dir(spool_dir: Path, index: int) -> Path:
    """Worker ``index``'s own spool (and journal) directory under the configured one."""
    return spool_dir / f"{WORKER_DIR_PREFIX}{index}"


def fold_spools(spool_dir: Path, workers: int) -> int:
    """Before any worker starts: move the spool and journal files of directories no process of this run will own
    (``worker-<i>`` for i >= ``workers``, or, with several workers, the top directory a single process used) into
    one that a process will own, so a change of ``--workers`` leaves no row behind. Returns the files moved.

    Safe because nothing runs on them yet: a journal file moved is adopted as a dead process's, a segment is
    replayed in its time order (file names carry time and pid, so they never clash); ``rejected.jsonl`` (rows for a
    human, never replayed) stays where it is."""
    if not spool_dir.is_dir():
        return 0
    target = worker_spool_dir(spool_dir, 0) if workers > 1 else spool_dir
    sources = [p for p in spool_dir.glob(f"{WORKER_DIR_PREFIX}*") if p.is_dir()
               and (workers == 1 or not p.name.removeprefix(WORKER_DIR_PREFIX).isdigit()
                    or int(p.name.removeprefix(WORKER_DIR_PREFIX)) >= workers)]
    if workers > 1:
        sources.append(spool_dir)
    moved = 0
    for source in sources:
        for path in [*source.glob("segment-*.jsonl"), *source.glob("journal-*.jsonl")]:
            target.mkdir(parents=True, exist_ok=True)
            path.rename(target / path.name)
            moved += 1
    if moved:
        log.warning("moved %d spool/journal files into %s (spool directories of another worker count)", moved, target)
    return moved


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port that other workers can bind too (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    """Starts ``workers`` worker processes with ``env`` and keeps them running until SIGTERM or SIGINT."""

    def __init__(self, workers: int, env: dict[str, str], spool_dir: Path,
                 preexec: Callable[[], None] | None = None) -> None:
        self.workers = workers
        self.preexec = preexec  # in each worker before it runs (serve's: die with the supervisor)
        self.env = env
        self.spool_dir = spool_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.fast_exits: dict[int, int] = dict.fromkeys(range(workers), 0)
        self.stopping = False

    def _start(self, index: int) -> None:
        env = {**self.env, "POOLGATE_SPOOL_DIR": str(worker_spool_dir(self.spool_dir, index))}
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--no-replay", "--worker-index", str(index)]
        self.procs[index] = subprocess.Popen(argv, env=env, preexec_fn=self.preexec)
        self.started_at[index] = time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Serve until told to stop; returns the exit code (non-zero when a worker kept failing at start)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self.workers):
            self._start(index)
        code = 0
        while not self.stopping:
            time.sleep(0.2)
            for index, proc in list(self.procs.items()):
                if self.stopping or proc.poll() is None:
                    continue
                lived = time.monotonic() - self.started_at[index]
                self.fast_exits[index] = self.fast_exits[index] + 1 if lived < FAST_EXIT_S else 0
                if self.fast_exits[index] >= MAX_FAST_EXITS:
                    log.error("worker %d exited %d times within %.0f s of starting; stopping", index,
                              MAX_FAST_EXITS, FAST_EXIT_S)
                    code = 1
                    self._on_signal(signal.SIGTERM, None)
                    break
                log.error("worker %d (pid %d) exited with code %s; restarting it on its spool", index, proc.pid,
                          proc.returncode)
                self._start(index)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return code


def worker_env(host: str, port: int, log_format: str | None, access_log: bool | None) -> dict[str, str]:
    """The environment of every worker: this process's, with the command line's choices as settings."""
    env = {**os.environ, "POOLGATE_HOST": host, "POOLGATE_PORT": str(port)}
    if log_format is not None:
        env["POOLGATE_LOG_FORMAT"] = log_format
    if access_log is not None:
        env["POOLGATE_ACCESS_LOG"] = "true" if access_log else "false"
    return env
