"""admin.sock: the SO_PEERCRED check itself, with a real listening socket that everyone may
reach at the file system, and a forked child that setuid's to nobody before connecting."""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from pathlib import Path

import pytest

from vaultproxy.admin.peercred import same_uid

pytestmark = pytest.mark.security


def _accept_from_child(as_uid: int | None) -> tuple[socket.socket, int]:
    d = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(d, 0o755)
    path = str(d / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen(1)
    pid = os.fork()
    if pid == 0:  # child: drop to the other uid, then connect
        try:
            if as_uid is not None:
                os.setgroups([])
                os.setgid(as_uid)
                os.setuid(as_uid)
            server.close()
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            c.recv(1)
            c.close()
        finally:
            os._exit(0)
    conn, _ = server.accept()
    server.close()
    os.unlink(path)
    d.rmdir()
    return conn, pid


def _done(conn: socket.socket, pid: int) -> None:
    conn.close()
    os.waitpid(pid, 0)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to setuid a child")
def test_other_uid_is_refused_and_same_uid_accepted() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    other, pid = _accept_from_child(nobody)
    try:
        assert same_uid(other) is None
    finally:
        _done(other, pid)
    mine, pid = _accept_from_child(None)
    try:
        cred = same_uid(mine)
        assert cred is not None and cred.uid == os.getuid()
    finally:
        _done(mine, pid)


def test_not_a_unix_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert same_uid(s) is None
    assert same_uid(None) is None
    a, b = socket.socketpair()
    with a, b:
        assert same_uid(a, uid=os.getuid() + 1) is None  # a different expected uid refuses
        assert same_uid(a) is not None
