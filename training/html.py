"""A self-contained HTML page for an evaluation: tables, assumptions and inline SVG plots (no external URLs)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.evaluate import EvaluationResult
from training.metrics import non_decreasing_hull
from training.report import context_lines, metric_cells, table_headers
from training.sweep import front_series

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 420, 70, 190, 20, 50


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def svg_plot(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], x_label: str, y_label: str,
             hlines: Sequence[tuple[str, float]] = ()) -> str:
    """Line plot: one polyline with markers per (name, xs, ys) series (points drawn in x order)."""
    xs = [x for _, sx, _ in series for x in sx if math.isfinite(x)]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)] + [y for _, y in hlines]
    if not xs or not ys:
        return "<p>(nothing to plot)</p>"
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5 * (abs(x0) or 1), x1 + 0.5 * (abs(x1) or 1)
    pad = 0.05 * ((y1 - y0) or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{PAD_T + ph}" x2="{px(t):.1f}" y2="{PAD_T + ph + 4}" stroke="#999"/>'
                   f'<text x="{px(t):.1f}" y="{PAD_T + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{PAD_L}" y1="{py(t):.1f}" x2="{PAD_L + pw}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{PAD_L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{PAD_L + pw / 2}" y="{H - 10}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text x="14" y="{PAD_T + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {PAD_T + ph / 2})">{html.escape(y_label)}</text>')
    for label, y in hlines:
        out.append(f'<line x1="{PAD_L}" y1="{py(y):.1f}" x2="{PAD_L + pw}" y2="{py(y):.1f}" stroke="#555" '
                   f'stroke-dasharray="4 3"/><text x="{PAD_L + pw - 4}" y="{py(y) - 4:.1f}" text-anchor="end" '
                   f'fill="#555">{html.escape(label)}</text>')
    for i, (name, sx, sy) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted((x, y) for x, y in zip(sx, sy, strict=True) if math.isfinite(x) and math.isfinite(y))
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        ly = PAD_T + 14 + 16 * i
        out.append(f'<rect x="{W - PAD_R + 12}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{W - PAD_R + 28}" y="{ly + 1}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table_html(result: EvaluationResult) -> str:
    head = table_headers(result)
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in result.routers:
        if r.error:
            rows.append(f"<tr><td>{html.escape(r.name)}</td><td colspan='{len(head) - 1}'>error: "
                        f"{html.escape(r.error)}</td></tr>")
        else:
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in metric_cells(result, r)) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def render_html(result: EvaluationResult) -> str:
    """The whole page as one string."""
    ok = [r for r in result.routers if not r.error]
    sweep = [(r.name, [1000 * p.cost_usd for p in r.points], [p.quality for p in r.points]) for r in ok]
    hulls = []
    for name, xs, ys in sweep:
        hx, hy = non_decreasing_hull(np.asarray(xs), np.asarray(ys))
        hulls.append((name, list(hx), list(hy)))
    singles = [(f"always {m}", v["quality"]) for m, v in result.reference["per_model"].items()]
    parts = [f"<h1>poolgate evaluate: {html.escape(result.dataset)}</h1>", _table_html(result),
             "<h2>Quality vs cost (sweep of the objective's lambda, quality per USD)</h2>",
             svg_plot(sweep, "mean cost, USD per 1,000 queries", "mean quality", singles),
             "<h2>Non-decreasing convex hulls (what AIQ integrates)</h2>",
             svg_plot(hulls, "mean cost, USD per 1,000 queries", "mean quality", singles)]
    curves = [(r.name, [100 * x for x in r.threshold_curve["strong_fraction"]], r.threshold_curve["quality"])
              for r in ok if r.threshold_curve]
    if curves:
        parts += ["<h2>RouteLLM threshold sweep (what APGR and CPT read)</h2>",
                  svg_plot(curves, "strong model calls (%)", "mean quality", singles)]
    fronts = front_series(result)
    if fronts:
        parts += ["<h2>Pareto fronts across flag weights (cost, size, verbosity; --sweep)</h2>",
                  svg_plot(fronts, "mean cost, USD per 1,000 queries", "mean quality", singles)]
    parts += ["<h2>Setup, references and assumptions</h2>",
              "<pre>" + html.escape("\n".join(context_lines(result))) + "</pre>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>poolgate evaluate "
            f"{html.escape(result.dataset)}</title><style>{style}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_html(result: EvaluationResult, path: Path) -> Path:
    """Write :func:`render_html` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
