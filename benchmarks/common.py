"""Shared helpers of the benchmarks: child processes, readiness, RSS, the load generator, percentiles, tables."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A server started in its own process group, its output in ``log_path``; stop() ends the whole group."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or REPO
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)
        log.close()
        return self

    def wait_http(self, url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> None:
        """Block until ``url`` answers below 500; raise with the log's tail if the process dies or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2.0, headers=headers).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout_s:.0f}s:\n{self.tail()}")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children, in MiB."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return round(total / 2**20, 1)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the process and its live children (worker processes)."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group (graceful shutdown), SIGKILL what is left after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def run_load(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one measurement in a separate load-generator process (see ``benchmarks/loadgen.py``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, delete=False) as fh:
        json.dump(spec, fh)
    try:
        out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", fh.name], cwd=REPO, capture_output=True,
                             text=True, timeout=1800, check=False)
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank on the sorted values)."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                      strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- the routing workload: LLMRouter's nine-model pool, routers fitted on a slice, held-out prompts ----------------

DATASET = "llmrouter"


def needs_fit(name: str) -> bool:
    """Whether registered router ``name`` learns from data (so a pool needs its artifact)."""
    from routers.base import Router
    from routers.registry import get_router_class

    return get_router_class(name).fit is not Router.fit


def split_queries(queries: Sequence[str], train_queries: int, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held-out): ``train_queries`` unique query texts drawn with ``seed`` go to train."""
    import numpy as np

    uniq = sorted(set(queries))
    order = np.random.default_rng(seed).permutation(len(uniq))
    train_set = {uniq[i] for i in order[:train_queries]}
    train = [i for i, q in enumerate(queries) if q in train_set]
    held = [i for i, q in enumerate(queries) if q not in train_set]
    held = [held[i] for i in np.random.default_rng(seed + 1).permutation(len(held))]
    return train, held


def fit_router(name: str, train_ds: Any, path: Path, params: dict[str, Any] | None = None) -> float:
    """Fit registered router ``name`` on ``train_ds`` (features attached) and save it; returns seconds."""
    from routers.registry import make_router

    started = time.perf_counter()
    router = make_router(name, **(params or {}))
    router.fit(train_ds)
    router.save(path)
    return time.perf_counter() - started


#: suffix of a router spec fitted on the contextual ``minilm`` encoder (``knn:minilm``); without it, the default
#: encoder (``minilm-static``, docs/encoders.md)
MINILM_SUFFIX = ":minilm"


def parse_spec(spec: str) -> tuple[str, str]:
    """``knn`` -> (``knn``, ``minilm-static``); ``knn:minilm`` -> (``knn``, ``minilm``)."""
    if spec.endswith(MINILM_SUFFIX):
        return spec[: -len(MINILM_SUFFIX)], "minilm"
    return spec, "minilm-static"


def spec_label(spec: str) -> str:
    """``knn:minilm`` -> ``knn-minilm`` (file names, result keys)."""
    return spec.replace(":", "-")


def prepare_workload(routers: Sequence[str], art_dir: Path, train_queries: int, seed: int) -> dict[str, Any]:
    """Load the data set, fit the learned ``routers`` not yet cached in ``art_dir``, and return the workload:
    ``cards`` (the pool), ``prompts`` (held-out queries, shuffled), ``artifacts`` (spec -> path or None),
    ``skipped`` (spec -> reason), ``fit_seconds`` and ``train`` (the training slice, features attached).
    A spec is a registered router name, with ``:minilm`` to fit it on ``minilm`` embeddings (default: static)."""
    from routers.registry import ROUTERS
    from training.features import Featurizer
    from training.loaders import load_dataset

    ds = load_dataset(DATASET)
    train_idx, held_idx = split_queries(ds.queries, train_queries, seed)
    train = ds.subset(train_idx)
    out: dict[str, Any] = {"cards": list(ds.cards), "prompts": [ds.queries[i] for i in held_idx],
                           "artifacts": {}, "skipped": {}, "fit_seconds": {}, "train": train,
                           "train_rows": len(train_idx), "held_out_rows": len(held_idx)}
    featurized: dict[str, Any] = {}
    for spec in routers:
        name, encoder = parse_spec(spec)
        if name not in ROUTERS:
            out["skipped"][spec] = "not in routers/registry.py yet"
            continue
        if not needs_fit(name):
            out["artifacts"][spec] = None
            continue
        path = art_dir / f"{name}-{DATASET}-{train_queries}q-seed{seed}-{encoder}.router"
        if path.exists() and not _loads(path, encoder):  # written by an older version of the router: fit again
            path.unlink()
        if not path.exists():
            if encoder not in featurized:
                featurized[encoder] = train.with_features(Featurizer(encoder=encoder).featurize_dataset(train))
            out["train"] = featurized[encoder]
            try:
                out["fit_seconds"][spec] = round(fit_router(name, featurized[encoder], path), 1)
            except Exception as exc:  # a router still being written must not sink the other measurements
                out["skipped"][spec] = f"fit failed: {type(exc).__name__}: {exc}"
                continue
        out["artifacts"][spec] = path
    return out


def _loads(path: Path, encoder: str) -> bool:
    from routers.base import Router, RouterError

    try:
        return Router.load(path).encoder_ == encoder
    except RouterError:
        return False


def pool_yaml(cards: Sequence[Any], backend_url: str, router: str, artifact: Path | None) -> str:
    """A pool file: every card as a backend on the fake server, one pool ``bench`` routed by ``router``."""
    import yaml

    backends = []
    for c in cards:
        b: dict[str, Any] = {"name": c.name, "base_url": backend_url, "model": c.name,
                             "input_price": c.input_price, "output_price": c.output_price}
        if c.size_b:
            b["size_b"] = c.size_b
        if c.release_date:
            b["release_date"] = str(c.release_date)
        if c.context_window:
            b["context_window"] = c.context_window
        if c.description:
            b["description"] = c.description
        backends.append(b)
    pool: dict[str, Any] = {"name": "bench", "members": [c.name for c in cards], "router": router,
                            "objective": "balanced"}
    if artifact is not None:
        pool["artifact"] = str(artifact.resolve())
    return yaml.safe_dump({"backends": backends, "pools": [pool]}, sort_keys=False)
