"""Prompt lookup in the replay backend: the nearest-prompt fallback against an exact hit, on the full GSM8K CSV.

One command (from the repository root): ``python benchmarks/replay.py`` (``--queries``, ``--rounds``).

The replay backend answers a prompt it has recorded by a dictionary lookup, and any other prompt with the most
similar recorded one (TF-IDF cosine, ``gateway.replay.nearest``). Both are timed on the same queries, in
alternating rounds, over RouteLLM's full GSM8K responses file (found as the training loaders find the data:
``$POOLGATE_DATA_DIR`` or ``shared/data`` above the repository); the median round
is reported, with the nearest lookup's cost as a ratio to the exact one measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.replay.data import ReplayStore
from training.loaders import default_data_dir


def per_lookup_us(store: ReplayStore, queries: list[str]) -> float:
    start = time.perf_counter()
    for query in queries:
        store.match(query)
    return (time.perf_counter() - start) / len(queries) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=None, help="GSM8K responses CSV (default: from the data dir)")
    parser.add_argument("--queries", type=int, default=300, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    store = ReplayStore.load(args.csv or default_data_dir() / "routellm" / "gsm8k" / "gsm8k_responses.csv")
    records = store.records[: args.queries]
    exact = [rec.prompt for rec in records]
    unseen = [f"What is {rec.prompt[:80]} in total?" for rec in records]  # recorded nowhere: nearest lookup
    assert all(store.match(q).kind == "exact" for q in exact[:10]) and store.match(unseen[0]).kind == "nearest"
    exact_us, nearest_us = [], []
    for _ in range(args.rounds):
        exact_us.append(per_lookup_us(store, exact))
        nearest_us.append(per_lookup_us(store, unseen))
    e, n = statistics.median(exact_us), statistics.median(nearest_us)
    print(f"{len(store)} recorded prompts, {len(records)} queries x {args.rounds} rounds (median round)")
    print(f"exact lookup    {e:9.1f} us")
    print(f"nearest lookup  {n:9.1f} us   ({n / e:.0f}x the exact lookup; {n / 1000:.3f} ms a request)")


if __name__ == "__main__":
    main()
