"""Sampling profiles of a gateway process during one benchmark phase (``benchmarks/overhead.py --profile``).

``py-spy record`` attaches to the running server (and its worker processes) without pausing it
(``--nonblocking``), samples every thread's Python stack (``--rate``/s) for as long as the phase runs, and writes
collapsed stacks (``--format raw``: one ``frame;frame;...;leaf count`` line per distinct stack, the input of
flamegraph.pl and speedscope). ``summarize`` turns them into the shares the README quotes: the leaf frames where
samples land (self time) and the frames on the stack the most (inclusive time), idle samples (the event loop
waiting in ``select``/``epoll``) counted apart.
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

#: leaf frames that mean "waiting, not working": the event loop's poll, a thread parked on a lock or queue
_IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once \(uvloop|wait \(threading\.py|_worker \(concurrent)")
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
            [exe, "record", "--pid", str(self.pid), "--subprocesses", "--nonblocking", "--rate", str(self.rate),
             "--format", "raw", "--output", str(self.out)],
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


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the busy samples in a raw py-spy file (idle samples counted apart)."""
    self_counts: Counter[str] = Counter()
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
        for f in set(frames):
            incl_counts[f] += count

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(n / busy, 3)) for f, n in c.most_common(top)] if busy else []

    return {"busy_samples": busy, "idle_samples": idle, "self": shares(self_counts), "inclusive": shares(incl_counts)}


def render(label: str, s: dict[str, Any]) -> str:
    total = s["busy_samples"] + s["idle_samples"]
    lines = [f"profile {label}: {s['busy_samples']} busy samples of {total} "
             f"({s['busy_samples'] / total if total else 0:.0%} busy); top self / inclusive shares of busy time:"]
    for (f1, v1), (f2, v2) in zip(s["self"], s["inclusive"], strict=False):
        lines.append(f"  {v1:6.1%} {f1[:70]:<70}  {v2:6.1%} {f2[:70]}")
    return "\n".join(lines)
