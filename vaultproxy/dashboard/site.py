"""The running dashboard's parts, as the pages see them."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from vaultproxy.admin.context import AdminContext
from vaultproxy.dashboard.feed import AuditFeed
from vaultproxy.dashboard.sessions import Session, Sessions

COOKIE = "vaultproxy_session"


class Site:
    def __init__(self, ctx: AdminContext, feed: AuditFeed, sessions: Sessions,
                 workers: Callable[[], int], port: Callable[[], int]) -> None:
        self.ctx, self.feed, self.sessions = ctx, feed, sessions
        self.workers, self.port = workers, port

    @property
    def cookie(self) -> str:
        """Cookies do not keep ports apart: one name per port, so two proxies on one host
        do not log each other out."""
        return f"{COOKIE}_{self.port()}"

    def session(self, request: Request) -> tuple[str | None, Session | None]:
        sid = request.cookies.get(self.cookie)
        return sid, self.sessions.get(sid)
