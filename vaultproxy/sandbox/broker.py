"""Connections to ``proxy.sock``, made outside the sandbox and handed in as file descriptors.

Inside the sandbox no process may create a Unix socket (sandbox/seccomp.py): a same-uid
socket on the host - a tmux server, the systemd user manager, an IDE, docker - would run
commands *outside* the sandbox for whoever connects. The forwarder still needs one Unix
connection per agent connection, so it asks for them: one byte over a socketpair that
`exec` holds, which connects to ``proxy.sock`` and passes the connected descriptor back
(SCM_RIGHTS). No path to ``proxy.sock`` exists in the sandbox at all.
"""

from __future__ import annotations

import contextlib
import socket
import threading

ASK = b"c"
GIVEN = b"+"
FAILED = b"!"


def serve(channel: socket.socket, path: str) -> None:
    """Outside: answer each request with a fresh connection to ``path`` (until EOF)."""
    while True:
        try:
            if not channel.recv(1):
                return
        except OSError:
            return
        try:
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return
        with up:
            try:
                up.connect(path)
            except OSError:
                with contextlib.suppress(OSError):
                    channel.sendall(FAILED)
                continue
            try:
                socket.send_fds(channel, [GIVEN], [up.fileno()])
            except OSError:
                return


def start(channel: socket.socket, path: str) -> threading.Thread:
    t = threading.Thread(target=serve, args=(channel, path), name="vaultproxy-broker",
                         daemon=True)
    t.start()
    return t


class Connector:
    """Inside: one connected socket per ``connect()`` (thread-safe, blocking)."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._lock = threading.Lock()

    def connect(self) -> socket.socket:
        with self._lock:
            self.channel.sendall(ASK)
            msg, fds, _flags, _addr = socket.recv_fds(self.channel, 1, 1)
        if msg != GIVEN or len(fds) != 1:
            for fd in fds:
                socket.close(fd)
            raise ConnectionRefusedError("the proxy's socket did not answer")
        return socket.socket(fileno=fds[0])
