"""A simulation on recorded data: a deliberately biased logging policy routes fully labelled queries (GSM8K
correctness of each backend, known for every query), only the chosen cell is "observed", and the estimators of
``training.off_policy`` must recover a target policy's true quality, which the data knows.

The logging policy is a good difficulty detector, as a deployed router would be: it sends about 90 % of
traffic to the strong backend, more so on the queries the weak one gets wrong (P(strong) = ``p_hard`` there,
``p_easy`` elsewhere). The weak backend's logged outcomes are therefore mostly its easy wins, and filling its
unobserved cells with their mean (the old evaluation) overstates it; the propensities undo that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.off_policy import OffPolicyReport, estimate, naive_filled, one_hot


@dataclass(frozen=True)
class SimulationResult:
    """One target policy's true value, the naive filled-cell estimate and the off-policy estimates."""

    target: str
    truth: float
    naive: float
    report: OffPolicyReport

    def errors(self) -> dict[str, float]:
        r = self.report
        return {"naive": self.naive - self.truth, "ips": r.ips.value - self.truth,
                "snips": r.snips.value - self.truth, "dr": r.dr.value - self.truth}


def biased_logging(quality: np.ndarray, weak: int, strong: int, passes: int, seed: int,
                   p_hard: float = 0.95, p_easy: float = 0.85) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log ``passes`` rounds over every query: (query index, chosen backend, its propensity) per event."""
    rng = np.random.default_rng(seed)
    n = quality.shape[0]
    queries = np.tile(np.arange(n), passes)
    hard = quality[queries, weak] < 0.5
    p_strong = np.where(hard, p_hard, p_easy)
    to_strong = rng.random(len(queries)) < p_strong
    actions = np.where(to_strong, strong, weak)
    propensities = np.where(to_strong, p_strong, 1.0 - p_strong)
    return queries, actions, propensities


def simulate(quality: np.ndarray, targets: dict[str, Callable[[np.ndarray], np.ndarray]], weak: int, strong: int,
             *, passes: int = 10, seed: int = 0, n_boot: int = 500) -> list[SimulationResult]:
    """Each target (query indices -> backend per query) judged on one biased log of ``quality`` (fully known)."""
    queries, actions, propensities = biased_logging(quality, weak, strong, passes, seed)
    rewards = quality[queries, actions]  # only the logged cell is ever read
    m = quality.shape[1]
    out = []
    for name, policy in targets.items():
        choice = policy(queries)
        truth = float(quality[np.arange(quality.shape[0]), policy(np.arange(quality.shape[0]))].mean())
        report = estimate(actions, rewards, propensities, one_hot(choice, m), n_boot=n_boot, seed=seed)
        out.append(SimulationResult(name, truth, naive_filled(actions, rewards, choice, m), report))
    return out
