"""proxy.sock (the sandbox's way to the proxy) admits only the proxy's own uid.

The home is 0700 and the socket 0600, so another uid cannot even reach the path; this test
opens both up on a running proxy to show that the SO_PEERCRED check stands on its own: a
connection from ``nobody`` is closed without a byte relayed, while the same request from our
uid (the twin) reaches the proxy."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess

pytestmark = pytest.mark.security

REQUEST = b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n"


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="vp-proxysock-"))  # reachable by nobody
    os.chmod(base, 0o755)
    canary.watch(base)
    p = ProxyProcess.start(ProxyHome.create(base, "", {}), args=("--workers", "1"))
    yield p
    p.stop()
    shutil.rmtree(base, ignore_errors=True)


def _exchange(path: str, as_uid: int | None) -> bytes:
    """Connect (in a forked child that first becomes ``as_uid``), send REQUEST, and return
    the first bytes of the answer (b"" when the connection was closed on us)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if as_uid is not None:
                os.setgroups([])
                os.setgid(as_uid)
                os.setuid(as_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(path)
            s.sendall(REQUEST)
            os.write(w, s.recv(12) or b"<closed>")
        except (BrokenPipeError, ConnectionResetError):
            os.write(w, b"<closed>")  # closed before or while we sent
        except OSError as e:
            os.write(w, f"<error {e.errno}>".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data


def test_run_json_names_proxy_sock(proxy: ProxyProcess) -> None:
    path = Path(str(proxy.extra["proxy_socket"]))
    assert path == proxy.home.path / "proxy.sock" and path.is_socket()
    assert (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to setuid a child")
def test_other_uid_is_refused_even_when_the_file_system_lets_it_in(proxy: ProxyProcess) -> None:
    path = str(proxy.extra["proxy_socket"])
    home = proxy.home.path
    os.chmod(home, 0o711)
    os.chmod(path, 0o666)
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        assert _exchange(path, nobody) == b"<closed>"
        # Twin: the same bytes from our own uid reach the proxy (which answers the CONNECT).
        assert _exchange(path, None).startswith(b"HTTP/1.1 ")
    finally:
        os.chmod(path, 0o600)
        os.chmod(home, 0o700)
    assert "proxy.sock: refused a connection from another user" in proxy.output()
