"""Train/test splits by unique query text, so a duplicated query never sits on both sides.

Rows are grouped by their exact text; groups (not rows) are shuffled with a fixed seed and assigned to sides.
"""

from __future__ import annotations

import numpy as np

from routers.dataset import RoutingDataset


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


# -- grouped protocols --------------------------------------------------------------------------
#: cosine similarity at or above which two queries count as near-duplicates (templated re-wordings of one item)
NEAR_DUPLICATE_SIM = 0.95
_SIM_CHUNK = 2048


def near_duplicate_groups(texts: list[str], embeddings: np.ndarray | None, threshold: float = NEAR_DUPLICATE_SIM
                          ) -> np.ndarray:
    """Group id per row: identical texts, and texts whose unit embeddings have cosine >= ``threshold``, joined
    transitively (union-find), so that no near-duplicate straddles a train/test split."""
    group, n_groups = _groups(texts)
    parent = np.arange(n_groups)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    if embeddings is not None and len(texts) > 1:
        # one vector per exact-text group (its first row)
        first = np.full(n_groups, -1, dtype=np.int64)
        for row, g in enumerate(group):
            if first[g] < 0:
                first[g] = row
        emb = np.asarray(embeddings, dtype=np.float32)[first]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        for start in range(0, n_groups, _SIM_CHUNK):
            sims = emb[start:start + _SIM_CHUNK] @ emb.T
            rows, cols = np.nonzero(sims >= threshold)
            for a, b in zip(rows + start, cols, strict=True):
                if a < b:
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    roots = np.asarray([find(int(g)) for g in range(n_groups)])
    _, compact = np.unique(roots, return_inverse=True)
    return np.asarray(compact[group], dtype=np.int64)


def grouped_kfold(groups: np.ndarray, strata: list[str] | None, k: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) pairs in which whole groups move together and each stratum (task) is spread over the
    folds in proportion: within each stratum, groups are shuffled and dealt to the folds in turn (a group whose
    rows span strata is dealt with its first row's stratum)."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups < k:
        raise ValueError(f"{n_groups} groups cannot make {k} folds")
    stratum_of: dict[int, str] = {}
    for row, g in enumerate(groups):
        stratum_of.setdefault(int(g), strata[row] if strata is not None else "")
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    offset = 0
    for stratum in sorted(set(stratum_of.values())):
        members = np.asarray(sorted(g for g, s in stratum_of.items() if s == stratum))
        members = members[rng.permutation(len(members))]
        fold_of_group[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # the next stratum starts where this one stopped, so fold sizes stay even
    fold = fold_of_group[groups]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def leave_one_task_out(tasks: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(task, train rows = every other task, test rows = that task) for each task, in sorted order."""
    labels = np.asarray(tasks, dtype=object)
    names = sorted(set(tasks))
    if len(names) < 2:
        raise ValueError(f"leave-one-task-out needs at least two tasks, got {names}")
    return [(t, np.flatnonzero(labels != t), np.flatnonzero(labels == t)) for t in names]
