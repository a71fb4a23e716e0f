"""The dashboard's front door (raw ASGI, before routing), for every response it makes:

* ``Host`` must be ``localhost`` or an IP literal (a DNS-rebinding page has its own name in
  ``Host``), the admin API's rule (admin/guard.py ``loopback_name``);
* a state-changing request must come from this origin: ``Origin`` equal to
  ``http://<Host>`` (a cross-site form post carries the attacker's origin, or ``null``),
  and ``Sec-Fetch-Site``, when the browser sends it, ``same-origin``;
* headers that keep pages out of caches and frames and scripts to our own files.
The per-session CSRF token (app.py) is the second lock on every POST."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vaultproxy.admin.guard import loopback_name
from vaultproxy.errors import error_body

CSP = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer makes form posts send Origin: null
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v)
    return None


def same_origin(scope: Scope) -> bool:
    host = _header(scope, b"host") or b""
    origin = _header(scope, b"origin")
    if origin is None or origin != b"http://" + host:
        return False
    site = _header(scope, b"sec-fetch-site")
    return site is None or site == b"same-origin"


class Front:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        if not loopback_name(_header(scope, b"host")):
            await _refuse(secured, 403, "host_refused", "the Host header must be localhost or "
                          "an IP address (DNS rebinding guard); open the URL `vaultproxy "
                          "dashboard` prints")
            return
        if scope["method"] not in SAFE_METHODS and not same_origin(scope):
            await _refuse(secured, 403, "origin_refused", "a state-changing request must come "
                          "from the dashboard's own pages (Origin check)")
            return
        await self.app(scope, receive, secured)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-vaultproxy-error", code.encode())]})
    await send({"type": "http.response.body", "body": body})
