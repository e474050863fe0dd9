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

#: metric key -> (column header, formatter); formulas are in training/metrics.py and training/results.py
METRIC_NOTES: dict[str, str] = {
    "quality": f"mean true quality of the chosen model at the {OPERATING_POINT} operating point (lambda 0), "
    "with its bootstrap 95 % interval over queries",
    "d best": "paired difference of that quality to always-best-single (the best model of each fold's training "
    "rows) and its paired bootstrap 95 % interval: above 0 means the router beats best-single",
    "best%": "Tryage's routing accuracy: share of queries whose chosen model is the best available (ties count)",
    "cost": "mean USD per query of the quality-first choices, shown per 1,000 queries",
    "bal Q%/$%": "balanced preset (quality_target 0.97): quality and cost as % of always-best-single's",
    "cf Q%/$%": "cost-first preset (quality_target 0.90): quality and cost as % of always-best-single's",
    "tok-1pt": "tokens saved against always-best-single by the router's best operating point that loses at most "
    "one point (0.01) of quality (EllieSQL's question)",
    "aiq": "RouterBench AIQ: mean height of the non-decreasing convex hull of the lambda sweep over "
    "[cheapest possible, dearest possible] mean cost",
    "savings": "1 - (cost at which the router's hull reaches the best single model's quality) / its cost",
    "ece": "expected calibration error of the chosen model's predicted vs realized quality (10 bins)",
    "tep": "EllieSQL TEP of the balanced choices: (dQ/Q_ref)/(dT/T_ref), dQ = Q - Q_ref, dT = T - T_ref, "
    "against always-cheapest (T in tokens)",
    "apgr": "RouteLLM APGR over a 10-quantile threshold sweep of the strong-minus-weak predicted quality "
    "(with its bootstrap 95 % interval)",
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


def fmt_ci(values: list[float] | None, digits: int = 3, signed: bool = False) -> str:
    """``0.612 [0.601, 0.623]``."""
    if not values or any(v is None for v in values):
        return "-"
    sign = "+" if signed else ""
    v, lo, hi = values
    return f"{v:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def table_headers(result: EvaluationResult) -> list[str]:
    """Column headers of the results table (APGR/CPT only for two-model pools)."""
    head = ["router", "quality [95% CI]", "d best-single [95% CI]", "best%", "$/1k q", "bal Q%/$%", "cf Q%/$%",
            "tok-1pt", "AIQ", "savings", "ECE", "TEP tok"]
    return head + (["APGR [95% CI]", "CPT50", "CPT80"] if "pair" in result.reference else [])


def _ratio(m: dict[str, float], key: str) -> str:
    q, c = m.get(f"{key}_quality_ratio"), m.get(f"{key}_cost_ratio")
    return f"{fmt_pct(q)}/{fmt_pct(c)}"


def metric_cells(result: EvaluationResult, r: RouterResult) -> list[str]:
    """One router's formatted row under :func:`table_headers` (router name first)."""
    m, ci = r.metrics, r.intervals
    cells = [r.name, fmt_ci(ci.get("quality_first_quality")), fmt_ci(ci.get("quality_first_diff_vs_best_single"),
                                                                       signed=True),
             fmt_pct(m.get("best_choice_rate")), fmt_num(1000 * m["cost_usd"], 4), _ratio(m, "balanced"),
             _ratio(m, "cost_first"), fmt_pct(m.get("tokens_saved_within_1pt")), fmt_num(m["aiq"]),
             fmt_pct(m["savings_vs_best_single"]), fmt_num(m.get("ece_chosen")), fmt_num(m["tep_tokens"], 2)]
    if "pair" in result.reference:
        cells += [fmt_ci(ci.get("apgr")), fmt_pct(m.get("cpt50")), fmt_pct(m.get("cpt80"))]
    return cells


def results_table(result: EvaluationResult) -> Table:
    """One row per router; the main columns describe the quality-first operating point."""
    table = Table(title=f"poolgate evaluate: {result.dataset}, protocol {result.protocol} ({result.n_evaluated} "
                  f"test queries of {result.n_queries})", title_justify="left")
    headers = [*table_headers(result), "fit s"]
    for h in headers:
        table.add_column(h, justify="left" if h == "router" else "right")
    for r in result.routers:
        if r.error:
            table.add_row(Text(r.name), Text(f"error: {r.error}", style="red"), *[""] * (len(headers) - 2))
        else:
            name, *cells = metric_cells(result, r)
            table.add_row(Text(name), *cells, fmt_num(r.fit_seconds, 1))  # Text: a "knn[k=5]" name is not markup
    return table


def per_task_table(result: EvaluationResult) -> Table | None:
    """Quality-first quality per task: best-single, then each router (its difference to best-single)."""
    shown = [r for r in result.routers if not r.error and r.per_task and r.name != "best-single"]
    if not shown:
        return None
    table = Table(title="per task: quality-first quality (difference to best-single)", title_justify="left")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("best-single", justify="right")
    for r in shown:
        table.add_column(Text(r.name), justify="right")
    for task, row in shown[0].per_task.items():
        cells = [task, f"{int(row['n'])}", fmt_num(row["best_single"])]
        cells += [f"{r.per_task[task]['quality']:.3f} ({r.per_task[task]['quality'] - row['best_single']:+.3f})"
                  for r in shown]
        table.add_row(*cells)
    return table


BASELINE_NAMES = frozenset({"random", "best-single", "oracle", "cheapest", "strongest"})


def best_learned(result: EvaluationResult) -> RouterResult | None:
    """The learned router this protocol ranks first: highest lower bound of its paired quality-first difference to
    best-single (the choice a pool's default router should come from: an honest protocol, not in-sample CV)."""
    learned = [r for r in result.routers if not r.error and r.name not in BASELINE_NAMES]
    return max(learned, key=lambda r: r.intervals["quality_first_diff_vs_best_single"][1], default=None)


def context_lines(result: EvaluationResult) -> list[str]:
    """The split, the references, per-model outcomes and every stated price/cost assumption."""
    ref = result.reference
    lines = [f"protocol: {result.protocol}: {result.split}; routers calibrated on inner folds "
             f"(mode {result.calibration!r}) of each outer fold's training rows only",
             f"featurizer: {result.embedding.get('encoder', 'minilm')} encoder, {result.featurize_seconds:.2f} s "
             f"(embeddings cached {result.embedding.get('hits', 0)}, "
             f"encoded {result.embedding.get('encoded', 0)} in {result.embedding.get('encode_seconds', 0.0):.2f} s)"]
    for key in ("best_single", "cheapest"):
        r = ref[key]
        lines.append(f"reference {key}: {', '.join(r['models'])}: quality {fmt_num(r['quality'])}, "
                     f"${1000 * r['cost_usd']:.4f}/1k q, {r['tokens']:.1f} tokens/q")
    if "pair" in ref:
        lines.append(f"APGR pair: strong = {ref['pair']['strong']}, weak = {ref['pair']['weak']}")
    top = best_learned(result)
    if top is not None:
        d, lo_d, hi_d = top.intervals["quality_first_diff_vs_best_single"]
        verdict = "beats" if lo_d > 0 else ("loses to" if hi_d < 0 else "does not separate from")
        lines.append(f"best learned router by this protocol: {top.name} ({verdict} best-single: {d:+.3f} "
                     f"[{lo_d:+.3f}, {hi_d:+.3f}])")
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


def print_report(result: EvaluationResult, console: Console | None = None, per_task: bool | None = None) -> None:
    """The table, the per-task table (``per_task``; default: when there are at most 20 tasks), then the context
    lines, on ``console`` (default: stdout)."""
    # a pipe or a file gets a wide table rather than rich's 80-column default
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    parts: list[Any] = [results_table(result)]
    tasks = per_task_table(result)
    n_tasks = len(tasks.rows) if tasks is not None else 0
    if tasks is not None and (per_task or (per_task is None and n_tasks <= 20)):
        parts.append(tasks)
    parts.append(Text("\n".join(context_lines(result))))
    console.print(Group(*parts))


def write_json(result: EvaluationResult, path: Path) -> Path:
    """Write ``result.to_dict()`` (``nan`` as ``null``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path
