"""gateway.client against a real gateway on loopback (fake backends, auth on): sync and asyncio."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.client import AsyncChatStream, AsyncPoolgate, ChatResult, ChatStream, Poolgate, PoolgateError
from tests.conftest import backend_yaml

MASTER = "mk-sdk"


@pytest.fixture
def gw(fake_backends: Any, gateway: Any) -> Any:
    cheap, cs = fake_backends("cheap")
    strong, ss = fake_backends("strong")
    pool = f"""
backends:
{backend_yaml("cheap", cs.url, input_price=0.5, output_price=1.0, retries=0)}
{backend_yaml("strong", ss.url, input_price=10, output_price=30, retries=0)}
pools:
  - name: auto
    members: [cheap, strong]
    router: cheapest
"""
    server = gateway(pool, auth_enabled=True, master_key=MASTER)
    server.fakes = {"cheap": cheap, "strong": strong}
    return server


def test_chat_returns_the_completion_and_the_routing_headers(gw: Any) -> None:
    admin = Poolgate(gw.url, master_key=MASTER)
    key = admin.admin.create_key("sdk", rpm=100)
    with Poolgate(gw.url, api_key=key["secret"]) as pg:
        result = pg.chat([{"role": "user", "content": "hi"}], max_tokens=5)
    assert isinstance(result, ChatResult)
    assert result.text == "answer from cheap" and result.completion is not None
    assert (result.backend, result.router) == ("cheap", "cheapest")
    assert result.cost_usd == pytest.approx((7 * 0.5 + 3 * 1.0) / 1e6) and not result.cost_estimated
    assert result.request_id is not None and len(result.request_id) == 32
    assert gw.fakes["cheap"].requests[-1]["max_tokens"] == 5


def test_flags_and_router_travel_in_the_request_and_come_back_in_the_headers(gw: Any) -> None:
    pg = Poolgate(gw.url, api_key=MASTER)
    result = pg.chat([{"role": "user", "content": "hi"}], router="strongest", flags={"cost": 0.0, "quality": 1.0},
                     extra_body={"top_k": 3})
    assert (result.backend, result.router) == ("strong", "strongest")
    assert result.flags is not None and (result.flags["cost"], result.flags["quality"]) == (0.0, 1.0)
    sent = gw.fakes["strong"].requests[-1]
    assert sent["top_k"] == 3 and "poolgate" not in sent


def test_streaming_yields_chunks_and_reports_the_estimated_cost(gw: Any) -> None:
    pg = Poolgate(gw.url, api_key=MASTER)
    stream = pg.chat([{"role": "user", "content": "hi"}], stream=True)
    assert isinstance(stream, ChatStream)
    chunks = list(stream)
    assert stream.text == "answer from cheap" and len(chunks) >= 3
    assert stream.backend == "cheap" and stream.cost_estimated and stream.cost_usd is not None


def test_gateway_errors_surface_as_the_openai_exceptions(gw: Any) -> None:
    admin = Poolgate(gw.url, master_key=MASTER)
    key = admin.admin.create_key("limited", rpm=1, pools=["auto"])
    pg = Poolgate(gw.url, api_key=key["secret"], max_retries=0)
    pg.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as info:
        pg.chat([{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"]
    with pytest.raises(openai.AuthenticationError):
        Poolgate(gw.url, api_key="pg-wrong", max_retries=0).chat([{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):
        Poolgate(gw.url, api_key=admin.admin.create_key("none", pools=[])["secret"]).chat(
            [{"role": "user", "content": "hi"}])


def test_admin_calls_need_the_master_key_and_raise_poolgate_error(gw: Any) -> None:
    with pytest.raises(PoolgateError) as info:
        Poolgate(gw.url, api_key="pg-not-master").admin.list_keys()
    assert info.value.status == 401 and info.value.type == "authentication_error"
    admin = Poolgate(gw.url, master_key=MASTER).admin
    key = admin.create_key("lifecycle", budget_usd=2.5, period="week", tpm=1000, default_flags={"cost": 0.3})
    assert [k["id"] for k in admin.list_keys()] == [key["id"]]
    assert admin.get_key(key["id"])["usage"]["budget_left_usd"] == 2.5
    assert admin.revoke_key(key["id"])["revoked_at"] is not None
    assert admin.list_keys(include_revoked=False) == []
    assert [p["name"] for p in admin.pools()] == ["auto"]
    assert admin.pools_health()["healthy"] is True
    assert admin.routers()[0]["router"] == "cheapest"
    assert admin.limits()["store"] == "in-process"
    assert admin.report()["totals"]["requests"] == 0
    with pytest.raises(PoolgateError) as info:
        admin.create_key("bad", period="fortnight")
    assert info.value.status == 400 and "period" in info.value.message


def test_feedback_labels_a_served_request(gw: Any) -> None:
    pg = Poolgate(gw.url, api_key=MASTER)
    result = pg.chat([{"role": "user", "content": "hi"}])
    assert result.request_id is not None
    answer = pg.feedback(result.request_id, 0.75, comment="fine")
    assert (answer["request_id"], answer["score"], answer["comment"]) == (result.request_id, 0.75, "fine")
    with pytest.raises(PoolgateError) as info:
        pg.feedback(result.request_id, 2.0)
    assert info.value.status == 400


async def test_async_client_chats_streams_and_administers(gw: Any) -> None:
    async with AsyncPoolgate(gw.url, master_key=MASTER) as admin:
        key = await admin.admin.create_key("async", rpm=10)
        assert (await admin.admin.get_key(key["id"]))["rpm"] == 10
    async with AsyncPoolgate(gw.url, api_key=key["secret"]) as pg:
        result = await pg.chat([{"role": "user", "content": "hi"}], flags={"cost": 1.0})
        assert result.text == "answer from cheap" and result.backend == "cheap"
        stream = await pg.chat([{"role": "user", "content": "hi"}], stream=True)
        assert isinstance(stream, AsyncChatStream)
        async for _ in stream:
            pass
        assert stream.text == "answer from cheap"
        assert [m["id"] for m in await pg.models()][:1] == ["auto"]


def test_the_base_url_may_include_v1_and_settings_come_from_the_environment(
    gw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGATE_BASE_URL", f"{gw.url}/v1")
    monkeypatch.setenv("POOLGATE_API_KEY", MASTER)
    assert Poolgate().chat([{"role": "user", "content": "hi"}]).backend == "cheap"
