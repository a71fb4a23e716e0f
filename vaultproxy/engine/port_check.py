"""Is the proxy port free, before ``vaultproxy run --workers N`` shares it (SO_REUSEPORT)?

Every worker process binds its own listening socket on the same address with SO_REUSEPORT
and the kernel spreads new connections across them; ``seam.reuseport.enable()`` makes
mitmproxy's listeners ask for it (the embedded runner and the worker entry point call it,
never the mitmdump script).

Linux lets only sockets of the same effective uid join a SO_REUSEPORT group, and
``probe()`` (run by the supervisor before anyone binds) fails like a plain bind when the
address is already taken, so a second ``vaultproxy run`` on the same port still gets
"address in use" instead of silently sharing the port.
"""

from __future__ import annotations

import errno
import socket

from vaultproxy.errors import VaultproxyError


def probe(host: str, port: int) -> int:
    """Check that ``host:port`` is free (a plain bind); return the port (0 -> a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise VaultproxyError(
                    f"{host}:{port} is already in use (another vaultproxy run?); "
                    "stop it or choose another --listen"
                ) from None
            raise VaultproxyError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        return int(s.getsockname()[1])
