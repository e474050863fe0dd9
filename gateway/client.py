"""Python SDK for a poolgate gateway: :class:`Poolgate` (sync) and :class:`AsyncPoolgate` (asyncio).

Chat completions go through the official ``openai`` client underneath (so its retries, timeouts, types and
exceptions apply: ``openai.RateLimitError`` on 429, ``openai.AuthenticationError`` on 401, ...). What poolgate adds
is passed as arguments (``flags``, ``router``) and read back from response headers (``backend``, ``cost_usd``,
``request_id``, ``router``, ``flags``). Admin calls (``client.admin``) need the master key and raise
:class:`PoolgateError` with the gateway's OpenAI-style error; they, ``feedback`` and ``models`` raise
:class:`PoolgateConnectionError` (a ``PoolgateError``) when the gateway does not answer.

    from gateway.client import Poolgate

    pg = Poolgate("http://127.0.0.1:8000", api_key="pg-...")
    result = pg.chat([{"role": "user", "content": "What is 2+2?"}], flags={"cost": 0.8})
    print(result.text, result.backend, result.cost_usd)
    pg.feedback(result.request_id, 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["AsyncChatStream", "AsyncPoolgate", "ChatResult", "ChatStream", "Poolgate", "PoolgateConnectionError",
           "PoolgateError"]

Messages = Sequence[Mapping[str, Any]]


class PoolgateError(Exception):
    """An error answer of the gateway's own API (admin, feedback): HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str | None = None, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.type, self.code = status, message, type, code


class PoolgateConnectionError(PoolgateError):
    """The gateway did not answer (down, wrong URL, timed out): ``status`` is 0, ``message`` says where and why."""

    def __init__(self, base_url: str, exc: httpx.TransportError) -> None:
        super().__init__(0, f"cannot reach the gateway at {base_url} ({type(exc).__name__}: {exc or 'no detail'}); "
                            "is it running, and is POOLGATE_BASE_URL right?", "connection_error", None)

    def __str__(self) -> str:
        return self.message


class _Transport(httpx.BaseTransport):
    """httpx's transport, with a transport failure raised as :class:`PoolgateConnectionError` (one clear line
    instead of httpx's and httpcore's chained tracebacks)."""

    def __init__(self, base_url: str) -> None:
        self._base_url, self._inner = base_url, httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._inner.handle_request(request)
        except httpx.TransportError as exc:
            raise PoolgateConnectionError(self._base_url, exc) from None

    def close(self) -> None:
        self._inner.close()


class _AsyncTransport(httpx.AsyncBaseTransport):
    """The asyncio form of :class:`_Transport`."""

    def __init__(self, base_url: str) -> None:
        self._base_url, self._inner = base_url, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            raise PoolgateConnectionError(self._base_url, exc) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class RouteInfo:
    """What the gateway says about how it served a request (from the ``x-poolgate-*`` response headers)."""

    request_id: str | None = None
    backend: str | None = None
    router: str | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False  # streams: the routing estimate, the real cost is in the log
    flags: dict[str, Any] | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RouteInfo:
        cost = headers.get("x-poolgate-cost-usd")
        flags = headers.get("x-poolgate-flags")
        return cls(
            request_id=headers.get("x-poolgate-request-id"), backend=headers.get("x-poolgate-backend"),
            router=headers.get("x-poolgate-router"), cost_usd=float(cost) if cost else None,
            cost_estimated=headers.get("x-poolgate-cost-estimated") == "true",
            flags=json.loads(flags) if flags else None,
        )


@dataclass
class ChatResult(RouteInfo):
    """A non-streamed answer: the ``openai`` ``ChatCompletion`` plus the routing information."""

    completion: ChatCompletion | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The first choice's message content ("" when there is none)."""
        if self.completion is None or not self.completion.choices:
            return ""
        return self.completion.choices[0].message.content or ""


@dataclass
class ChatStream(RouteInfo):
    """A streamed answer: iterate for ``ChatCompletionChunk``s; ``text`` holds what has arrived so far."""

    stream: Any = field(default=None, repr=False)
    text: str = ""

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        for chunk in self.stream:
            if chunk.choices:
                self.text += chunk.choices[0].delta.content or ""
            yield chunk

    def close(self) -> None:
        self.stream.close()


@dataclass
class AsyncChatStream(RouteInfo):
    """The asyncio form of :class:`ChatStream` (``async for chunk in stream``)."""

    stream: Any = field(default=None, repr=False)
    text: str = ""

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self.stream:
            if chunk.choices:
                self.text += chunk.choices[0].delta.content or ""
            yield chunk

    async def close(self) -> None:
        await self.stream.close()


def _chat_kwargs(messages: Messages, model: str, flags: Mapping[str, Any] | None, router: str | None,
                 stream: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments for ``openai``'s ``chat.completions.create``: poolgate's fields ride in ``extra_body``."""
    extra = dict(kwargs.pop("extra_body", None) or {})
    ours: dict[str, Any] = {}
    if flags:
        ours["flags"] = dict(flags)
    if router:
        ours["router"] = router
    if ours:
        extra["poolgate"] = ours
    out = {"model": model, "messages": list(messages), "stream": stream, **kwargs}
    if extra:
        out["extra_body"] = extra
    return out


def _check(resp: httpx.Response) -> Any:
    """The JSON body of a 2xx answer, else :class:`PoolgateError` with the gateway's error."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise PoolgateError(resp.status_code, err.get("message") or resp.text[:200], err.get("type"), err.get("code"))
    return body


def _key_body(name: str, budget_usd: float | None, period: str, rpm: int | None, tpm: int | None,
              pools: Sequence[str] | None, default_flags: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "period": period}
    for k, v in (("budget_usd", budget_usd), ("rpm", rpm), ("tpm", tpm)):
        if v is not None:
            body[k] = v
    if pools is not None:
        body["pools"] = list(pools)
    if default_flags is not None:
        body["default_flags"] = dict(default_flags)
    return body


def _feedback_body(request_id: str, score: float, comment: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id, "score": score}
    if comment is not None:
        body["comment"] = comment
    return body


class Admin:
    """Admin API calls (master key). Every method returns the gateway's JSON answer."""

    def __init__(self, http: httpx.Client, master_key: str | None) -> None:
        self._http = http
        self._headers = {"authorization": f"Bearer {master_key}"} if master_key else {}

    def _get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return _check(self._http.get(path, params=params, headers=self._headers))

    def create_key(self, name: str, *, budget_usd: float | None = None, period: str = "month",
                   rpm: int | None = None, tpm: int | None = None, pools: Sequence[str] | None = None,
                   default_flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create an API key; the answer's ``secret`` is shown this once."""
        body = _key_body(name, budget_usd, period, rpm, tpm, pools, default_flags)
        return dict(_check(self._http.post("/admin/keys", json=body, headers=self._headers)))

    def list_keys(self, include_revoked: bool = True) -> list[dict[str, Any]]:
        return list(self._get("/admin/keys", include_revoked=str(include_revoked).lower())["data"])

    def get_key(self, key_id: str) -> dict[str, Any]:
        """A key and its live ``usage`` (window counts, spend this period)."""
        return dict(self._get(f"/admin/keys/{key_id}"))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(_check(self._http.post(f"/admin/keys/{key_id}/revoke", headers=self._headers)))

    def pools(self) -> list[dict[str, Any]]:
        return list(self._get("/admin/pools")["data"])

    def pools_health(self) -> dict[str, Any]:
        """Probe every backend now; ``healthy`` is False (not an exception) when one is down."""
        resp = self._http.get("/admin/pools/health", headers=self._headers)
        return dict(resp.json()) if resp.status_code == 503 else dict(_check(resp))

    def routers(self) -> list[dict[str, Any]]:
        return list(self._get("/admin/routers")["data"])

    def limits(self) -> dict[str, Any]:
        return dict(self._get("/admin/limits"))

    def report(self, since: str | None = None, until: str | None = None,
               key_id: str | None = None) -> dict[str, Any]:
        """Log totals per (key, pool, backend); ``since``/``until`` are ISO datetimes."""
        return dict(self._get("/admin/report", since=since, until=until, key_id=key_id))


class AsyncAdmin:
    """The asyncio form of :class:`Admin`."""

    def __init__(self, http: httpx.AsyncClient, master_key: str | None) -> None:
        self._http = http
        self._headers = {"authorization": f"Bearer {master_key}"} if master_key else {}

    async def _get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return _check(await self._http.get(path, params=params, headers=self._headers))

    async def create_key(self, name: str, *, budget_usd: float | None = None, period: str = "month",
                         rpm: int | None = None, tpm: int | None = None, pools: Sequence[str] | None = None,
                         default_flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = _key_body(name, budget_usd, period, rpm, tpm, pools, default_flags)
        return dict(_check(await self._http.post("/admin/keys", json=body, headers=self._headers)))

    async def list_keys(self, include_revoked: bool = True) -> list[dict[str, Any]]:
        return list((await self._get("/admin/keys", include_revoked=str(include_revoked).lower()))["data"])

    async def get_key(self, key_id: str) -> dict[str, Any]:
        return dict(await self._get(f"/admin/keys/{key_id}"))

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(_check(await self._http.post(f"/admin/keys/{key_id}/revoke", headers=self._headers)))

    async def pools(self) -> list[dict[str, Any]]:
        return list((await self._get("/admin/pools"))["data"])

    async def pools_health(self) -> dict[str, Any]:
        resp = await self._http.get("/admin/pools/health", headers=self._headers)
        return dict(resp.json()) if resp.status_code == 503 else dict(_check(resp))

    async def routers(self) -> list[dict[str, Any]]:
        return list((await self._get("/admin/routers"))["data"])

    async def limits(self) -> dict[str, Any]:
        return dict(await self._get("/admin/limits"))

    async def report(self, since: str | None = None, until: str | None = None,
                     key_id: str | None = None) -> dict[str, Any]:
        return dict(await self._get("/admin/report", since=since, until=until, key_id=key_id))


def _settings(base_url: str | None, api_key: str | None, master_key: str | None) -> tuple[str, str, str | None]:
    """Arguments, else POOLGATE_BASE_URL / POOLGATE_API_KEY / POOLGATE_MASTER_KEY, else the local demo."""
    base = (base_url or os.environ.get("POOLGATE_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    key = api_key or os.environ.get("POOLGATE_API_KEY") or master_key or os.environ.get("POOLGATE_MASTER_KEY")
    return base, key or "no-key", master_key or os.environ.get("POOLGATE_MASTER_KEY")


class Poolgate:
    """Synchronous client. ``base_url`` is the gateway's root (``/v1`` is added); ``api_key`` the caller's key;
    ``master_key`` only for ``admin`` calls. ``openai`` is the underlying ``openai.OpenAI`` client."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, master_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 2) -> None:
        # why: openai (with its types and aiohttp) takes ~1 s to import; `import gateway.client` should not
        import openai

        self.base_url, key, master = _settings(base_url, api_key, master_key)
        self.openai = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, timeout=timeout,
                                    max_retries=max_retries)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=_Transport(self.base_url))
        self._auth = {"authorization": f"Bearer {key}"}
        self.admin = Admin(self._http, master)

    @overload
    def chat(self, messages: Messages, *, model: str = ..., flags: Mapping[str, Any] | None = ...,
             router: str | None = ..., stream: Literal[False] = ..., **kwargs: Any) -> ChatResult: ...

    @overload
    def chat(self, messages: Messages, *, model: str = ..., flags: Mapping[str, Any] | None = ...,
             router: str | None = ..., stream: Literal[True], **kwargs: Any) -> ChatStream: ...

    def chat(self, messages: Messages, *, model: str = "auto", flags: Mapping[str, Any] | None = None,
             router: str | None = None, stream: bool = False, **kwargs: Any) -> ChatResult | ChatStream:
        """A chat completion routed by the gateway. ``model`` is a pool or a backend name; ``flags`` are routing
        weights/constraints (e.g. ``{"cost": 0.8}``); ``router`` overrides the pool's router; other keyword
        arguments go to ``openai``'s ``chat.completions.create`` unchanged (``max_tokens``, ``temperature``, ...)."""
        args = _chat_kwargs(messages, model, flags, router, stream, kwargs)
        raw = self.openai.chat.completions.with_raw_response.create(**args)
        info = RouteInfo.from_headers(raw.headers)
        if stream:
            return ChatStream(**vars(info), stream=raw.parse())
        return ChatResult(**vars(info), completion=raw.parse())

    def feedback(self, request_id: str, score: float, comment: str | None = None) -> dict[str, Any]:
        """Label a served request's answer with a quality ``score`` in [0, 1] (training data for routers)."""
        resp = self._http.post("/v1/feedback", json=_feedback_body(request_id, score, comment), headers=self._auth)
        return dict(_check(resp) or {})

    def models(self) -> list[dict[str, Any]]:
        """Pools and backends the gateway serves (``GET /v1/models``)."""
        return list(_check(self._http.get("/v1/models", headers=self._auth))["data"])

    def close(self) -> None:
        self._http.close()
        self.openai.close()

    def __enter__(self) -> Poolgate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPoolgate:
    """Asyncio client: the same calls as :class:`Poolgate`, awaited (streams with ``async for``)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, master_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 2) -> None:
        # why: openai (with its types and aiohttp) takes ~1 s to import; `import gateway.client` should not
        import openai

        self.base_url, key, master = _settings(base_url, api_key, master_key)
        self.openai = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=key, timeout=timeout,
                                         max_retries=max_retries)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       transport=_AsyncTransport(self.base_url))
        self._auth = {"authorization": f"Bearer {key}"}
        self.admin = AsyncAdmin(self._http, master)

    @overload
    async def chat(self, messages: Messages, *, model: str = ..., flags: Mapping[str, Any] | None = ...,
                   router: str | None = ..., stream: Literal[False] = ..., **kwargs: Any) -> ChatResult: ...

    @overload
    async def chat(self, messages: Messages, *, model: str = ..., flags: Mapping[str, Any] | None = ...,
                   router: str | None = ..., stream: Literal[True], **kwargs: Any) -> AsyncChatStream: ...

    async def chat(self, messages: Messages, *, model: str = "auto", flags: Mapping[str, Any] | None = None,
                   router: str | None = None, stream: bool = False, **kwargs: Any) -> ChatResult | AsyncChatStream:
        """See :meth:`Poolgate.chat`."""
        args = _chat_kwargs(messages, model, flags, router, stream, kwargs)
        raw = await self.openai.chat.completions.with_raw_response.create(**args)
        info = RouteInfo.from_headers(raw.headers)
        if stream:
            return AsyncChatStream(**vars(info), stream=raw.parse())
        return ChatResult(**vars(info), completion=raw.parse())

    async def feedback(self, request_id: str, score: float, comment: str | None = None) -> dict[str, Any]:
        resp = await self._http.post("/v1/feedback", json=_feedback_body(request_id, score, comment),
                                     headers=self._auth)
        return dict(_check(resp) or {})

    async def models(self) -> list[dict[str, Any]]:
        return list(_check(await self._http.get("/v1/models", headers=self._auth))["data"])

    async def close(self) -> None:
        await self._http.aclose()
        await self.openai.close()

    async def __aenter__(self) -> AsyncPoolgate:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
