"""``poolgate evaluate --sweep``: Pareto fronts across flag weights, and Tryage's best-choice rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gateway.cli import main
from routers.objective import Flags
from tests.test_evaluate_harness import _dataset
from training.evaluate import evaluate_routers
from training.features import Featurizer
from training.html import render_html
from training.loaders import DatasetError, default_data_dir
from training.metrics import best_choice_rate
from training.results import SweepPoint
from training.sweep import fronts, pareto_front, sweep_grid


def point(cost: float, quality: float, label: str = "") -> SweepPoint:
    return SweepPoint(label, 0.0, quality, cost, 0.0, {})


def test_the_front_keeps_only_points_no_other_point_beats_on_both_axes() -> None:
    pts = [point(1.0, 0.5, "a"), point(2.0, 0.4, "dominated"), point(2.0, 0.7, "b"), point(3.0, 0.7, "dearer"),
           point(0.5, 0.2, "cheapest"), point(4.0, 0.9, "best"), point(float("nan"), 1.0, "nan")]
    assert [p.label for p in pareto_front(pts)] == ["cheapest", "a", "b", "best"]


def test_the_grid_crosses_lambda_with_size_and_verbosity_in_units_of_the_best_models_cost() -> None:
    ds = _dataset()
    c_ref = float(ds.cost_usd[:, 2].mean())  # 'large' is the best single model
    grid = sweep_grid(ds, cost=(0.0, 1.0), size=(0.0, 0.5), verbosity=(0.0, 0.2))
    assert len(grid) == 8
    labels = [label for label, _ in grid]
    assert labels[0] == "cost=0" and "cost=1/c,size=0.5,verbosity=0.2" in labels
    assert all(f.quality == 1.0 for _, f in grid)
    assert dict(grid)["cost=1/c,size=0.5"] == Flags(cost=pytest.approx(1.0 / c_ref), size=0.5)


def test_best_choice_rate_counts_ties_as_best() -> None:
    quality = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.3, 0.7]])
    assert best_choice_rate(quality, np.array([0, 0, 1, 1])) == 0.75
    assert np.isnan(best_choice_rate(quality[:0], np.array([], dtype=int)))


@pytest.fixture(scope="module")
def swept():
    return evaluate_routers(_dataset(), ["cheapest", "strongest", "best-single", "oracle"], seed=0,
                            featurizer=Featurizer(disk_cache=False), extra_flags=sweep_grid(_dataset()))


def test_sweep_points_are_kept_apart_from_the_main_curve(swept) -> None:
    plain = evaluate_routers(_dataset(), ["cheapest", "strongest", "best-single", "oracle"], seed=0,
                             featurizer=Featurizer(disk_cache=False))
    for with_sweep, without in zip(swept.routers, plain.routers, strict=True):
        assert len(with_sweep.sweep) == len(sweep_grid(_dataset())) and without.sweep == []
        assert with_sweep.metrics == without.metrics  # AIQ, TEP, ... do not change with --sweep


def test_each_router_front_spans_from_cheap_to_good_and_the_oracle_picks_the_best(swept) -> None:
    by_name = fronts(swept)
    oracle = by_name["oracle"]
    # lambda 0 gives the best quality; a large lambda gives the cheapest correct model
    assert oracle[-1].quality == pytest.approx(_dataset().quality.max(axis=1).mean()) and len(oracle) >= 2
    assert [p.cost_usd for p in oracle] == sorted(p.cost_usd for p in oracle)
    assert len(by_name["cheapest"]) == 1  # flags cannot move a router whose every estimate says "cheapest"
    rates = {r.name: r.metrics["best_choice_rate"] for r in swept.routers}
    assert rates["oracle"] == 1.0
    assert 0 < rates["cheapest"] < rates["strongest"] < 1  # 'large' is right most often


def test_the_html_page_plots_the_fronts(swept) -> None:
    page = render_html(swept)
    assert "Pareto fronts across flag weights" in page


def test_the_cli_prints_the_front_table_and_writes_it_to_json(tmp_path: Path) -> None:
    try:
        default_data_dir()
    except DatasetError:
        pytest.skip("no shared/data beside the repo")
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "llmrouter", "--routers", "strongest",
                                       "--limit", "120", "--sweep", "--out", str(tmp_path),
                                       "--cache-dir", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.stderr
    assert "Pareto fronts over 99 flag settings" in result.stdout and "best%" in result.stdout
    data = json.loads((tmp_path / "llmrouter.json").read_text())
    oracle = next(r for r in data["routers"] if r["name"] == "oracle")
    assert len(oracle["sweep"]) == 99 and oracle["metrics"]["best_choice_rate"] == 1.0
    assert "Pareto fronts across flag weights" in (tmp_path / "llmrouter.html").read_text()
