"""Routing metrics as pure functions on arrays. Each docstring gives the formula and where it comes from.

Conventions: a *policy* picks one model per query; ``quality`` and ``cost`` of a policy are means over the
evaluated queries of the chosen cells' true values. A *curve* is a set of (cost, quality) operating points of
one router, e.g. from a sweep of the objective's cost weight. Undefined values are ``nan`` (never an exception),
so a report can print "-" for them.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def chosen(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """``matrix[i, choice[i]]`` for every query i: the chosen model's value per query."""
    return np.asarray(matrix)[np.arange(len(choice)), np.asarray(choice, dtype=np.int64)]


def mean_quality(matrix: np.ndarray, choice: np.ndarray) -> float:
    """Mean quality of a policy: (1/n) sum_i quality[i, choice_i]."""
    return float(chosen(matrix, choice).mean()) if len(choice) else NAN


def mean_cost(matrix: np.ndarray, choice: np.ndarray) -> float:
    """Mean cost (USD, or tokens when given a token matrix) per query: (1/n) sum_i cost[i, choice_i]."""
    return float(chosen(matrix, choice).mean()) if len(choice) else NAN


def best_choice_rate(matrix: np.ndarray, choice: np.ndarray, atol: float = 1e-9) -> float:
    """Tryage's routing accuracy (Hari & Thomson, 2023): the share of queries whose chosen model is the best one
    available, (1/n) sum_i [quality[i, choice_i] >= max_j quality[i, j] - atol]. Ties count as best, so a query
    that every model gets right (or wrong) is always a hit."""
    if not len(choice):
        return NAN
    q = np.asarray(matrix, dtype=np.float64)
    return float((chosen(q, choice) >= q.max(axis=1) - atol).mean())


# -- curves and their hull -----------------------------------------------------------------------
def non_decreasing_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing convex hull of (cost, quality) points, as RouterBench (Hu et al., 2024) defines it.

    Upper concave envelope of the points (any point on it is reachable by mixing two operating points at
    random), cut at its highest point: spending more than that buys nothing, so the hull stays flat beyond.
    Returns (x, y) with x increasing and y strictly increasing.
    """
    x, y = np.asarray(cost, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((-y, x))  # by cost, best quality first among equal costs
    x, y = x[order], y[order]
    keep = np.concatenate([[True], x[1:] != x[:-1]])
    x, y = x[keep], y[keep]
    hull: list[int] = []
    for i in range(len(x)):  # Andrew's monotone chain, upper half
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross >= 0:  # b lies on or below the chord a-i
                hull.pop()
            else:
                break
        hull.append(i)
    hx, hy = x[hull], y[hull]
    top = int(np.argmax(hy))
    return hx[: top + 1], hy[: top + 1]


def quality_at_cost(cost: np.ndarray, quality: np.ndarray, budget: float) -> float:
    """Quality at equal cost: H(budget), the hull's quality at that cost.

    ``nan`` if the budget is below the router's cheapest operating point; flat past its best point.
    """
    hx, hy = non_decreasing_hull(cost, quality)
    if len(hx) == 0 or budget < hx[0] - 1e-15:
        return NAN
    return float(np.interp(budget, hx, hy))


def cost_at_quality(cost: np.ndarray, quality: np.ndarray, target: float) -> float:
    """Cost at equal quality: min c such that H(c) >= target (linear between hull points); ``nan`` if never."""
    hx, hy = non_decreasing_hull(cost, quality)
    if len(hx) == 0 or hy[-1] < target - 1e-12:
        return NAN
    if hy[0] >= target:
        return float(hx[0])
    return float(np.interp(target, hy, hx))


def savings(cost: np.ndarray, quality: np.ndarray, ref_cost: float, ref_quality: float) -> float:
    """Savings vs a reference policy (e.g. always-strongest): 1 - cost_at_quality(ref_quality) / ref_cost.

    0.4 means the router reaches the reference's quality for 40 % less; negative means it costs more;
    ``nan`` if it never reaches that quality.
    """
    need = cost_at_quality(cost, quality, ref_quality)
    if not np.isfinite(need) or ref_cost <= 0:
        return NAN
    return float(1.0 - need / ref_cost)


def aiq(cost: np.ndarray, quality: np.ndarray, c_min: float, c_max: float) -> float:
    """Average Improvement in Quality (RouterBench, Hu et al., 2024, eq. 3).

    AIQ = 1 / (c_max - c_min) * integral_{c_min}^{c_max} H(c) dc, with H the non-decreasing convex hull of
    the router's (cost, quality) points, flat to the right of its best point and 0 to the left of its
    cheapest point (the router cannot operate there), as in the source's implementation. The harness uses
    [c_min, c_max] = [mean per-query cheapest cell cost, mean per-query dearest cell cost], the costs of the
    cheapest and dearest possible policies, so AIQ is comparable across routers on the same queries.
    """
    hx, hy = non_decreasing_hull(cost, quality)
    if len(hx) == 0 or not c_max > c_min:
        return NAN
    lo = max(c_min, float(hx[0]))
    if lo >= c_max:
        return 0.0
    inner = hx[(hx > lo) & (hx < c_max)]
    grid = np.concatenate([[lo], inner, [c_max]])
    values = np.interp(grid, hx, hy)  # np.interp is flat past the last point
    return float(np.trapezoid(values, grid) / (c_max - c_min))


# -- RouteLLM (Ong et al., 2024) -----------------------------------------------------------------
def threshold_curve(
    strong_score: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM's threshold sweep for a strong/weak pair: (strong-call fraction, mean quality), n_bins + 1 points.

    Thresholds are the edges of ``n_bins`` equal-count quantile bins of the router's scores (``pd.qcut`` edges,
    duplicates kept). At edge t_j a query goes to the strong model if score >= t_j, except at the last edge where
    it needs score > t_j (so the sweep ends at 0 % strong calls), exactly as ``routellm/evals/benchmarks.py``.
    In a two-model pool the shared objective picks the strong model iff its predicted quality margin exceeds
    the cost weight, so this is the objective's cost-weight sweep with the weights set at the score quantiles.
    """
    s = np.asarray(strong_score, dtype=np.float64)
    edges = np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1))
    frac, qual = [], []
    for j, t in enumerate(edges):
        strong = s >= t if j < len(edges) - 1 else s > t
        frac.append(float(strong.mean()))
        qual.append(float(np.where(strong, q_strong, q_weak).mean()))
    return np.asarray(frac), np.asarray(qual)


def apgr(strong_frac: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float) -> float:
    """Average Performance Gap Recovered (RouteLLM, Ong et al., 2024).

    APGR = (AUC - AUC_weak) / (AUC_strong - AUC_weak), where AUC = trapezoid integral of quality over the
    strong-call fraction (points sorted by that fraction), and AUC_weak / AUC_strong integrate the constant
    qualities of always-weak / always-strong over the same range. Always-weak scores 0, always-strong 1, a
    random router about 0.5; an oracle can exceed 1 when the weak model alone is sometimes right.
    """
    x, y = np.asarray(strong_frac, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    width = float(x[-1] - x[0]) if len(x) else 0.0
    if width <= 0 or q_strong == q_weak:
        return NAN
    auc = float(np.trapezoid(y, x))
    return (auc - q_weak * width) / ((q_strong - q_weak) * width)


def cpt(strong_frac: np.ndarray, quality: np.ndarray, q_weak: float, q_strong: float, pct: float) -> float:
    """Call-Performance Threshold CPT(pct) (RouteLLM): the strong-call fraction needed to reach
    q_weak + pct * (q_strong - q_weak).

    Read along the curve sorted by strong-call fraction: the first point at or above the target, linearly
    interpolated within the segment that crosses it (the source's ``np.interp`` on a monotone curve).
    ``nan`` if the curve never reaches the target.
    """
    x, y = np.asarray(strong_frac, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    target = q_weak + pct * (q_strong - q_weak)
    above = np.flatnonzero(y >= target - 1e-12)
    if len(above) == 0:
        return NAN
    k = int(above[0])
    if k == 0 or y[k] == y[k - 1]:
        return float(x[k])
    return float(x[k - 1] + (target - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1]))


# -- EllieSQL (Zhu et al., 2025) -----------------------------------------------------------------
def tep(quality: float, spend: float, ref_quality: float, ref_spend: float) -> float:
    """Token Elasticity of Performance (EllieSQL): an elasticity of quality with respect to spend,

    TEP = (dQ / Q_ref) / (dT / T_ref), dQ = Q - Q_ref, dT = T - T_ref,

    of a policy against a stated reference policy (the harness uses always-cheapest). ``spend`` in tokens
    gives TEP proper; in USD it is the same elasticity in dollars. ``nan`` when Q_ref or T_ref is 0 or the
    policy spends exactly what the reference does.
    """
    if ref_quality == 0 or ref_spend == 0 or spend == ref_spend:
        return NAN
    return float(((quality - ref_quality) / ref_quality) / ((spend - ref_spend) / ref_spend))
