"""A :class:`RoutingDataset` from the gateway's own logs: requests that carry prompt text and a feedback score.

The rows come in as :class:`LabelledRow` (``gateway.store.repository.fetch_labelled`` reads them from the store).

Each labelled request tells the quality of *one* cell: (its prompt, the backend that answered). Requests with the
same prompt text are one query; a cell seen several times gets the mean score. Cells no request observed stay
``nan`` here together with an ``observed`` mask; :func:`impute` fills them (after the split, from the fitting
rows only) with the backend's mean observed score, so routers learn from the cells they have and fall back to each
backend's average elsewhere. The filling is a fitting device only: no policy is ever *judged* on filled cells (the
promote gate estimates off-policy from logged outcomes and propensities: ``training.log_holdout``). Offline data
sets can be mixed in (:func:`offline_rows`): their models are matched
to the pool's backends by name, and their rows are fully observed for the backends they cover.

Token counts: the logged prompt tokens; completion tokens as logged for observed cells, else the backend's mean
completion tokens over the labelled requests (else ``default_output_tokens``). Cost: those tokens at the pool
file's prices. Training from logs needs ``POOLGATE_STORE_PROMPTS=true`` on the gateway (the prompt text).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from routers.base import ModelCard
from routers.dataset import RoutingDataset
from routers.pricing import call_costs_usd

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Backend(Protocol):
    """What this module reads of a pool's backend (``gateway.pools.Backend`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str:
        """The upstream model id (matched against a data set's model names)."""
        ...

    @property
    def input_price(self) -> float: ...

    @property
    def output_price(self) -> float: ...

    def card(self) -> ModelCard: ...


class TrainingDataError(ValueError):
    """Too few labelled rows, or data that cannot be matched to the pool (the message says what is needed)."""


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` (also ``45s``) as a timedelta; ValueError naming the accepted forms."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"bad duration {text!r}: use a number and one of s, m, h, d, w (e.g. 7d, 12h)")
    try:
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError:  # more than timedelta.max (999999999 days)
        raise ValueError(f"duration {text.strip()!r} is too long: at most {timedelta.max.days} days") from None


def parse_when(text: str | None, now: datetime | None = None) -> datetime | None:
    """A window bound in UTC: a duration before ``now`` (``7d``) or an ISO datetime (UTC when naive); None for
    empty. ValueError for anything else, and for a bound outside years 1..9999 once in UTC (what datetime holds)."""
    if not text:
        return None
    if _DURATION.match(text):
        delta = parse_duration(text)
        try:
            return (now or datetime.now(UTC)) - delta
        except OverflowError:
            raise ValueError(f"duration {text.strip()!r} reaches back before year 1; use a shorter one") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad time {text!r}: use a duration like 7d or 12h, or an ISO datetime") from None
    return to_utc(parsed)


def to_utc(when: datetime) -> datetime:
    """``when`` in UTC (naive = UTC); ValueError when that falls outside years 1..9999."""
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {when.isoformat()} is out of range once in UTC (years 1..9999)") from None


@dataclass(frozen=True)
class LabelledRow:
    """One logged request with a feedback score."""

    text: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    score: float
    created_at: datetime
    #: P(this backend chosen) when the request was routed (migration 0005); None: unknown (older rows, fallbacks)
    propensity: float | None = None
    #: the row's policy; ``judge-pair`` rows are the judge's counterfactual answers (fitting only, never events)
    policy: str | None = None


@dataclass
class LabelledData:
    """A dataset whose ``quality`` is ``nan`` where ``observed`` is False, and each row's source."""

    dataset: RoutingDataset
    observed: np.ndarray
    sources: list[str]

    def subset(self, idx: np.ndarray) -> LabelledData:
        return LabelledData(self.dataset.subset(idx), self.observed[idx], [self.sources[i] for i in idx])


def _assemble(
    name: str, backends: Sequence[Backend], texts: list[str], quality: np.ndarray, prompt: np.ndarray,
    completion: np.ndarray, sources: list[str], assumptions: dict[str, Any],
) -> LabelledData:
    cards = [b.card() for b in backends]
    cost = call_costs_usd(prompt, completion, cards)
    ds = RoutingDataset(
        name=name, queries=texts, models=[c.name for c in cards], quality=quality, prompt_tokens=prompt,
        completion_tokens=completion, cost_usd=cost, cards=cards, tasks=None, assumptions=assumptions,
    )
    return LabelledData(ds, ~np.isnan(quality), sources)


def log_rows_to_data(
    rows: Sequence[LabelledRow], backends: Sequence[Backend], default_output_tokens: int, pool: str
) -> LabelledData:
    """Group labelled requests by prompt text into a (query x backend) matrix (see the module docstring)."""
    names = [b.name for b in backends]
    col = {n: j for j, n in enumerate(names)}
    usable = [r for r in rows if r.backend in col]
    by_text: dict[str, list[LabelledRow]] = defaultdict(list)
    for r in usable:
        by_text[r.text].append(r)
    texts = list(by_text)
    n, m = len(texts), len(names)
    score_sum, score_n = np.zeros((n, m)), np.zeros((n, m))
    comp_sum = np.zeros((n, m))
    prompt = np.zeros(n)
    for i, text in enumerate(texts):
        group = by_text[text]
        prompt[i] = float(np.mean([r.prompt_tokens for r in group]))
        for r in group:
            j = col[r.backend]
            score_sum[i, j] += r.score
            score_n[i, j] += 1
            comp_sum[i, j] += r.completion_tokens
    seen = score_n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        quality = np.where(seen, score_sum / np.maximum(score_n, 1), np.nan)
        cell_comp = comp_sum / np.maximum(score_n, 1)
    backend_comp = [
        float(cell_comp[seen[:, j], j].mean()) if seen[:, j].any() else float(default_output_tokens) for j in range(m)
    ]
    completion = np.where(seen, cell_comp, np.asarray(backend_comp)[None, :])
    assumptions = {
        "source": f"gateway logs of pool {pool!r}: successful requests with prompt text and feedback",
        "quality": "mean feedback score of the (prompt, backend) cell; unobserved cells imputed per backend",
        "completion_tokens": "logged for observed cells, else the backend's mean over labelled requests",
        "prices": {b.name: [b.input_price, b.output_price] for b in backends},
    }
    return _assemble(f"logs:{pool}", backends, texts, quality, prompt, completion, ["logs"] * n, assumptions)


def match_models(dataset_models: Sequence[str], backends: Sequence[Backend]) -> dict[str, str]:
    """Backend name -> data set model: same name or upstream model id, else the model id's last path part
    starts with the backend's name or upstream id (``mistralai/Mixtral-8x7B-Instruct-v0.1`` ~ ``mixtral-8x7b``)."""
    out: dict[str, str] = {}
    for b in backends:
        exact = [m for m in dataset_models if m in (b.name, b.model)]
        loose = [
            m for m in dataset_models
            if m.rsplit("/", 1)[-1].lower().startswith((b.name.lower(), b.model.rsplit("/", 1)[-1].lower()))
        ]
        found = exact or loose
        if found:
            out[b.name] = found[0]
    return out


def offline_rows(dataset: RoutingDataset, backends: Sequence[Backend]) -> LabelledData:
    """An offline data set's rows as pool data: matched models' quality and tokens, repriced at pool prices."""
    mapping = match_models(dataset.models, backends)
    if not mapping:
        raise TrainingDataError(
            f"dataset {dataset.name!r} has none of the pool's backends "
            f"(its models: {', '.join(dataset.models)}; pool: {', '.join(b.name for b in backends)})"
        )
    n, m = len(dataset), len(backends)
    quality, completion = np.full((n, m), np.nan), np.zeros((n, m))
    for j, b in enumerate(backends):
        if b.name in mapping:
            k = dataset.models.index(mapping[b.name])
            quality[:, j] = dataset.quality[:, k]
            completion[:, j] = dataset.completion_tokens[:, k]
    known = [j for j, b in enumerate(backends) if b.name in mapping]
    fill = completion[:, known].mean(axis=1)
    for j, b in enumerate(backends):
        if b.name not in mapping:
            completion[:, j] = fill
    assumptions = {"source": dataset.name, "model_mapping": mapping, **dataset.assumptions}
    return _assemble(dataset.name, backends, list(dataset.queries), quality,
                     np.asarray(dataset.prompt_tokens, dtype=np.float64), completion, [dataset.name] * n, assumptions)


def concat(parts: Sequence[LabelledData]) -> LabelledData:
    """Rows of several parts over the same backends, in order."""
    first = parts[0].dataset
    ds = RoutingDataset(
        name="+".join(p.dataset.name for p in parts),
        queries=[q for p in parts for q in p.dataset.queries],
        models=list(first.models),
        quality=np.concatenate([p.dataset.quality for p in parts]),
        prompt_tokens=np.concatenate([p.dataset.prompt_tokens for p in parts]),
        completion_tokens=np.concatenate([p.dataset.completion_tokens for p in parts]),
        cost_usd=np.concatenate([p.dataset.cost_usd for p in parts]),
        cards=list(first.cards),
        assumptions={p.dataset.name: p.dataset.assumptions for p in parts},
    )
    return LabelledData(ds, np.concatenate([p.observed for p in parts]), [s for p in parts for s in p.sources])


def column_means(data: LabelledData) -> np.ndarray:
    """Mean observed quality per backend; a backend never observed gets the mean of all observed cells."""
    q, seen = data.dataset.quality, data.observed
    if not seen.any():
        raise TrainingDataError("no observed quality at all: nothing to learn from")
    overall = float(q[seen].mean())
    return np.asarray([float(q[seen[:, j], j].mean()) if seen[:, j].any() else overall for j in range(q.shape[1])])


def impute(data: LabelledData, means: np.ndarray) -> RoutingDataset:
    """The dataset with unobserved cells set to ``means`` of their backend (arrays copied, not changed)."""
    quality = np.where(data.observed, data.dataset.quality, means[None, :])
    ds = data.dataset.subset(np.arange(len(data.dataset)))
    ds.quality = quality
    return ds
