"""``poolgate report``: what routing did and saved, from the request log (gateway.loop.report).

Rich tables in the terminal; ``--html FILE`` writes a self-contained page with plots; ``--json`` prints the numbers
(the same JSON as ``GET /admin/report/routing``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.commands.routers import load_context, with_engine
from gateway.commands.train import parse_when_option

if TYPE_CHECKING:
    from rich.console import RenderableType

    from gateway.loop.report import GroupStats, LogReport


@click.command()
@click.option("--since", default="7d", show_default=True, help="window start: a duration before now or ISO time")
@click.option("--until", default=None, help="window end (default now)")
@click.option("--by", type=click.Choice(["pool", "key", "router", "backend", "day"]), default="pool",
              show_default=True, help="one row per group of this")
@click.option("--pool", default=None, help="only requests of this pool")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a self-contained HTML report with plots")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
@click.option("--pool-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pool YAML for prices [POOLGATE_POOL_FILE, else the demo pool]")
def report(since: str, until: str | None, by: str, pool: str | None, html_path: Path | None, as_json: bool,
           pool_file: Path | None) -> None:
    """Requests, tokens, cost, feedback, latency, TEP, savings vs always-strongest and shadow routers' costs."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from rich.console import Console

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.loop.report import report_json, routing_report
    from gateway.loop.report_html import write_html
    from gateway.store.db import redact
    from gateway.store.repository import LogRepository

    settings, pools, _ = load_context(pool_file)
    start, end = parse_when_option(since, "--since"), parse_when_option(until, "--until")
    rep = with_engine(settings, lambda engine: routing_report(LogRepository(engine), pools, by, start, end, pool))
    if as_json:
        click.echo(json.dumps(report_json(rep), indent=2))
    else:
        console = Console(width=max(Console().width, 160))
        for renderable in terminal_view(rep):
            console.print(renderable)
    if html_path is not None:
        extra = {"database": redact(settings.database_url), "requests": rep.total.requests, "pool": pool or "all"}
        click.echo(f"HTML report: {write_html(rep, html_path, extra).resolve()}", err=as_json)


#: short headers for the terminal, in the order of gateway.loop.report_html.COLUMNS
TERMINAL_COLUMNS = ("group", "req", "err", "tokens", "cost $", "cached (%$)", "reasoning (%$)", "$/1k req",
                    "feedback (n)", "p50 ms", "p95 ms", "p99 ms", "TEP tok", "TEP $", "saved*", "cheapest* $",
                    "strongest* $")


def terminal_view(rep: LogReport) -> list[RenderableType]:
    """Rich renderables: the groups with a total row, router versions, shadow routers, the assumptions."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from rich.table import Table

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.loop.report_html import shadow_cells, stat_cells

    out: list[RenderableType] = []
    window = f"{rep.since:%Y-%m-%d %H:%M} UTC" if rep.since else "the beginning"
    tables: list[tuple[str, list[GroupStats], GroupStats | None]] = [
        (f"requests since {window}, by {rep.by}", rep.groups, rep.total)
    ]
    if rep.by != "router":
        tables.append(("by router version", rep.routers, None))
    for title, groups, total in tables:
        table = Table(title=title, title_justify="left")
        for i, col in enumerate(TERMINAL_COLUMNS):
            table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for g in groups:
            table.add_row(*stat_cells(g))
        if total is not None:
            table.add_row(*stat_cells(total), style="bold")
        out.append(table)
    shadows = [row for g in [*rep.groups, rep.total] for row in shadow_cells(g)]
    if shadows:
        table = Table(title="shadow routers (would-be choices on the same requests)", title_justify="left")
        for col in ("group", "shadow", "n", "would-be $", "served $", "agreement", "quality (est.)"):
            table.add_column(col, justify="left" if col in ("group", "shadow") else "right")
        for row in shadows:
            table.add_row(*row)
        out.append(table)
    if rep.cache:
        table = Table(title="response cache (hits cost nothing upstream; saved = what the replayed answers cost)",
                      title_justify="left")
        for col in ("pool", "req", "exact hits", "semantic hits", "hit rate", "saved $", "spent $", "saved share"):
            table.add_column(col, justify="left" if col == "pool" else "right")
        for c in rep.cache:
            table.add_row(c.pool, str(c.requests), str(c.exact_hits), str(c.semantic_hits), _share(c.hit_rate),
                          f"{c.saved_usd:.6f}", f"{c.spent_usd:.6f}", _share(c.saved_share))
        out.append(table)
    out += estimate_tables(rep)
    notes = ["* saved = 1 - cost / always-strongest cost; cheapest* / strongest* = counterfactual always-cheapest / "
             "always-strongest cost (priced tokens, no interval; the off-policy table is the estimate to "
             "quote)", *rep.assumptions]
    out.append("\n".join(f"[dim]- {a}[/dim]" for a in notes))
    return out


def _share(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # NaN: nothing to divide by


def estimate_tables(rep: LogReport) -> list[RenderableType]:
    """The off-policy savings per pool and the judge-vs-user agreement (``gateway.loop.report_estimates``)."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from rich.table import Table

    from gateway.loop.report_html import ESTIMATE_COLUMNS, agreement_line, estimate_cells

    out: list[RenderableType] = []
    if rep.estimates:
        capped = " (newest events only: cap reached)" if rep.events_capped else ""
        table = Table(title=f"savings, OFF-POLICY ESTIMATES (doubly robust, 95% bootstrap intervals){capped}",
                      title_justify="left")
        for col in ESTIMATE_COLUMNS:
            table.add_column(col, justify="left" if col == "pool" else "right")
        for name, e in rep.estimates.items():
            table.add_row(*estimate_cells(name, e))
        out.append(table)
    out.append(agreement_line(rep))
    return out
