"""The overhead benchmark's report: a table of absolute numbers, the ratios of every poolgate target to each peer
(LiteLLM, Portkey), and the verdicts against the issues' targets."""

from __future__ import annotations

import re
from typing import Any

from benchmarks.common import fmt, table

PEERS = ("litellm", "portkey")
#: the issues' targets: (poolgate configuration, peer, metric, comparison, goal). A configuration's goals apply to
#: it with any worker count (``poolgate-cheapest`` and ``poolgate-cheapest-w2``), never to a ``@base`` tree.
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    # issue 22: against Portkey's gateway (and LiteLLM's p99)
    ("poolgate-cheapest", "portkey", "rps_ratio", ">=", 1.2),
    ("poolgate-cheapest", "portkey", "c32_p99_ratio", "<=", 1.0),
    ("poolgate-cheapest", "portkey", "added_p50_ratio", "<=", 1.0),
    ("poolgate-cheapest", "portkey", "added_p99_ratio", "<=", 1.0),
    ("poolgate-cheapest", "litellm", "added_p99_ratio", "<=", 0.2),
    ("poolgate-cheapest", "portkey", "added_ttft_ratio", "<=", 1.0),
    ("poolgate-knn", "portkey", "rps_ratio", ">=", 2 / 3),
    ("poolgate-knn", "portkey", "added_p50_ratio", "<=", 1.5),
    # issue 11: against LiteLLM's proxy
    ("poolgate-cheapest", "litellm", "added_p50_ratio", "<=", 0.2),
    ("poolgate-cheapest", "litellm", "rps_ratio", ">=", 5.0),
    ("poolgate-cheapest", "litellm", "added_ttft_ratio", "<=", 0.2),
    ("poolgate-knn", "litellm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-knn", "litellm", "rps_ratio", ">=", 2.0),
    ("poolgate-complexity", "litellm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-complexity", "litellm", "rps_ratio", ">=", 2.0),
    # the same routers on the contextual encoder (docs/encoders.md), against the same goals
    ("poolgate-knn-minilm", "litellm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-knn-minilm", "litellm", "rps_ratio", ">=", 2.0),
    ("poolgate-complexity-minilm", "litellm", "added_p50_ratio", "<=", 1.0),
    ("poolgate-complexity-minilm", "litellm", "rps_ratio", ">=", 2.0),
)
_WORKERS = re.compile(r"-w\d+$")
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
    """poolgate / peer for added latency, TTFT and p99 at c32 (lower is better) and requests/s (higher is better)."""

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    return {
        "added_p50_ratio": div(mine["added_p50_ms"], theirs["added_p50_ms"]),
        "added_p99_ratio": div(mine["added_p99_ms"], theirs["added_p99_ms"]),
        "added_ttft_ratio": div(mine["added_ttft_ms"], theirs["added_ttft_ms"]),
        "rps_ratio": div(mine["rps"], theirs["rps"]),
        "c32_p99_ratio": div(mine["c32_p99_ms"], theirs["c32_p99_ms"]),
    }


def _row(name: str, res: dict[str, Any], d: dict[str, float | None]) -> list[str]:
    rss = res.get("rss_mb") or {}
    rss_text = " / ".join(f"{v:.0f}" for _, v in sorted(rss.items(), key=lambda kv: int(kv[0]))) or "-"
    rows = res.get("logged_rows")
    return [
        name, fmt(res["c1"]["p50_ms"]), fmt(res["c1"]["p99_ms"]), fmt(d.get("added_p50_ms")),
        fmt(d.get("added_p99_ms")), fmt(res["c32"]["rps"], 0), fmt(res["c32"]["p99_ms"], 1),
        fmt(res["stream"]["ttft_p50_ms"]), fmt(d.get("added_ttft_ms")), rss_text,
        fmt(res["c32"].get("gateway_cores")), fmt(res["c32"].get("loadgen_cores")),
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
    if "portkey" in out:
        pk = out["portkey"]
        pins = ", ".join(f"{k} {v}" for k, v in pk["hono"].items())
        lines.append(f"Portkey {pk['version']} on Node {pk['node']} ({pins}): 1 process, "
                     f"{pk['command']}; {pk['env']}; headers: {pk['headers']}")
    skipped = out["workload"]["skipped"]
    if skipped:
        lines.append("not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    headers = ["target", "c1 p50", "c1 p99", "+p50", "+p99", "c32 req/s", "c32 p99", "TTFT p50", "+TTFT",
               "RSS MiB", "gw cores", "lg cores", "rows logged"]
    rows = [_row("direct", {**direct, "rss_mb": {}}, {})]
    derived_all: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        if name == "direct":
            continue
        d = derived(res, direct) | {"rps": res["c32"]["rps"], "c32_p99_ms": res["c32"]["p99_ms"]}
        derived_all[name] = d
        rows.append(_row(name, res, d))
    rss_marks = "/".join(sorted({k for r in results.values() for k in (r.get("rss_mb") or {})}, key=int)) or "-"
    lines += ["", "latency in ms at concurrency 1 (+ = added over the direct backend measured just before); "
              f"req/s and p99 at concurrency 32; TTFT streaming; RSS after {rss_marks} requests;\n"
              "cores (1.0 = one core) the gateway (gw) and the load generator (lg) used at concurrency 32",
              table(headers, rows)]
    ratio_rows = _ratio_rows(derived_all)
    if ratio_rows:
        lines += ["", "poolgate / peer, same run (added latency, TTFT, c32 p99: lower is better; req/s: higher):"]
        lines.append(table(["configuration", "peer", "+p50", "+p99", "+TTFT", "c32 req/s", "c32 p99"], ratio_rows))
    verdicts = _verdicts(derived_all)
    if verdicts:
        lines += ["", "against the targets (issue 22: Portkey; issue 11: LiteLLM):"]
        vrows = [[v["target"], v["peer"], v["metric"], fmt(v["value"], 3), f"{v['op']} {v['goal']:.3g}",
                  "MET" if v["met"] else ("n/a" if v["value"] is None else "MISSED")] for v in verdicts]
        lines.append(table(["configuration", "peer", "metric", "value", "goal", "verdict"], vrows))
    comparisons = _comparisons(derived_all)
    if comparisons:
        lines += ["", "this tree against --compare-tree (same run; added latency and TTFT: lower is better):"]
        lines.append(table(["configuration", "metric", "this tree", "base", "this/base"], comparisons))
    for name, d in derived_all.items():
        if name.startswith("poolgate"):
            d["ratios"] = {peer: ratios(d, derived_all[peer]) for peer in PEERS if peer in derived_all}
    out["derived"] = derived_all
    return "\n".join(lines), verdicts


def _ratio_rows(d: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, mine in d.items():
        for peer in PEERS:
            if name.startswith("poolgate") and peer in d:
                r = ratios(mine, d[peer])
                rows.append([name, peer, *(fmt(r[m], 3) for m in ("added_p50_ratio", "added_p99_ratio",
                                                                    "added_ttft_ratio", "rps_ratio", "c32_p99_ratio"))])
    return rows


def _verdicts(d: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    for config, peer, metric, op, goal in TARGETS:
        theirs = d.get(peer)
        for name in d:
            if theirs is None or _WORKERS.sub("", name) != config:
                continue
            value = ratios(d[name], theirs)[metric]
            met = value is not None and (value <= goal if op == "<=" else value >= goal)
            verdicts.append({"target": name, "peer": peer, "metric": metric, "value": value, "op": op, "goal": goal,
                             "met": met})
    for name, dd in d.items():
        if name.startswith("poolgate") and dd.get("rss_growth") is not None:
            value = dd["rss_growth"]
            verdicts.append({"target": name, "peer": "-", "metric": "rss_last/rss_first", "value": value, "op": "<=",
                             "goal": RSS_GROWTH_GOAL, "met": value <= RSS_GROWTH_GOAL})
    return verdicts


def _comparisons(d: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows (configuration, metric, this tree, base, ratio) for every ``<name>@base`` target and its ``<name>``."""
    rows = []
    for name, base in d.items():
        mine = d.get(name.removesuffix("@base")) if name.endswith("@base") else None
        if mine is None:
            continue
        for metric in ("added_p50_ms", "added_p99_ms", "added_ttft_ms", "rps", "c32_p99_ms"):
            a, b = mine.get(metric), base.get(metric)
            ratio = None if a is None or not b else a / b
            rows.append([name.removesuffix("@base"), metric, fmt(a), fmt(b), fmt(ratio, 3)])
    return rows
