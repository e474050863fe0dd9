"""The log report as one self-contained HTML page: tables and inline SVG plots (no scripts, no external URLs).

Plots (drawn with :func:`training.html.svg_plot`): cost over time (served vs the always-cheapest and
always-strongest counterfactuals), the model mix over time (share of requests per backend), and quality vs cost
per router version with the estimated reference policies and shadow routers beside them. The model mix per
router is also a table of CSS bars.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from gateway.loop.report import GroupStats, LogReport
from gateway.loop.report_estimates import PoolEstimate
from training.html import PALETTE, svg_plot
from training.report import fmt_num, fmt_pct

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1150px;color:#222}table{border-collapse:collapse;"
    "margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,"
    "th:first-child{text-align:left}th{background:#f0f0f0}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}"
    ".bar{display:flex;width:420px;height:16px;border:1px solid #999}.bar span{display:block;height:100%}"
    ".tot td{font-weight:bold}"
)

COLUMNS = ("group", "requests", "err %", "tokens", "cost $", "cached tok (% of $)", "reasoning tok (% of $)",
           "$/1k req", "feedback (n)", "p50 ms", "p95 ms",
           "p99 ms", "TEP tok", "TEP $", "saved vs strongest", "always-cheapest $", "always-strongest $")


def _part(tokens: int, cost: float, of: float, written: int = 0) -> str:
    """``"1,200 (9.5%)"``: tokens of one kind and their share of the cost; cache writes as ``+N written``."""
    share = fmt_pct(cost / of) if of > 0 else "-"
    return f"{tokens:,}" + (f" +{written:,} written" if written else "") + f" ({share})"


def stat_cells(g: GroupStats) -> list[str]:
    """One group's formatted cells under :data:`COLUMNS` (the terminal table uses them too)."""
    per_1k = 1000 * g.cost_usd / g.requests if g.requests else math.nan
    feedback = f"{fmt_num(g.mean_feedback)} ({g.labelled})"
    return [g.key, str(g.requests), fmt_pct(g.error_rate), f"{g.prompt_tokens + g.completion_tokens:,}",
            fmt_num(g.cost_usd, 6),
            _part(g.cached_tokens, g.cached_cost_usd + g.cache_write_cost_usd, g.cost_usd, g.cache_write_tokens),
            _part(g.reasoning_tokens, g.reasoning_cost_usd, g.cost_usd), fmt_num(per_1k, 4), feedback,
            fmt_num(g.latency_p50, 1),
            fmt_num(g.latency_p95, 1), fmt_num(g.latency_p99, 1), fmt_num(g.tep_tokens, 2), fmt_num(g.tep_usd, 2),
            fmt_pct(g.savings_vs_strongest),
            fmt_num(g.cheapest_cost_usd if g.eligible else math.nan, 6),
            fmt_num(g.strongest_cost_usd if g.eligible else math.nan, 6)]


#: the off-policy savings table's columns (terminal and HTML)
ESTIMATE_COLUMNS = ("pool", "events", "labelled", "served $/1k", "served quality", "saved vs strongest",
                    "strongest $/1k (ESS)", "strongest quality (ESS)", "extra vs cheapest $/1k",
                    "cheapest quality (ESS)")


def _iv(d: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
    if d is None or d.get("value") is None or d["value"] != d["value"]:
        return "-"
    return (f"{format(scale * d['value'], spec)} [{format(scale * d['low'], spec)}, "
            f"{format(scale * d['high'], spec)}]")


def estimate_cells(name: str, e: PoolEstimate) -> list[str]:
    """Pool (or ``total``) ``name``'s off-policy savings under :data:`ESTIMATE_COLUMNS` (DR value [95% interval],
    ESS)."""
    strong, cheap = e.references["always-strongest"], e.references["always-cheapest"]

    def quality(q: dict[str, Any] | None) -> str:
        return "-" if not q else f"{_iv(q['dr'], '.3f')} ({q['ess']:.0f})"

    return [name, str(e.events), str(e.labelled), f"{1000 * e.served_cost_usd:.4f}",
            fmt_num(e.served_quality, 3), _iv(e.savings_vs_strongest, ".1%"),
            f"{_iv(strong.cost_usd['dr'], '.4f', 1000)} ({strong.cost_usd['ess']:.0f})", quality(strong.quality),
            _iv(e.extra_vs_cheapest_usd, ".4f", 1000), quality(cheap.quality)]


def agreement_line(report: LogReport) -> str:
    a = report.judge_agreement
    if not a.n:
        return "judge vs user: no request in the window has both labels"
    return (f"judge vs user on {a.n} requests labelled by both: mean |difference| {fmt_num(a.mean_abs_diff, 3)}, "
            f"agreement at 0.5 {fmt_pct(a.agreement)}, Cohen's kappa {fmt_num(a.kappa, 3)}, "
            f"correlation {fmt_num(a.correlation, 3)}")


def shadow_cells(g: GroupStats) -> list[list[str]]:
    """Rows (group, shadow, n, would-be $, served $, agreement, est. quality) of every shadow in ``g``."""
    return [[g.key, name, str(s.n), fmt_num(s.cost_usd, 6), fmt_num(s.served_cost_usd, 6), fmt_pct(s.agreement),
             fmt_num(s.quality_est)] for name, s in g.shadows.items()]


def _table(head: tuple[str, ...] | list[str], rows: list[list[str]], total: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    if total is not None:
        out.append("<tr class='tot'>" + "".join(f"<td>{html.escape(c)}</td>" for c in total) + "</tr>")
    return "\n".join(out) + "</table>"


def _time_axis(report: LogReport) -> str:
    first = report.timeline[0]["start"].strftime("%Y-%m-%d %H:%M:%S") if report.timeline else ""
    return f"{report.time_unit} since {first} UTC ({report.bucket_seconds} s buckets)"


def _cost_plot(report: LogReport) -> str:
    xs = [b["x"] for b in report.timeline]
    series = [(name, xs, [1000 * b[key] for b in report.timeline]) for name, key in
              (("served", "cost_usd"), ("always-cheapest", "cheapest_cost_usd"),
               ("always-strongest", "strongest_cost_usd"))]
    return svg_plot(series, _time_axis(report), "cost per bucket, USD x 1000")


def _mix_plot(report: LogReport) -> str:
    backends = sorted({b for t in report.timeline for b in t["backends"]})
    xs = [t["x"] for t in report.timeline]
    series = []
    for b in backends:
        shares = [100 * t["backends"].get(b, 0) / sum(t["backends"].values()) if t["backends"] else math.nan
                  for t in report.timeline]  # a quiet bucket has no mix: no point
        series.append((b, xs, shares))
    return svg_plot(series, _time_axis(report), "share of answered requests (%)")


def _quality_cost_plot(report: LogReport) -> str:
    series: list[tuple[str, list[float], list[float]]] = []
    for g in report.routers:
        if g.requests and math.isfinite(g.mean_feedback):
            series.append((g.key, [1000 * g.cost_usd / g.requests], [g.mean_feedback]))
    t = report.total
    if t.eligible:
        series.append(("always-cheapest (est.)", [1000 * t.cheapest_cost_usd / t.eligible], [t.cheapest_quality_est]))
        series.append(("always-strongest (est.)", [1000 * t.strongest_cost_usd / t.eligible],
                       [t.strongest_quality_est]))
    for name, s in t.shadows.items():
        if s.n:
            series.append((f"shadow {name} (est.)", [1000 * s.cost_usd / s.n], [s.quality_est]))
    return svg_plot(series, "mean cost per request, USD x 1000", "mean feedback (quality)")


def _mix_bars(mix: dict[str, dict[str, int]]) -> str:
    backends = sorted({b for m in mix.values() for b in m})
    color = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backends)}
    rows = []
    for router, counts in sorted(mix.items()):
        total = sum(counts.values()) or 1
        spans = "".join(
            f"<span style='width:{100 * counts.get(b, 0) / total:.2f}%;background:{color[b]}' "
            f"title='{html.escape(b)}: {counts.get(b, 0)}'></span>" for b in backends)
        text = ", ".join(f"{b} {100 * counts.get(b, 0) / total:.0f}%" for b in backends)
        rows.append(f"<tr><td>{html.escape(router)}</td><td><div class='bar'>{spans}</div></td>"
                    f"<td>{html.escape(text)}</td></tr>")
    return "<table><tr><th>router</th><th>model mix</th><th>share</th></tr>" + "\n".join(rows) + "</table>"


def _window(report: LogReport) -> str:
    since = report.since.isoformat(timespec="seconds") if report.since else "the beginning"
    until = report.until.isoformat(timespec="seconds") if report.until else "now"
    return f"{since} to {until}"


def render_html(report: LogReport, extra: dict[str, Any] | None = None) -> str:
    """The whole page as one string (``extra``: key/value lines shown under the title, e.g. the database)."""
    meta = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in (extra or {}).items())
    shadows = [row for g in [*report.groups, report.total] for row in shadow_cells(g)]
    parts = [
        f"<h1>poolgate report</h1><p>Requests from {html.escape(_window(report))}, by {report.by}.</p><ul>{meta}</ul>",
        _table(COLUMNS, [stat_cells(g) for g in report.groups], stat_cells(report.total)),
        "<h2>Cost over time</h2>", _cost_plot(report),
        "<h2>Model mix</h2>", _mix_bars(report.mix), _mix_plot(report),
        "<h2>Quality vs cost per router</h2>", _quality_cost_plot(report),
    ]
    if report.by != "router":
        parts += ["<h2>Router versions</h2>", _table(COLUMNS, [stat_cells(g) for g in report.routers])]
    if shadows:
        parts += ["<h2>Shadow routers (would-be choices on the same requests)</h2>",
                  _table(["group", "shadow", "n", "would-be $", "served $", "agreement", "quality (est.)"], shadows)]
    if report.estimates:
        capped = " (newest events only: cap reached)" if report.events_capped else ""
        parts += [f"<h2>Savings: OFF-POLICY ESTIMATES (doubly robust, 95% bootstrap intervals){capped}</h2>",
                  _table(ESTIMATE_COLUMNS, [estimate_cells(k, e) for k, e in report.estimates.items()])]
    parts += [f"<p>{html.escape(agreement_line(report))}</p>"]
    quality = "\n".join(f"{k}: mean feedback {fmt_num(v['mean_feedback'])} over {v['labelled']} labelled requests"
                        for k, v in sorted(report.quality_by_backend.items()))
    parts += ["<h2>Estimates and assumptions</h2>",
              "<pre>" + html.escape("\n".join(f"- {a}" for a in report.assumptions) + "\n\n" + quality) + "</pre>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>poolgate report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_html(report: LogReport, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, extra), encoding="utf-8")
    return path
