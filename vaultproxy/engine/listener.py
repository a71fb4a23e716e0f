"""The proxy's one listening socket, bound once by the process ``vaultproxy run`` starts.

Every worker of ``--workers N`` accepts from this same socket: the supervisor passes its fd
to each worker at spawn (``pass_fds``; no other process gets it). One accept queue means a
stopped or wedged worker cannot strand connections (it simply does not accept; the others
do), and nothing can *join* the port: the socket never sets SO_REUSEPORT, so Linux refuses
a second bind on the address -- also one with SO_REUSEPORT from an agent sharing our network
namespace (``vaultproxy exec --share-net``), which with per-worker SO_REUSEPORT listeners
would have received a share of other agents' CONNECTs.
"""

from __future__ import annotations

import errno
import socket

from vaultproxy.errors import VaultproxyError

BACKLOG = 1024


def bind(host: str, port: int) -> socket.socket:
    """The listening socket for ``host:port`` (port 0 -> a free one); not inheritable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # ``proto`` says TCP, and an accepted socket inherits this object's; with 0, every reply
    # to an agent waited ~40 ms for its delayed ACK.
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # SO_REUSEADDR as asyncio sets it (a restart finds the port despite TIME_WAIT); on a
        # listening socket it never lets a second listener in. Never SO_REUSEPORT.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(BACKLOG)
        s.setblocking(False)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise VaultproxyError(
                f"{host}:{port} is already in use (another vaultproxy run?); "
                "stop it or choose another --listen"
            ) from None
        raise VaultproxyError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return s
