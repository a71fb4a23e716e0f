"""The admin listeners, in the proxy's event loop: TCP (bearer token) and ``admin.sock``
(0600 in the 0700 home; every connection's SO_PEERCRED uid must equal ours, checked in
``connection_made`` before any byte is read). Both are uvicorn servers over one app."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vaultproxy.admin import peercred
from vaultproxy.admin.app import create_app
from vaultproxy.admin.context import AdminContext
from vaultproxy.admin.guard import marked
from vaultproxy.admin.token import new_token, write_token
from vaultproxy.core.state import Live
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.seam import signals

logger = logging.getLogger(__name__)



class PeerCheckedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol behind an SO_PEERCRED gate (Unix socket only)."""

    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        cred = peercred.same_uid(transport.get_extra_info("socket"))
        if cred is None:
            self._refused = True
            logger.warning("admin.sock: refused a connection from another user")
            transport.abort()  # type: ignore[attr-defined]
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self.client = ("unix", cred.uid)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            super().connection_lost(exc)


def _config(app: Any, http: type[asyncio.Protocol], uds: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", access_log=False,
        server_header=False, date_header=False, proxy_headers=False, http=http, ws="none",
        uds=uds, timeout_graceful_shutdown=5, limit_concurrency=200, interface="asgi3",
    )


def bind_tcp(host: str, port: int, what: str = "the admin API",
             hint: str = "see --admin-listen") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host, family = "127.0.0.1", socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise VaultproxyError(f"cannot listen on {host}:{port} for {what}: "
                              f"{e.strerror} (is it in use? {hint})") from None
    sock.setblocking(False)
    return sock


def bind_unix(path: os.PathLike[str] | str) -> socket.socket:
    """A listening socket at ``path``, mode 0600; a stale socket file is replaced, a live
    one (another vaultproxy on this home) is an error."""
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise VaultproxyError(f"{path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise VaultproxyError(f"{path} is in use: is another vaultproxy running on this home?")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)  # uvicorn/bind leave it 0666-umask; the home is 0700 anyway
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.ENAMETOOLONG or "too long" in str(e):
            raise VaultproxyError(f"{path} is too long for a Unix socket path") from None
        raise VaultproxyError(f"cannot create {path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class AdminServer:
    def __init__(
        self, home: Home, listen: tuple[str, int] | None, *, unix: bool = True,
        live: Live | None = None,
    ) -> None:
        self.home, self.listen, self.unix = home, listen, unix
        self.live = live if live is not None else Live()
        self.address: tuple[str, int] | None = None
        self.socket_path: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[uvicorn.Server] = []
        self._socks: list[tuple[socket.socket, type[asyncio.Protocol], str]] = []
        self.ctx: AdminContext | None = None
        self._socket_ino: int | None = None
        self._refresher: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Bind both listeners and write a fresh token (sync, before the proxy serves)."""
        token = new_token()
        write_token(self.home.admin_token, token)
        self.ctx = AdminContext(token=token, live=self.live)
        if self.listen is not None:
            try:
                sock = bind_tcp(*self.listen)
            except VaultproxyError:
                with contextlib.suppress(OSError):
                    self.home.admin_token.unlink()  # a failed start leaves no stale token
                raise
            host, port = sock.getsockname()[:2]
            self.address = (str(host), int(port))
            self._socks.append((sock, H11Protocol, "tcp"))
        if self.unix:
            try:
                usock = bind_unix(self.home.admin_sock)
            except VaultproxyError as e:
                logger.error("admin socket not available: %s", e)
            else:
                self.socket_path = str(self.home.admin_sock)
                self._socket_ino = os.lstat(self.socket_path).st_ino
                self._socks.append((usock, PeerCheckedH11, "unix"))

    async def start(self) -> None:
        if self.ctx is None:
            self.bind()
        assert self.ctx is not None
        app = create_app(self.ctx)
        for sock, proto, kind in self._socks:
            server = signals.Server(_config(marked(app, kind), proto,
                                     uds=self.socket_path if kind == "unix" else None))
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        # Sources' refresh_seconds: here, because only the supervisor runs an admin API.
        self._refresher = asyncio.create_task(self.ctx.sync.refresh_loop(self.live))
        for _ in range(200):
            if all(s.started for s in self._servers):
                return
            for t in self._tasks:
                if t.done():
                    t.result()
                    raise VaultproxyError("the admin API stopped during start-up")
            await asyncio.sleep(0.01)
        raise VaultproxyError("the admin API did not start")

    def close_listeners(self) -> None:
        """Stop accepting now (sync; safe from a mitmproxy ``done`` hook) and remove our
        socket and token files, not a successor's."""
        if self._refresher is not None:
            self._refresher.cancel()  # the sources' refresh_seconds loop
        if self.ctx is not None:
            self.ctx.closing = True  # open audit streams end, so shutdown does not wait
        for server in self._servers:
            server.should_exit = True
            for listener in getattr(server, "servers", []):
                listener.close()
        for sock, _proto, _kind in self._socks:
            sock.close()
        if self.socket_path and self._socket_ino is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.socket_path).st_ino == self._socket_ino:
                    os.unlink(self.socket_path)
        if self.ctx is not None:
            with contextlib.suppress(OSError):
                if self.home.admin_token.read_text().strip() == self.ctx.token:
                    self.home.admin_token.unlink()

    async def stop(self) -> None:
        self.close_listeners()
        for t in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(t, 8)
        if self._refresher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._refresher
        if self.ctx is not None:
            for close in self.ctx.closers:
                with contextlib.suppress(Exception):
                    await close()
            await self.ctx.clients.aclose()
            await self.ctx.sync.aclose()
