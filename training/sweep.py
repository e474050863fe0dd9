"""``poolgate evaluate --sweep``: each router's quality-vs-cost Pareto front across user flag weights.

Tryage (Hari & Thomson, 2023) lets each user move along the Pareto front with flags. The sweep replays the
same fitted predictions under a grid of flag settings — the cost weight alone and combined with the size and
verbosity weights (quality weight 1) — so the front shows every operating point a user's flags can reach
with that router. A point is on the front when no other point of the same router is at most as dear and
at least as good with one of the two strictly better (true mean cost per query and true mean quality of
the chosen models on the test queries). The main metrics (AIQ, TEP, ...) are computed from the harness's
own cost-weight sweep and do not change with ``--sweep``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from routers.dataset import RoutingDataset
from routers.objective import Flags
from training.evaluate import EvaluationResult
from training.results import RouterResult, SweepPoint

#: lambda in units of 1 / (mean cost of the data's best single model per query); size per billion parameters;
#: verbosity per 1,000 expected output tokens (routers/objective.py)
SWEEP_COST: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0)
SWEEP_SIZE: tuple[float, ...] = (0.0, 0.0005, 0.002)
SWEEP_VERBOSITY: tuple[float, ...] = (0.0, 0.05, 0.2)


def flag_label(flags: Flags, c_ref: float = 1.0) -> str:
    """``cost=0.5/c,size=0.002``: the non-default weights of a sweep point (lambda in units of 1 / c_ref)."""
    parts = [f"cost={(flags.cost or 0.0) * c_ref:g}/c"] if flags.cost else []
    parts += [f"{k}={getattr(flags, k):g}" for k in ("size", "verbosity", "recency", "latency") if getattr(flags, k)]
    return ",".join(parts) or "cost=0"


def sweep_grid(
    dataset: RoutingDataset | None = None, cost: Sequence[float] = SWEEP_COST, size: Sequence[float] = SWEEP_SIZE,
    verbosity: Sequence[float] = SWEEP_VERBOSITY,
) -> list[tuple[str, Flags]]:
    """(label, flags) for every combination of the weights (quality weight 1); lambda is ``cost / c`` with ``c``
    the mean cost per query of ``dataset``'s best single model (1 USD without a data set)."""
    c_ref = 1.0
    if dataset is not None and len(dataset):
        c_ref = float(dataset.cost_usd[:, int(np.argmax(dataset.quality.mean(axis=0)))].mean()) or 1.0
    grid = []
    for c, s, v in itertools.product(cost, size, verbosity):
        flags = Flags(quality=1.0, cost=float(c) / c_ref, size=float(s), verbosity=float(v))
        grid.append((flag_label(flags, c_ref), flags))
    return grid


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The non-dominated points (min cost, max quality), cheapest first; of equal points the first is kept."""
    finite = [p for p in points if np.isfinite(p.cost_usd) and np.isfinite(p.quality)]
    ordered = sorted(finite, key=lambda p: (p.cost_usd, -p.quality))
    front: list[SweepPoint] = []
    for p in ordered:
        if not front or p.quality > front[-1].quality + 1e-12:
            front.append(p)
    return front


def fronts(result: EvaluationResult) -> dict[str, list[SweepPoint]]:
    """Router name -> its Pareto front over the ``--sweep`` points (routers without sweep points omitted)."""
    return {r.name: pareto_front(r.sweep) for r in result.routers if not r.error and r.sweep}


def front_series(result: EvaluationResult) -> list[tuple[str, list[float], list[float]]]:
    """Plot series (name, USD per 1,000 queries, quality) of every router's front."""
    return [(name, [1000 * p.cost_usd for p in pts], [p.quality for p in pts]) for name, pts in fronts(result).items()]


def sweep_table(result: EvaluationResult) -> Table:
    """One row per front point: router, flags, quality, cost per 1k queries, tokens per query."""
    n_points = max((len(r.sweep) for r in result.routers), default=0)
    table = Table(title=f"Pareto fronts over {n_points} flag settings (--sweep, quality weight 1)",
                  title_justify="left")
    for h in ("router", "flags", "quality", "$/1k q", "tokens/q"):
        table.add_column(h, justify="left" if h in ("router", "flags") else "right")
    for name, pts in fronts(result).items():
        for i, p in enumerate(pts):
            table.add_row(name if i == 0 else "", p.label, f"{p.quality:.3f}", f"{1000 * p.cost_usd:.4f}",
                          f"{p.tokens:.1f}")
    return table


def front_summary(r: RouterResult) -> dict[str, float]:
    """Span of one router's front: cheapest and best points (for JSON readers and notes)."""
    pts = pareto_front(r.sweep)
    if not pts:
        return {}
    return {"points": float(len(pts)), "min_cost_usd": pts[0].cost_usd, "quality_at_min_cost": pts[0].quality,
            "max_quality": pts[-1].quality, "cost_at_max_quality": pts[-1].cost_usd}


def print_sweep(result: EvaluationResult, console: Console | None = None) -> None:
    """The front table on ``console`` (default: stdout, wide when piped)."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(sweep_table(result))
