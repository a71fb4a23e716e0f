"""SO_REUSEPORT proxy listeners, for ``vaultproxy run --workers N``.

mitmproxy binds its listeners itself (``AsyncioServerInstance.listen`` ->
``asyncio.start_server``) with no way to ask for SO_REUSEPORT, so ``enable()`` replaces
``RegularInstance.listen`` in this process only. Without it N workers cannot share a port:
if mitmproxy moved the method, ``enable()`` refuses (``--workers 1`` still works)."""

from __future__ import annotations

import asyncio
from typing import Any

from mitmproxy.proxy import mode_servers

from vaultproxy.errors import VaultproxyError
from vaultproxy.seam.need import missing

_enabled = False


def enable() -> None:
    """From now on, this process's regular-mode proxy listeners use SO_REUSEPORT."""
    global _enabled
    if _enabled:
        return
    symbol = missing(mode_servers, "RegularInstance") or missing(
        mode_servers.RegularInstance, "listen", "handle_stream"
    )
    if symbol is not None:
        raise VaultproxyError(
            f"this mitmproxy has no {symbol}: --workers N is not supported; use --workers 1"
        )
    _enabled = True

    async def listen(self: Any, host: str, port: int) -> list[asyncio.Server]:
        server = await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)
        return [server]

    mode_servers.RegularInstance.listen = listen  # type: ignore[method-assign,assignment]
