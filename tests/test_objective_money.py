"""The shared objective trades quality against money: no per-request min-max, presets by quality target, caution."""

from __future__ import annotations

import numpy as np
import pytest

from routers.base import ModelCard, Prediction
from routers.baselines import StrongestRouter
from routers.objective import (
    NO_CALIBRATION,
    PRESETS,
    Calibration,
    Flags,
    OperatingCurve,
    choose_batch,
    decide,
    resolve_lambda,
    score,
)


def _pair(ratio: float) -> list[ModelCard]:
    return [ModelCard("cheap", 1.0, 1.0, output_tokens=100), ModelCard("dear", ratio, ratio, output_tokens=100)]


def _choice(quality: list[float], cards: list[ModelCard], flags: Flags, calibration: Calibration = NO_CALIBRATION
            ) -> str:
    ranking, _ = decide(Prediction(quality=np.asarray([quality])), cards, flags, 100.0, calibration=calibration)
    return cards[ranking[0]].name


def test_the_price_ratio_matters_a_little_dearer_model_wins_a_much_dearer_one_does_not() -> None:
    # the same predicted gain (0.02) under the balanced preset's price-ratio rule: 0.03 x (1 - 1/ratio)
    assert _choice([0.80, 0.82], _pair(1.1), PRESETS["balanced"]) == "dear"
    assert _choice([0.80, 0.82], _pair(50.0), PRESETS["balanced"]) == "cheap"
    # the old per-request min-max made both the same: the dearer model could never win under balanced


def test_lambda_is_quality_points_per_usd_of_expected_cost() -> None:
    cards = _pair(10.0)  # cheap costs 200 tokens x $1/1M = $0.0002, dear $0.002
    flags = Flags(cost=100.0)  # the $0.0018 more is worth 0.18 of quality
    scores = score(Prediction(quality=np.asarray([[0.5, 0.6]])), cards, flags, np.asarray([100.0]))
    np.testing.assert_allclose(scores.expected_cost_usd, [[0.0002, 0.002]])
    np.testing.assert_allclose(scores.utility, [[0.5 - 0.02, 0.6 - 0.2]])
    assert _choice([0.5, 0.67], cards, flags) == "cheap" and _choice([0.5, 0.69], cards, flags) == "dear"


def test_attributes_count_in_their_own_units() -> None:
    old = ModelCard("old", release_date=__import__("datetime").date(2023, 1, 1), size_b=70)
    new = ModelCard("new", release_date=__import__("datetime").date(2025, 1, 1), size_b=7)
    flat = Prediction(quality=np.asarray([[0.5, 0.5]]))
    util = score(flat, [old, new], Flags(recency=0.1), np.asarray([10.0])).utility
    np.testing.assert_allclose(util[0, 0] - util[0, 1], -0.1 * 731 / 365.25)  # two years behind the newest
    util = score(flat, [old, new], Flags(size=0.001), np.asarray([10.0])).utility
    np.testing.assert_allclose(util[0, 1] - util[0, 0], 0.001 * 63)


def test_quality_target_resolves_on_the_routers_operating_curve() -> None:
    curve = OperatingCurve((0.0, 10.0, 20.0, 40.0), (1.0, 0.99, 0.95, 0.80), (1.0, 0.7, 0.5, 0.2))
    calibration = Calibration(curve=curve)
    cost = np.asarray([[0.001, 0.01]])
    assert resolve_lambda(Flags(cost=None, quality_target=0.97), calibration, cost)[0] == 10.0
    assert resolve_lambda(Flags(cost=None, quality_target=0.90), calibration, cost)[0] == 20.0
    assert resolve_lambda(Flags(cost=None, quality_target=1.0), calibration, cost)[0] == 0.0
    assert resolve_lambda(Flags(cost=7.0), calibration, cost)[0] == 7.0  # an explicit lambda wins
    # without a curve: (1 - t) / cost of the dearest candidate
    assert resolve_lambda(Flags(cost=None, quality_target=0.9), NO_CALIBRATION, cost)[0] == pytest.approx(10.0)


def test_caution_keeps_the_best_single_choice_unless_the_predicted_gain_beats_the_margin() -> None:
    cards = [ModelCard("a", 1.0, 1.0), ModelCard("b", 1.0, 1.0)]
    calibration = Calibration(caution=0.05, member_quality={"a": 0.7, "b": 0.6})  # "a" is the best single model
    assert _choice([0.60, 0.63], cards, Flags(cost=0.0), calibration) == "a"  # +0.03 < margin: stay
    assert _choice([0.60, 0.70], cards, Flags(cost=0.0), calibration) == "b"  # +0.10 > margin: depart
    assert _choice([0.60, 0.63], cards, Flags(cost=0.0)) == "b"  # no calibration, no caution
    batch = Prediction(quality=np.asarray([[0.60, 0.63], [0.60, 0.70]]))
    assert choose_batch(batch, cards, Flags(cost=0.0), np.asarray([10.0, 10.0]), calibration).tolist() == [0, 1]


def test_strongest_is_the_member_of_highest_expected_quality_not_the_dearest() -> None:
    cards = [ModelCard("pricey", 30.0, 30.0, size_b=400, quality=0.55), ModelCard("good", 1.0, 1.0, quality=0.8),
             ModelCard("unknown", 50.0, 50.0)]
    row = StrongestRouter().predict(__import__("tests.test_knn", fromlist=["_features"])._features(
        np.ones((1, 3)), ["q"]), cards).quality[0]
    assert int(np.argmax(row)) == 1
    for preset in PRESETS.values():  # a policy: no preset trades it away
        assert _choice(row.tolist(), cards, preset) == "good"


@pytest.mark.parametrize("bad", [{"quality_target": 0}, {"quality_target": 1.01}, {"quality_target": True},
                                 {"cost": -1}, {"cost": float("nan")}, {"cost": 1, "quality_target": 0.9}])
def test_bad_quality_targets_and_lambdas_are_refused(bad: dict) -> None:
    from routers.objective import FlagError

    with pytest.raises(FlagError):
        Flags.from_mapping(bad)
