"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics

# four queries, weak model right on 0 and 1, strong model right on 1, 2 and 3
Q_WEAK = np.array([1.0, 1.0, 0.0, 0.0])
Q_STRONG = np.array([0.0, 1.0, 1.0, 1.0])


def test_mean_quality_and_cost_read_the_chosen_cells() -> None:
    quality = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    cost = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    choice = np.array([1, 0, 1])
    assert metrics.mean_quality(quality, choice) == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert metrics.mean_cost(cost, choice) == pytest.approx((10 + 2 + 30) / 3)


def test_apgr_of_always_weak_is_zero_and_always_strong_is_one() -> None:
    frac = np.linspace(0, 1, 11)
    assert metrics.apgr(frac, np.full(11, 0.5), q_weak=0.5, q_strong=0.75) == pytest.approx(0.0)
    assert metrics.apgr(frac, np.full(11, 0.75), q_weak=0.5, q_strong=0.75) == pytest.approx(1.0)


def test_apgr_of_the_straight_line_from_weak_to_strong_is_one_half() -> None:
    frac = np.array([0.0, 1.0])
    assert metrics.apgr(frac, np.array([0.5, 0.75]), 0.5, 0.75) == pytest.approx(0.5)


def test_oracle_apgr_exceeds_one_when_the_weak_model_alone_is_sometimes_right() -> None:
    # oracle score: +1 where only strong is right, -1 where only weak is right, 0 when they agree
    score = Q_STRONG - Q_WEAK
    frac, qual = metrics.threshold_curve(score, Q_STRONG, Q_WEAK)
    q_w, q_s = Q_WEAK.mean(), Q_STRONG.mean()
    assert metrics.apgr(frac, qual, q_w, q_s) > 1.0
    # by hand: routing the two strong-only queries to strong reaches quality 1.0 at 50 % strong calls
    assert qual.max() == pytest.approx(1.0)


def test_threshold_curve_follows_routellm_edges() -> None:
    score = np.array([0.1, 0.2, 0.3, 0.4])
    frac, qual = metrics.threshold_curve(score, Q_STRONG, Q_WEAK, n_bins=2)
    # edges = quantiles 0, .5, 1 = 0.1, 0.25, 0.4; >= for all but the last edge, which uses >
    assert frac.tolist() == [1.0, 0.5, 0.0]
    assert qual.tolist() == pytest.approx([0.75, (1 + 1 + 1 + 1) / 4, 0.5])


def test_constant_scores_sweep_from_all_strong_to_all_weak() -> None:
    frac, qual = metrics.threshold_curve(np.zeros(4), Q_STRONG, Q_WEAK)
    assert frac[0] == 1.0 and frac[-1] == 0.0
    assert metrics.apgr(frac, qual, 0.5, 0.75) == pytest.approx(0.5)


def test_cpt_interpolates_the_strong_call_share_needed() -> None:
    frac = np.array([0.0, 0.5, 1.0])
    qual = np.array([0.5, 0.7, 0.75])
    # target for 50 %: 0.5 + 0.5 * 0.25 = 0.625 -> between 0 and 0.5: 0.5 * (0.125 / 0.2) = 0.3125
    assert metrics.cpt(frac, qual, 0.5, 0.75, 0.5) == pytest.approx(0.3125)
    # target for 80 %: 0.7 -> exactly the middle point
    assert metrics.cpt(frac, qual, 0.5, 0.75, 0.8) == pytest.approx(0.5)
    assert math.isnan(metrics.cpt(frac, np.array([0.5, 0.55, 0.6]), 0.5, 0.75, 0.8))


def test_hull_drops_points_under_the_chord_and_after_the_peak() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    quality = np.array([0.2, 0.3, 0.8, 0.9, 0.7])
    hx, hy = metrics.non_decreasing_hull(cost, quality)
    # (2, 0.3) lies under the chord (1, 0.2)-(3, 0.8); (5, 0.7) comes after the peak
    assert hx.tolist() == [1.0, 3.0, 4.0]
    assert hy.tolist() == [0.2, 0.8, 0.9]


def test_aiq_integrates_the_hull_over_the_stated_cost_range() -> None:
    cost = np.array([1.0, 3.0])
    quality = np.array([0.5, 0.9])
    # over [1, 5]: trapezoid 1..3 = 2 * 0.7 = 1.4, flat 3..5 = 2 * 0.9 = 1.8 -> 3.2 / 4
    assert metrics.aiq(cost, quality, 1.0, 5.0) == pytest.approx(0.8)
    # over [0, 5]: the router cannot operate below cost 1, which counts as 0 -> 3.2 / 5
    assert metrics.aiq(cost, quality, 0.0, 5.0) == pytest.approx(0.64)


def test_aiq_of_a_single_point_is_its_quality_over_the_range_it_covers() -> None:
    assert metrics.aiq(np.array([1.0]), np.array([0.6]), 1.0, 2.0) == pytest.approx(0.6)


def test_quality_at_cost_and_cost_at_quality_read_the_hull() -> None:
    cost = np.array([1.0, 3.0])
    quality = np.array([0.5, 0.9])
    assert metrics.quality_at_cost(cost, quality, 2.0) == pytest.approx(0.7)
    assert metrics.quality_at_cost(cost, quality, 10.0) == pytest.approx(0.9)
    assert math.isnan(metrics.quality_at_cost(cost, quality, 0.5))
    assert metrics.cost_at_quality(cost, quality, 0.7) == pytest.approx(2.0)
    assert metrics.cost_at_quality(cost, quality, 0.4) == pytest.approx(1.0)
    assert math.isnan(metrics.cost_at_quality(cost, quality, 0.95))


def test_savings_vs_a_reference_at_equal_quality() -> None:
    cost = np.array([1.0, 3.0])
    quality = np.array([0.5, 0.9])
    # reaching 0.7 costs 2.0 against the reference's 4.0 -> 50 % saved
    assert metrics.savings(cost, quality, ref_cost=4.0, ref_quality=0.7) == pytest.approx(0.5)
    assert math.isnan(metrics.savings(cost, quality, ref_cost=4.0, ref_quality=0.99))


def test_tep_is_the_relative_quality_gain_over_the_relative_spend_increase() -> None:
    # +20 % quality for +100 % tokens -> 0.2
    assert metrics.tep(0.6, 200.0, 0.5, 100.0) == pytest.approx(0.2)
    assert math.isnan(metrics.tep(0.6, 100.0, 0.5, 100.0))
    assert math.isnan(metrics.tep(0.6, 200.0, 0.0, 100.0))
