"""Secrets and stored content: API keys only as hashes; client keys, the master key, backend keys and the
database password never in a log row, the spool, the process output, an error, /metrics or a report; prompts
and answers stored only when a setting says so; every admin route closed without the master key.

One ``poolgate serve`` process over PostgreSQL (auth on) serves a mix of traffic, including backends that echo
the key they were sent; then every place a secret could leak is read back and searched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url, text

from tests.conftest import _admin, backend_yaml, postgres_url
from tests.dbutil import fetch_rows, wait_rows
from tests.procs import GatewayProcess
from tests.servers import FakeBackend, ServerThread, free_port

MASTER = "sk-master-" + uuid.uuid4().hex
BACKEND_KEY = "sk-backend-" + uuid.uuid4().hex
DB_PASSWORD = "dbpw-" + uuid.uuid4().hex  # the test server trusts local connections, so any password works
PROMPT = "secret-prompt-" + uuid.uuid4().hex
KEY_ENV = "SECURITY_TEST_BACKEND_KEY"  # not POOLGATE_*: GatewayProcess passes only its own settings


def pool_text(ok_url: str, echo401_url: str, echo500_url: str) -> str:
    auth = {"api_key_env": KEY_ENV, "retries": 0}
    return f"""
backends:
{backend_yaml("good", ok_url, **auth)}
{backend_yaml("leaky", echo401_url, **auth)}
{backend_yaml("flaky", echo500_url, **auth, input_price=0)}
pools:
  - name: auto
    members: [good]
  - name: leaky-pool
    members: [leaky]
  - name: flaky-pool
    members: [flaky, good]
"""


class Deployment:
    """The gateway process, its database, its backends, and the secrets handed out while it ran."""

    def __init__(self, proc: GatewayProcess, db: str, backends: dict[str, FakeBackend]) -> None:
        self.proc, self.db, self.backends = proc, db, backends
        self.client_secrets: list[str] = []
        self.master = httpx.Client(base_url=proc.url, timeout=30, headers={"authorization": f"Bearer {MASTER}"})

    def new_key(self, name: str) -> str:
        r = self.master.post("/admin/keys", json={"name": name})
        assert r.status_code == 201, r.text
        self.client_secrets.append(r.json()["secret"])
        return str(r.json()["secret"])

    def secrets(self) -> list[str]:
        return [MASTER, BACKEND_KEY, DB_PASSWORD, *self.client_secrets]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from gateway.store import upgrade

    base = postgres_url()
    if base is None:
        pytest.skip("POOLGATE_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)")
    name = f"poolgate_sec_{uuid.uuid4().hex[:12]}"
    _admin(base, f'CREATE DATABASE "{name}"')
    db = make_url(base).set(database=name, password=DB_PASSWORD).render_as_string(hide_password=False)
    workdir = tmp_path_factory.mktemp("security")
    os.environ[KEY_ENV] = BACKEND_KEY  # the gateway process inherits it, as from a Kubernetes Secret
    backends = {"good": FakeBackend("good"), "leaky": FakeBackend("leaky", "401"),
                "flaky": FakeBackend("flaky", "500", echo_auth=True)}
    try:
        upgrade(db)
        with ServerThread(backends["good"].app) as ok, ServerThread(backends["leaky"].app) as e401, \
                ServerThread(backends["flaky"].app) as e500:
            pool_file = workdir / "pool.yaml"
            pool_file.write_text(pool_text(ok.url, e401.url, e500.url))
            with GatewayProcess(pool_file, workdir, database_url=db, auth_enabled=True, master_key=MASTER) as proc:
                yield Deployment(proc, db, backends)
    finally:
        os.environ.pop(KEY_ENV, None)
        _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def chat(dep: Deployment, secret: str, model: str = "auto", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}
    return httpx.post(f"{dep.proc.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {secret}"})


def test_api_keys_are_stored_only_as_sha256_hashes(dep):
    secret = dep.new_key("tenant-a")
    with_key = dep.master.get("/admin/keys").text
    assert secret not in with_key
    rows = fetch_table(dep.db, "api_keys")
    mine = [r for r in rows if r["name"] == "tenant-a"]
    assert len(mine) == 1
    assert mine[0]["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for row in rows for value in row.values())
    assert secret.startswith(mine[0]["key_prefix"]) and len(mine[0]["key_prefix"]) <= 12  # recognisable, not usable


def test_client_key_is_never_forwarded_upstream_only_the_backend_key(dep):
    secret = dep.new_key("tenant-b")
    good = dep.backends["good"]
    before = len(good.headers)
    assert chat(dep, secret).status_code == 200
    assert chat(dep, secret, stream=True).status_code == 200
    for headers in good.headers[before:]:
        assert headers["authorization"] == f"Bearer {BACKEND_KEY}"
        assert all(secret not in v and MASTER not in v for v in headers.values())


def test_backend_key_echoed_by_an_upstream_never_reaches_the_client_or_the_log(dep):
    secret = dep.new_key("tenant-c")
    r = chat(dep, secret, model="leaky-pool")  # the upstream's 401 is passed through, its message scrubbed
    assert r.status_code == 401 and "invalid key" in r.text
    assert BACKEND_KEY not in r.text and "***" in r.text
    r = chat(dep, secret, model="flaky-pool")  # a 500 that echoes the key, then fallback
    assert r.status_code == 200 and r.headers["x-poolgate-backend"] == "good"
    row = row_of(dep, r.headers["x-poolgate-request-id"])
    assert row["attempts"][0]["backend"] == "flaky" and "***" in row["attempts"][0]["error"]
    assert BACKEND_KEY not in str(row)


def test_invalid_and_revoked_keys_get_401_without_echoing_the_secret(dep):
    secret = dep.new_key("tenant-d")
    key_id = next(k["id"] for k in dep.master.get("/admin/keys").json()["data"] if k["name"] == "tenant-d")
    assert dep.master.post(f"/admin/keys/{key_id}/revoke").status_code == 200
    for bad in [secret, "pg-" + uuid.uuid4().hex, MASTER + "x"]:
        r = chat(dep, bad)
        assert r.status_code == 401 and bad not in r.text and r.json()["error"]["code"]


def test_every_admin_route_refuses_anything_but_the_master_key(dep):
    """Routes are read from the running app's OpenAPI document and the module's route table (which also
    lists routes hidden from the schema), so a new admin route is covered without editing this test."""
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    routes = {(method, path) for method, path in all_routes(app.routes) if path.startswith("/admin")}
    routes |= {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops
               if path.startswith("/admin")}
    assert len(routes) >= 8
    client_key = dep.new_key("tenant-e")
    for method, path in sorted(routes):
        url = dep.proc.url + path.replace("{key_id}", "key_000000000000").replace("{request_id}", "x")
        for auth in [None, f"Bearer {client_key}", "Bearer wrong", f"Basic {MASTER}", f"Bearer {MASTER[:-1]}"]:
            headers = {"authorization": auth} if auth else {}
            r = httpx.request(method, url, headers=headers, json={} if method == "POST" else None, timeout=30)
            assert r.status_code in (401, 403), (method, path, auth, r.status_code)
        r = httpx.request(method, url, headers={"authorization": f"Bearer {MASTER}"},
                          json={} if method == "POST" else None, timeout=30)
        assert r.status_code not in (401, 403), (method, path, "master", r.status_code)


def test_prompts_and_answers_are_not_stored_by_default(dep):
    secret = dep.new_key("tenant-f")
    ids = [chat(dep, secret, stream=s).headers["x-poolgate-request-id"] for s in (False, True)]
    rows = [row_of(dep, request_id) for request_id in ids]
    assert all(r["prompt_text"] is None and r["response_text"] is None for r in rows)
    assert all(PROMPT not in str(r) and "answer from" not in str(r) for r in fetch_rows(dep.db))


def test_no_secret_anywhere_a_secret_could_leak(dep, tmp_path):
    """After all the traffic above: rows, the spool, the process output, /metrics, the admin report and the
    `poolgate report` command (terminal, JSON and HTML) contain none of the secrets."""
    secret = dep.new_key("tenant-g")
    ids = [chat(dep, secret, model=model).headers.get("x-poolgate-request-id")
           for model in ["auto", "leaky-pool", "flaky-pool", "nope"]]
    for request_id in filter(None, ids):
        row_of(dep, request_id)  # written: the rows searched below include this traffic
    places: dict[str, str] = {
        "requests rows": str(fetch_rows(dep.db)),
        "api_keys rows": str(fetch_table(dep.db, "api_keys")),
        "process output": dep.proc.output(),
        "spool": spool_text(dep.proc.workdir / "spool"),
        "/metrics": dep.master.get("/metrics").text,
        "/admin/report": dep.master.get("/admin/report", params={"since": "2000-01-01"}).text,
        "/admin/keys": dep.master.get("/admin/keys").text,
        "/admin/pools": dep.master.get("/admin/pools").text,
    }
    env = {**os.environ, "POOLGATE_DATABASE_URL": dep.db, "POOLGATE_POOL_FILE": str(dep.proc.pool_file)}
    for args in (["--json"], ["--by", "key"], ["--html", str(tmp_path / "report.html")]):
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "report", "--since", "1d", *args], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        places[f"poolgate report {args[0]}"] = out.stdout + out.stderr
    places["report.html"] = (tmp_path / "report.html").read_text() if (tmp_path / "report.html").exists() else ""
    assert "poolgate on http" in places["process output"]  # the output really was captured
    for where, content in places.items():
        for s in dep.secrets():
            assert s not in content, f"a secret ({s[:8]}...) leaked into {where}"


def test_database_password_is_not_printed_even_when_the_database_is_down(tmp_path):
    """serve prints its log store URL at start: with the password masked, and the outage's errors too."""
    with ServerThread(FakeBackend("good").app) as ok:
        pool_file = tmp_path / "pool.yaml"
        pool_file.write_text(f"backends:\n{backend_yaml('good', ok.url)}\npools:\n"
                             "  - name: auto\n    members: [good]\n")
        dead = f"postgresql+asyncpg://poolgate:{DB_PASSWORD}@127.0.0.1:{free_port()}/x"
        with GatewayProcess(pool_file, tmp_path, database_url=dead) as proc:
            r = httpx.post(f"{proc.url}/v1/chat/completions", timeout=30,
                           json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            ready = httpx.get(f"{proc.url}/health/ready", timeout=30)
            assert ready.json()["database"] is False and DB_PASSWORD not in ready.text
        assert "***" in proc.output() and DB_PASSWORD not in proc.output()


def all_routes(routes: Any) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, including those of included routers (FastAPI keeps them nested)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from all_routes(nested.routes)
        for method in getattr(route, "methods", None) or ():
            yield method, route.path


def row_of(dep: Deployment, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The log row of one request (rows are written asynchronously: poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [row for row in fetch_rows(dep.db) if row["id"] == request_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no row for {request_id}"
        time.sleep(0.05)


def spool_text(spool_dir: Path) -> str:
    """The text of the spool's files (segments and journals); one the gateway deletes between the glob and the
    read (its rows just written to the database, searched separately) is skipped."""
    texts = []
    for path in sorted(spool_dir.glob("*.jsonl")):
        try:
            texts.append(path.read_text())
        except FileNotFoundError:
            continue
    return "".join(texts)


def fetch_table(url: str, table: str) -> list[dict[str, Any]]:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(text(f"SELECT * FROM {table}"))]
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def test_prompts_and_answers_are_stored_when_the_settings_say_so(gateway, fake_backends, tmp_path: Path):
    _, ok = fake_backends("good")
    gw = gateway(f"backends:\n{backend_yaml('good', ok.url)}\npools:\n  - name: auto\n    members: [good]\n",
                 store_prompts=True, store_responses=True)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": PROMPT}]}, timeout=30)
    row = wait_rows(gw.settings.database_url, 1)[0]
    assert row["id"] == r.headers["x-poolgate-request-id"]
    assert row["prompt_text"] == PROMPT and row["response_text"] == "answer from good"
