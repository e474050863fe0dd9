"""Admin inputs out of any sane range get a 4xx naming the field, never a 500, through a real gateway on loopback
with the real PostgreSQL (auth on, master key).

Each case once gave a 500 or a misleading answer: a report window of 99999999999 days (OverflowError), a 1 MB key
name (DBAPIError: the name's index row is too large), ``budget_usd: 1e308`` (201, then every request of the key
500: "cannot convert float infinity to integer"), ``rpm: 2**31`` (400 blaming "NUL characters").
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.limits.base import MAX_BUDGET_USD, MAX_RPM, MAX_TPM
from gateway.limits.keys import MAX_KEY_NAME_CHARS
from tests.conftest import _admin, backend_yaml, requires_postgres

pytestmark = requires_postgres

MASTER = "mk-hostile-admin"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture
def gw(fake_backends: Any, gateway: Any, pg_database: str) -> Any:
    _, backend = fake_backends("strong")
    pool = (f"backends:\n{backend_yaml('strong', backend.url, input_price=10.0, output_price=30.0, retries=0)}\n"
            "pools:\n  - name: premium\n    members: [strong]\n")
    server = gateway(pool, database_url=pg_database, auth_enabled=True, master_key=MASTER)
    server.db = pg_database
    return server


def assert_names(resp: httpx.Response, param: str) -> str:
    """A 400 as OpenAI error JSON whose ``param`` (and message) name ``param``; returns the message."""
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].split(".")[0] == param, error
    assert param in error["message"]
    return str(error["message"])


def chat(gw: Any, secret: str) -> httpx.Response:
    body = {"model": "premium", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 3}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"})


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/admin/report/routing", {"since": "99999999999d"}, "since"),
    ("/admin/report/routing", {"until": "99999999999w"}, "until"),
    ("/admin/report/routing", {"since": "0001-01-01T00:00:00+14:00"}, "since"),  # year 0 once in UTC
    ("/admin/report", {"since": "9999-12-31T23:59:59-14:00"}, "since"),  # year 10000 once in UTC
    ("/admin/report", {"until": "0001-01-01T00:00:00+14:00"}, "until"),
])
def test_report_windows_beyond_what_a_datetime_holds_get_400_naming_the_bound(
    gw: Any, path: str, params: dict[str, str], param: str,
) -> None:
    assert_names(httpx.get(f"{gw.url}{path}", params=params, headers=ADMIN), param)
    assert httpx.get(f"{gw.url}{path}", params={param: "7d" if path.endswith("routing") else "2025-01-01"},
                     headers=ADMIN).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "x" * 1_000_000}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"budget_usd": 1e308}, "budget_usd"),
    ({"budget_usd": "Infinity"}, "budget_usd"),
    ({"budget_usd": MAX_BUDGET_USD * 1.01}, "budget_usd"),
    ({"rpm": 2**31}, "rpm"),
    ({"rpm": MAX_RPM + 1}, "rpm"),
    ({"rpm": True}, "rpm"),
    ({"rpm": "5"}, "rpm"),
    ({"tpm": 2**31}, "tpm"),
    ({"tpm": 2**64}, "tpm"),
    ({"period": "year"}, "period"),
    ({"pools": ["x" * 1_000_000]}, "pools"),
    ({"pools": ["premium"] * 101}, "pools"),
    ({"default_flags": {"capabilities": ["a\x00"]}}, "default_flags"),
    ({"default_flags": {"capabilities": ["x" * 5000]}}, "default_flags"),
])
def test_new_key_fields_out_of_bounds_get_400_naming_the_field(gw: Any, body: dict[str, Any], param: str) -> None:
    message = assert_names(httpx.post(f"{gw.url}/admin/keys", json={"name": "team", **body}, headers=ADMIN), param)
    if param in ("budget_usd", "rpm", "tpm"):
        assert "NUL" not in message  # an out-of-range number is not blamed on NUL characters
    assert httpx.get(f"{gw.url}/admin/keys", headers=ADMIN).json()["data"] == []  # nothing was stored


def test_a_key_at_every_bound_is_created_and_serves_requests(gw: Any) -> None:
    body = {"name": "n" * MAX_KEY_NAME_CHARS, "budget_usd": MAX_BUDGET_USD, "rpm": MAX_RPM, "tpm": MAX_TPM,
            "pools": ["premium"], "default_flags": {"capabilities": []}}
    resp = httpx.post(f"{gw.url}/admin/keys", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert chat(gw, resp.json()["secret"]).status_code == 200
    shown = httpx.get(f"{gw.url}/admin/keys/{resp.json()['id']}", headers=ADMIN).json()
    assert shown["budget_usd"] == MAX_BUDGET_USD and shown["usage"]["requests_in_window"] == 1


@pytest.mark.parametrize("stored", ["1e308", "'Infinity'", "'NaN'"])
def test_a_budget_stored_before_the_bounds_existed_is_served_not_a_500(gw: Any, stored: str) -> None:
    key = httpx.post(f"{gw.url}/admin/keys", json={"name": "legacy", "budget_usd": 1.0}, headers=ADMIN).json()
    _admin(gw.db, f"UPDATE api_keys SET budget_usd = {stored} WHERE id = '{key['id']}'")
    assert chat(gw, key["secret"]).status_code == 200  # read at its first use: the largest budget there is
    listed = httpx.get(f"{gw.url}/admin/keys", headers=ADMIN)
    assert listed.status_code == 200 and listed.json()["data"][0]["budget_usd"] == MAX_BUDGET_USD
