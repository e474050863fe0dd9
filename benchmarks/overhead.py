"""Gateway overhead and throughput, poolgate beside LiteLLM's proxy and Portkey's gateway, in one run on this machine.

One command (from the repository root): ``python benchmarks/overhead.py`` (``--help`` for the knobs).

It starts on loopback a fast fake OpenAI-compatible backend (``benchmarks/fake_backend.py``), LiteLLM's proxy
(``litellm[proxy]`` in its own venv, created on first use; one worker; one model pointing at the fake backend;
no database, no callbacks, no router: a plain proxy), Portkey's gateway (``@portkey-ai/gateway`` from npm in a
cache folder, created on first use; its documented server command; the provider and the fake backend named in
each request's headers; ``benchmarks/peers.py``) and poolgate (``poolgate serve``, SQLite log store on, one
row per request, a nine-model pool over the same backend, a random master key checked on every request) once
per router and worker count (``--workers 1,2``). Each target is measured on its own,
one after the other, by a load generator in a separate process (``benchmarks/loadgen.py``), with the same
sequence of distinct prompts (held-out LLMRouter queries, so embedding caches do not hit):

- concurrency 1: latency p50/p99, and the latency *added* over the direct backend (measured right before);
- concurrency 32: requests/s and p99 for a fixed time;
- streaming (concurrency 1): time to first token, and the time added over the direct backend;
- RSS of the gateway after 5k and 20k requests in total (``--rss-for`` picks which targets).

With ``--compare-tree DIR`` every poolgate configuration is measured twice, this tree's and then DIR's (another
checkout of poolgate, run with its own code), and the report adds their ratios: a change's cost, in one run.

With ``--profile``, py-spy samples each poolgate server during its concurrency-1 and -32 phases
(``benchmarks/profiling.py``); the report prints the top frames and the raw stacks are kept beside the JSON.

It prints a table, the ratios of every poolgate target to both peers, the verdicts against the issues' targets,
and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    Child,
    free_port,
    load_average,
    parse_spec,
    pool_yaml,
    prepare_workload,
    run_load,
    spec_label,
)
from benchmarks.loopstats import render as render_loop
from benchmarks.loopstats import window as loop_window
from benchmarks.peers import (
    LITELLM_VENV,
    PORTKEY_DIR,
    PORTKEY_VERSION,
    Target,
    ensure_litellm,
    ensure_portkey,
    start_litellm,
    start_portkey,
)
from benchmarks.profiling import Profile, render, summarize
from benchmarks.report import report

#: router specs: a registered name fits on the default encoder (minilm-static); ``:minilm`` on the contextual one
ALL_ROUTERS = ("cheapest", "knn", "complexity", "graph", "knn:minilm", "complexity:minilm", "graph:minilm")
PHASES = ("c1", "c32", "stream", "rss")
#: what a phase left out by ``--only`` reports: no figures (the report prints "-" and verdicts "n/a")
NOT_MEASURED: dict[str, Any] = {"p50_ms": None, "p99_ms": None, "rps": None, "ttft_p50_ms": None,
                                "ttft_p99_ms": None, "not_measured": True}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="poolgate vs LiteLLM and Portkey: added latency, throughput, TTFT, RSS.")
    p.add_argument("--routers", default=",".join(ALL_ROUTERS), help="poolgate routers to measure, comma-separated")
    p.add_argument("--c1-requests", type=int, default=400, help="measured requests at concurrency 1")
    p.add_argument("--c32-seconds", type=float, default=6.0, help="measured seconds at concurrency 32")
    p.add_argument("--stream-requests", type=int, default=150, help="measured streamed requests (concurrency 1)")
    p.add_argument("--chunks", type=int, default=16, help="content events per streamed answer")
    p.add_argument("--rss-at", default="5000,20000", help="total requests after which RSS is read")
    p.add_argument("--rss-for", default="litellm,portkey,cheapest,knn,knn:minilm",
                   help="targets that get the RSS phase ('all')")
    p.add_argument("--full", action="store_true", help="RSS phase for every target")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no ratios to it)")
    p.add_argument("--no-portkey", action="store_true", help="skip Portkey (no ratios to it)")
    p.add_argument("--portkey-dir", type=Path, default=PORTKEY_DIR, help="npm folder of Portkey (made if missing)")
    p.add_argument("--portkey-version", default=PORTKEY_VERSION, help="@portkey-ai/gateway version to install")
    p.add_argument("--workers", default="1,2",
                   help="poolgate worker processes (`poolgate serve --workers N`), comma-separated: each router is "
                        "measured once per count; N > 1 is labelled poolgate-<router>-w<N>")
    p.add_argument("--profile", action="store_true",
                   help="py-spy (pip install py-spy) samples every poolgate server in its c1 and c32 phases; "
                        "prints the top frames, keeps the raw stacks beside --out")
    p.add_argument("--only", default=",".join(PHASES),
                   help="phases to measure, comma-separated, of " + ",".join(PHASES) + " (default: all)")
    p.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV, help="venv of litellm[proxy] (made if missing)")
    p.add_argument("--train-queries", type=int, default=1500, help="LLMRouter queries the learned routers fit on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifacts", type=Path, default=REPO / ".poolgate" / "bench" / "artifacts")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overhead.json")
    p.add_argument("--compare-tree", type=Path, default=None,
                   help="another source tree of poolgate (e.g. main's, from `git archive main | tar -x -C DIR`): "
                        "each router is measured on it too, right after this tree, as poolgate-<router>@base")
    args = p.parse_args()
    args.phases = {x for x in args.only.split(",") if x}
    args.worker_counts = [int(x) for x in args.workers.split(",") if x]
    if not args.worker_counts or min(args.worker_counts) < 1:
        p.error("--workers takes counts >= 1, e.g. 1,2")
    if not args.phases or args.phases - set(PHASES):
        p.error(f"--only takes phases of {','.join(PHASES)}")
    return args


def poolgate_label(spec: str, workers: int, tree: Path | None) -> str:
    """``knn:minilm`` with 2 workers on the base tree -> ``knn-minilm-w2@base`` (its files and its results)."""
    return spec_label(spec) + (f"-w{workers}" if workers > 1 else "") + ("@base" if tree is not None else "")


def start_poolgate(spec: str, artifact: Path | None, cards: list[Any], work: Path, backend_port: int,
                   tree: Path | None = None, workers: int = 1, profile: bool = False) -> Target:
    """``poolgate serve`` of this tree, or of the source tree ``tree`` (its files named ``<router>@base``); with
    ``profile``, under ``benchmarks/loopstats.py`` (GC pauses and event-loop lag of the first process)."""
    port, key = free_port(), "sk-" + secrets.token_urlsafe(32)
    router = poolgate_label(spec, workers, tree)
    pool = work / f"pool-{router}.yaml"
    pool.write_text(pool_yaml(cards, f"http://127.0.0.1:{backend_port}/v1", parse_spec(spec)[0], artifact))
    env = {"POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{work / f'poolgate-{router}.db'}",
           "POOLGATE_SPOOL_DIR": str(work / f"spool-{router}"),
           "POOLGATE_EMBEDDING_CACHE_DIR": str(work / f"embeddings-{router}"),  # fresh: no cached prompt
           # like LiteLLM's master key: every request's bearer key is checked
           "POOLGATE_AUTH_ENABLED": "true", "POOLGATE_MASTER_KEY": key}
    if tree is not None:  # python -m runs the tree's gateway package (the working directory comes first)
        env["PYTHONPATH"] = str(tree.resolve())
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--pool-file", str(pool), "--port", str(port)]
    if profile:  # the wrapper imports the measured tree's gateway package: put it first on the path
        argv[1:3] = [str(REPO / "benchmarks" / "loopstats.py")]
        env |= {"LOOPSTATS_OUT": str(work / f"loopstats-{router}.json"), "PYTHONPATH": str((tree or REPO).resolve())}
    if workers > 1:
        argv += ["--workers", str(workers)]
    child = Child(f"poolgate-{router}", argv, work / f"poolgate-{router}.log", env,
                  cwd=tree.resolve() if tree is not None else None).start()
    child.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180)
    return Target(f"poolgate-{router}", port, "bench", key, child)


def load(t: Target, prompts: Path, work: Path, **spec: Any) -> dict[str, Any]:
    """One load-generator run against ``t``, continuing its prompt sequence."""
    full = {"host": "127.0.0.1", "port": t.port, "model": t.model, "api_key": t.api_key,
            "prompts_file": str(prompts), "start": t.served, "headers": t.headers, **spec}
    result = run_load(full, work)
    t.served += result["sent_total"]
    if result["errors"]:
        print(f"  ! {t.name}: {result['errors']} errors, e.g. {result['error_samples'][:1]}", flush=True)
    return result


def phase(t: Target, name: str, args: argparse.Namespace, prompts: Path, work: Path, **spec: Any) -> dict[str, Any]:
    """One measured phase of ``t``, with the gateway's CPU use over it and, with ``--profile`` on a poolgate target,
    a py-spy profile of it (raw stacks beside ``--out``; shares in ``result["profile"]``)."""
    if t.child is None:
        return load(t, prompts, work, **spec)
    cpu_before, wall_before, started = t.child.cpu_seconds(), time.perf_counter(), time.time()
    if args.profile and t.name.startswith("poolgate"):
        raw = args.out.parent / "profiles" / f"{t.name}-{name}.txt"
        assert t.child.proc is not None
        with Profile(t.child.proc.pid, raw):
            result = load(t, prompts, work, **spec)
        result["profile"] = summarize(raw) | {"raw": str(raw)}
        print(render(f"{t.name} {name}", result["profile"]), flush=True)
        time.sleep(1.2)  # the wrapper rewrites its file every second
        result["loop"] = loop_window(work / f"loopstats-{t.name.removeprefix('poolgate-')}.json", started, time.time())
        print(render_loop(f"{t.name} {name}", result["loop"]), flush=True)
    else:
        result = load(t, prompts, work, **spec)
    # warm-up included in both: the share of the machine the gateway took while this phase ran (1.0 = one core)
    result["gateway_cores"] = round((t.child.cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before), 3)
    return result


def measure(t: Target, direct: Target, args: argparse.Namespace, prompts: Path, work: Path, rss_at: list[int],
            with_rss: bool) -> dict[str, Any]:
    """Concurrency 1 (with the direct baseline right before), 32, streaming, then RSS checkpoints."""
    started = time.perf_counter()
    r: dict[str, Any] = {"load_average_start": load_average()}
    if t.child is not None:
        r["rss_mb_ready"] = t.child.rss_mb()
    on = args.phases
    if "c1" in on:
        r["direct_c1"] = load(direct, prompts, work, concurrency=1, requests=args.c1_requests, warmup=50)
    r["c1"] = phase(t, "c1", args, prompts, work, concurrency=1, requests=args.c1_requests, warmup=50) \
        if "c1" in on else NOT_MEASURED
    r["c32"] = phase(t, "c32", args, prompts, work, concurrency=32, duration_s=args.c32_seconds, warmup=128) \
        if "c32" in on else NOT_MEASURED
    r["stream"] = load(t, prompts, work, concurrency=1, requests=args.stream_requests, warmup=10, stream=True) \
        if "stream" in on else NOT_MEASURED
    r["rss_mb"] = {}
    if with_rss and "rss" in on and t.child is not None:
        for checkpoint in rss_at:
            if t.served < checkpoint:
                r[f"fill_{checkpoint}"] = load(t, prompts, work, concurrency=32, requests=checkpoint - t.served)
            time.sleep(1.0)
            r["rss_mb"][str(checkpoint)] = t.child.rss_mb()
            print(f"  {t.name}: RSS after {t.served} requests: {r['rss_mb'][str(checkpoint)]} MiB", flush=True)
    r["served"] = t.served
    r["seconds"] = round(time.perf_counter() - started, 1)
    return r


def stop(t: Target) -> None:
    if t.child is not None:
        t.child.stop()


def logged_rows(db: Path) -> int | None:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.Error:
        return None


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    routers = [r for r in args.routers.split(",") if r]
    rss_at = sorted(int(x) for x in args.rss_at.split(",") if x)
    rss_for = set(ALL_ROUTERS) | {"litellm", "portkey"} if args.full or args.rss_for == "all" \
        else set(args.rss_for.split(","))
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "load_average_start": load_average()}, "args": vars(args) | {
        "litellm_venv": str(args.litellm_venv), "portkey_dir": str(args.portkey_dir), "artifacts": str(args.artifacts),
        "out": str(args.out)}}
    print("preparing the workload (LLMRouter pool, learned routers) ...", flush=True)
    wl = prepare_workload(routers, args.artifacts, args.train_queries, args.seed)
    out["workload"] = {k: wl[k] for k in ("skipped", "fit_seconds", "train_rows", "held_out_rows")}
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps(wl["prompts"]))
    backend_port = free_port()
    backend = Child("fake-backend", [sys.executable, "-m", "benchmarks.fake_backend", "--port", str(backend_port),
                                     "--chunks", str(args.chunks)], work / "backend.log").start()
    backend.wait_http(f"http://127.0.0.1:{backend_port}/health")
    direct = Target("direct", backend_port, "bench")
    results: dict[str, Any] = {}
    try:
        print("direct backend ...", flush=True)
        on = args.phases
        results["direct"] = {
            "c1": load(direct, prompts, work, concurrency=1, requests=args.c1_requests, warmup=50)
            if "c1" in on else NOT_MEASURED,
            "c32": load(direct, prompts, work, concurrency=32, duration_s=args.c32_seconds, warmup=128)
            if "c32" in on else NOT_MEASURED,
            "stream": load(direct, prompts, work, concurrency=1, requests=args.stream_requests, warmup=10,
                           stream=True) if "stream" in on else NOT_MEASURED,
        }
        if not args.no_litellm:
            exe, version = ensure_litellm(args.litellm_venv)
            print(f"LiteLLM {version} ...", flush=True)
            target, out["litellm"] = start_litellm(exe, version, work, backend_port)
            try:
                results["litellm"] = measure(target, direct, args, prompts, work, rss_at, "litellm" in rss_for)
            finally:
                stop(target)
        if not args.no_portkey:
            script = ensure_portkey(args.portkey_dir, args.portkey_version)
            print(f"Portkey {args.portkey_version} ...", flush=True)
            target, out["portkey"] = start_portkey(script, args.portkey_version, work, backend_port)
            try:
                results["portkey"] = measure(target, direct, args, prompts, work, rss_at, "portkey" in rss_for)
            finally:
                stop(target)
        trees: list[Path | None] = [None] if args.compare_tree is None else [None, args.compare_tree]
        for router in routers:
            if router not in wl["artifacts"]:
                print(f"poolgate {router}: skipped ({wl['skipped'].get(router)})", flush=True)
                continue
            # another tree may predate `serve --workers`: it is measured with one worker only
            for workers, tree in [(w, tr) for w in args.worker_counts for tr in trees if tr is None or w == 1]:
                label = poolgate_label(router, workers, tree)
                print(f"poolgate, router {router}, {workers} worker(s){f' (tree {tree})' if tree else ''} ...",
                      flush=True)
                try:
                    target = start_poolgate(router, wl["artifacts"][router], wl["cards"], work, backend_port, tree,
                                            workers, args.profile)
                except RuntimeError as exc:  # one configuration that cannot start must not sink the others
                    out["workload"]["skipped"][label] = f"poolgate did not start: {str(exc).splitlines()[-1]}"
                    print(f"  ! {out['workload']['skipped'][label]}", flush=True)
                    continue
                try:
                    res = measure(target, direct, args, prompts, work, rss_at, router in rss_for)
                finally:
                    stop(target)
                res["logged_rows"] = logged_rows(work / f"poolgate-{label}.db")
                results[f"poolgate-{label}"] = res
    finally:
        backend.stop()
    out["results"] = results
    out["machine"]["load_average_end"] = load_average()
    return out


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poolgate-bench-") as tmp:
        out = run(args, Path(tmp))
    out["seconds"] = round(time.perf_counter() - started, 1)
    text, verdicts = report(out)
    out["verdicts"] = verdicts
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.out} ({out['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
