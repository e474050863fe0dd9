"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.limits.base import LimitsUnavailable

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "upstream_timeout_error",
}


def openai_error_type(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


#: What a PostgreSQL data exception (class 22) or program limit (class 54) says about the request's value.
_DATA_FAULTS = {
    "22003": "a number is out of the range the database stores",
    "22001": "a string is longer than the database stores",
    "22021": "it contains a NUL character or a byte sequence that is not text",
    "22P05": "it contains a NUL character or a byte sequence that is not text",
    "22008": "a date or time is out of range",
    "54000": "it is too large for the database (e.g. for an index)",
}


class GatewayError(Exception):
    """An error the client should see as OpenAI error JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or openai_error_type(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        return Response(
            orjson.dumps(self.body()), status_code=self.status, media_type="application/json", headers=headers
        )


def invalid_value(message: str, param: str) -> GatewayError:
    """A 400 ``invalid_value`` naming the request field ``param`` (the one shape every body check raises)."""
    return GatewayError(400, message, param=param, code="invalid_value")


def known_params_object(body: Any, supported: frozenset[str], endpoint: str, *, list_supported: bool = False
                        ) -> dict[str, Any]:
    """``body`` if it is a JSON object holding only ``supported`` fields; else a 400 naming the first other one
    (with the supported list when ``list_supported``), for the drop-in endpoint ``endpoint`` (``/v1/messages``)."""
    if not isinstance(body, dict):
        raise invalid_value("request body must be a JSON object", "body")
    unsupported = sorted(set(body) - supported)
    if unsupported:
        listed = f" (supported: {sorted(supported)})" if list_supported else ""
        raise invalid_value(f"parameter(s) {unsupported} are not supported by poolgate's {endpoint}{listed}",
                            unsupported[0])
    return body


def error_response(status: int, message: str, **kwargs: Any) -> Response:
    return GatewayError(status, message, **kwargs).response()


#: Anthropic's error ``type`` for an HTTP status.
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error JSON: ``{"type": "error", "error": {"type", "message"}}``."""
    etype = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


#: Paths whose errors take another API's shape, so every error there (a dependency's such as auth, a handler's,
#: the route's own) is in the shape its clients parse.
ERROR_SHAPES: dict[str, Callable[[int, str], dict[str, Any]]] = {"/v1/messages": anthropic_error_body}


def _respond(request: Request, err: GatewayError) -> Response:
    path = request.url.path
    for prefix, shape in ERROR_SHAPES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return Response(orjson.dumps(shape(err.status, err.message)), status_code=err.status,
                            media_type="application/json", headers=err.headers)
    return err.response()


def _unserved(request: Request, status: int) -> str:
    """What a bare 404/405 from the router says instead of "Not Found": what is unsupported, and what is served."""
    what = f"{request.method} {request.url.path}"
    if status == 405:
        return f"{what}: method not supported by poolgate on this path"
    return (f"{what} is not supported by poolgate (served: POST /v1/chat/completions, /v1/messages, /v1/responses, "
            f"/v1/completions, /v1/embeddings; GET /v1/models, /v1/models/{{id}})")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error FastAPI/Starlette can raise to OpenAI error JSON; never a traceback."""

    async def gateway_error(req: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return _respond(req, exc)

    async def http_error(req: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = None
        if exc.status_code in (404, 405) and msg in ("Not Found", "Method Not Allowed"):
            msg, code = _unserved(req, exc.status_code), "unsupported_endpoint"
        return _respond(req, GatewayError(exc.status_code, msg, code=code, headers=dict(exc.headers or {})))

    async def validation_error(req: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        return _respond(req, GatewayError(400, f"{param or 'request'}: {first.get('msg', 'invalid request')}",
                                          param=param))

    async def database_error(req: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        if sqlstate.startswith(("22", "54")):  # data exception / program limit: the request's value is the fault
            return _respond(req, GatewayError(
                400, f"a value in the request cannot be stored or compared by the database: "
                f"{_DATA_FAULTS.get(sqlstate, 'it is malformed or out of range')}", code="invalid_value"))
        lost = exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
        if sqlstate.startswith("08") or lost:  # connection exception: an outage, not a bug
            return _respond(req, GatewayError(503, "the database is unavailable; try again later",
                                              code="database_unavailable", headers={"retry-after": "5"}))
        return _respond(req, GatewayError(500, f"internal error ({type(exc).__name__})", type="server_error"))

    async def unavailable(req: Request, exc: Exception) -> Response:
        # asyncpg raises connection failures (refused, reset, timed out) raw, not as DBAPIError
        return _respond(req, GatewayError(
            503, f"a service the gateway needs (database or Redis) is unavailable ({type(exc).__name__}); try again "
            f"later", code="dependency_unavailable", headers={"retry-after": "5"}))

    async def limits_unavailable(req: Request, exc: Exception) -> Response:
        # the request path maps this itself (per limit); this catches any other route that needs the limit store
        assert isinstance(exc, LimitsUnavailable)
        return _respond(req, GatewayError(
            503, f"the limit store is unavailable ({exc.reason}); try again later", code="limits_unavailable",
            headers={"retry-after": str(max(1, round(exc.retry_after_s)))}))

    async def unexpected(req: Request, exc: Exception) -> Response:  # last resort: still OpenAI JSON
        return _respond(req, GatewayError(500, f"internal error ({type(exc).__name__})", type="server_error"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(LimitsUnavailable, limits_unavailable)
    app.add_exception_handler(OSError, unavailable)  # TimeoutError and ConnectionError included
    app.add_exception_handler(Exception, unexpected)
