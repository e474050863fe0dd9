"""The dashboard's routes (``/ui``): login and logout, the page, its live-refreshed panels, promote and rollback.

Thin on purpose: sessions are ``gateway.ui.session``, numbers ``gateway.ui.data``, charts ``gateway.ui.views``,
HTML ``gateway/ui/templates``; promote and rollback are the artifact store's, as ``poolgate routers`` calls them,
followed by a reload poll so this gateway serves the change at once (others within their poll interval).
Pages are HTML, not OpenAI error JSON: a person reads them. Every page is sent with a strict
Content-Security-Policy (no inline script or style) and ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.deps import ArtifactsDep, ReloaderDep, ServicesDep, SessionsDep, SettingsDep, WriterDep
from gateway.limits.keys import is_master
from gateway.routing.artifacts import ArtifactError
from gateway.settings import Settings
from gateway.ui.data import DEFAULT_WINDOW, WINDOWS, Sources, load_dashboard
from gateway.ui.render import render
from gateway.ui.session import COOKIE, COOKIE_PATH, FLASH_COOKIE, DashboardSessions
from gateway.ui.views import build_charts

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_FORM_BYTES = 4096
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers={
        "content-security-policy": CSP, "cache-control": "no-store", "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin"})


def _signed_in(request: Request, settings: Settings, sessions: DashboardSessions) -> bool:
    return sessions.valid(request.cookies.get(COOKIE), settings.master_key)


def _same_origin(request: Request) -> bool:
    """A form post from this site's host (SameSite=Strict already keeps the cookie off cross-site posts; this is a
    second lock for browsers that send an Origin). Hosts only: a proxy in front may change the scheme and port."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).hostname == request.url.hostname


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form's fields (first value each); None for anything else or anything larger."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


def _to(path: str, flash: str | None = None) -> RedirectResponse:
    response = RedirectResponse(path, status_code=303)
    if flash is not None:
        response.set_cookie(FLASH_COOKIE, flash[:300], max_age=60, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def _secure(request: Request, settings: Settings) -> bool:
    return settings.ui_secure_cookie if settings.ui_secure_cookie is not None else request.url.scheme == "https"


def _login_page(settings: Settings, error: str | None = None, status: int = 200) -> HTMLResponse:
    disabled = not settings.master_key
    return _page(render("login.html", error=error, disabled=disabled), 403 if disabled else status)


@router.get("/login")
async def login_form(request: Request, settings: SettingsDep, sessions: SessionsDep) -> Response:
    if _signed_in(request, settings, sessions):
        return _to("/ui")
    return _login_page(settings)


@router.post("/login")
async def login(request: Request, settings: SettingsDep, sessions: SessionsDep) -> Response:
    if not settings.master_key:
        return _login_page(settings)
    form = await _form(request) if _same_origin(request) else None
    if form is None:
        return _login_page(settings, "send the login form", 400)
    if not is_master(form.get("key", "").strip(), settings.master_key):
        return _login_page(settings, "That is not the master key.", 401)
    response = _to("/ui")
    response.set_cookie(COOKIE, sessions.issue(settings.master_key), max_age=sessions.lifetime_s, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_secure(request, settings))
    return response


@router.post("/logout")
async def logout(request: Request, sessions: SessionsDep) -> Response:
    if _same_origin(request):
        sessions.revoke(request.cookies.get(COOKIE))
    response = _to("/ui/login")
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


async def _context(window: str, writer: WriterDep, src: Sources) -> dict[str, Any]:
    if writer.queue_depth:  # count the rows this replica still holds, as GET /admin/report does
        await writer.flush()
    dashboard = await load_dashboard(src, window if window in WINDOWS else DEFAULT_WINDOW)
    return {"d": dashboard, "c": build_charts(dashboard), "windows": list(WINDOWS)}


async def get_sources(services: ServicesDep) -> Sources:
    return Sources(services.repository, services.pool_file, services.breakers, services.keys, services.limiter,
                   services.artifacts, services.reloader)


SourcesDep = Annotated[Sources, Depends(get_sources)]


@router.get("")
async def dashboard(request: Request, settings: SettingsDep, sessions: SessionsDep, writer: WriterDep,
                    src: SourcesDep, window: str = DEFAULT_WINDOW) -> Response:
    if not _signed_in(request, settings, sessions):
        return _to("/ui/login")
    context = await _context(window, writer, src)
    response = _page(render("dashboard.html", flash=request.cookies.get(FLASH_COOKIE), **context))
    response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    return response


@router.get("/panels")
async def panels(request: Request, settings: SettingsDep, sessions: SessionsDep, writer: WriterDep,
                 src: SourcesDep, window: str = DEFAULT_WINDOW) -> Response:
    """The dashboard's panels alone, which ``dashboard.js`` fetches every few seconds (401 once signed out)."""
    if not _signed_in(request, settings, sessions):
        return _page("signed out", 401)
    return _page(render("panels.html", **await _context(window, writer, src)))


@router.post("/routers/promote")
async def promote(request: Request, settings: SettingsDep, sessions: SessionsDep, artifacts: ArtifactsDep,
                  reloader: ReloaderDep) -> Response:
    form = await _form(request) if _same_origin(request) else None
    if not _signed_in(request, settings, sessions) or form is None:
        return _to("/ui/login")
    pool, version = form.get("pool", ""), form.get("version", "")
    try:
        record = await artifacts.promote(pool, version)
    except ArtifactError as exc:
        return _to("/ui#routers", f"error: {exc}")
    status = await reloader.poll_once()
    error = status["pools"].get(pool, {}).get("last_error")
    note = f"; this gateway could not load it: {error}" if error else ""
    return _to("/ui#routers", f"promoted {record.pool} {record.version} ({record.router}){note}")


@router.post("/routers/rollback")
async def rollback(request: Request, settings: SettingsDep, sessions: SessionsDep, artifacts: ArtifactsDep,
                   reloader: ReloaderDep) -> Response:
    form = await _form(request) if _same_origin(request) else None
    if not _signed_in(request, settings, sessions) or form is None:
        return _to("/ui/login")
    pool = form.get("pool", "")
    try:
        down, up = await artifacts.rollback(pool)
    except ArtifactError as exc:
        return _to("/ui#routers", f"error: {exc}")
    await reloader.poll_once()
    now = f"{up.version} ({up.router})" if up else "the pool file's router"
    return _to("/ui#routers", f"rolled back {pool} {down.version}; now live: {now}")
