"""The response cache's effect on cost, latency and answer quality, on the recorded GSM8K prompts with repeats.

One command from the repository root: ``python benchmarks/cache.py`` (``--help`` for the knobs). It starts the
replay backend (``poolgate replay``: two real models' recorded GSM8K answers, with ``--latency-ms`` before the first
byte and ``--ms-per-token`` per completion token, so an upstream call takes the time a real one would) and, once per
configuration, a fresh ``poolgate serve`` over the demo pool (the packaged kNN router on ``minilm-static``) with:

- ``off``: no ``cache:`` block;
- ``exact``: ``cache: {exact: true, sampled: true}``;
- ``exact+semantic@T``: the same plus ``semantic: {threshold: T}`` (the router's own encoder), one per
  ``--thresholds`` value.

Every configuration gets the same stream of ``--requests`` requests, sent ``--concurrency`` at a time: each draws one
of the 300 recorded prompts by a Zipf law (``--zipf``; a few prompts are asked often, most rarely), and with
probability ``--near-dup`` sends it as a near duplicate (a prefix such as "Question: ", a suffix such as " Thanks!",
or lower case: the same question in other words only in the weakest sense; true paraphrases are not in the data).

Per configuration: requests, exact and semantic hits, the cost the gateway charged (``x-poolgate-cost-usd``, 0 on a
hit), the cost it saved (``x-poolgate-cache-saved-usd``), client-side latency p50/p99 (and p50 of hits and of
misses apart), and quality: the share of
answers the source grades correct (an answer is correct when it is a recorded answer *of the question that was
asked* and the source graded it correct), and, of the semantic hits, the share that answered the question asked
(a recorded answer of that very question) rather than a similar-looking other one. Prints a table, writes
``benchmarks/results/cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import Child, fmt, free_port, percentile, table  # noqa: E402
from gateway.replay.data import ReplayStore, normalize_prompt  # noqa: E402

ARTIFACT = REPO / "gateway" / "demo" / "auto-knn.router"
PREFIXES = ("Question: ", "Please solve: ", "Q: ")
SUFFIXES = (" Thanks!", " Answer please.", " Show your work.")


def pool_yaml(replay_url: str, cache: str | None) -> str:
    block = f"\n    cache: {cache}" if cache else ""
    return f"""
backends:
  - {{name: mixtral-8x7b, base_url: "{replay_url}/mixtral-8x7b/v1", model: mixtral-8x7b,
     input_price: 0.6, output_price: 0.6, context_window: 32768}}
  - {{name: gpt-4-1106, base_url: "{replay_url}/gpt-4-1106/v1", model: gpt-4-1106,
     input_price: 10.0, output_price: 30.0, context_window: 128000}}
pools:
  - name: auto
    members: [mixtral-8x7b, gpt-4-1106]
    router: knn
    artifact: {ARTIFACT}
    objective: balanced{block}
"""


def near_duplicate(text: str, rng: np.random.Generator) -> str:
    kind = int(rng.integers(3))
    if kind == 0:
        return PREFIXES[int(rng.integers(len(PREFIXES)))] + text
    if kind == 1:
        return text + SUFFIXES[int(rng.integers(len(SUFFIXES)))]
    return text.lower()


def workload(store: ReplayStore, n: int, zipf: float, near_dup: float, seed: int) -> list[tuple[int, str]]:
    """``n`` (recorded question, prompt sent) pairs: questions drawn by a Zipf law over a shuffled order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(store.records))
    weights = 1.0 / np.arange(1, len(order) + 1) ** zipf
    picks = rng.choice(len(order), size=n, p=weights / weights.sum())
    out = []
    for rank in picks:
        q = int(order[rank])
        text = store.records[q].prompt
        out.append((q, near_duplicate(text, rng) if rng.random() < near_dup else text))
    return out


async def run_stream(url: str, stream: list[tuple[int, str]], concurrency: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in stream]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(stream)):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": "auto", "messages": [{"role": "user", "content": stream[i][1]}]}
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            h = r.headers
            results[i] = {"question": stream[i][0], "latency_ms": ms, "cache": h.get("x-poolgate-cache", "-"),
                          "cost_usd": float(h.get("x-poolgate-cost-usd", 0)),
                          "saved_usd": float(h.get("x-poolgate-cache-saved-usd", 0)),
                          "backend": h.get("x-poolgate-backend"),
                          "text": r.json()["choices"][0]["message"]["content"]}

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def grade(store: ReplayStore, q: int, text: str) -> tuple[bool, bool]:
    """(answers the question asked, graded correct): ``text`` is a recorded answer of question ``q`` (correct
    when the source graded that answer correct)."""
    record, wanted = store.records[q], normalize_prompt(text or "")
    for model, answer in record.answers.items():
        if normalize_prompt(answer) == wanted:
            return True, record.correct[model]
    return False, False


def _p50(values: list[float]) -> float | None:
    return percentile(values, 50) if values else None


def summarize(name: str, store: ReplayStore, results: list[dict[str, Any]]) -> dict[str, Any]:
    graded = [grade(store, r["question"], r["text"]) for r in results]
    semantic = [g for r, g in zip(results, graded, strict=True) if r["cache"] == "hit-semantic"]
    latencies = [r["latency_ms"] for r in results]
    return {
        "config": name, "requests": len(results),
        "exact_hits": sum(r["cache"] == "hit-exact" for r in results),
        "semantic_hits": len(semantic),
        "cost_usd": sum(r["cost_usd"] for r in results), "saved_usd": sum(r["saved_usd"] for r in results),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "hit_p50_ms": _p50([r["latency_ms"] for r in results if r["cache"].startswith("hit")]),
        "miss_p50_ms": _p50([r["latency_ms"] for r in results if not r["cache"].startswith("hit")]),
        "accuracy": sum(c for _, c in graded) / len(graded),
        "semantic_same_question": (sum(s for s, _ in semantic) / len(semantic)) if semantic else None,
        "semantic_correct": (sum(c for _, c in semantic) / len(semantic)) if semantic else None,
    }


def run_config(name: str, cache: str | None, replay_url: str, stream: list[tuple[int, str]], concurrency: int,
               workdir: Path, store: ReplayStore) -> dict[str, Any]:
    folder = workdir / name.replace("@", "-").replace("+", "-")
    folder.mkdir(parents=True)
    pool_file = folder / "pool.yaml"
    pool_file.write_text(pool_yaml(replay_url, cache))
    port = free_port()
    env = {"POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{folder}/gw.db", "POOLGATE_SPOOL_DIR": str(folder / "spool"),
           "POOLGATE_ARTIFACTS_DIR": str(folder / "artifacts")}
    gw = Child(f"poolgate-{name}", [sys.executable, "-m", "gateway.cli", "serve", "--pool-file", str(pool_file),
                                    "--port", str(port), "--no-access-log"], folder / "serve.log", env=env).start()
    try:
        gw.wait_http(f"http://127.0.0.1:{port}/health")
        warm = [{"role": "user", "content": "warm-up: 1 + 1?"}]  # loads the encoder before the clock runs
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "auto", "messages": warm},
                   timeout=120, headers={"cache-control": "no-store"}).raise_for_status()
        results = asyncio.run(run_stream(f"http://127.0.0.1:{port}", stream, concurrency))
    finally:
        gw.stop()
    return summarize(name, store, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the question draw")
    parser.add_argument("--near-dup", type=float, default=0.2, help="share of requests sent as near duplicates")
    parser.add_argument("--thresholds", default="0.95,0.98", help="semantic thresholds, one configuration each")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="replay backend: delay before the answer")
    parser.add_argument("--ms-per-token", type=float, default=1.0, help="replay backend: added per output token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    store = ReplayStore.load()
    stream = workload(store, args.requests, args.zipf, args.near_dup, args.seed)
    configs: list[tuple[str, str | None]] = [("off", None), ("exact", "{exact: true, sampled: true}")]
    for t in (float(x) for x in args.thresholds.split(",") if x):
        configs.append((f"exact+semantic@{t:g}", f"{{exact: true, sampled: true, semantic: {{threshold: {t}}}}}"))
    with tempfile.TemporaryDirectory(prefix="poolgate-cache-bench-") as tmp:
        workdir = Path(tmp)
        replay_port = free_port()
        replay = Child("replay", [sys.executable, "-m", "gateway.cli", "replay", "--port", str(replay_port),
                                  "--latency-ms", str(args.latency_ms), "--ms-per-token", str(args.ms_per_token)],
                       workdir / "replay.log").start()
        try:
            replay.wait_http(f"http://127.0.0.1:{replay_port}/health")
            rows = [run_config(name, cache, f"http://127.0.0.1:{replay_port}", stream, args.concurrency, workdir,
                               store) for name, cache in configs]
        finally:
            replay.stop()
    base = rows[0]["cost_usd"] or float("nan")
    distinct = len({p for _, p in stream})
    print(f"{args.requests} requests ({distinct} distinct prompts, {len({q for q, _ in stream})} distinct questions; "
          f"zipf {args.zipf}, near duplicates {args.near_dup:.0%}), concurrency {args.concurrency}, replay "
          f"{args.latency_ms:g} ms + {args.ms_per_token:g} ms/token")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    print(table(["config", "exact hits", "semantic hits", "cost $", "saved $", "cost vs off", "p50 ms", "p99 ms",
                 "hit p50", "miss p50", "accuracy", "sem. same q", "sem. correct"],
                [[r["config"], str(r["exact_hits"]), str(r["semantic_hits"]), f"{r['cost_usd']:.4f}",
                  f"{r['saved_usd']:.4f}", pct(r["cost_usd"] / base), fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1),
                  fmt(r["hit_p50_ms"], 1), fmt(r["miss_p50_ms"], 1), pct(r["accuracy"]),
                  pct(r["semantic_same_question"]), pct(r["semantic_correct"])] for r in rows]))
    out = REPO / "benchmarks" / "results" / "cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "distinct_prompts": distinct, "rows": rows,
                               "load_average": os.getloadavg()}, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
