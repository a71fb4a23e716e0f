"""A raw agent: CONNECT through the proxy, TLS with the proxy's CA, then exactly the bytes a
test writes. Everything it reads is fed to the session canary check."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from tests import canary


def tunnel(proxy_port: int, ca_file: Path, host: str, port: int = 443) -> ssl.SSLSocket:
    """An open TLS connection to ``host`` through the proxy's CONNECT tunnel."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            sock.close()
            raise ConnectionError(f"proxy closed the CONNECT: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 200"):
        sock.close()
        raise ConnectionError(f"CONNECT refused: {head.split(b'\r\n', 1)[0]!r}")
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname=host)


def direct(port: int, ca_file: Path, host: str) -> ssl.SSLSocket:
    """The same, straight to an upstream on loopback (the negative twins' path)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname=host)


def read_all(conn: ssl.SSLSocket, where: str | None = "raw agent") -> bytes:
    """Everything until the peer closes (the requests say ``Connection: close``).

    ``where=None`` skips the canary scan: only for negative twins that read a secret
    straight from an upstream on purpose."""
    out = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            out += data
    except (TimeoutError, ssl.SSLError, ConnectionError):
        pass
    finally:
        conn.close()
    if where is not None:
        canary.scan_text(where, out)
    return out


def exchange(conn: ssl.SSLSocket, request: bytes, where: str | None = "raw agent") -> bytes:
    conn.sendall(request)
    return read_all(conn, where)


def status_of(reply: bytes) -> int:
    line = reply.split(b"\r\n", 1)[0].split(b" ")
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def header_of(reply: bytes, name: str) -> str | None:
    head = reply.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower().encode():
            return v.strip().decode("latin-1")
    return None
