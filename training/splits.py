"""Train/test splits by unique query text, so a duplicated query never sits on both sides.

Rows are grouped by their exact text; groups (not rows) are shuffled with a fixed seed and assigned to sides.
"""

from __future__ import annotations

import numpy as np

from training.dataset import RoutingDataset


def _groups(queries: list[str]) -> tuple[np.ndarray, int]:
    """Group id per row (ids follow first appearance) and the number of groups."""
    ids: dict[str, int] = {}
    out = np.fromiter((ids.setdefault(q, len(ids)) for q in queries), dtype=np.int64, count=len(queries))
    return out, len(ids)


def split_by_query(
    ds: RoutingDataset, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train row indices, test row indices), sorted; ``test_size`` = fraction of *unique texts* held out.

    At least one unique text goes to each side when there are two or more.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    group, n_groups = _groups(ds.queries)
    if n_groups < 2:
        raise ValueError(f"{ds.name}: need at least 2 distinct queries to split, got {n_groups}")
    order = np.random.default_rng(seed).permutation(n_groups)
    n_test = min(max(1, round(test_size * n_groups)), n_groups - 1)
    test_groups = np.zeros(n_groups, dtype=bool)
    test_groups[order[:n_test]] = True
    is_test = test_groups[group]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def kfold_by_query(ds: RoutingDataset, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index pairs; every row is in exactly one test fold; texts never straddle folds."""
    group, n_groups = _groups(ds.queries)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if n_groups < k:
        raise ValueError(f"{ds.name}: {n_groups} distinct queries cannot make {k} folds")
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(n_groups)] = np.arange(n_groups) % k
    fold = fold_of_group[group]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]
