"""Splits never put the same query text on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from routers.base import ModelCard
from routers.dataset import RoutingDataset
from training.splits import kfold_by_query, split_by_query


def _dataset(queries: list[str]) -> RoutingDataset:
    n = len(queries)
    return RoutingDataset(
        name="toy", queries=queries, models=["a"], quality=np.zeros((n, 1)), prompt_tokens=np.ones(n),
        completion_tokens=np.ones((n, 1)), cost_usd=np.ones((n, 1)), cards=[ModelCard("a")],
    )


# many duplicated texts: 40 distinct texts, each repeated 1-4 times
TEXTS = [f"query {i % 40}" for i in range(100)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_never_leaks_a_query_text_across_train_and_test(seed: int) -> None:
    ds = _dataset(TEXTS)
    train, test = split_by_query(ds, test_size=0.25, seed=seed)
    assert not {TEXTS[i] for i in train} & {TEXTS[i] for i in test}
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert len({TEXTS[i] for i in test}) == 10  # 25 % of the 40 unique texts


def test_split_is_reproducible_from_the_seed_and_changes_with_it() -> None:
    ds = _dataset(TEXTS)
    assert np.array_equal(split_by_query(ds, seed=3)[1], split_by_query(ds, seed=3)[1])
    assert not np.array_equal(split_by_query(ds, seed=3)[1], split_by_query(ds, seed=4)[1])


def test_kfold_tests_every_row_once_and_never_splits_a_text() -> None:
    ds = _dataset(TEXTS)
    folds = kfold_by_query(ds, k=5, seed=0)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(100))
    for train, test in folds:
        assert not {TEXTS[i] for i in train} & {TEXTS[i] for i in test}


def test_too_few_distinct_queries_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="need at least 2 distinct queries"):
        split_by_query(_dataset(["same", "same"]))
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        kfold_by_query(_dataset(["a", "b", "c"]), k=5)
