"""The report's response-cache section: per pool, how many requests the cache answered and what that saved.

From ``LogRepository.cache_totals`` (one ``GROUP BY`` over the window). ``saved_usd`` is the sum of the hits'
``cache_saved_usd`` (what the upstream calls they replaced had cost when first answered); ``saved_share`` is the
share of what the pool would have spent without the cache: saved / (saved + spent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.pools import PoolFile

NAN = float("nan")


@dataclass
class CacheStats:
    """One pool's cache numbers over the report's window (costs in USD)."""

    pool: str
    requests: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    hit_rate: float = NAN
    saved_usd: float = 0.0
    spent_usd: float = 0.0
    saved_share: float = NAN


def cache_stats(rows: Iterable[Mapping[str, Any]], pool_file: PoolFile) -> list[CacheStats]:
    """Pools whose file has a ``cache:`` block or whose rows hold a hit, in name order."""
    cached = {p.name for p in pool_file.pools if p.cache is not None}
    stats: dict[str, CacheStats] = {}
    for r in rows:
        pool = r["pool"]
        if pool is None:
            continue
        s = stats.setdefault(pool, CacheStats(pool))
        s.requests += r["requests"]
        s.spent_usd += r["cost_usd"]
        s.saved_usd += r["saved_usd"]
        if r["cache"] == "exact":
            s.exact_hits += r["requests"]
        elif r["cache"] == "semantic":
            s.semantic_hits += r["requests"]
    out = [s for name, s in sorted(stats.items()) if name in cached or s.exact_hits or s.semantic_hits]
    for s in out:
        s.hit_rate = (s.exact_hits + s.semantic_hits) / s.requests if s.requests else NAN
        total = s.saved_usd + s.spent_usd
        s.saved_share = s.saved_usd / total if total > 0 else NAN
    return out
