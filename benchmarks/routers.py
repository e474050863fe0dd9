"""Per-query routing decision time of every servable router, featurization included, one query at a time and in
batches, each learned router twice: on ``minilm-static`` (the default) and on ``minilm`` embeddings (spec
``knn:minilm``; see docs/encoders.md); and the gateway's embedding paths (``routers.encoders.minilm.MiniLMEncoder``,
bfloat16, one thread, and the static encoder) against the featurizer's float32 one
(``training.features.Featurizer``): speed, cosine, and what the learned routers decide with the bfloat16 and
float32 MiniLM embeddings (agreement of the chosen model, mean quality and cost of the choices on held-out
queries).

One command (from the repository root): ``python benchmarks/routers.py`` (``--help`` for the knobs).

The routers are fitted on a slice of LLMRouter (nine models; the same slice and held-out queries as
``benchmarks/overhead.py``); every timed query is one the encoder has not seen, so no cache hides the cost.
Featurization = text statistics + prompt tokens (tiktoken) + the sentence embedding when the router needs one;
decision = ``predict`` + the shared objective (``decide`` per query, ``choose_batch`` per batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import MINILM_SUFFIX, REPO, fmt, needs_fit, parse_spec, prepare_workload, table

Embed = Callable[[Sequence[str]], np.ndarray]


def servable() -> list[str]:
    """Every servable router, and each one that reads embeddings once more on ``minilm`` ones."""
    from routers.registry import get_router_class, router_names

    names = [n for n in router_names() if not get_router_class(n).evaluation_only]
    return names + [n + MINILM_SUFFIX for n in names if get_router_class(n).requires_embeddings]


def featurize(texts: list[str], embed: Embed | None) -> Any:
    """What the gateway computes for a request: stats, prompt tokens and (if asked) embeddings."""
    from routers.base import QueryFeatures
    from routers.features import text_stats
    from routers.pricing import count_tokens

    return QueryFeatures(texts=texts, stats=text_stats(texts),
                         prompt_tokens=np.asarray([count_tokens(t) for t in texts], dtype=np.float64),
                         embeddings=embed(texts) if embed is not None else None)


def time_featurize(queries: list[str], embed: Embed | None, batch: int) -> tuple[float, list[Any]]:
    """Mean ms per query to featurize ``queries`` in batches of ``batch``, and the features of each batch."""
    feats, spent = [], 0.0
    for i in range(0, len(queries), batch):
        started = time.perf_counter()
        feats.append(featurize(queries[i : i + batch], embed))
        spent += time.perf_counter() - started
    return spent * 1000 / len(queries), feats


def time_decide(router: Any, cards: list[Any], feats: list[Any], batched: bool) -> float:
    """Mean ms per query for ``predict`` + the objective over the featurized batches."""
    from routers.objective import choose_batch, decide, preset

    flags = preset("balanced")
    router.predict(feats[0], cards)  # warm up (lazy state, BLAS threads) outside the clock
    n, started = 0, time.perf_counter()
    for f in feats:
        pred = router.predict(f, cards)
        if batched:
            choose_batch(pred, cards, flags, f.prompt_tokens)
        else:
            decide(pred, cards, flags, float(f.prompt_tokens[0]))
        n += len(f)
    return (time.perf_counter() - started) * 1000 / n


def load_router(spec: str, artifact: Path | None) -> Any:
    from routers.base import Router
    from routers.registry import make_router

    return Router.load(artifact) if artifact is not None else make_router(parse_spec(spec)[0])


def decision_times(wl: dict[str, Any], names: list[str], encoders: dict[str, Embed], single_n: int, batch_n: int,
                   batch: int) -> list[dict[str, Any]]:
    """Per router: featurize / decide / total ms per query, single and batched (distinct queries each pass),
    with the embeddings of the encoder the router was fitted on."""
    prompts: list[str] = wl["prompts"]
    single_q, batch_q = prompts[:single_n], prompts[single_n : single_n + batch_n]
    plain = {"single": time_featurize(single_q, None, 1), "batched": time_featurize(batch_q, None, batch)}
    # distinct queries for the embedding passes too: the encoders have no cache, but be explicit about it
    embedded = {}
    for name, encoder in encoders.items():
        featurize(["warm up the tokenizers"], encoder)
        embedded[name] = {"single": time_featurize(prompts[-single_n:], encoder, 1),
                          "batched": time_featurize(prompts[-single_n - batch_n : -single_n], encoder, batch)}
    rows = []
    for name in names:
        router = load_router(name, wl["artifacts"][name])
        row: dict[str, Any] = {"router": name, "embeddings": router.requires_embeddings}
        for mode in ("single", "batched"):
            feat_ms, feats = (embedded[router.encoder_] if router.requires_embeddings else plain)[mode]
            dec_ms = time_decide(router, wl["cards"], feats, batched=mode == "batched")
            row[mode] = {"featurize_ms": round(feat_ms, 3), "decide_ms": round(dec_ms, 3),
                         "total_ms": round(feat_ms + dec_ms, 3)}
        rows.append(row)
        print(f"  {name}: single {row['single']['total_ms']:.2f} ms, batched {row['batched']['total_ms']:.2f} "
              "ms per query", flush=True)
    return rows


def embedding_speed(prompts: list[str], n_single: int, n_batch: int, batch: int) -> list[dict[str, Any]]:
    """ms per query of each embedding path, single and batched, on fresh queries for each path."""
    from routers.encoders.minilm import MiniLMEncoder
    from routers.encoders.static import StaticEncoder
    from training.features import Featurizer

    paths: list[tuple[str, Embed, Callable[[], None]]] = [("StaticEncoder (minilm-static)", StaticEncoder(),
                                                           lambda: None)]
    ref = Featurizer(disk_cache=False, encoder="minilm")
    paths.append(("featurizer float32 (torch default threads)", ref.embed, lambda: None))
    for dtype, threads in (("float32", 1), ("bfloat16", 1), ("bfloat16", 2)):
        enc = MiniLMEncoder(dtype=dtype, threads=threads)
        paths.append((f"MiniLMEncoder {dtype}, {threads} thread(s)", enc, enc.thread_setup))
    out, cursor = [], 0
    default_threads = _torch_threads()
    for label, fn, setup in paths:
        setup()
        fn(["warm up"])
        single = prompts[cursor : cursor + n_single]
        batched = prompts[cursor + n_single : cursor + n_single + n_batch]
        cursor += n_single + n_batch
        t0 = time.perf_counter()
        for q in single:
            fn([q])
        t1 = time.perf_counter()
        for i in range(0, len(batched), batch):
            fn(batched[i : i + batch])
        t2 = time.perf_counter()
        _torch_threads(default_threads)
        out.append({"path": label, "single_ms": round((t1 - t0) * 1000 / len(single), 2),
                    "batched_ms": round((t2 - t1) * 1000 / len(batched), 2)})
        print(f"  {label}: single {out[-1]['single_ms']} ms, batched {out[-1]['batched_ms']} ms per query", flush=True)
    return out


def _torch_threads(n: int | None = None) -> int:
    import torch

    if n is not None:
        torch.set_num_threads(n)
    return int(torch.get_num_threads())


def decision_agreement(wl: dict[str, Any], names: list[str], n: int, encoder: Embed) -> list[dict[str, Any]]:
    """For routers that read embeddings: choices with float32 (featurizer) vs the serving path's embeddings."""
    from routers.objective import choose_batch, preset
    from training.features import Featurizer
    from training.loaders import load_dataset

    ds = load_dataset("llmrouter")
    index = {q: i for i, q in enumerate(ds.queries)}
    queries = wl["prompts"][:n]
    rows = np.asarray([index[q] for q in queries])
    ref = featurize(queries, Featurizer(encoder="minilm").embed)
    fast = featurize(queries, encoder)
    cos = (ref.embeddings * fast.embeddings).sum(axis=1)
    model_col = {m: j for j, m in enumerate(ds.models)}
    cols = np.asarray([model_col[c.name] for c in wl["cards"]])
    out = []
    for name in names:
        router = load_router(name, wl["artifacts"][name])
        if not router.requires_embeddings or router.encoder_ != "minilm":
            continue
        picks = {}
        for label, f in (("float32", ref), ("serving", fast)):
            # quality-first: the choice follows the router's quality estimate, the part embeddings feed
            picks[label] = choose_batch(router.predict(f, wl["cards"]), wl["cards"], preset("quality-first"),
                                        f.prompt_tokens)
        quality = {k: float(ds.quality[rows, cols[v]].mean()) for k, v in picks.items()}
        cost = {k: float(ds.cost_usd[rows, cols[v]].mean()) for k, v in picks.items()}
        out.append({"router": name, "queries": n, "agreement": round(float((picks["float32"] == picks["serving"])
                                                                             .mean()), 4),
                    "quality_float32": round(quality["float32"], 4), "quality_serving": round(quality["serving"], 4),
                    "cost_float32": cost["float32"], "cost_serving": cost["serving"]})
    return [{"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6)}, *out]


def main() -> None:
    p = argparse.ArgumentParser(description="Routing decision time per router; serving vs float32 embeddings.")
    p.add_argument("--routers", default="", help="comma-separated (default: every servable registered router)")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--batched", type=int, default=1024, help="queries timed in batches")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--agreement", type=int, default=2000, help="held-out queries for the decision comparison")
    p.add_argument("--train-queries", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifacts", type=Path, default=REPO / ".poolgate" / "bench" / "artifacts")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routers.json")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from routers.encoders.minilm import MiniLMEncoder
    from routers.encoders.static import StaticEncoder

    names = [n for n in args.routers.split(",") if n] or servable()
    print("preparing the workload (fitting routers not cached yet) ...", flush=True)
    wl = prepare_workload(names, args.artifacts, args.train_queries, args.seed)
    names = [n for n in names if n in wl["artifacts"]]
    encoder = MiniLMEncoder()  # the gateway's default: bfloat16, one thread
    default_threads = _torch_threads()
    encoder.thread_setup()
    encoder(["warm up"])
    print("decision time per router ...", flush=True)
    decisions = decision_times(wl, names, {"minilm": encoder, "minilm-static": StaticEncoder()}, args.single,
                               args.batched, args.batch)
    print("embedding paths ...", flush=True)
    _torch_threads(default_threads)
    speeds = embedding_speed(wl["prompts"], min(100, args.single), min(512, args.batched), args.batch)
    print("decisions with float32 vs serving embeddings ...", flush=True)
    encoder.thread_setup()
    agreement = decision_agreement(wl, names, args.agreement, encoder)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "skipped": wl["skipped"],
           "fitted": {n: needs_fit(parse_spec(n)[0]) for n in names}, "decision": decisions, "embedding": speeds,
           "agreement": agreement}
    print(render(out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


def render(out: dict[str, Any]) -> str:
    d_rows = [[r["router"], "yes" if r["embeddings"] else "no",
               *(fmt(r[m][k], 3) for m in ("single", "batched") for k in ("featurize_ms", "decide_ms", "total_ms"))]
              for r in out["decision"]]
    lines = ["", "decision time per query, ms (featurize = stats + tokens [+ embedding]; decide = predict + objective)",
             table(["router", "embeds", "1: featurize", "1: decide", "1: total", "32: featurize", "32: decide",
                    "32: total"], d_rows), "", "embedding paths, ms per query",
             table(["path", "single", "batch of 32"],
                   [[e["path"], fmt(e["single_ms"]), fmt(e["batched_ms"])] for e in out["embedding"]])]
    cos, *agree = out["agreement"]
    lines += ["", f"serving vs float32 embeddings: cosine min {cos['cosine_min']}, mean {cos['cosine_mean']}"]
    if agree:
        lines.append(table(["router", "queries", "same choice", "quality f32", "quality serving"],
                           [[a["router"], str(a["queries"]), fmt(a["agreement"], 4), fmt(a["quality_float32"], 4),
                             fmt(a["quality_serving"], 4)] for a in agree]))
    if out["skipped"]:
        lines.append("not measured: " + "; ".join(f"{k} ({v})" for k, v in out["skipped"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
