"""Gateways as real processes (``python -m gateway.cli serve``, uvloop + httptools as in production) for tests
that kill, restart or measure them: restarts with a spool on disk, RSS under hostile input, replicas.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from tests.servers import free_port


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, output: Callable[[], str],
                       timeout_s: float = 90.0) -> None:
    """Wait until ``url``'s ``/health`` answers 200; if ``proc`` dies or ``timeout_s`` passes first, kill it and
    raise with what it printed (``output()``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"poolgate serve on {url} did not come up:\n{output()}")
        time.sleep(0.1)


class GatewayProcess:
    """One ``poolgate serve`` process on 127.0.0.1:<port> over ``pool_file``; settings as ``POOLGATE_*`` env.

    Output (stdout and stderr) goes to ``log_path`` so tests can read it (e.g. to look for leaked secrets).
    The schema is not migrated here for PostgreSQL: call ``gateway.store.upgrade`` (or ``poolgate db upgrade``)
    first, as a deployment would.
    """

    def __init__(self, pool_file: Path, workdir: Path, port: int | None = None, args: tuple[str, ...] = (),
                 **settings: Any) -> None:
        self.pool_file = pool_file
        self.args = args  # more command-line options of `poolgate serve` (e.g. --workers 2)
        self.workdir = workdir
        self.port = port or free_port()
        self.settings = {"log_flush_interval_s": 0.05, "spool_dir": workdir / "spool", **settings}
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLGATE_") or k.startswith("POOLGATE_TEST_")}
        env.update({f"POOLGATE_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        """Start the process and wait until ``/health`` answers; raises with its output if it dies first."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--pool-file", str(self.pool_file),
                 "--port", str(self.port), *self.args],
                cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_until_healthy(self.proc, self.url, self.output, timeout_s)
        except RuntimeError:
            self.kill()
            raise
        return self

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the gateway process now."""
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (what Kubernetes and compose send first) and wait: uvicorn drains, the writer flushes/spools."""
        return self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs; queued rows survive in the writer's journal and are written when a
        gateway starts again on the same spool directory (``gateway/store/journal.py``)."""
        return self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout_s: float) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.terminate()
