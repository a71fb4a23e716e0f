"""A raw HTTP/1.1 reader for tests that send exactly the bytes they mean (manual CONNECT,
odd Host headers): no client-side normalisation in the way."""

from __future__ import annotations

import socket
import ssl

from tests import canary


def recv_response(sock: socket.socket | ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Read one response: status, headers (lowercase names), body (by Content-Length).
    Everything read is fed to the session canary check."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0]:
        return 0, {}, b""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    canary.scan_text("raw proxy reply", buf + body)
    return int(lines[0].split()[1]), headers, body
