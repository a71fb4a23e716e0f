"""Read socket options of another process's sockets: ``pidfd_getfd(2)`` duplicates each of its
descriptors into this process (Linux >= 5.6; same uid, ptrace access), where ``getsockopt``,
``getsockname`` and ``getpeername`` answer about the very socket the other process holds.
Nothing is patched in the process under test; ``ss``/``/proc/net/tcp`` do not show
TCP_NODELAY."""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class TcpSocket:
    local: tuple[str, int]
    peer: tuple[str, int] | None  # None: a listening (or unconnected) socket
    nodelay: bool


def _syscall(*args: int) -> int:
    r = _libc.syscall(*args)
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(r)


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """Every TCP socket process ``pid`` holds, with its TCP_NODELAY setting."""
    pidfd = _syscall(SYS_PIDFD_OPEN, pid, 0)
    found: list[TcpSocket] = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                fd = _syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            except OSError:
                continue  # closed meanwhile
            s = socket.socket(fileno=fd)
            try:
                tcp = s.family in (socket.AF_INET, socket.AF_INET6)
                if not tcp or s.type != socket.SOCK_STREAM:
                    continue
                try:
                    peer = s.getpeername()[:2]
                except OSError:
                    peer = None
                nd = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                found.append(TcpSocket(s.getsockname()[:2], peer, nd))
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return found
