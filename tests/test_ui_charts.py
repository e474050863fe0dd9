"""The dashboard's SVG charts and routing-mix series: shapes in proportion to the numbers, quiet time buckets as
zeros, and names from the pool file or the log escaped (a backend named like markup stays text)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from gateway.store.repository import TimeCell
from gateway.ui import charts
from gateway.ui.data import mix_series

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _heights(svg: str) -> list[float]:
    return [float(h) for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"[^>]*class="bar"',
                                         svg)]


def test_stacked_bars_are_as_tall_as_their_counts() -> None:
    starts = [T0, T0 + timedelta(minutes=1)]
    svg = str(charts.stacked_bars(starts, ["a", "b"], [[2, 6], [4, 0]], {"a": "#111111", "b": "#222222"}, 60, "mix"))
    heights = _heights(svg)
    assert len(heights) == 3  # a zero count draws nothing
    assert abs(heights[1] / heights[0] - 3.0) < 0.05 and abs(heights[2] / heights[0] - 2.0) < 0.05


def test_a_line_chart_has_a_point_per_bucket_per_series() -> None:
    starts = [T0 + timedelta(minutes=i) for i in range(4)]
    svg = str(charts.line_chart(starts, [("served", "#000000", [1.0, 2.0, 0.5, 3.0], False),
                                         ("strongest", "#ff0000", [2.0, 4.0, 1.0, 6.0], True)], 60, "cost"))
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    assert [len(p.split()) for p in lines] == [4, 4]
    assert 'stroke-dasharray="6 4"' in svg


def test_names_are_escaped_in_every_chart() -> None:
    evil = '<script>alert("x")</script>'
    svgs = [charts.stacked_bars([T0], [evil], [[1]], {}, 60, evil),
            charts.hbars([(evil, 1.0, "#000000", evil)], money=False, label=evil), charts.legend({evil: "#000000"})]
    for svg in map(str, svgs):
        assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_mix_series_fill_quiet_buckets_with_zeros_and_skip_errors() -> None:
    base = int(T0.timestamp())

    def cell(bucket: int, backend: str, n: int, status: str = "ok", pool: str = "auto") -> TimeCell:
        return TimeCell(base + bucket, pool, backend, status, None, None, n, 0, 0, 0.0)

    series = mix_series([cell(0, "cheap", 3), cell(0, "strong", 1), cell(120, "strong", 2),
                         cell(60, "cheap", 5, status="error"), cell(0, "x", 1, pool="other")], 60, ["auto"])
    assert [s.pool for s in series] == ["auto", "other"]
    auto = series[0]
    assert auto.backends == ["cheap", "strong"]
    assert auto.counts == [[3, 1], [0, 0], [0, 2]]
    assert auto.starts[1] == T0 + timedelta(minutes=1)


def test_range_bars_reach_the_median_and_the_p95() -> None:
    svg = str(charts.range_bars([("a", 10.0, 40.0, "#000000", "x"), ("b", float("nan"), 20.0, "#111111", "y")], "l"))
    widths = [float(w) for w in re.findall(r'<rect x="150" y="[^"]+" width="([^"]+)" height="18" rx="4" fill=', svg)]
    assert len(widths) == 4  # per row: the p95 bar, then the p50 bar
    assert abs(widths[0] / widths[1] - 4.0) < 0.01 and widths[3] == 0.0 and widths[2] == widths[0] / 2
