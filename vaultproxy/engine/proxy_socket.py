"""``proxy.sock``: the proxy port over a Unix socket, for agents in a sandbox (`exec`).

An isolated agent has its own network namespace; its only way out is this socket, which
`vaultproxy exec` connects to outside the sandbox and hands in (sandbox/broker.py). The
socket lives in the 0700 home, is 0600, and every connection's SO_PEERCRED uid must equal
ours (checked before any byte is read, like ``admin.sock``). An accepted connection is
relayed byte for byte to the proxy's own TCP listener on loopback, so it goes through
exactly the stages (and, with ``--workers N``, every worker process) a TCP
client does. Only the supervisor serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from vaultproxy.admin import peercred
from vaultproxy.admin.server import bind_unix
from vaultproxy.errors import VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.net.splice import splice

logger = logging.getLogger(__name__)


def loopback_target(listen: tuple[str, int]) -> tuple[str, int]:
    """Where to dial the proxy's TCP listener: a wildcard bind is reached on loopback."""
    host, port = listen
    if host in ("0.0.0.0", ""):  # noqa: S104 - mapping a wildcard bind to loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


class ProxySocket:
    def __init__(self, home: Home, target: tuple[str, int]) -> None:
        self.path = str(home.proxy_sock)
        self.target = loopback_target(target)
        self._server: asyncio.Server | None = None
        self._ino: int | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = bind_unix(self.path)  # 0600; a live socket of another proxy is an error
        self._ino = os.lstat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._handle, sock=sock)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            if peercred.same_uid(writer.get_extra_info("socket")) is None:
                logger.warning("proxy.sock: refused a connection from another user")
                return
            try:
                up = await asyncio.open_connection(*self.target)
            except OSError as e:
                logger.error("proxy.sock: cannot reach the proxy listener: %s", e.strerror)
                return
            await splice((reader, writer), up)
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    def close(self) -> None:
        """Stop accepting and remove our socket file (not a successor's)."""
        if self._server is not None:
            self._server.close()
        if self._ino is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
            self._ino = None

    async def stop(self) -> None:
        self.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=2.0)


async def start(home: Home, target: tuple[str, int]) -> ProxySocket | None:
    """The listener, or None (logged) when the socket cannot be created."""
    ps = ProxySocket(home, target)
    try:
        await ps.start()
    except VaultproxyError as e:
        logger.error("proxy socket not available (isolated `vaultproxy exec` will refuse): %s", e)
        return None
    return ps
