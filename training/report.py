"""Terminal table and JSON for an :class:`~training.evaluate.EvaluationResult`; HTML is in :mod:`training.html`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from training.evaluate import OPERATING_POINT, EvaluationResult, RouterResult

#: metric key -> (column header, formatter); formulas are in training/metrics.py
METRIC_NOTES: dict[str, str] = {
    "quality": f"mean true quality of the chosen model at the {OPERATING_POINT} operating point (cost weight 0)",
    "best%": "Tryage's routing accuracy: share of queries whose chosen model is the best available (ties count)",
    "cost": "mean USD per query of those choices, shown per 1,000 queries",
    "aiq": "RouterBench AIQ: mean height of the non-decreasing convex hull of the cost-weight sweep over "
    "[cheapest possible, dearest possible] mean cost",
    "savings": "1 - (cost at which the router's hull reaches the best single model's quality) / its cost",
    "q@ref$": "quality of the router's hull at the best single model's cost",
    "tep": "EllieSQL TEP: (dQ/Q_ref)/(dT/T_ref) against always-cheapest, in tokens and in USD",
    "apgr": "RouteLLM APGR over a 10-quantile threshold sweep of the strong-minus-weak predicted quality",
    "cpt": "RouteLLM CPT(x%): strong-model call share needed to recover x% of the weak-to-strong quality gap",
}


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}%"


def table_headers(result: EvaluationResult) -> list[str]:
    """Column headers of the results table (APGR/CPT only for two-model pools)."""
    head = ["router", "quality", "best%", "$/1k q", "tokens/q", "AIQ", "savings", "Q@ref$", "TEP tok", "TEP $"]
    return head + (["APGR", "CPT50", "CPT80"] if "pair" in result.reference else [])


def metric_cells(result: EvaluationResult, r: RouterResult) -> list[str]:
    """One router's formatted row under :func:`table_headers` (router name first)."""
    m = r.metrics
    cells = [r.name, fmt_num(m["quality"]), fmt_pct(m.get("best_choice_rate")), fmt_num(1000 * m["cost_usd"], 4),
             fmt_num(m["tokens"], 1),
             fmt_num(m["aiq"]), fmt_pct(m["savings_vs_best_single"]), fmt_num(m["quality_at_ref_cost"]),
             fmt_num(m["tep_tokens"], 2), fmt_num(m["tep_usd"], 2)]
    if "pair" in result.reference:
        cells += [fmt_num(m.get("apgr")), fmt_pct(m.get("cpt50")), fmt_pct(m.get("cpt80"))]
    return cells


def results_table(result: EvaluationResult) -> Table:
    """One row per router; the main columns describe the quality-first operating point."""
    table = Table(title=f"poolgate evaluate: {result.dataset} ({result.n_evaluated} test queries of "
                  f"{result.n_queries})", title_justify="left")
    headers = [*table_headers(result), "fit s"]
    for h in headers:
        table.add_column(h, justify="left" if h == "router" else "right")
    for r in result.routers:
        if r.error:
            table.add_row(r.name, Text(f"error: {r.error}", style="red"), *[""] * (len(headers) - 2))
        else:
            table.add_row(*metric_cells(result, r), fmt_num(r.fit_seconds, 2))
    return table


def context_lines(result: EvaluationResult) -> list[str]:
    """The split, the references, per-model outcomes and every stated price/cost assumption."""
    ref = result.reference
    lines = [f"split: {result.split}",
             f"featurizer: {result.embedding.get('encoder', 'minilm')} encoder, {result.featurize_seconds:.2f} s "
             f"(embeddings cached {result.embedding.get('hits', 0)}, "
             f"encoded {result.embedding.get('encoded', 0)} in {result.embedding.get('encode_seconds', 0.0):.2f} s)"]
    for key in ("best_single", "cheapest"):
        r = ref[key]
        lines.append(f"reference {key}: {', '.join(r['models'])}: quality {fmt_num(r['quality'])}, "
                     f"${1000 * r['cost_usd']:.4f}/1k q, {r['tokens']:.1f} tokens/q")
    if "pair" in ref:
        lines.append(f"APGR pair: strong = {ref['pair']['strong']}, weak = {ref['pair']['weak']}")
    lo, hi = ref["aiq_cost_range"]
    lines.append(f"AIQ cost range: ${1000 * lo:.4f} .. ${1000 * hi:.4f} per 1k queries")
    for name, pm in ref["per_model"].items():
        lines.append(f"  model {name}: quality {fmt_num(pm['quality'])}, ${1000 * pm['cost_usd']:.4f}/1k q")
    lines.append("assumptions:")
    lines += [f"  {k}: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
              for k, v in result.assumptions.items()]
    lines.append("metrics:")
    lines += [f"  {k}: {v}" for k, v in METRIC_NOTES.items()]
    return lines


def print_report(result: EvaluationResult, console: Console | None = None) -> None:
    """The table, then the context lines, on ``console`` (default: stdout)."""
    # a pipe or a file gets a wide table rather than rich's 80-column default
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(Group(results_table(result), Text("\n".join(context_lines(result)))))


def write_json(result: EvaluationResult, path: Path) -> Path:
    """Write ``result.to_dict()`` (``nan`` as ``null``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path
