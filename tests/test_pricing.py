"""The one token-cost formula: a log row's cost, a model card's, the objective's expected cost, a data set's cost
cells and a limit's reservation are all ``routers.pricing.token_cost_usd`` of the same counts."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.limits.tenancy import Tenancy
from gateway.settings import Settings
from routers.base import ModelCard, Prediction
from routers.objective import expected_cost
from routers.pricing import call_costs_usd, cost_usd, token_cost_usd
from tests.test_loop_report import POOL  # cheap: 0.5 / 1.0, strong: 10 / 30 USD per 1M tokens


def test_the_formula_is_tokens_times_prices_per_million() -> None:
    assert token_cost_usd(1000.0, 200.0, 0.5, 1.5) == pytest.approx((1000 * 0.5 + 200 * 1.5) / 1e6)
    batch = token_cost_usd(np.array([1000.0, 10.0]), np.array([200.0, 0.0]), np.array(0.5), np.array(1.5))
    np.testing.assert_allclose(batch, [8e-4, 5e-6])


def test_backend_card_objective_and_batch_costs_agree() -> None:
    backends = POOL.backends
    cards = [b.card() for b in backends]
    prompt, completion = np.array([120.0, 7.0]), np.array([[40.0, 300.0], [40.0, 300.0]])
    by_backend = [[cost_usd(b, p, c) for b, c in zip(backends, row, strict=True)]
                  for p, row in zip(prompt, completion, strict=True)]
    by_card = [[card.cost_usd(p, c) for card, c in zip(cards, row, strict=True)]
               for p, row in zip(prompt, completion, strict=True)]
    pred = Prediction(quality=np.full((2, 2), 0.5), output_tokens=completion)
    objective, _ = expected_cost(pred, cards, prompt)
    np.testing.assert_allclose(by_backend, by_card, rtol=1e-12)
    np.testing.assert_allclose(objective, by_card, rtol=1e-12)
    np.testing.assert_allclose(call_costs_usd(prompt, completion, cards), by_card, rtol=1e-12)


def test_a_reservation_is_priced_at_the_dearest_member_by_the_same_formula() -> None:
    tenancy = Tenancy(Settings(), POOL, None, None)  # type: ignore[arg-type]  # estimate needs no service
    tokens, cost = tenancy.estimate("auto", {"max_tokens": 100, "n": 2}, 50)
    assert tokens == 250
    assert cost == pytest.approx(max(cost_usd(b, 50, 200) for b in POOL.backends))
    assert cost == pytest.approx(token_cost_usd(50.0, 200.0, 10.0, 30.0))
    assert ModelCard("x", 10.0, 30.0).cost_usd(50, 200) == cost
