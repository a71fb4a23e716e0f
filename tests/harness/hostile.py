"""A hostile TLS upstream on raw sockets: it answers each request with exactly the bytes a
script writes, however malformed, so tests can put the injected credential anywhere the
protocol (or a broken implementation of it) allows.

Each script gets the connection and the request it read, and the credential the proxy
injected (the ``Authorization: Bearer`` value), and writes what it likes. Every request head
the upstream reads is kept in ``received`` (raw bytes) for tests that assert on what arrived.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass
class Request:
    head: bytes
    body: bytes

    @property
    def target(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name.lower().encode():
                return v.strip()
        return None

    @property
    def credential(self) -> bytes:
        """What the proxy injected (the bearer token), or b"" if nothing was."""
        value = self.header("authorization") or b""
        return value.split(b" ", 1)[1] if b" " in value else value


Script = Callable[[ssl.SSLSocket, Request], None]


def _read_request(conn: ssl.SSLSocket) -> Request | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
        if len(buf) > 4 * 1024 * 1024:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length" and v.strip().isdigit():
            length = int(v.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            break
        rest += data
    return Request(head, rest[:length])


@dataclass
class HostileUpstream:
    """TLS on 127.0.0.1:<port>, HTTP/1.1 only; ``scripts`` maps a request path to its script.

    A path with no script gets a plain ``200`` echoing nothing. ``keep_alive`` scripts
    return normally and the upstream reads the next request on the same connection.
    """

    dir: Path
    scripts: dict[str, Script] = field(default_factory=dict)
    names: tuple[str, ...] = ("api.test", "*.api.test", "localhost", "127.0.0.1")
    received: list[Request] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(*self.names)
        self.ca_file = self.dir / "hostile-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self._ctx)
        self._ctx.set_alpn_protocols(["http/1.1"])
        self._sock: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> HostileUpstream:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            conn = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            while True:
                req = _read_request(conn)
                if req is None:
                    return
                self.received.append(req)
                script = self.scripts.get(req.path, _plain)
                script(conn, req)
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass


def _plain(conn: ssl.SSLSocket, req: Request) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
