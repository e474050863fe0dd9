"""The overhead benchmark's report: a table of absolute numbers and the ratios to LiteLLM against the targets."""

from __future__ import annotations

from typing import Any

from benchmarks.common import fmt, table

#: the issue's targets: (poolgate configuration, metric, comparison, goal)
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("poolgate-cheapest", "added_p50_ratio", "<=", 0.2),
    ("poolgate-cheapest", "added_p99_ratio", "<=", 0.2),
    ("poolgate-cheapest", "rps_ratio", ">=", 5.0),
    ("poolgate-cheapest", "added_ttft_ratio", "<=", 0.2),
    ("poolgate-knn", "added_p50_ratio", "<=", 1.0),
    ("poolgate-knn", "rps_ratio", ">=", 2.0),
    ("poolgate-complexity", "added_p50_ratio", "<=", 1.0),
    ("poolgate-complexity", "rps_ratio", ">=", 2.0),
    # the same routers on the contextual encoder (docs/encoders.md), against the same goals
    ("poolgate-knn-minilm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-knn-minilm", "rps_ratio", ">=", 2.0),
    ("poolgate-complexity-minilm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-complexity-minilm", "rps_ratio", ">=", 2.0),
)
RSS_GROWTH_GOAL = 1.10


def derived(res: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """Added latency over the direct backend (c1 p50/p99, streaming TTFT p50) and RSS growth of one target."""
    base = res.get("direct_c1") or direct["c1"]

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    rss = res.get("rss_mb") or {}
    marks = sorted(rss, key=int)
    growth = round(rss[marks[-1]] / rss[marks[0]], 3) if len(marks) >= 2 else None
    return {
        "added_p50_ms": minus(res["c1"]["p50_ms"], base["p50_ms"]),
        "added_p99_ms": minus(res["c1"]["p99_ms"], base["p99_ms"]),
        "added_ttft_ms": minus(res["stream"]["ttft_p50_ms"], direct["stream"]["ttft_p50_ms"]),
        "rss_growth": growth,
    }


def ratios(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """poolgate / LiteLLM for added latency and TTFT (lower is better) and requests/s (higher is better)."""

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    return {
        "added_p50_ratio": div(mine["added_p50_ms"], theirs["added_p50_ms"]),
        "added_p99_ratio": div(mine["added_p99_ms"], theirs["added_p99_ms"]),
        "added_ttft_ratio": div(mine["added_ttft_ms"], theirs["added_ttft_ms"]),
        "rps_ratio": div(mine["rps"], theirs["rps"]),
    }


def _row(name: str, res: dict[str, Any], d: dict[str, float | None]) -> list[str]:
    rss = res.get("rss_mb") or {}
    rss_text = " / ".join(f"{v:.0f}" for _, v in sorted(rss.items(), key=lambda kv: int(kv[0]))) or "-"
    rows = res.get("logged_rows")
    return [
        name, fmt(res["c1"]["p50_ms"]), fmt(res["c1"]["p99_ms"]), fmt(d.get("added_p50_ms")),
        fmt(d.get("added_p99_ms")), fmt(res["c32"]["rps"], 0), fmt(res["c32"]["p99_ms"], 1),
        fmt(res["stream"]["ttft_p50_ms"]), fmt(d.get("added_ttft_ms")), rss_text,
        "-" if rows is None else f"{rows}/{res.get('served')}",
    ]


def report(out: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The printed report and the list of target verdicts."""
    results = out["results"]
    direct = results["direct"]
    lines = [f"machine: {out['machine']['cpus']} CPUs, Python {out['machine']['python']}, load average at start "
             f"{out['machine']['load_average_start']}, at end {out['machine'].get('load_average_end')}"]
    if "litellm" in out:
        lines.append(f"LiteLLM {out['litellm']['version']}: 1 worker, {out['litellm']['env']}; config:\n"
                     + "\n".join("    " + x for x in out["litellm"]["config"].splitlines()))
    skipped = out["workload"]["skipped"]
    if skipped:
        lines.append("not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    headers = ["target", "c1 p50", "c1 p99", "+p50", "+p99", "c32 req/s", "c32 p99", "TTFT p50", "+TTFT",
               "RSS MiB", "rows logged"]
    rows = [_row("direct", {**direct, "rss_mb": {}}, {})]
    derived_all: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        if name == "direct":
            continue
        d = derived(res, direct) | {"rps": res["c32"]["rps"]}
        derived_all[name] = d
        rows.append(_row(name, res, d))
    rss_marks = "/".join(sorted({k for r in results.values() for k in (r.get("rss_mb") or {})}, key=int)) or "-"
    lines += ["", "latency in ms at concurrency 1 (+ = added over the direct backend measured just before); "
              f"req/s and p99 at concurrency 32; TTFT streaming; RSS after {rss_marks} requests", table(headers, rows)]
    verdicts = _verdicts(derived_all)
    if verdicts:
        lines += ["", "ratios to LiteLLM (same run) against the targets:"]
        vrows = [[v["target"], v["metric"], fmt(v["value"], 3), f"{v['op']} {v['goal']}",
                  "MET" if v["met"] else ("n/a" if v["value"] is None else "MISSED")] for v in verdicts]
        lines.append(table(["configuration", "metric", "value", "goal", "verdict"], vrows))
    comparisons = _comparisons(derived_all)
    if comparisons:
        lines += ["", "this tree against --compare-tree (same run; added latency and TTFT: lower is better):"]
        lines.append(table(["configuration", "metric", "this tree", "base", "this/base"], comparisons))
    for name, d in derived_all.items():
        d.update(ratios(d, derived_all["litellm"]) if "litellm" in derived_all and name != "litellm" else {})
    out["derived"] = derived_all
    return "\n".join(lines), verdicts


def _verdicts(d: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    theirs = d.get("litellm")
    for name, metric, op, goal in TARGETS:
        if theirs is None or name not in d:
            continue
        value = ratios(d[name], theirs)[metric]
        met = value is not None and (value <= goal if op == "<=" else value >= goal)
        verdicts.append({"target": name, "metric": metric, "value": value, "op": op, "goal": goal, "met": met})
    for name, dd in d.items():
        if name.startswith("poolgate") and dd.get("rss_growth") is not None:
            value = dd["rss_growth"]
            verdicts.append({"target": name, "metric": "rss_last/rss_first", "value": value, "op": "<=",
                             "goal": RSS_GROWTH_GOAL, "met": value <= RSS_GROWTH_GOAL})
    return verdicts


def _comparisons(d: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows (configuration, metric, this tree, base, ratio) for every ``<name>@base`` target and its ``<name>``."""
    rows = []
    for name, base in d.items():
        mine = d.get(name.removesuffix("@base")) if name.endswith("@base") else None
        if mine is None:
            continue
        for metric in ("added_p50_ms", "added_p99_ms", "added_ttft_ms", "rps"):
            a, b = mine.get(metric), base.get(metric)
            ratio = None if a is None or not b else a / b
            rows.append([name.removesuffix("@base"), metric, fmt(a), fmt(b), fmt(ratio, 3)])
    return rows
