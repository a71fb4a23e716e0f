"""Who is on the other end of a Unix socket: SO_PEERCRED (Linux), checked before any read."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def same_uid(sock: socket.socket | None, uid: int | None = None) -> PeerCred | None:
    """The peer's credentials if it runs as ``uid`` (default: ours), else None (refuse).

    Any failure to read the credentials is a refusal.
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        cred = peer_cred(sock)
    except OSError:
        return None
    wanted = os.getuid() if uid is None else uid
    return cred if cred.uid == wanted else None
