"""routers.exploration: the draw follows the probabilities it reports, and never leaves the ranked candidates."""

from __future__ import annotations

import numpy as np
import pytest

from routers.exploration import Exploration, choose, probabilities


def test_epsilon_greedy_probabilities_are_one_minus_share_plus_share_over_k() -> None:
    p = probabilities([0.9, 0.5, 0.1], Exploration("epsilon", share=0.3))
    assert p == pytest.approx([0.7 + 0.1, 0.1, 0.1])


def test_softmax_probabilities_follow_utility_and_sum_to_one() -> None:
    p = probabilities([1.0, 0.0], Exploration("softmax", share=1.0, temperature=1.0))
    assert p == pytest.approx([np.e / (np.e + 1), 1 / (np.e + 1)])
    assert probabilities([5.0, 4.0, 0.0], Exploration("softmax", share=0.2, temperature=0.5)).sum() == pytest.approx(1)


@pytest.mark.parametrize("policy", ["epsilon", "softmax"])
def test_choices_are_drawn_with_the_logged_propensities(policy: str) -> None:
    exploration = Exploration(policy, share=0.4, temperature=0.3)  # type: ignore[arg-type]
    ranking, utilities = [2, 0, 1], [0.8, 0.6, 0.1]
    expected = dict(zip(ranking, probabilities(utilities, exploration), strict=True))
    rng = np.random.default_rng(7)
    draws = [choose(ranking, utilities, exploration, rng) for _ in range(20000)]
    for backend, p in expected.items():
        share = np.mean([d.order[0] == backend for d in draws])
        assert share == pytest.approx(p, abs=0.015)
        assert all(d.propensity == pytest.approx(p) for d in draws if d.order[0] == backend)
    assert all(sorted(d.order) == sorted(ranking) for d in draws)  # only ranked candidates, all kept as fallbacks


def test_no_exploration_or_one_candidate_is_the_top_with_propensity_one() -> None:
    rng = np.random.default_rng(0)
    assert choose([1, 0], [0.5, 0.4], None, rng).propensity == 1.0
    one = choose([3], [0.5], Exploration("epsilon", share=0.9), rng)
    assert (one.order, one.propensity, one.policy) == ([3], 1.0, "router")


def test_bad_share_or_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        Exploration(share=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Exploration("softmax", share=0.1, temperature=0.0)
