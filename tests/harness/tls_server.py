"""Threaded TLS test upstreams on raw sockets, for tests that answer in shapes an HTTP
server library would not send (a second response in one write, a cut body, a malformed
head) or that count what a client did (connections, resumed sessions, SNI).

A subclass says how to answer a connection (``serve``); this class owns the rest: a
certificate for ``names`` from the test's CA, ALPN, one thread per accepted connection
(numbered from 1 in ``accepted``), the TLS handshake, and the end of the connection. The
readers take a buffer and return what is left, so one connection can carry many requests."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Self

import trustme


@dataclass
class TLSServer:
    ca: trustme.CA
    names: tuple[str, ...]
    alpn: tuple[str, ...] = ("http/1.1",)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free one, known after start()
    tls12: bool = False  # at most TLS 1.2
    accepted: int = 0

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*self.names).configure_cert(ctx)
        ctx.set_alpn_protocols(list(self.alpn))
        if self.tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def start(self) -> Self:
        self._ctx = self.context()
        self._sock = socket.create_server((self.host, self.port))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._sock.close()

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        """Answer connection number ``n``; it closes when this returns."""
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(raw, self.accepted), daemon=True).start()

    def _serve(self, raw: socket.socket, n: int) -> None:
        try:
            conn = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with conn:
            try:
                self.serve(conn, n)
            except (OSError, ssl.SSLError):
                return  # the client went: as a real server, nothing to answer


def read_head(conn: ssl.SSLSocket, buf: bytes) -> tuple[bytes, bytes] | None:
    """The next request head (without its blank line) and the bytes after it; None when the
    client closed first."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length" and v.strip().isdigit():
            return int(v.strip())
    return 0


def read_body(conn: ssl.SSLSocket, buf: bytes, length: int) -> tuple[bytes, bytes]:
    """``length`` body bytes (fewer if the client closed) and the bytes after them."""
    while len(buf) < length:
        data = conn.recv(65536)
        if not data:
            break
        buf += data
    return buf[:length], buf[length:]
