"""The promote gate's holdout: the newest logged requests, judged off-policy.

The split is by time and fixed per train run: the labelled log rows, oldest first, are cut at one instant; the
candidate is fitted on the older rows (plus any offline data), and every policy (the candidate, the version now
serving, the always-cheapest and always-strongest references) is judged on the newer ones. The serving version
cannot have been trained on them (it was trained before they were logged, on an earlier window), and the cut is
recorded with the version's metrics (:meth:`TimeSplit.as_dict`).

On the holdout, each logged request is one *event*: the backend that answered, its label, and the propensity with
which it was chosen. A policy's utility, quality and cost are estimated from those events with the doubly-robust
estimator of ``training.off_policy`` (IPS and SNIPS beside it), with bootstrap intervals and the effective sample
size. DR's reward model is the per-backend mean label of the *older* rows; unobserved cells are never scored as
truth. Events without a known propensity (rows older than migration 0005, or answered by a fallback backend) are
left out and counted. Cost of a choice the log did not observe uses the backend's mean completion tokens of the
older rows (tokens are priced, not guessed from labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from routers.base import ModelCard, Prediction
from routers.dataset import RoutingDataset
from routers.objective import Flags, score
from routers.pricing import call_costs_usd
from training.from_logs import LabelledRow
from training.off_policy import dr_difference, estimate, one_hot


@dataclass(frozen=True)
class TimeSplit:
    """Labelled log rows cut at ``cutoff``: ``fit`` (created before it) and ``holdout`` (at or after it)."""

    fit: list[LabelledRow]
    holdout: list[LabelledRow]
    cutoff: datetime | None

    def as_dict(self) -> dict[str, Any]:
        known = sum(1 for r in self.holdout if r.propensity is not None)
        return {"kind": "time-ordered", "cutoff": self.cutoff.isoformat() if self.cutoff else None,
                "fit_rows": len(self.fit), "holdout_rows": len(self.holdout), "holdout_events": known,
                "holdout_without_propensity": len(self.holdout) - known}


#: rows of this policy are the judge's counterfactual answers (``gateway.judge.service``, "Pairs"): no propensity
PAIR_POLICY = "judge-pair"


def time_split(rows: Sequence[LabelledRow], test_size: float) -> TimeSplit:
    """The newest ``test_size`` of ``rows`` (at least one, when there are two or more) as the holdout. Rows sharing
    a timestamp keep their given order (the repository's: time, then request id), so the cut is reproducible.

    The judge's pair rows are not traffic: the cut is made on the others, pair rows older than it join the fitting
    side (an observed cell for the backend the router did not send that prompt to) and newer ones are dropped (they
    answer holdout prompts: fitting on them would leak the holdout into the candidate)."""
    ordered = sorted((r for r in rows if r.policy != PAIR_POLICY), key=lambda r: r.created_at)  # stable
    n_hold = min(len(ordered) - 1, max(1, round(len(ordered) * test_size))) if len(ordered) >= 2 else 0
    cut = len(ordered) - n_hold
    cutoff = ordered[cut].created_at if n_hold else None
    pairs = [r for r in rows if r.policy == PAIR_POLICY and (cutoff is None or r.created_at < cutoff)]
    fit = sorted([*ordered[:cut], *pairs], key=lambda r: r.created_at)
    return TimeSplit(fit, ordered[cut:], cutoff)


@dataclass
class HoldoutEvents:
    """Holdout events with a known propensity: one dataset row each (quality observed only at ``actions``)."""

    dataset: RoutingDataset
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    quality_model: np.ndarray  # [m] per-backend mean label of the fit rows: DR's reward model

    def __len__(self) -> int:
        return len(self.actions)


def _backend_means(rows: Sequence[LabelledRow], names: list[str], value: str, default: float) -> np.ndarray:
    out = []
    for name in names:
        vals = [float(getattr(r, value)) for r in rows if r.backend == name]
        out.append(float(np.mean(vals)) if vals else default)
    return np.asarray(out)


def holdout_events(split: TimeSplit, cards: list[ModelCard], default_output_tokens: int,
                   pool: str) -> HoldoutEvents:
    """The split's holdout rows with a propensity, as events over ``cards`` (the pool's members, in order)."""
    names = [c.name for c in cards]
    rows = [r for r in split.holdout if r.propensity is not None and r.backend in names]
    fit = split.fit or split.holdout  # no older rows at all: the model is fitted on the holdout's own labels
    overall = float(np.mean([r.score for r in fit])) if fit else 0.5
    quality_model = _backend_means(fit, names, "score", overall)
    completion_means = _backend_means(fit, names, "completion_tokens", float(default_output_tokens))
    n, m = len(rows), len(names)
    actions = np.asarray([names.index(r.backend) for r in rows], dtype=np.int64)
    prompt = np.asarray([r.prompt_tokens for r in rows], dtype=np.float64)
    completion = np.tile(completion_means, (n, 1))
    quality = np.full((n, m), np.nan)
    for i, r in enumerate(rows):
        completion[i, actions[i]] = r.completion_tokens
        quality[i, actions[i]] = r.score
    ds = RoutingDataset(
        name=f"holdout:{pool}", queries=[r.text for r in rows], models=names, quality=quality, prompt_tokens=prompt,
        completion_tokens=completion, cost_usd=call_costs_usd(prompt, completion, cards), cards=list(cards),
        assumptions={"holdout": split.as_dict()},
    )
    return HoldoutEvents(ds, actions, np.asarray([r.score for r in rows]),
                         np.asarray([r.propensity for r in rows], dtype=np.float64), quality_model)


def _models(events: HoldoutEvents, flags: Flags) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality model, utility model, utility with the logged cells' observed labels), each ``[n, m]``."""
    ds, n = events.dataset, len(events)
    q_model = np.tile(events.quality_model, (n, 1))
    q_logged = q_model.copy()
    q_logged[np.arange(n), events.actions] = events.rewards
    # utility is linear in each cell's own quality (lambda depends on costs only): the logged cell's utility is exact
    u_model = score(Prediction(quality=q_model, cost_usd=ds.cost_usd), ds.cards, flags, ds.prompt_tokens).utility
    u_logged = score(Prediction(quality=q_logged, cost_usd=ds.cost_usd), ds.cards, flags, ds.prompt_tokens).utility
    return q_model, u_model, u_logged


def compare_choices(choice: np.ndarray, other: np.ndarray, events: HoldoutEvents, flags: Flags, *, seed: int = 0,
                    n_boot: int = 1000) -> dict[str, Any]:
    """DR estimate of (``choice``'s utility - ``other``'s) on the same events, with its paired 95% interval
    (:func:`training.off_policy.dr_difference`) and the share of events where the two policies disagree."""
    _, u_model, u_logged = _models(events, flags)
    idx, m = np.arange(len(events)), len(events.dataset.cards)
    diff = dr_difference(events.actions, u_logged[idx, events.actions], events.propensities, one_hot(choice, m),
                         one_hot(other, m), u_model, seed=seed, n_boot=n_boot)
    return {"utility_diff": diff.value, "utility_diff_low": diff.low, "utility_diff_high": diff.high,
            "disagreement": float(np.mean(np.asarray(choice) != np.asarray(other))), "n": len(events)}


def evaluate_choices(choice: np.ndarray, events: HoldoutEvents, flags: Flags, *, seed: int = 0,
                     n_boot: int = 1000) -> dict[str, Any]:
    """Off-policy metrics of a deterministic policy that chose ``choice`` (backend index per event).

    ``utility``/``utility_low``/``utility_high``: DR estimate of the objective's utility and its 95% interval;
    ``quality``: DR estimate of the label; ``cost_usd``: mean priced cost of the choices; ``off_policy``: IPS,
    SNIPS, DR of both with the effective sample size; ``mix``: share of events per backend.
    """
    ds, n = events.dataset, len(events)
    cards, m = ds.cards, len(ds.cards)
    idx = np.arange(n)
    q_model, u_model, u_logged = _models(events, flags)
    target = one_hot(choice, m)
    util = estimate(events.actions, u_logged[idx, events.actions], events.propensities, target, u_model,
                    seed=seed, n_boot=n_boot)
    qual = estimate(events.actions, events.rewards, events.propensities, target, q_model, seed=seed, n_boot=n_boot)
    counts = np.bincount(choice, minlength=m)
    return {
        "utility": util.dr.value, "utility_low": util.dr.low, "utility_high": util.dr.high,
        "quality": qual.dr.value, "cost_usd": float(ds.cost_usd[idx, choice].mean()),
        "ess": util.ess, "match_rate": util.match_rate,
        "off_policy": {"utility": util.as_dict(), "quality": qual.as_dict()},
        "mix": {card.name: float(counts[j] / n) for j, card in enumerate(cards)}, "n": n,
    }
