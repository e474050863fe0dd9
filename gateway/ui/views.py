"""The dashboard's charts from its numbers (``gateway.ui.data.Dashboard`` -> inline SVG)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup

from gateway.ui import charts
from gateway.ui.data import Dashboard
from gateway.ui.render import money, ms, pct

SERVED, CHEAPEST, STRONGEST = "#2563EB", "#16A34A", "#DC2626"


@dataclass(frozen=True)
class Charts:
    cost: Markup | None
    cost_legend: Markup
    mix: list[tuple[str, Markup, Markup]]  # (pool, chart, legend)
    latency: Markup | None
    budgets: Markup | None
    shadows: list[tuple[str, Markup]]  # (pool, chart)


def _cost_chart(d: Dashboard) -> Markup | None:
    timeline = d.report.timeline
    if not timeline:
        return None
    if len(timeline) == 1:  # one time bucket: no line to draw, so the three totals side by side
        b = timeline[0]
        rows = [("served (logged)", b["cost_usd"], SERVED, money(b["cost_usd"])),
                ("always-strongest", b["strongest_cost_usd"], STRONGEST, f"{money(b['strongest_cost_usd'])} est."),
                ("always-cheapest", b["cheapest_cost_usd"], CHEAPEST, f"{money(b['cheapest_cost_usd'])} est.")]
        return charts.hbars(rows, money=True, label="cost in this window")
    starts: list[datetime] = [b["start"] for b in timeline]
    series = [("served (logged)", SERVED, [b["cost_usd"] for b in timeline], False),
              ("always-strongest (estimate)", STRONGEST, [b["strongest_cost_usd"] for b in timeline], True),
              ("always-cheapest (estimate)", CHEAPEST, [b["cheapest_cost_usd"] for b in timeline], True)]
    return charts.line_chart(starts, series, d.report.bucket_seconds, "cost over time")


def _latency_chart(d: Dashboard, colors: dict[str, str]) -> Markup | None:
    rows = [(b.name, b.stats.latency_p50, b.stats.latency_p95, colors.get(b.name, charts.PALETTE[-1]),
             f"p50 {ms(b.stats.latency_p50)} · p95 {ms(b.stats.latency_p95)}") for b in d.backends if b.stats.requests]
    return charts.range_bars(rows, "latency per backend: p50 solid, p95 light") if rows else None


def _budget_chart(d: Dashboard) -> Markup | None:
    rows = []
    for k in d.keys:
        if k.budget_usd is None or k.revoked:
            continue
        spent = k.spent_usd if k.spent_usd is not None else k.logged_cost_usd
        share = spent / k.budget_usd if k.budget_usd > 0 else 1.0
        color = "#DC2626" if share >= 0.9 else "#D97706" if share >= 0.6 else "#16A34A"
        rows.append((k.name, share, color, f"{money(spent)} of {money(k.budget_usd)} ({pct(share, 0)})"))
    return charts.hbars(rows, money=True, label="spend against budget", scale=1.0) if rows else None


def _shadow_charts(d: Dashboard) -> list[tuple[str, Markup]]:
    out = []
    for pool in dict.fromkeys(s.pool for s in d.shadows):
        rows = []
        shadows = [s for s in d.shadows if s.pool == pool]
        served = max((s.stats.served_cost_usd for s in shadows), default=0.0)
        rows.append(("served", served, SERVED, money(served)))
        for i, s in enumerate(shadows):
            color = charts.PALETTE[(i + 2) % len(charts.PALETTE)]
            rows.append((s.name, s.stats.cost_usd, color, f"{money(s.stats.cost_usd)} est."))
        out.append((pool, charts.hbars(rows, money=True, label=f"shadow routers of {pool}")))
    return out


def build_charts(d: Dashboard) -> Charts:
    colors = charts.color_map([b.name for b in d.backends])
    mix = []
    for m in d.mix:
        pool_colors = {b: colors.get(b, charts.PALETTE[-1]) for b in m.backends}
        mix.append((m.pool, charts.stacked_bars(m.starts, m.backends, m.counts, pool_colors, d.bucket_seconds,
                                                f"routing mix of {m.pool}"), charts.legend(pool_colors)))
    cost_legend = charts.legend({"served (logged)": SERVED, "always-strongest (estimate)": STRONGEST,
                                 "always-cheapest (estimate)": CHEAPEST},
                                dashed=("always-strongest (estimate)", "always-cheapest (estimate)"))
    return Charts(_cost_chart(d), cost_legend, mix, _latency_chart(d, colors), _budget_chart(d), _shadow_charts(d))
