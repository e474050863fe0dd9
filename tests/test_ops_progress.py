"""Progress of long work: evaluation reports every fold of every router and a calibrated fit its inner fits;
the command-line bars draw on a terminal only (a pipe or a test runner sees nothing new)."""

from __future__ import annotations

import io
import re

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



def test_serve_says_each_start_up_step_in_plain_lines_when_not_on_a_terminal(tmp_path) -> None:
    """``poolgate serve`` over the demo pool file, output to a file: one line as each step starts and one with
    its duration, in order, up to the line that says it listens (after which /health answers)."""
    from gateway.pools import DEMO_POOL_PATH
    from tests.procs import GatewayProcess

    gw = GatewayProcess(DEMO_POOL_PATH, tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db").start()
    try:
        out = gw.output()
    finally:
        gw.terminate()
    steps = ["upgrading the log store's schema", "loading the pool file", "loading routers (auto: knn)",
             "loading the minilm-static encoder", "opening the log store", "loading promoted router versions"]
    at = [out.index(f"poolgate: {s}") for s in steps]
    assert at == sorted(at), out
    for step in steps:  # each one finished, with its time
        assert re.search(rf"poolgate: {re.escape(step)}[^\n]*: \d+\.\d\d s\n", out), (step, out)
    assert f"poolgate: listening on http://127.0.0.1:{gw.port}/v1" in out
    assert out.index("poolgate: listening") > at[-1]
    assert "\x1b[" not in out  # no terminal escapes in a log file


def test_on_a_terminal_start_up_steps_are_a_status_line_then_a_tick() -> None:
    from gateway.commands.progress import startup_display
    from gateway.startup import startup_note, startup_step

    shown = io.StringIO()
    with startup_display(shown, force=True):
        with startup_step("loading routers (auto: knn)"):
            pass
        startup_note("listening on http://127.0.0.1:1/v1")
    text = shown.getvalue()
    assert "✓" in text and "loading routers (auto: knn)" in text and "listening on http://127.0.0.1:1/v1" in text
    assert "\x1b[" in text  # drawn for a terminal, not plain lines
