"""The log report: every number checked by hand on a few rows (costs, counterfactuals, TEP, savings, shadows,
latency percentiles), computed from the database's aggregates on SQLite and PostgreSQL; its JSON, the CLI on an
empty store, and the HTML page rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import math
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from gateway.cli import main
from gateway.loop.report import LogReport, report_json, routing_report
from gateway.loop.report_html import render_html
from gateway.pools import parse_pool_file
from gateway.store import Feedback, Request, make_engine, upgrade
from gateway.store.repository import LogRepository

POOL = parse_pool_file("""
backends:
  - {name: cheap, base_url: "http://127.0.0.1:9/v1", model: c, input_price: 0.5, output_price: 1.0}
  - {name: strong, base_url: "http://127.0.0.1:9/v1", model: s, input_price: 10, output_price: 30}
pools:
  - {name: auto, members: [cheap, strong]}
""")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOTH = ("cheap", "strong")


@dataclass(frozen=True)
class LogRow:
    """One request as the report reads it, with its feedback score (None when unlabelled)."""

    id: str
    created_at: datetime
    pool: str | None
    router: str | None
    router_version: str | None
    key_id: str | None
    backend: str | None
    status: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    candidates: tuple[str, ...]
    shadow: dict[str, Any] | None
    score: float | None


def row(i: int, backend: str | None, prompt: int, comp: int, score: float | None, router: str = "knn",
        version: str | None = "v1", status: str = "ok", latency: float = 10.0, pool: str | None = "auto",
        shadow: str | None = None, key: str | None = None, minutes: float = 0.0) -> LogRow:
    prices = {"cheap": (0.5, 1.0), "strong": (10.0, 30.0)}
    cost = 0.0 if status != "ok" or backend is None else (prompt * prices[backend][0] + comp * prices[backend][1]) / 1e6
    return LogRow(f"r{i}", T0 + timedelta(minutes=minutes), pool, router, version, key, backend, status, latency,
                  prompt, comp, cost, BOTH if pool else (backend or "",),
                  {"strongest": {"backend": shadow, "version": "builtin"}} if shadow else None, score)


ROWS = [
    row(1, "cheap", 100, 10, 0.0, router="cheapest", version="builtin", shadow="strong", latency=10, key="k1"),
    row(2, "strong", 100, 30, 1.0, shadow="strong", latency=20, key="k1", minutes=30),
    row(3, "cheap", 50, 20, 1.0, latency=30, key="k2", minutes=60),
    row(4, "strong", 0, 0, None, status="error", latency=100, minutes=61),
    row(5, "cheap", 10, 30, None, router="direct", version=None, pool=None, latency=5, minutes=1500),
]


async def report_of(url: str, rows: list[LogRow], by: str) -> LogReport:
    """Store ``rows`` (and their feedback) in a fresh log store at ``url``, then build the report from it."""
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Request), [{
                "id": r.id, "created_at": r.created_at, "pool": r.pool, "model_requested": r.pool or r.backend or "",
                "router": r.router, "router_version": r.router_version, "key_id": r.key_id, "backend": r.backend,
                "candidates": [{"backend": c, "utility": 0.5} for c in r.candidates], "attempts": [],
                "status": r.status, "http_status": 200 if r.status == "ok" else 502, "stream": False,
                "latency_ms": r.latency_ms, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "cost_usd": r.cost_usd, "shadow": r.shadow} for r in rows])
            labelled = [{"request_id": r.id, "score": r.score} for r in rows if r.score is not None]
            if labelled:
                await conn.execute(insert(Feedback), labelled)
        return await routing_report(LogRepository(engine), POOL, by)
    finally:
        await engine.dispose()


async def test_group_numbers_match_a_hand_computation(db_url: str) -> None:
    rep = await report_of(db_url, ROWS, by="pool")
    auto = next(g for g in rep.groups if g.key == "auto")
    assert (auto.requests, auto.errors, auto.error_rate) == (4, 1, 0.25)
    assert auto.cost_usd == pytest.approx((60 + 1900 + 45) * 1e-6)
    assert auto.labelled == 3 and auto.mean_feedback == pytest.approx(2 / 3)
    assert auto.latency_p50 == pytest.approx(25.0)
    # counterfactuals: cheap's mean completion over successful rows is (10+20+30)/3 = 20, strong's is 30
    assert auto.eligible == 3
    assert auto.cheapest_cost_usd == pytest.approx((60 + 70 + 45) * 1e-6)
    assert auto.strongest_cost_usd == pytest.approx((1900 + 1900 + 1400) * 1e-6)
    assert auto.savings_vs_strongest == pytest.approx(1 - 2005 / 5200)
    # quality estimates: mean feedback per backend in the pool (cheap: 0 and 1; strong: 1)
    assert auto.cheapest_quality_est == pytest.approx(0.5) and auto.strongest_quality_est == pytest.approx(1.0)
    assert auto.tep_tokens == pytest.approx(((2 / 3 - 0.5) / 0.5) / ((310 - 300) / 300))
    assert auto.tep_usd == pytest.approx(((2 / 3 - 0.5) / 0.5) / ((2005 - 175) / 175))
    shadow = auto.shadows["strongest"]
    assert (shadow.n, shadow.agreement, shadow.quality_est) == (2, 0.5, 1.0)
    assert shadow.cost_usd == pytest.approx(3800e-6) and shadow.served_cost_usd == pytest.approx(1960e-6)
    direct = next(g for g in rep.groups if g.key == "(direct)")
    assert direct.eligible == 0 and math.isnan(direct.tep_usd) and direct.cost_usd == pytest.approx(35e-6)
    assert rep.total.requests == 5 and rep.total.cost_usd == pytest.approx(sum(r.cost_usd for r in ROWS))


@pytest.mark.parametrize(("by", "keys"), [
    ("router", ["(direct)", "cheapest@builtin", "knn@v1"]),
    ("backend", ["cheap", "strong"]),
    ("key", ["(no key)", "k1", "k2"]),
    ("day", ["2025-03-01", "2025-03-02"]),
])
async def test_grouping_keys(db_url: str, by: str, keys: list[str]) -> None:
    rep = await report_of(db_url, ROWS, by=by)
    assert [g.key for g in rep.groups] == keys
    assert sum(g.requests for g in rep.groups) == len(ROWS)


async def test_json_is_strict_and_carries_timeline_mix_and_assumptions(db_url: str) -> None:
    import json

    data = report_json(await report_of(db_url, ROWS, by="router"))
    text = json.dumps(data, allow_nan=False)  # NaN would raise here
    assert "TEP" in text and data["mix"]["knn@v1"] == {"strong": 1, "cheap": 1}
    assert data["bucket_seconds"] == 3600 and data["time_unit"] == "hours"  # 25 h of traffic: hourly buckets
    assert [(b["x"], b["requests"]) for b in data["timeline"] if b["requests"]] == [(0.0, 2), (1.0, 2), (25.0, 1)]
    assert len(data["timeline"]) == 26 and data["timeline"][5]["cost_usd"] == 0.0  # quiet hours count as zero
    assert data["groups"][0]["tep_usd"] is None


def test_report_cli_on_an_empty_store(tmp_path: Path) -> None:
    env = {"POOLGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/e.db", "POOLGATE_POOL_FILE": None}
    out = CliRunner().invoke(main, ["report", "--since", "1d", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert '"requests": 0' in out.output
    out = CliRunner().invoke(main, ["report", "--by", "model"], env=env)
    assert out.exit_code == 2 and "Invalid value for '--by'" in out.output


# -- the HTML page in a real browser ---------------------------------------------------------------------------


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into ``[height, width, channels]`` uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) % 256
        elif kind == 1:
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        else:  # 3 (average) and 4 (Paeth) depend on the decoded left neighbour: byte by byte
            vals, up = line.tolist(), prev.tolist()
            res = [0] * stride
            for x in range(stride):
                a = res[x - bpp] if x >= bpp else 0
                b = up[x]
                if kind == 3:
                    res[x] = (vals[x] + (a + b) // 2) & 255
                    continue
                c = up[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                res[x] = (vals[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.asarray(res, dtype=np.int64)
        out[y], prev = cur, cur
    return out.reshape(height, width, bpp)


async def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/system-deps installs it)")
    rows = [row(10 + i, "strong" if i % 3 == 0 else "cheap", 80, 40, float(i % 2), minutes=2 * i,
                shadow="strong", latency=5 + i) for i in range(40)] + ROWS
    rows.sort(key=lambda r: r.created_at)
    html_path = tmp_path / "report.html"
    rep = await report_of(f"sqlite+aiosqlite:///{tmp_path}/log.db", rows, by="router")
    html_path.write_text(render_html(rep), encoding="utf-8")
    assert "http" not in html_path.read_text().replace("http://www.w3.org/2000/svg", "")  # self-contained
    png = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,1600",
           f"file://{html_path}"]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), done.stderr.decode(errors="replace")[-2000:]
    pixels = png_pixels(png)
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels[..., :3] < 200).any(axis=-1)  # not white-ish
    assert ink.mean() > 0.02, f"only {ink.mean():.2%} of the screenshot is drawn"
    colored = (np.ptp(pixels[..., :3].astype(int), axis=-1) > 80)  # the plots' and bars' colours, not grey text
    assert colored.sum() > 2000


async def test_the_database_aggregates_a_large_window_into_a_few_rows(db_url: str) -> None:
    from gateway.loop.report import fetch_report_data
    from gateway.store.repository import Window

    rows = [row(100 + i, "cheap" if i % 3 else "strong", 50 + i % 7, 10 + i % 5, float(i % 2) if i % 4 else None,
                latency=float(i % 97), minutes=i / 5, shadow="strong" if i % 2 else None) for i in range(600)]
    rep = await report_of(db_url, rows, by="pool")
    assert rep.total.requests == 600 and rep.total.latency_p50 == pytest.approx(np.percentile(
        [r.latency_ms for r in rows], 50))
    assert rep.total.latency_p99 == pytest.approx(np.percentile([r.latency_ms for r in rows], 99))
    engine = make_engine(db_url)
    try:
        data = await fetch_report_data(LogRepository(engine), POOL, "pool", Window())
    finally:
        await engine.dispose()
    ranks = sum(len(r) for by in data.latency.values() for _, r in by.values())
    assert len(data.cells) <= 20 and len(data.shadows) <= 10 and ranks <= 3 * 3 * 4  # groupings x quantiles x ranks
    assert sum(c.n for c in data.cells) == 600  # every request counted, none read


async def test_odd_shadow_and_candidate_json_is_skipped_not_fatal(db_url: str) -> None:
    odd = [row(1, "cheap", 10, 5, 1.0), row(2, "strong", 10, 5, 0.0)]
    odd[0] = LogRow(**{**odd[0].__dict__, "shadow": {"error": "cancelled", "knn": {"error": "boom"}}})
    rep = await report_of(db_url, odd, by="pool")
    auto = next(g for g in rep.groups if g.key == "auto")
    assert auto.eligible == 2 and auto.shadows == {}
