"""The dashboard listener: one more uvicorn server in the supervisor's event loop, beside
the admin API (the process that owns approvals and the audit stream). Off when
``--dashboard-listen`` is empty; a non-loopback address is announced with a ``SECURITY:``
line."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.server import _config, bind_tcp
from vaultproxy.dashboard.app import create_app
from vaultproxy.dashboard.feed import AuditFeed
from vaultproxy.dashboard.sessions import Sessions
from vaultproxy.dashboard.site import Site
from vaultproxy.errors import VaultproxyError
from vaultproxy.seam.signals import Server as _Server


def bind(host: str, port: int) -> socket.socket:
    return bind_tcp(host, port, "the dashboard",
                    "see --dashboard-listen; empty turns it off")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class DashboardServer:
    def __init__(self, listen: tuple[str, int], workers: Callable[[], int]) -> None:
        self.listen, self.workers = listen, workers
        self.feed = AuditFeed()
        self.sessions = Sessions()
        self.address: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> None:
        self._sock = bind(*self.listen)
        host, port = self._sock.getsockname()[:2]
        self.address = (str(host), int(port))

    @property
    def url(self) -> str:
        assert self.address is not None
        host, port = self.address
        return f"http://{url_host('127.0.0.1' if host == '0.0.0.0' else host)}:{port}"  # noqa: S104

    def login_url(self) -> str:
        """A one-time login URL; the token is in the fragment (not sent in requests, not in
        access logs or Referer), and the page's script exchanges it for a session."""
        return f"{self.url}/login#token={self.sessions.mint_login()}"

    async def start(self, ctx: AdminContext) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None and self.address is not None
        self.feed.bind(asyncio.get_running_loop())
        dash = Site(ctx, self.feed, self.sessions, self.workers,
                         lambda: self.address[1] if self.address else 0)
        self._server = _Server(_config(create_app(dash), H11Protocol))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        for _ in range(200):
            if self._server.started:
                return
            if self._task.done():
                self._task.result()
                raise VaultproxyError("the dashboard stopped during start-up")
            await asyncio.sleep(0.01)
        raise VaultproxyError("the dashboard did not start")

    async def stop(self) -> None:
        self.feed.close()  # live event streams end, so the server can stop at once
        if self._server is not None:
            self._server.should_exit = True
        if self._sock is not None:
            self._sock.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 8)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110 - stopping anyway
                pass

    def warnings(self) -> list[str]:
        if self.listen[0] not in LOOPBACK_HOSTS:
            return [f"SECURITY: the dashboard listens on {self.listen[0]}, not loopback: other "
                    "hosts can reach its login page (a session still needs the one-time URL "
                    "from `vaultproxy dashboard`, and Host must be an IP address)"]
        return []
