"""Charts as inline SVG, drawn on the server: no chart library, nothing for the browser to fetch.

Every label is escaped here (backend and pool names come from the pool file and the log); the result is
``markupsafe.Markup`` so templates insert it as is. Colors are attributes, not ``style``, so the dashboard's
Content-Security-Policy needs no ``unsafe-inline``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

#: one color per backend, in pool file order (colorblind-friendly, after Okabe and Ito)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F7F7F")


def color_map(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _fmt(value: float, money: bool) -> str:
    if money:
        return f"${value:.4g}" if value < 1 else f"${value:,.2f}"
    return f"{value:,.0f}" if value == int(value) else f"{value:.3g}"


def _time_label(t: datetime, width_s: int) -> str:
    return t.strftime("%H:%M") if width_s < 86400 else t.strftime("%b %d")


def _frame(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
                  f'aria-label="{escape(label)}" preserveAspectRatio="xMidYMid meet">{"".join(body)}</svg>')


def _y_axis(body: list[str], left: int, top: int, plot_w: int, plot_h: int, ymax: float, money: bool) -> None:
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                    f'{escape(_fmt(ymax * i / 4, money))}</text>')


def _x_ticks(body: list[str], starts: Sequence[datetime], x_of: list[float], bottom: float, width_s: int) -> None:
    step = max(1, math.ceil(len(starts) / 6))
    for i in range(0, len(starts), step):
        body.append(f'<text x="{x_of[i]:.1f}" y="{bottom + 16:.1f}" text-anchor="middle" class="tick">'
                    f'{escape(_time_label(starts[i], width_s))}</text>')


def stacked_bars(starts: Sequence[datetime], names: Sequence[str], counts: Sequence[Sequence[int]],
                 colors: dict[str, str], width_s: int, label: str) -> Markup:
    """Requests per time bucket, one stacked segment per backend."""
    width, height, left, top, bottom_pad = 640, 220, 48, 12, 28
    plot_w, plot_h = width - left - 12, height - top - bottom_pad
    body: list[str] = []
    ymax = _nice_max(max((sum(row) for row in counts), default=0))
    _y_axis(body, left, top, plot_w, plot_h, ymax, money=False)
    slot = plot_w / max(1, len(starts))
    bar_w = min(56.0, max(1.0, slot * 0.78))
    xs = [left + slot * i + slot / 2 for i in range(len(starts))]
    for i, row in enumerate(counts):
        y = float(top + plot_h)
        for name, n in zip(names, row, strict=True):
            if not n:
                continue
            h = plot_h * n / ymax
            y -= h
            body.append(f'<rect x="{xs[i] - bar_w / 2:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                        f'fill="{colors.get(name, PALETTE[-1])}" class="bar"><title>{escape(name)}: {n} at '
                        f'{escape(_time_label(starts[i], width_s))}</title></rect>')
    _x_ticks(body, starts, xs, top + plot_h, width_s)
    return _frame(width, height, body, label)


def line_chart(starts: Sequence[datetime], series: Sequence[tuple[str, str, Sequence[float], bool]],
               width_s: int, label: str) -> Markup:
    """Lines over time; each series is (name, color, values, dashed). Money on the y axis."""
    width, height, left, top, bottom_pad = 640, 220, 56, 12, 28
    plot_w, plot_h = width - left - 12, height - top - bottom_pad
    body: list[str] = []
    ymax = _nice_max(max((v for _, _, values, _ in series for v in values), default=0.0))
    _y_axis(body, left, top, plot_w, plot_h, ymax, money=True)
    n = len(starts)
    xs = [left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2) for i in range(n)]
    for name, color, values, dashed in series:
        points = " ".join(f"{xs[i]:.1f},{top + plot_h - plot_h * v / ymax:.1f}" for i, v in enumerate(values))
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2.5"{dash} '
                    f'class="line"><title>{escape(name)}</title></polyline>')
        if n == 1:
            body.append(f'<circle cx="{xs[0]:.1f}" cy="{top + plot_h - plot_h * values[0] / ymax:.1f}" r="4" '
                        f'fill="{color}"/>')
    _x_ticks(body, starts, xs, top + plot_h, width_s)
    return _frame(width, height, body, label)


def hbars(rows: Sequence[tuple[str, float, str, str]], money: bool, label: str, scale: float | None = None) -> Markup:
    """Horizontal bars, one per row of (name, value, color, value text); ``scale`` is the full-width value."""
    row_h, left, width = 30, 150, 640
    height = row_h * max(1, len(rows)) + 8
    top_value = scale or _nice_max(max((v for _, v, _, _ in rows if math.isfinite(v)), default=0.0))
    body: list[str] = []
    plot_w = width - left - 110
    for i, (name, value, color, text) in enumerate(rows):
        y = 4 + i * row_h
        w = 0.0 if not math.isfinite(value) else plot_w * min(1.0, max(0.0, value) / top_value)
        body.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end" class="label">{escape(name[:22])}</text>')
        body.append(f'<rect x="{left}" y="{y + 5}" width="{plot_w}" height="18" rx="4" class="track"/>')
        body.append(f'<rect x="{left}" y="{y + 5}" width="{w:.1f}" height="18" rx="4" fill="{color}" class="bar">'
                    f'<title>{escape(name)}: {escape(text)}</title></rect>')
        body.append(f'<text x="{left + plot_w + 8}" y="{y + 19}" class="value">{escape(text)}</text>')
    return _frame(width, height, body, label)


def range_bars(rows: Sequence[tuple[str, float, float, str, str]], label: str) -> Markup:
    """One bar per row of (name, low, high, color, value text): solid to ``low`` (p50), lighter on to ``high``
    (p95), on a shared axis."""
    row_h, left, width = 30, 150, 640
    height = row_h * max(1, len(rows)) + 8
    finite = [v for _, lo, hi, _, _ in rows for v in (lo, hi) if math.isfinite(v)]
    top_value = _nice_max(max(finite, default=0.0))
    plot_w = width - left - 150
    body: list[str] = []
    for i, (name, low, high, color, text) in enumerate(rows):
        y = 4 + i * row_h
        w_lo, w_hi = (0.0 if not math.isfinite(v) else plot_w * min(1.0, max(0.0, v) / top_value) for v in (low, high))
        body.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end" class="label">{escape(name[:22])}</text>')
        body.append(f'<rect x="{left}" y="{y + 5}" width="{plot_w}" height="18" rx="4" class="track"/>')
        body.append(f'<rect x="{left}" y="{y + 5}" width="{w_hi:.1f}" height="18" rx="4" fill="{color}" '
                    f'fill-opacity="0.35" class="bar"/>')
        body.append(f'<rect x="{left}" y="{y + 5}" width="{w_lo:.1f}" height="18" rx="4" fill="{color}" class="bar">'
                    f'<title>{escape(name)}: {escape(text)}</title></rect>')
        body.append(f'<text x="{left + plot_w + 8}" y="{y + 19}" class="value">{escape(text)}</text>')
    return _frame(width, height, body, label)


def legend(colors: dict[str, str], dashed: Sequence[str] = ()) -> Markup:
    items = []
    for name, color in colors.items():
        kind = "swatch dashed" if name in dashed else "swatch"
        items.append(f'<li><svg class="{kind}" viewBox="0 0 14 14" width="14" height="14">'
                     f'<rect width="14" height="14" rx="3" fill="{color}"/></svg>{escape(name)}</li>')
    return Markup(f'<ul class="legend">{"".join(items)}</ul>')
