"""``RoutingDataset``: queries x models with per-cell quality, tokens and cost, plus model attributes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from routers.base import ModelCard, QueryFeatures


@dataclass
class RoutingDataset:
    """The unit every router learns from and every evaluation runs on.

    Shapes: ``quality`` ``[n, m]`` in [0, 1]; ``prompt_tokens`` ``[n]``; ``completion_tokens`` and
    ``cost_usd`` ``[n, m]`` (estimated where the source has no token counts; ``assumptions`` says how).
    ``cards[j]`` describes ``models[j]``. ``tasks[i]`` is the task family of query i when known.
    ``assumptions`` records prices and cost assumptions so that every report can print them.
    ``features`` optionally holds the featurized queries (row i = query i); the evaluation harness
    attaches them (:meth:`with_features`) before ``Router.fit`` so that routers which learn from
    embeddings or text statistics never featurize on their own. ``None`` when nobody computed them.
    """

    name: str
    queries: list[str]
    models: list[str]
    quality: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    cost_usd: np.ndarray
    cards: list[ModelCard]
    tasks: list[str] | None = None
    assumptions: dict[str, Any] = field(default_factory=dict)
    features: QueryFeatures | None = None

    def __post_init__(self) -> None:
        n, m = len(self.queries), len(self.models)
        if self.quality.shape != (n, m):
            raise ValueError(f"{self.name}: quality shape {self.quality.shape} != ({n}, {m})")
        for name in ("completion_tokens", "cost_usd"):
            if getattr(self, name).shape != (n, m):
                raise ValueError(f"{self.name}: {name} shape {getattr(self, name).shape} != ({n}, {m})")
        if self.prompt_tokens.shape != (n,):
            raise ValueError(f"{self.name}: prompt_tokens shape {self.prompt_tokens.shape} != ({n},)")
        if [c.name for c in self.cards] != self.models:
            raise ValueError(f"{self.name}: cards do not match models")
        if self.tasks is not None and len(self.tasks) != n:
            raise ValueError(f"{self.name}: {len(self.tasks)} tasks for {n} queries")
        if self.features is not None and len(self.features) != n:
            raise ValueError(f"{self.name}: features for {len(self.features)} queries, dataset has {n}")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def total_tokens(self) -> np.ndarray:
        """``[n, m]`` prompt + completion tokens of each cell."""
        return self.prompt_tokens[:, None] + self.completion_tokens

    def subset(self, idx: Sequence[int] | np.ndarray) -> RoutingDataset:
        """Rows ``idx`` as a new dataset (same models)."""
        ix = np.asarray(idx, dtype=np.int64)
        return RoutingDataset(
            name=self.name,
            queries=[self.queries[i] for i in ix],
            models=list(self.models),
            quality=self.quality[ix],
            prompt_tokens=self.prompt_tokens[ix],
            completion_tokens=self.completion_tokens[ix],
            cost_usd=self.cost_usd[ix],
            cards=list(self.cards),
            tasks=None if self.tasks is None else [self.tasks[i] for i in ix],
            assumptions=dict(self.assumptions),
            features=None if self.features is None else self.features.subset(ix),
        )

    def select_models(self, names: Sequence[str]) -> RoutingDataset:
        """The same queries restricted to (and ordered as) ``names``."""
        cols = [self.models.index(n) for n in names]
        return RoutingDataset(
            name=self.name,
            queries=list(self.queries),
            models=list(names),
            quality=self.quality[:, cols],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens[:, cols],
            cost_usd=self.cost_usd[:, cols],
            cards=[self.cards[c] for c in cols],
            tasks=None if self.tasks is None else list(self.tasks),
            assumptions=dict(self.assumptions),
            features=self.features,
        )

    def with_features(self, features: QueryFeatures) -> RoutingDataset:
        """This dataset with ``features`` attached (same arrays, not copied)."""
        return replace(self, features=features)
