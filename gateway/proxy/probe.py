"""Backend health probes over the gateway's upstream transport (``GET /admin/pools/health``, ``poolgate pools
check``): ``GET {base_url}/models``, or a 1-token chat completion where that route is missing (404/405); for an
``api: anthropic`` backend the same with its headers (``x-api-key``, ``anthropic-version``) and a 1-token message.

What a backend says in an error reaches the operator, so it is scrubbed of the backend's key like every other
upstream text (``gateway.proxy.scrub``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from gateway.pools import BackendConfig, PoolFile
from gateway.proxy.dispatch import ANTHROPIC_VERSION
from gateway.proxy.scrub import scrub_secrets
from gateway.proxy.upstream import Timeouts, Transport, UpstreamError, describe

#: A probe reads at most this much of an answer (it only needs the status and an error's first words).
PROBE_MAX_BYTES = 1024 * 1024


async def probe_backend(backend: BackendConfig, upstream: Transport, timeout_s: float = 10.0) -> dict[str, Any]:
    """One backend's health: status, which probe answered, latency, and the (scrubbed) error if any."""
    key = backend.api_key()
    native = backend.api == "anthropic"
    headers = {"anthropic-version": ANTHROPIC_VERSION} if native else {}
    if key:
        headers["x-api-key" if native else "authorization"] = key if native else f"Bearer {key}"
    timeouts = Timeouts(connect=timeout_s, read=timeout_s, total=timeout_s, pool=timeout_s)
    started = time.perf_counter()
    method = "models"
    try:
        status, body = await _exchange(upstream, "GET", f"{backend.base_url}/models", headers, b"", timeouts)
        if status in (404, 405):
            method = "chat"
            ping = {"model": backend.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            path = "messages" if native else "chat/completions"
            status, body = await _exchange(upstream, "POST", f"{backend.base_url}/{path}",
                                           {**headers, "content-type": "application/json"}, orjson.dumps(ping),
                                           timeouts)
        ok, error = status < 400, None
        if not ok:
            error = scrub_secrets(body[:200].decode("utf-8", "replace"), key)
    except UpstreamError as exc:
        ok, status, error = False, None, describe(exc)  # type: ignore[assignment]
    return {"backend": backend.name, "base_url": backend.base_url, "ok": ok, "status": status, "probe": method,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1), "error": error}


async def _exchange(upstream: Transport, method: str, url: str, headers: dict[str, str], content: bytes,
                    timeouts: Timeouts) -> tuple[int, bytes]:
    response = await upstream.request(method, url, headers, content, timeouts, PROBE_MAX_BYTES)
    try:
        return response.status, await response.aread()
    finally:
        await response.aclose()


async def probe_all(pool_file: PoolFile, upstream: Transport) -> list[dict[str, Any]]:
    """Probe every backend of ``pool_file`` concurrently."""
    return list(await asyncio.gather(*(probe_backend(b, upstream) for b in pool_file.backends)))
