"""Evaluation protocols: which rows a router is fitted on and which it is scored on, per outer fold.

Every protocol respects near-duplicates: rows are grouped by exact text and by near-duplicate clusters of their
embeddings (:func:`training.splits.near_duplicate_groups` on centred ``minilm-static`` vectors, which are cheap
and put templated re-wordings of one item together), and a group never straddles train and test.

- ``kfold``: grouped k-fold, each task spread over the folds in proportion (:func:`training.splits.grouped_kfold`).
- ``loto``: leave-one-task-out: fit on every other task, score the held-out one, every task in turn -- the shift a
  gateway meets when traffic is unlike any training task.
- ``holdout``: one grouped 80/20 split.
- ``cross``: fit on one data set, score another (``--train`` / ``--test``), models matched by name.

Reported figures come from the outer folds only; every choice a router makes (k, C, calibration, thresholds,
caution) is made inside its ``fit`` on the training rows of the fold (inner folds), never on the rows scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from routers.dataset import RoutingDataset
from routers.features import unit_rows
from training.features import Featurizer
from training.splits import grouped_kfold, leave_one_task_out, near_duplicate_groups

PROTOCOLS: tuple[str, ...] = ("kfold", "loto", "holdout", "cross")


@dataclass
class OuterFold:
    """One outer fold: rows to fit on, rows to score, and a label (the held-out task, or ``fold 2``)."""

    label: str
    train: np.ndarray
    test: np.ndarray


def split_groups(ds: RoutingDataset) -> np.ndarray:
    """Near-duplicate group id per row of ``ds`` (see the module docstring)."""
    emb = Featurizer(encoder="minilm-static", disk_cache=False).embed(ds.queries)
    return near_duplicate_groups(ds.queries, unit_rows(emb - emb.mean(axis=0)) if len(emb) else emb)


def outer_folds(ds: RoutingDataset, protocol: str, folds: int = 5, seed: int = 0, n_train: int | None = None
                ) -> tuple[list[OuterFold], str]:
    """The outer folds of ``protocol`` on ``ds`` and a one-line description. For ``cross``, ``ds`` is the
    concatenation of the training and test data sets and ``n_train`` the number of training rows."""
    if protocol == "cross":
        if n_train is None or not 0 < n_train < len(ds):
            raise ValueError("the cross protocol needs a training data set and a test data set")
        rows = np.arange(len(ds))
        return [OuterFold("cross", rows[:n_train], rows[n_train:])], "fit on the training data set, score the test one"
    groups = split_groups(ds)
    n_groups = int(groups.max()) + 1
    if protocol == "kfold":
        pairs = grouped_kfold(groups, ds.tasks, folds, seed)
        desc = (f"{folds}-fold cross-validation grouped by near-duplicate clusters ({n_groups} groups of "
                f"{len(ds)} rows), stratified by task (seed {seed}); metrics on the pooled test folds")
        return [OuterFold(f"fold {i}", tr, te) for i, (tr, te) in enumerate(pairs)], desc
    if protocol == "holdout":
        tr, te = grouped_kfold(groups, ds.tasks, 5, seed)[0]
        return [OuterFold("holdout", tr, te)], f"80/20 split grouped by near-duplicate clusters (seed {seed})"
    if protocol == "loto":
        if ds.tasks is None:
            raise ValueError(f"{ds.name}: leave-one-task-out needs task labels")
        out = [OuterFold(task, _drop_shared_groups(tr, te, groups), te)
               for task, tr, te in leave_one_task_out(ds.tasks)]
        return out, f"leave-one-task-out over {len(out)} tasks: fit on the others, score the held-out task"
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def _drop_shared_groups(train: np.ndarray, test: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Training rows whose near-duplicate group has no row in ``test`` (a text asked under two tasks)."""
    held = np.isin(groups[train], np.unique(groups[test]))
    return train[~held]


def concat_datasets(train: RoutingDataset, test: RoutingDataset) -> RoutingDataset:
    """One data set holding ``train``'s rows then ``test``'s, models matched by name (order of ``train``); cards,
    prices and assumptions from ``train``. ``ValueError`` naming the models when the two disagree."""
    if sorted(train.models) != sorted(test.models):
        raise ValueError(f"the data sets have different models: {train.name} has {sorted(train.models)}, "
                         f"{test.name} has {sorted(test.models)}")
    test = test.select_models(train.models)
    tasks = None
    if train.tasks is not None and test.tasks is not None:
        tasks = list(train.tasks) + list(test.tasks)
    return RoutingDataset(
        name=f"{train.name}->{test.name}", queries=train.queries + test.queries, models=list(train.models),
        quality=np.vstack([train.quality, test.quality]),
        prompt_tokens=np.concatenate([train.prompt_tokens, test.prompt_tokens]),
        completion_tokens=np.vstack([train.completion_tokens, test.completion_tokens]),
        cost_usd=np.vstack([train.cost_usd, test.cost_usd]), cards=list(train.cards), tasks=tasks,
        assumptions={"train": train.assumptions, "test": test.assumptions},
    )
