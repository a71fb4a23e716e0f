"""The proxy's listening socket, served by our own accept loop (``--workers`` and single runs).

mitmproxy binds its listeners itself (``AsyncioServerInstance.listen`` ->
``asyncio.start_server``): every worker would need its own socket, and asyncio's accept loop
answers "out of file descriptors" with nothing but a logged traceback per retry. ``use(sock)``
replaces ``RegularInstance.listen`` in this process so that mitmproxy serves the one socket
the supervisor bound (engine/listener.py) through ``accept.SharedServer``: accept pauses and
backs off when the process is out of descriptors, clients beyond the reserve get
``503 overloaded`` at once, and one log line per interval counts them (seam/accept.py).
If mitmproxy moved the method, ``use()`` refuses to start."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from mitmproxy.proxy import mode_servers

from vaultproxy.errors import VaultproxyError
from vaultproxy.seam.accept import SharedServer
from vaultproxy.seam.need import missing

_sock: socket.socket | None = None
_original: Any = None


def use(sock: socket.socket) -> None:
    """From now on, this process's regular-mode proxy listener serves ``sock`` (each start
    of the listener serves a duplicate, so stopping it never closes the shared socket)."""
    global _sock, _original
    symbol = missing(mode_servers, "RegularInstance") or missing(
        mode_servers.RegularInstance, "listen", "handle_stream"
    )
    if symbol is not None:
        raise VaultproxyError(
            f"this mitmproxy has no {symbol}: vaultproxy cannot serve its listening socket"
        )
    _sock = sock
    if _original is not None:
        return
    _original = mode_servers.RegularInstance.listen

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        shared = _sock
        if shared is None or port != shared.getsockname()[1]:
            # not ours: another Master in this process, or another mode (--mtls-listen)
            return await _original(self, host, port)  # type: ignore[no-any-return]
        return [SharedServer(shared.dup(), self.handle_stream, asyncio.get_running_loop())]

    mode_servers.RegularInstance.listen = listen  # type: ignore[method-assign,assignment]


def release() -> None:
    """Listeners started from now on bind as mitmproxy does (tests; a stopped run)."""
    global _sock
    _sock = None
