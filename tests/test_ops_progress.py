"""Progress of long work: evaluation reports every fold of every router and a calibrated fit its inner fits;
the command-line bars draw on a terminal only (a pipe or a test runner sees nothing new)."""

from __future__ import annotations

import io

from gateway.commands.progress import progress_bars
from routers.progress import report, reporting
from tests.test_evaluate_harness import _dataset
from training.calibrate import fit_calibrated
from training.evaluate import evaluate_routers
from training.features import Featurizer


def recorded() -> tuple[list[tuple[str, int, int | None]], object]:
    seen: list[tuple[str, int, int | None]] = []
    return seen, lambda stage, done, total: seen.append((stage, done, total))


def test_evaluation_reports_each_fold_of_each_router_up_to_the_total() -> None:
    seen, reporter = recorded()
    with reporting(reporter):  # type: ignore[arg-type]
        evaluate_routers(_dataset(), ["cheapest", "strongest"], folds=4, featurizer=Featurizer(disk_cache=False),
                         bootstrap=10)
    folds = [(done, total) for stage, done, total in seen if stage == "folds"]
    assert folds == [(i, 8) for i in range(9)]


def test_a_calibrated_fit_reports_its_inner_fits() -> None:
    data = _dataset()
    seen, reporter = recorded()
    with reporting(reporter):  # type: ignore[arg-type]
        fit_calibrated("best-single", data.with_features(Featurizer(disk_cache=False).featurize_dataset(data, False)))
    inner = [(done, total) for stage, done, total in seen if stage == "inner fits best-single"]
    assert inner and inner[-1][0] == inner[-1][1] and inner[0][0] == 0


def test_without_a_reporter_report_is_silent_and_reporting_nests() -> None:
    report("nobody listens", 1, 2)
    outer, outer_fn = recorded()
    inner, inner_fn = recorded()
    with reporting(outer_fn):  # type: ignore[arg-type]
        with reporting(inner_fn):  # type: ignore[arg-type]
            report("x", 1, 1)
        report("y", 1, 1)
    assert inner == [("x", 1, 1)] and outer == [("y", 1, 1)]


def test_bars_draw_on_a_terminal_only() -> None:
    quiet = io.StringIO()  # not a TTY
    with progress_bars(quiet):
        report("folds", 1, 2)
    assert quiet.getvalue() == ""
    drawn = io.StringIO()
    with progress_bars(drawn, force=True):
        report("folds", 2, 2)
    assert "folds" in drawn.getvalue() and "2/2" in drawn.getvalue()

