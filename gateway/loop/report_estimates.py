"""The report's savings and reference-policy quality as off-policy estimates, and judge-vs-user agreement.

Per pool, every successful logged request with a known propensity and priced candidates is one *event* (the backend
that answered, its logged cost, its label if any, the probability with which it was chosen). Always-cheapest and
always-strongest are deterministic targets (each event's cheapest / dearest candidate); their mean cost per request
and mean quality are estimated with IPS, SNIPS and DR (:mod:`training.off_policy`), with bootstrap 95% intervals and
the effective sample size, from the observed cells only:

- cost: every event's logged ``cost_usd`` is an observed outcome; DR's cost model is the event's prompt tokens and
  that backend's mean completion tokens of the events it answered, at pool file prices (a model only: DR corrects
  it with the observed cells);
- quality: the labelled events only (the label that counts, the human one where both exist); DR's model is the
  per-backend mean label. Labels that are not a random share of the traffic (people labelling what they noticed)
  bias this, and no estimator can fix that;
- savings vs always-strongest = 1 - served cost / DR cost of always-strongest, its interval from a bootstrap of
  the same resampled events (served and target paired); extra vs always-cheapest = served cost - its DR cost.

The served policy's own cost and quality are observed (means over the same events). A backend the log never chose
for a kind of request (propensity 0 there) cannot be judged by any estimator: without exploration the references
are only estimable where they agree with the router (``match`` and ESS say how much).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gateway.store.estimates import Event
from routers.pricing import token_cost_usd
from training.off_policy import OffPolicyReport, dr_terms, estimate, one_hot

#: bootstrap resamples of the report's intervals
N_BOOT = 400
NAN = float("nan")


@dataclass
class ReferenceEstimate:
    """One reference policy's estimated cost per request and quality (each ``{ips, snips, dr, n, ess, match}``)."""

    cost_usd: dict[str, Any]
    quality: dict[str, Any] | None


@dataclass
class PoolEstimate:
    """The off-policy savings of one pool (module docstring). ``None`` values: not estimable (no events)."""

    pool: str
    events: int
    labelled: int
    served_cost_usd: float
    served_quality: float
    references: dict[str, ReferenceEstimate] = field(default_factory=dict)
    savings_vs_strongest: dict[str, float] | None = None  # {value, low, high}
    extra_vs_cheapest_usd: dict[str, float] | None = None  # per request {value, low, high}


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return NAN, NAN
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def _report(rep: OffPolicyReport) -> dict[str, Any]:
    out: dict[str, Any] = rep.as_dict()
    out["match"] = out.pop("match_rate")
    return out


def pool_estimate(pool: str, events: Sequence[Event], prices: Mapping[str, tuple[float, float]],
                  seed: int = 0) -> PoolEstimate:
    """Off-policy cost and quality of always-cheapest / always-strongest on one pool's events."""
    names = sorted({n for e in events for n in (e.backend, e.cheapest, e.strongest)})
    n, m = len(events), len(names)
    actions = np.asarray([names.index(e.backend) for e in events], dtype=np.int64)
    props = np.asarray([e.propensity for e in events])
    cost = np.asarray([e.cost_usd for e in events])
    prompt = np.asarray([e.prompt_tokens for e in events], dtype=np.float64)
    completion = {b: [e.completion_tokens for e in events if e.backend == b] for b in names}
    overall = float(np.mean([e.completion_tokens for e in events]))
    cost_model = np.empty((n, m))
    for j, b in enumerate(names):
        mean_out = float(np.mean(completion[b])) if completion[b] else overall
        p_in, p_out = prices[b]
        cost_model[:, j] = [token_cost_usd(p, mean_out, p_in, p_out) for p in prompt]
    labelled = np.asarray([e.score is not None for e in events])
    scores = np.asarray([e.score if e.score is not None else NAN for e in events])
    out = PoolEstimate(pool, n, int(labelled.sum()), float(cost.mean()),
                       float(scores[labelled].mean()) if labelled.any() else NAN)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(N_BOOT, n))
    served_boot = cost[picks].mean(axis=1)
    for ref in ("always-cheapest", "always-strongest"):
        choice = np.asarray([names.index(e.cheapest if ref == "always-cheapest" else e.strongest) for e in events])
        target = one_hot(choice, m)
        cost_rep = estimate(actions, cost, props, target, cost_model, n_boot=N_BOOT, seed=seed)
        quality_rep = None
        if labelled.sum() >= 2:
            la = actions[labelled]
            means = [float(scores[labelled][la == j].mean()) if np.any(la == j) else out.served_quality
                     for j in range(m)]
            quality_rep = _report(estimate(la, scores[labelled], props[labelled], target[labelled],
                                           np.tile(means, (len(la), 1)), n_boot=N_BOOT, seed=seed))
        out.references[ref] = ReferenceEstimate(_report(cost_rep), quality_rep)
        # the same resampled events for served and target: a paired interval of the difference / ratio
        terms = dr_terms(actions, cost, props, target, cost_model)
        ref_boot = terms[picks].mean(axis=1)
        if ref == "always-strongest" and cost_rep.dr.value > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                low, high = _interval(1.0 - served_boot / ref_boot)
            out.savings_vs_strongest = {"value": 1.0 - out.served_cost_usd / cost_rep.dr.value, "low": low,
                                        "high": high}
        elif ref == "always-cheapest":
            low, high = _interval(served_boot - ref_boot)
            out.extra_vs_cheapest_usd = {"value": out.served_cost_usd - cost_rep.dr.value, "low": low,
                                         "high": high}
    return out


def estimates_by_pool(events: Sequence[Event], prices: Mapping[str, tuple[float, float]], seed: int = 0,
                      total: str | None = None) -> dict[str, PoolEstimate]:
    """:func:`pool_estimate` of every pool with events whose backends and candidates are all priced; with
    ``total``, also every pool's events together under that key (each event keeps its own cheapest / dearest)."""
    per: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if {e.backend, e.cheapest, e.strongest} <= prices.keys() and 0 < e.propensity <= 1:
            per[e.pool].append(e)
    out = {pool: pool_estimate(pool, evs, prices, seed) for pool, evs in sorted(per.items())}
    if total is not None and len(out) == 1:
        out[total] = next(iter(out.values()))
    elif total is not None and out:
        out[total] = pool_estimate(total, [e for evs in per.values() for e in evs], prices, seed)
    return out


@dataclass
class Agreement:
    """Judge vs user on the requests both labelled: count, mean absolute difference, agreement at the 0.5
    threshold (both >= 0.5 or both < 0.5), Cohen's kappa of those two classes and Pearson's correlation."""

    n: int = 0
    mean_abs_diff: float = NAN
    agreement: float = NAN
    kappa: float = NAN
    correlation: float = NAN


def agreement(pairs: Sequence[tuple[float, float]]) -> Agreement:
    """:class:`Agreement` of (user score, judge score) pairs; NaN where a statistic is undefined (e.g. kappa when
    both raters put every request in one class, correlation with no spread)."""
    if not pairs:
        return Agreement()
    user, judge = (np.asarray(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    uy, jy = user >= 0.5, judge >= 0.5
    observed = float(np.mean(uy == jy))
    chance = float(uy.mean() * jy.mean() + (1 - uy.mean()) * (1 - jy.mean()))
    kappa = (observed - chance) / (1 - chance) if chance < 1 else NAN
    corr = float(np.corrcoef(user, judge)[0, 1]) if user.std() > 0 and judge.std() > 0 else NAN
    return Agreement(len(pairs), float(np.mean(np.abs(user - judge))), observed, kappa, corr)


def as_json(value: Any) -> Any:
    """Dataclasses to dicts, NaN to None."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
