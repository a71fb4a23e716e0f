"""A local HIBP-style range server: HTTPS on loopback (trustme cert), answers
``GET /range/ABCDE`` from a table, and records every raw byte it was sent."""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

RANGE_PATH = re.compile(r"^/range/[0-9A-F]{5}$")


def sha1_parts(value: str) -> tuple[str, str]:
    digest = hashlib.sha1(value.encode()).hexdigest().upper()
    return digest[:5], digest[5:]


@dataclass
class RangeServer:
    dir: Path
    breached: dict[str, int] = field(default_factory=dict)  # full SHA-1 (upper) -> count
    paths: list[str] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # request line + headers (+ body) as sent
    port: int = 0

    def mark_breached(self, value: str, count: int = 42) -> None:
        prefix, suffix = sha1_parts(value)
        self.breached[prefix + suffix] = count

    def answer(self, prefix: str) -> str:
        lines = [f"{h[5:]}:{n}" for h, n in self.breached.items() if h.startswith(prefix)]
        # Decoys, as the real service pads: other suffixes with counts, and zero-count ones.
        lines += [f"{hashlib.sha1(f'{prefix}{i}'.encode()).hexdigest().upper()[5:]}:{i + 1}"
                  for i in range(20)]
        lines += [f"{hashlib.sha1(f'pad{prefix}{i}'.encode()).hexdigest().upper()[5:]}:0"
                  for i in range(5)]
        return "\r\n".join(lines)

    def start(self) -> RangeServer:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "range-ca.pem").write_bytes(ca.cert_pem.bytes())
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.paths.append(self.path)
                server.raw.append(self.requestline.encode() + b"\r\n" + bytes(self.headers))
                if not RANGE_PATH.match(self.path):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.answer(self.path.rsplit("/", 1)[1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return (self.dir / "range-ca.pem").read_bytes()

    def leaks(self, values: list[str]) -> list[str]:
        """What the server saw that it should not have: a path other than /range/<5 hex>,
        or any value, full SHA-1 or SHA-1 suffix of ``values``, in any case, anywhere."""
        found = [p for p in self.paths if not RANGE_PATH.match(p)]
        seen = b"\n".join(self.raw).lower()
        for v in values:
            prefix, suffix = sha1_parts(v)
            for needle in (v, prefix + suffix, suffix):
                if needle.lower().encode() in seen:
                    found.append(f"{needle[:12]}... of a value")
        return found

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
