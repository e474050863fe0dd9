"""Off-policy estimates: how well would a *target* policy have done on traffic that another policy (the *logging*
policy) routed, judged only by the outcomes actually observed.

Each logged event ``i`` has the backend that served it ``a_i``, its observed reward ``r_i`` (a quality label, or
the objective's utility of that label at the served cell's cost), and the probability ``p_i`` with which the
logging policy chose ``a_i`` (the row's propensity, ``routers.exploration``). The target policy gives
``pi_i[j]``, the probability it would choose backend ``j`` (a one-hot row for a deterministic router). With the
importance weight ``w_i = pi_i[a_i] / p_i``:

- IPS (inverse propensity scoring): ``mean(w_i r_i)``; unbiased when every backend the target may choose had
  ``p > 0``, high variance when weights are large.
- SNIPS (self-normalized IPS): ``sum(w_i r_i) / sum(w_i)``; slightly biased, much lower variance, and always a
  value inside the reward's range.
- DR (doubly robust): ``mean(sum_j pi_i[j] rhat_ij + w_i (r_i - rhat_i,a_i))`` with a reward model ``rhat`` (the
  per-backend mean of older traffic, or a router's predictions). Unbiased if *either* the propensities or the
  reward model are right; the model only reduces variance, it never stands in for an unobserved outcome.

Each comes with a percentile bootstrap interval (resampling events) and the effective sample size
``(sum w)^2 / sum w^2``: how many events the estimate effectively rests on. A small ESS means few logged events
agree with the target policy and the interval is wide, or (when ESS is tiny) not to be trusted at all.

Only observed cells count: nothing here fills an unobserved (query, backend) cell with a mean and then calls it
truth (the bias that :func:`naive_filled` reproduces for comparison). Pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its bootstrap 95% interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class OffPolicyReport:
    """IPS, SNIPS and DR estimates of one target policy, the events they rest on and the effective sample size."""

    ips: Estimate
    snips: Estimate
    dr: Estimate
    n: int
    ess: float
    match_rate: float  # share of events whose logged backend the target would choose (deterministic target)

    def as_dict(self) -> dict[str, Any]:
        return {"ips": self.ips.as_dict(), "snips": self.snips.as_dict(), "dr": self.dr.as_dict(), "n": self.n,
                "ess": round(self.ess, 2), "match_rate": round(self.match_rate, 4)}


def one_hot(choice: np.ndarray, m: int) -> np.ndarray:
    """A deterministic policy's choices ``[n]`` as action probabilities ``[n, m]``."""
    out = np.zeros((len(choice), m))
    out[np.arange(len(choice)), np.asarray(choice, dtype=np.int64)] = 1.0
    return out


def _check(actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray, target: np.ndarray) -> None:
    n = len(actions)
    if not (len(rewards) == len(propensities) == target.shape[0] == n):
        raise ValueError("actions, rewards, propensities and target must have one entry per event")
    if n == 0:
        raise ValueError("no logged events to estimate from")
    if not np.all((propensities > 0) & (propensities <= 1)):
        raise ValueError("propensities must be in (0, 1]; leave out events whose propensity is unknown")
    if not np.all(np.isfinite(rewards)):
        raise ValueError("rewards must be observed (finite): only logged outcomes count")


def _point(actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray, target: np.ndarray,
           model: np.ndarray) -> tuple[float, float, float]:
    idx = np.arange(len(actions))
    w = target[idx, actions] / propensities
    ips = float(np.mean(w * rewards))
    total = float(w.sum())
    snips = float(np.sum(w * rewards) / total) if total > 0 else float("nan")
    dr = float(np.mean((target * model).sum(axis=1) + w * (rewards - model[idx, actions])))
    return ips, snips, dr


def estimate(actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray, target: np.ndarray,
             model: np.ndarray | None = None, *, n_boot: int = 1000, seed: int = 0) -> OffPolicyReport:
    """IPS, SNIPS and DR of ``target`` (``[n, m]`` action probabilities) on logged events (module docstring).

    ``model`` (``[n, m]``) is DR's reward model; None: the per-backend mean observed reward of these events (so DR
    needs no outside input, at the price of fitting its model on the events it judges).
    """
    actions = np.asarray(actions, dtype=np.int64)
    rewards, propensities = np.asarray(rewards, dtype=np.float64), np.asarray(propensities, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    _check(actions, rewards, propensities, target)
    n, m = target.shape
    if model is None:
        overall = float(rewards.mean())
        means = [float(rewards[actions == j].mean()) if np.any(actions == j) else overall for j in range(m)]
        model = np.tile(np.asarray(means), (n, 1))
    model = np.asarray(model, dtype=np.float64)
    ips, snips, dr = _point(actions, rewards, propensities, target, model)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, 3))
    for b in range(n_boot):
        pick = rng.integers(0, n, size=n)
        boots[b] = _point(actions[pick], rewards[pick], propensities[pick], target[pick], model[pick])
    low, high = np.nanpercentile(boots, 2.5, axis=0), np.nanpercentile(boots, 97.5, axis=0)
    w = target[np.arange(n), actions] / propensities
    ess = float(w.sum() ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
    match = float(np.mean(target[np.arange(n), actions] > 0))
    return OffPolicyReport(
        Estimate(ips, float(low[0]), float(high[0])), Estimate(snips, float(low[1]), float(high[1])),
        Estimate(dr, float(low[2]), float(high[2])), n, ess, match,
    )


def dr_terms(actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray, target: np.ndarray,
             model: np.ndarray) -> np.ndarray:
    """The per-event terms whose mean is the DR estimate: ``sum_j pi_ij rhat_ij + pi_i,a_i / p_i (r_i -
    rhat_i,a_i)``. ``target`` may be signed (a difference of policies): DR is linear in it. Resampling these terms
    is resampling events, so callers can bootstrap any function of several DR estimates on the same events."""
    actions = np.asarray(actions, dtype=np.int64)
    rewards, propensities = np.asarray(rewards, dtype=np.float64), np.asarray(propensities, dtype=np.float64)
    target, model = np.asarray(target, dtype=np.float64), np.asarray(model, dtype=np.float64)
    _check(actions, rewards, propensities, target)
    idx = np.arange(len(actions))
    terms: np.ndarray = (target * model).sum(axis=1) + target[idx, actions] / propensities * (
        rewards - model[idx, actions])
    return terms


def dr_difference(actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray, target_a: np.ndarray,
                  target_b: np.ndarray, model: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """DR estimate of (policy a's value - policy b's value) on the same events, with a *paired* bootstrap interval.

    DR is linear in the target, so the difference is DR of ``target_a - target_b``: an event where both policies
    choose the same backend contributes exactly 0, and the interval rests on the events where they disagree. That
    is the right test of "a beats b" (two separate intervals double-count the noise the policies share)."""
    delta = np.asarray(target_a, dtype=np.float64) - np.asarray(target_b, dtype=np.float64)
    terms = dr_terms(actions, rewards, propensities, delta, model)
    rng = np.random.default_rng(seed)
    boots = np.asarray([terms[rng.integers(0, len(terms), size=len(terms))].mean() for _ in range(n_boot)])
    return Estimate(float(terms.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))


def naive_filled(actions: np.ndarray, rewards: np.ndarray, target_choice: np.ndarray, m: int) -> float:
    """The old evaluation, kept only to show its bias: every event's unobserved backends get that backend's mean
    logged reward, and the target's choice is scored on that filled-in matrix as if it were the truth.

    It ignores how the logged backends were chosen, so when the logging policy sent hard queries to one backend
    and easy ones to another, the filled means carry that selection into the estimate."""
    actions, rewards = np.asarray(actions, dtype=np.int64), np.asarray(rewards, dtype=np.float64)
    overall = float(rewards.mean())
    means = np.asarray([float(rewards[actions == j].mean()) if np.any(actions == j) else overall for j in range(m)])
    filled = np.tile(means, (len(actions), 1))
    filled[np.arange(len(actions)), actions] = rewards
    return float(filled[np.arange(len(actions)), np.asarray(target_choice, dtype=np.int64)].mean())
