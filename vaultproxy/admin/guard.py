"""The admin API's front door (raw ASGI, before routing): DNS-rebinding guard and bearer
token on TCP; the Unix socket's peer was checked (SO_PEERCRED) when it connected."""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from vaultproxy.admin.caller import caller_of
from vaultproxy.admin.token import bearer_matches
from vaultproxy.errors import error_body
from vaultproxy.net.hostnames import split_authority

TRANSPORT_KEY = "vaultproxy.transport"
CALLER_KEY = "vaultproxy.caller"
PEER_KEY = "vaultproxy.peer"  # the transport identity alone: no self-asserted X-Caller-Id
OPEN_PATHS = frozenset({"/v1/health"})
SELF_AUTH_PATHS = frozenset({"/mcp"})  # the admin token or an agent's: checked by the route


def loopback_name(host_header: bytes | None) -> bool:
    """Is Host a name that cannot be rebound by DNS: ``localhost`` or an IP literal?"""
    if not host_header:
        return False
    try:
        text = host_header.decode("ascii")
    except UnicodeDecodeError:
        return False
    host, port = split_authority(text)
    if port is not None and port < 0:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v)
    return None


async def _refuse(send: Send, status: int, code: str, message: str, extra: list[Any]) -> None:
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-vaultproxy-error", code.encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        transport = scope.get(TRANSPORT_KEY, "tcp")  # unmarked means TCP: token required
        if transport != "unix":
            if not loopback_name(_header(scope, b"host")):
                await _refuse(send, 403, "host_refused",
                              "the Host header must be localhost or an IP address", [])
                return
            path = scope.get("path")
            if path not in OPEN_PATHS and path not in SELF_AUTH_PATHS and not bearer_matches(
                _header(scope, b"authorization"), self.token
            ):
                await _refuse(send, 401, "unauthorized", "missing or wrong admin token",
                              [(b"www-authenticate", b'Bearer realm="vaultproxy"')])
                return
        scope[CALLER_KEY] = caller_of(scope.get("headers", []), transport, scope.get("client"))
        scope[PEER_KEY] = caller_of([], transport, scope.get("client"))
        await self.app(scope, receive, send)


def marked(app: ASGIApp, transport: str) -> ASGIApp:
    """The app as served on one listener; the mark is set by us, never by the request."""

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        scope[TRANSPORT_KEY] = transport
        await app(scope, receive, send)

    return inner
