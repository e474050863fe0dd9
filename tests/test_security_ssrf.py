"""A request can never make the gateway call a URL that is not in the pool file.

A sentinel listens on another loopback port and counts every TCP connection it gets; requests name it every
way a client could (model names, URL-looking body fields, routing extension, Host/forwarding headers, an
absolute-form request target, path tricks, admin routes, and a few hundred hypothesis-generated variants). The
sentinel must see no connection at all, and the pool's backend only ever the requests it was configured for.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import backend_yaml
from tests.tcpproxy import TcpProxy

MASTER = "sk-master-ssrf"


@pytest.fixture
def setup(fake_backends, gateway) -> Iterator[tuple[Any, Any, TcpProxy]]:
    good, gs = fake_backends("good")
    with TcpProxy("127.0.0.1", 9) as sentinel:  # counts connections; forwards to nothing
        sentinel.cut()
        pool = f"backends:\n{backend_yaml('good', gs.url)}\npools:\n  - name: auto\n    members: [good]\n"
        gw = gateway(pool, auth_enabled=True, master_key=MASTER)
        yield gw, good, sentinel


def sentinel_forms(port: int) -> list[str]:
    host = f"127.0.0.1:{port}"
    return [f"http://{host}/v1", f"http://{host}", f"https://{host}/v1", host, f"//{host}/v1", f"good@{host}",
            f"http://good@{host}/v1", f"good/../../{host}", "../good", "good/../auto", "../../etc/passwd",
            f"file:///{host}", f"good#{host}", f"good?{host}", f"{host}/v1/chat/completions", f"localhost:{port}",
            f"http://[::1]:{port}/v1", f"http://0x7f000001:{port}/v1", f"http://2130706433:{port}/v1",
            f"auto\r\nHost: {host}", f"good\nbase_url: http://{host}/v1"]


def post(gw: Any, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}", **headers})


def test_no_model_name_body_field_or_header_reaches_a_url_outside_the_pool(setup):
    gw, good, sentinel = setup
    forms = sentinel_forms(sentinel.port)
    msgs = [{"role": "user", "content": "q"}]
    statuses: Counter[int] = Counter()
    for form in forms:  # as the model name: never a backend, always a clean 4xx
        statuses[post(gw, {"model": form, "messages": msgs}).status_code] += 1
    url = forms[0]
    url_fields = {"base_url": url, "api_base": url, "url": url, "endpoint": url, "azure_endpoint": url,
                  "baseURL": url, "api_key": "x", "extra_headers": {"host": url}}
    for field, value in url_fields.items():  # passed through in the body, never used as a destination
        statuses[post(gw, {"model": "auto", "messages": msgs, field: value}).status_code] += 1
    for ext in [{"router": url}, {"flags": {"base_url": url}}, {"backend": url}]:
        statuses[post(gw, {"model": "auto", "messages": msgs, "poolgate": ext}).status_code] += 1
    host = f"127.0.0.1:{sentinel.port}"
    for name in ["host", "x-forwarded-host", "x-forwarded-server", "x-original-url", "x-rewrite-url", "forwarded",
                 "x-poolgate-backend", "x-poolgate-base-url", "origin", "referer"]:
        value = f"for=1.2.3.4;host={host}" if name == "forwarded" else (url if "url" in name else host)
        statuses[post(gw, {"model": "auto", "messages": msgs}, **{name: value}).status_code] += 1
    statuses[post(gw, {"model": "auto", "messages": msgs}, **{"x-poolgate-flags": f'{{"base_url": "{url}"}}'})
             .status_code] += 1
    # absolute-form request target (how one talks to a forward proxy) and path tricks
    for target in [f"http://{host}/v1/chat/completions", f"//{host}/v1/chat/completions",
                   "/v1/chat/completions/../../admin/keys", "/v1/../v1/chat/completions"]:
        statuses[raw_post(gw.port, target)] += 1
    # the admin probe of backend health only reaches the pool's backends
    statuses[httpx.get(f"{gw.url}/admin/pools/health", headers={"authorization": f"Bearer {MASTER}",
                                                                 "host": host}, timeout=30).status_code] += 1
    print(f"SSRF probes: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sentinel.connections == 0
    assert statuses[500] == 0 and statuses[200] > 0
    assert {r["model"] for r in good.requests} == {"good-upstream"}


def raw_post(port: int, target: str) -> int:
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "q"}]}'
    head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nauthorization: Bearer {MASTER}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


urlish = st.builds(lambda scheme, host, port, path: f"{scheme}{host}:{port}{path}",
                   st.sampled_from(["http://", "https://", "//", "", "ftp://", "file://"]),
                   st.sampled_from(["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "good", "auto"]),
                   st.integers(1, 65535), st.sampled_from(["", "/v1", "/v1/chat/completions", "/..", "?x=1"]))


def test_hypothesis_model_names_and_extra_fields_never_reach_outside_the_pool(setup):
    gw, good, sentinel = setup
    tried: Counter[int] = Counter()
    client = httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {MASTER}"})

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(model=st.sampled_from(["auto", "good"]) | urlish | st.text(max_size=40)
           | st.sampled_from(sentinel_forms(sentinel.port)),
           extra=st.dictionaries(st.sampled_from(["base_url", "api_base", "url", "model_url", "proxy", "host"]),
                                 urlish, max_size=3))
    def run(model: str, extra: dict[str, str]) -> None:
        r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "q"}],
                                                      **extra})
        tried[r.status_code] += 1
        assert r.status_code < 500

    run()
    print(f"hypothesis SSRF: {sum(tried.values())} requests, statuses {dict(sorted(tried.items()))}")
    assert sum(tried.values()) >= 100
    assert sentinel.connections == 0
    assert {r["model"] for r in good.requests} <= {"good-upstream"}
