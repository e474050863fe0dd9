"""Sampling profiles of a gateway process during one benchmark phase (``benchmarks/overhead.py --profile``).

``py-spy record`` attaches to the running server (and its worker processes) without pausing it
(``--nonblocking``), samples (``--rate``/s) the stack of the thread holding the GIL (``--gil``: the Python work
that competes for the one core an event loop has; a loop waiting in epoll holds no GIL and gives no sample) for as
long as the phase runs, and writes collapsed stacks (``--format raw``: one ``frame;frame;...;leaf count`` line per
distinct stack, the input of flamegraph.pl and speedscope). ``summarize`` turns them into the shares the README
quotes: self time by function and by package (the leaf frame), and inclusive time of poolgate's own functions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

#: leaf frames of a loop waiting in native code (uvloop's run_forever shows as its Python caller)
_IDLE = re.compile(r"^(Runner\.run|run_until_complete|run_forever) \(")
_FILE = re.compile(r"\(([^)]+)\)$")
#: poolgate's frames under every sample (the command that starts the server): no information
_BOOT = re.compile(r"\((gateway/cli\.py|gateway/commands/)")
#: ``function (file.py:line)`` -> ``function (file.py)``: one entry per function, not per line
_LINE = re.compile(r":\d+\)$")


class Profile:
    """``with Profile(pid, path):`` runs py-spy on ``pid`` (and its children) while the block runs."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profile:
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--subprocesses", "--nonblocking", "--gil",
             "--rate", str(self.rate), "--format", "raw", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=self.out.with_suffix(".log").open("wb"),
        )
        time.sleep(1.0)  # py-spy attaches and starts sampling
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _frames(stack: str) -> list[str]:
    # py-spy's raw lines begin with the process and thread: "process 123:"python ...";thread (0x..);frame;..."
    return [_LINE.sub(")", f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]


def _package(frame: str) -> str:
    """``f (gateway/proxy/http1.py)`` -> ``gateway/proxy``; ``f (uvicorn/protocols/http/x.py)`` -> ``uvicorn``."""
    m = _FILE.search(frame)
    parts = (m.group(1) if m else "?").split("/")
    if parts[0] in ("gateway", "routers", "training") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py") + " (stdlib)"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Self shares by function and by package and inclusive shares of poolgate's functions, of the busy
    samples in a raw py-spy file (idle samples counted apart)."""
    self_counts: Counter[str] = Counter()
    pkg_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), _frames(stack)
        if not frames or _IDLE.search(frames[-1]):
            idle += count
            continue
        busy += count
        self_counts[frames[-1]] += count
        pkg_counts[_package(frames[-1])] += count
        for f in set(frames):
            if _package(f).startswith(("gateway", "routers")) and not _BOOT.search(f):
                incl_counts[f] += count

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(n / busy, 3)) for f, n in c.most_common(top)] if busy else []

    return {"busy_samples": busy, "idle_samples": idle, "self": shares(self_counts), "by_package": shares(pkg_counts),
            "inclusive": shares(incl_counts)}


def render(label: str, s: dict[str, Any]) -> str:
    lines = [f"profile {label}: {s['busy_samples']} GIL samples ({s['idle_samples']} more in the loop's wait); "
             "shares of them: self by function | self by package | inclusive, poolgate's functions:"]
    for i in range(max(len(s["self"]), len(s["inclusive"]))):
        cells = []
        for key, width in (("self", 58), ("by_package", 26), ("inclusive", 58)):
            f, v = s[key][i] if i < len(s[key]) else ("", None)
            cells.append(f"{'' if v is None else f'{v:6.1%}'} {f[:width - 8]}".ljust(width))
        lines.append("  " + " | ".join(cells))
    return "\n".join(lines)
