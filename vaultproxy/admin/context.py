"""What the admin routes share: the token, limits, locks and the outbound clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from vaultproxy.admin.ratelimit import Backoff, TokenBucket
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.sync.run import Syncer

PROXY_RATE = 20.0  # requests per second per caller on POST /proxy
PROXY_BURST = 60


@dataclass
class AdminContext:
    token: str
    live: Live = field(default_factory=Live)  # the proxy's state, as the engine serves it
    proxy_limit: TokenBucket = field(default_factory=lambda: TokenBucket(PROXY_RATE, PROXY_BURST))
    unlock_backoff: Backoff = field(default_factory=Backoff)
    unlock_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one KDF at a time
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # keystore edits
    clients: UpstreamClients = field(default_factory=UpstreamClients)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # at stop
    sync: Syncer = field(init=False)  # sources: POST /v1/sync and the refresh_seconds loop
    closing: bool = False  # set when the listeners close: open streams (audit/stream) end
    # The dashboard's one-time login URL (set by the engine when the dashboard serves).
    dashboard_login: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        self.sync = Syncer(self.write_lock)  # keystore writes never interleave with the API's


def admin_context(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.admin
    return ctx


def proxy_state(request: Request) -> ProxyState:
    """The live ProxyState (503 not_ready when none is loaded)."""
    return admin_context(request).live.require()


def caller(request: Request) -> str:
    return str(request.scope.get("vaultproxy.caller", "unknown"))


def peer(request: Request) -> str:
    """The caller as the transport proves it (``tcp:<ip>`` / ``unix:uid=N``), for limits that
    a self-chosen ``X-Caller-Id`` must not reset (the unlock backoff)."""
    return str(request.scope.get("vaultproxy.peer", "unknown"))
