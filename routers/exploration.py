"""Exploration: which of the objective's ranked, feasible candidates actually serves a request, and with what
probability.

A router that always sends a kind of request to one backend never learns how another would have done. A pool may
therefore explore: with probability ``share`` the backend is drawn from an exploration distribution over the
*ranked* candidates (the feasible members the objective kept: hard constraints and budgets were applied before),
otherwise the top-ranked one serves. The distributions:

- ``epsilon``: uniform over the k ranked candidates (epsilon-greedy): P(top) = 1 - share + share / k, any other
  share / k.
- ``softmax``: proportional to exp(utility / temperature) over them (Boltzmann): P(j) = (1 - share) [j is top]
  + share softmax_j; a low temperature explores near the top, a high one almost uniformly.

Every decision returns the probability of the backend it chose under that mixture (the *propensity*), which the
log row keeps: off-policy estimators (``training.off_policy``) weight each logged outcome by 1 / propensity. The
propensity is exact because the draw uses exactly these probabilities. Pure: the caller passes the random
generator (the gateway one per pool, tests a seeded one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

PolicyName = Literal["epsilon", "softmax"]
#: ``policy`` of a row whose backend the router's ranking chose (exploration off, or its exploit branch)
ROUTER_POLICY = "router"


@dataclass(frozen=True)
class Exploration:
    """A pool's exploration policy: ``share`` of requests drawn from ``policy``'s distribution (0 = off)."""

    policy: PolicyName = "epsilon"
    share: float = 0.0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"exploration share must be in [0, 1], not {self.share}")
        if not self.temperature > 0.0:
            raise ValueError(f"exploration temperature must be > 0, not {self.temperature}")

    @property
    def on(self) -> bool:
        return self.share > 0.0


@dataclass(frozen=True)
class Choice:
    """The decision: ``order`` is the ranking with the chosen candidate first (the rest stay as fallbacks, in
    rank order); ``propensity`` P(chosen) under the policy; ``policy`` "router" or "explore:<name>"."""

    order: list[int]
    propensity: float
    policy: str


def probabilities(utilities: Sequence[float] | np.ndarray, exploration: Exploration) -> np.ndarray:
    """P(each ranked candidate) under ``exploration``; ``utilities`` are in rank order (index 0 is the top)."""
    u = np.asarray(utilities, dtype=np.float64)
    k = len(u)
    if k == 0:
        raise ValueError("no candidate to choose from")
    if exploration.policy == "epsilon":
        spread = np.full(k, 1.0 / k)
    else:
        z = (u - u.max()) / exploration.temperature  # shifted: exp never overflows
        w = np.exp(z)
        spread = w / w.sum()
    p = exploration.share * spread
    p[0] += 1.0 - exploration.share
    return p


def choose(ranking: Sequence[int], utilities: Sequence[float] | np.ndarray, exploration: Exploration | None,
           rng: np.random.Generator) -> Choice:
    """Pick the serving candidate among ``ranking`` (best first, feasible only) with its propensity.

    Without exploration (None or share 0), or with a single candidate, the top one serves with propensity 1.
    """
    order = list(ranking)
    if exploration is None or not exploration.on or len(order) <= 1:
        return Choice(order, 1.0, ROUTER_POLICY)
    p = probabilities(utilities, exploration)
    explored = bool(rng.random() < exploration.share)
    # exploit: the top; explore: a draw from the spread (which may be the top too)
    spread = (p - np.eye(len(order))[0] * (1.0 - exploration.share)) / exploration.share
    pick = int(rng.choice(len(order), p=spread / spread.sum())) if explored else 0
    chosen = order[pick]
    rest = [i for i in order if i != chosen]
    return Choice([chosen, *rest], float(p[pick]), f"explore:{exploration.policy}" if explored else ROUTER_POLICY)
