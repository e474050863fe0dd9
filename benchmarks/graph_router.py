"""GraphRouter cost on CPU: training time, artifact load, and inference time per query after embedding,
each beside the kNN router measured in the same run on the same split (the ratio is the figure).

One command (from the repository root): ``python benchmarks/graph_router.py`` (``--help`` for the knobs).

The pool is ten models: LLMRouter's nine (trained nodes) plus one model the graph has never seen
(``--unseen``, read with its description and price from LLMRouter's ``llms.json``; its description is
registered in the artifact first, so timing never includes a text encoder). Query embeddings are
computed beforehand (cached MiniLM); inference time = ``predict`` + the shared objective's choice, one
query at a time (as the gateway calls it) and in batches. Threads: torch uses ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fmt, load_average, table


def unseen_card(name: str) -> Any:
    """A ModelCard for a model listed in LLMRouter's llms.json (which has no scores for it)."""
    from routers.base import ModelCard
    from training.loaders import _parse_size, default_data_dir

    spec = json.loads((default_data_dir() / "llmrouter" / "llms.json").read_text(encoding="utf-8"))[name]
    return ModelCard(name=name, input_price=float(spec["input_price"]), output_price=float(spec["output_price"]),
                     size_b=_parse_size(spec.get("size")), description=str(spec.get("feature", "")))


def time_predict(router: Any, feats: Any, cards: list[Any], batch: int, repeats: int) -> tuple[float, float]:
    """(median, p90) ms per query of predict + choose_batch over ``feats`` in batches of ``batch``."""
    from routers.objective import PRESETS, choose_batch

    per_query: list[float] = []
    for _ in range(repeats):
        for start in range(0, len(feats), batch):
            part = feats.subset(range(start, min(start + batch, len(feats))))
            t0 = time.perf_counter()
            choose_batch(router.predict(part, cards), cards, PRESETS["balanced"], part.prompt_tokens)
            per_query.append((time.perf_counter() - t0) * 1000 / len(part))
    return statistics.median(per_query), float(np.percentile(per_query, 90))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="llmrouter")
    ap.add_argument("--unseen", default="mixtral-8x7b-instruct-v0.1", help="the tenth, never-trained model")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries timed")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path(".poolgate/embeddings"))
    args = ap.parse_args(argv)

    import torch

    from routers.base import Router
    from routers.graph import GraphRouter
    from routers.knn import KNNRouter
    from training.features import Featurizer
    from training.loaders import load_dataset
    from training.splits import split_by_query

    torch.set_num_threads(args.threads)
    featurizer = Featurizer(cache_dir=args.cache_dir)
    ds = load_dataset(args.dataset)
    t0 = time.perf_counter()
    ds = ds.with_features(featurizer.featurize_dataset(ds))
    featurizer.flush()
    embed_s = time.perf_counter() - t0
    train, test = split_by_query(ds, 0.2, args.seed)
    train_ds, test_feats = ds.subset(train), ds.features.subset(test[: args.queries])  # type: ignore[union-attr]

    graph = GraphRouter(seed=args.seed, threads=args.threads)
    graph.text_encoder = featurizer.embed
    t0 = time.perf_counter()
    graph.fit(train_ds)
    fit_graph = time.perf_counter() - t0
    knn = KNNRouter(seed=args.seed)
    t0 = time.perf_counter()
    knn.fit(train_ds)
    fit_knn = time.perf_counter() - t0

    cards = [*train_ds.cards, unseen_card(args.unseen)]
    graph.register_models(cards[-1:])
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for name, router in (("graph", graph), ("knn", knn)):
            path = router.save(Path(tmp) / f"{name}.router")
            t0 = time.perf_counter()
            loaded = Router.load(path)
            loaded.predict(test_feats.subset([0]), cards)  # warm-up: graph caches its trained node states here
            times[name] = (time.perf_counter() - t0, path.stat().st_size / 1e6, loaded)
    rows = [["train (s)", fmt(fit_graph, 1), fmt(fit_knn, 2), fmt(fit_graph / fit_knn, 1)],
            ["load + first predict (s)", fmt(times["graph"][0], 2), fmt(times["knn"][0], 3),
             fmt(times["graph"][0] / times["knn"][0], 1)],
            ["artifact (MB)", fmt(times["graph"][1], 1), fmt(times["knn"][1], 1),
             fmt(times["graph"][1] / times["knn"][1], 1)]]
    for batch in (1, args.batch):
        g = time_predict(times["graph"][2], test_feats, cards, batch, args.repeats)
        k = time_predict(times["knn"][2], test_feats, cards, batch, args.repeats)
        for i, stat in enumerate(("median", "p90")):
            rows.append([f"predict+choose, batch {batch} (ms/query, {stat})", fmt(g[i], 3), fmt(k[i], 3),
                         fmt(g[i] / k[i], 1)])
    print(f"dataset {args.dataset}: {len(train)} train / {len(test_feats)} timed queries; pool of {len(cards)} "
          f"({len(train_ds.models)} trained + {args.unseen} unseen); torch threads {args.threads}; "
          f"embedding {len(ds)} queries took {embed_s:.1f} s (cache {args.cache_dir}); {load_average()}")
    print(f"graph: {graph.train_info_}")
    print(table(["measure", "graph", "knn", "graph / knn"], rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
