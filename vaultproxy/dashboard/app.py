"""The dashboard's ASGI app: pages render what the admin API's own functions answer, and
every action calls those same functions (``decided_by: "dashboard"``, caller
``dashboard``), so there is one code path for approvals, secret writes, sync, lock and
unlock. No page, fragment, event or error carries a secret value: the admin functions return
none, and the secret form is write-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from vaultproxy.admin import approval_routes, keystore_routes, source_routes
from vaultproxy.admin.guard import CALLER_KEY, PEER_KEY
from vaultproxy.admin.models import SecretPut, UnlockIn
from vaultproxy.dashboard import pages, views
from vaultproxy.dashboard.front import Front
from vaultproxy.dashboard.sessions import Session, csrf_matches
from vaultproxy.dashboard.site import Site
from vaultproxy.errors import error_response

HERE = Path(__file__).parent
ENTRY_RE = re.compile(keystore_routes.ENTRY_PATTERN)
KEEPALIVE = 15.0
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["fix_for"] = views.fix_for
templates.env.globals["when"] = views.when


Handler = Callable[[Request, Site, Session], Awaitable[Response]]


def _mark(request: Request) -> None:
    """Calls into the admin functions name the dashboard as the caller (audit, backoff)."""
    client = request.client.host if request.client else "?"
    request.scope[CALLER_KEY] = "dashboard"
    request.scope[PEER_KEY] = f"dashboard:{client}"


def need_session(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dash: Site = request.app.state.dashboard
        _sid, session = dash.session(request)
        if session is None:
            if request.method == "GET" and "text/event-stream" not in request.headers.get(
                    "accept", ""):
                return templates.TemplateResponse(request, "login.html", {"needed": True},
                                                  status_code=401)
            return JSONResponse({"error": {"message": "no dashboard session: run "
                                           "`vaultproxy dashboard`", "type": "vaultproxy_error",
                                           "code": "session_required"}}, status_code=401,
                                headers={"X-Vaultproxy-Error": "session_required"})
        if request.method == "POST":
            form = await request.form()
            sent = request.headers.get("x-csrf-token") or form.get("csrf")
            if not csrf_matches(session, sent if isinstance(sent, str) else None):
                return JSONResponse({"error": {"message": "missing or wrong CSRF token: "
                                               "reload the page", "type": "vaultproxy_error",
                                               "code": "csrf_refused"}}, status_code=403,
                                    headers={"X-Vaultproxy-Error": "csrf_refused"})
        _mark(request)
        return await handler(request, dash, session)

    return endpoint


def render(request: Request, session: Session, name: str, **data: Any) -> Response:
    flash, session.flash = session.flash, []
    return templates.TemplateResponse(request, name, {"csrf": session.csrf, "flash": flash,
                                                      "page": name.split(".")[0], **data})


def back(session: Session, to: str, note: str) -> Response:
    session.flash.append(note)
    return RedirectResponse(to, status_code=303)


async def attempt(session: Session, to: str, work: Awaitable[Any], done: str) -> Response:
    """Run one admin action; its public error message (never a value) becomes the note."""
    try:
        await work
    except Exception as e:  # noqa: BLE001 - shown to the operator as the admin API would
        _status, code, message = error_response(e)
        return back(session, to, f"refused ({code}): {message}")
    return back(session, to, done)


# -- login ------------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"needed": False})


async def login(request: Request) -> Response:
    dash: Site = request.app.state.dashboard
    try:
        token = str((await request.json()).get("token", ""))[:256]
    except (ValueError, AttributeError):
        token = ""
    got = dash.sessions.exchange(token)
    if got is None:
        return JSONResponse({"error": {"message": "this login link is used or expired: run "
                                       "`vaultproxy dashboard` for a new one",
                                       "type": "vaultproxy_error", "code": "login_refused"}},
                            status_code=403, headers={"X-Vaultproxy-Error": "login_refused"})
    sid, _session = got
    r = JSONResponse({"ok": True, "next": "/"})
    r.set_cookie(dash.cookie, sid, max_age=int(dash.sessions.session_ttl), path="/",
                 httponly=True, samesite="strict")
    return r


async def logout(request: Request, dash: Site, session: Session) -> Response:
    sid, _ = dash.session(request)
    dash.sessions.end(sid)
    r = templates.TemplateResponse(request, "login.html", {"needed": False, "bye": True})
    r.delete_cookie(dash.cookie, path="/", httponly=True, samesite="strict")
    return r


# -- pages ------------------------------------------------------------------------------
async def overview(request: Request, dash: Site, session: Session) -> Response:
    return render(request, session, "overview.html", **pages.overview(request, dash))


async def requests_page(request: Request, dash: Site, session: Session) -> Response:
    return render(request, session, "requests.html", **pages.requests(request, dash))


async def request_events(request: Request, dash: Site, session: Session) -> Response:
    want = pages.filters(request)
    queue = dash.feed.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": live\n\n"
            while True:
                try:
                    rec = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if rec is None:
                    return
                if not pages.shown(rec, want):
                    continue
                row = templates.get_template("request_row.html").render(r=rec)
                data = json.dumps({"html": row.replace("\n", "")})
                yield f"event: record\ndata: {data}\n\n".encode()
        finally:
            dash.feed.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def approvals_page(request: Request, dash: Site, session: Session) -> Response:
    data = await pages.approvals(request)
    return render(request, session, "approvals.html", **data)


async def approvals_fragment(request: Request, dash: Site, session: Session) -> Response:
    data = await pages.approvals(request)
    return templates.TemplateResponse(request, "approvals_pending.html",
                                      {"csrf": session.csrf, **data})


async def bell(request: Request, dash: Site, session: Session) -> Response:
    """The number of held requests, for the badge in every page's navigation."""
    data = await pages.approvals(request)
    return templates.TemplateResponse(request, "bell.html", {"n": len(data["pending"])})


async def decide(request: Request, dash: Site, session: Session) -> Response:
    form = await request.form()
    aid = str(request.path_params["aid"])[:64]
    choice = str(form.get("decision", ""))
    try:
        grant = float(str(form.get("grant") or 0)) or None if choice == "grant" else None
        body = approval_routes.DecisionIn(
            decision="deny" if choice == "deny" else "approve",
            grant_seconds=grant, decided_by="dashboard")
    except (ValidationError, ValueError):
        return back(session, "/approvals", "refused: grant seconds must be 0 to 604800")
    verb = {"deny": "denied", "grant": "approved with a grant"}.get(choice, "approved once")
    return await attempt(session, "/approvals", approval_routes.decide(aid, body, request),
                         f"{aid}: {verb}")


async def services_page(request: Request, dash: Site, session: Session) -> Response:
    return render(request, session, "services.html", **await pages.services(request, dash))


async def agents_page(request: Request, dash: Site, session: Session) -> Response:
    return render(request, session, "agents.html", **pages.agents(request))


async def revoke(request: Request, dash: Site, session: Session) -> Response:
    name = str(request.path_params["name"])
    return await attempt(session, "/agents", pages.revoke_agent(request, name),
                         f"agent {name} revoked")


async def sources_page(request: Request, dash: Site, session: Session) -> Response:
    data = await source_routes.sources(request)
    return render(request, session, "sources.html", sources=data)


async def sync_now(request: Request, dash: Site, session: Session) -> Response:
    form = await request.form()
    only = str(form.get("source") or "") or None
    try:
        body = source_routes.SyncIn(source=only) if only else None
    except ValidationError:
        return back(session, "/sources", "refused: no such source")
    return await attempt(session, "/sources", source_routes.sync(request, body),
                         f"synced {only or 'every source'}")


async def secrets_page(request: Request, dash: Site, session: Session) -> Response:
    return render(request, session, "secrets.html", **await pages.secrets(request))


async def store_secret(request: Request, dash: Site, session: Session) -> Response:
    form = await request.form()
    name, field = str(form.get("name", "")).strip(), str(form.get("field", "")).strip()
    value = SecretStr(str(form.get("value", "")))
    try:
        body = SecretPut(fields={field: value}) if field else SecretPut(value=value)
    except ValidationError:
        return back(session, "/secrets", "refused: a value is required (up to the size limit)")
    if len(name) > 71 or not ENTRY_RE.fullmatch(name):
        return back(session, "/secrets", "refused: a name is 1-64 of a-z 0-9 _ - "
                    "(or source.NAME)")
    where = f"{name} (field {field})" if field else name
    return await attempt(session, "/secrets", keystore_routes.put_secret(body, request, name),
                         f"stored {where}; the value is not shown again")


async def lock(request: Request, dash: Site, session: Session) -> Response:
    return await attempt(session, "/secrets", keystore_routes.lock(request), "locked")


async def unlock(request: Request, dash: Site, session: Session) -> Response:
    form = await request.form()
    try:
        body = UnlockIn(password=SecretStr(str(form.get("password", ""))))
    except ValidationError:
        return back(session, "/secrets", "refused: enter the master password")
    return await attempt(session, "/secrets", keystore_routes.unlock(body, request), "unlocked")


def create_app(dash: Site) -> Front:
    s = need_session
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", s(logout), methods=["POST"]),
        Route("/", s(overview), methods=["GET"]),
        Route("/requests", s(requests_page), methods=["GET"]),
        Route("/events/requests", s(request_events), methods=["GET"]),
        Route("/approvals", s(approvals_page), methods=["GET"]),
        Route("/approvals/pending", s(approvals_fragment), methods=["GET"]),
        Route("/approvals/count", s(bell), methods=["GET"]),
        Route("/approvals/{aid}", s(decide), methods=["POST"]),
        Route("/services", s(services_page), methods=["GET"]),
        Route("/agents", s(agents_page), methods=["GET"]),
        Route("/agents/{name}/revoke", s(revoke), methods=["POST"]),
        Route("/sources", s(sources_page), methods=["GET"]),
        Route("/sources/sync", s(sync_now), methods=["POST"]),
        Route("/secrets", s(secrets_page), methods=["GET"]),
        Route("/secrets", s(store_secret), methods=["POST"]),
        Route("/lock", s(lock), methods=["POST"]),
        Route("/unlock", s(unlock), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: _internal,
                                                       404: _not_found, 405: _not_found})
    app.state.admin = dash.ctx  # the admin functions find their context here
    app.state.dashboard = dash
    return Front(app)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"message": "no such page", "type": "vaultproxy_error",
                                   "code": "not_found"}}, status_code=404,
                        headers={"X-Vaultproxy-Error": "not_found"})


async def _internal(request: Request, exc: Exception) -> Response:
    status, code, message = error_response(exc)
    with contextlib.suppress(Exception):
        pages.logger.error("dashboard: %s %s failed: %s", request.method, request.url.path,
                           type(exc).__name__)
    return JSONResponse({"error": {"message": message, "type": "vaultproxy_error",
                                   "code": code}}, status_code=status,
                        headers={"X-Vaultproxy-Error": code})
