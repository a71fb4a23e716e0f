"""A real TLS upstream on loopback (hypercorn: HTTP/1.1, HTTP/2, WebSocket) whose certificate
comes from a trustme CA, recording every request it receives."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def header_names(self) -> set[str]:
        return {k for k, _ in self.headers}


Reply = tuple[int, list[tuple[bytes, bytes]], list[bytes]]
Handler = Callable[[Received], Reply]


def default_handler(rec: Received) -> Reply:
    body = json.dumps({"ok": True, "path": rec.path, "http_version": rec.http_version}).encode()
    return 200, [(b"content-type", b"application/json")], [body]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Upstream:
    """Serves on 127.0.0.1:<port> with a cert for ``names``; ``ca_pem`` is its trust anchor."""

    dir: Path
    names: tuple[str, ...] = ("api.test", "*.api.test", "localhost", "127.0.0.1")
    handler: Handler = default_handler
    received: list[Received] = field(default_factory=list)
    ws_received: list[str | bytes] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(*self.names)
        self.cert_file = self.dir / "upstream-cert.pem"
        self.ca_file = self.dir / "upstream-ca.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- ASGI ---------------------------------------------------------------------------
    async def app(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        rec = Received(
            method=scope["method"],
            path=scope["raw_path"].decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=[
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
            ],
            body=body,
            http_version=scope["http_version"],
        )
        self.received.append(rec)
        status, headers, chunks = self.handler(rec)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )
        if not chunks:
            await send({"type": "http.response.body", "body": b""})

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.received.append(
            Received(
                method="WEBSOCKET",
                path=scope["raw_path"].decode("latin-1"),
                query=scope["query_string"].decode("latin-1"),
                headers=[
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
                ],
                body=b"",
                http_version=scope.get("http_version", "1.1"),
            )
        )
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            self.ws_received.append(text if text is not None else msg.get("bytes", b""))
            if text is not None:
                await send({"type": "websocket.send", "text": "echo:" + text})
            else:
                await send({"type": "websocket.send", "bytes": msg.get("bytes", b"")})

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Upstream:
        # The listening socket is bound here (port 0) and handed to hypercorn by its fd: a
        # port picked by ``free_port()`` and bound later could be taken in between by another
        # xdist worker's server.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the fd now
        config.certfile = str(self.cert_file)
        config.keyfile = str(self.cert_file)
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = None
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_until_complete(serve(self.app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                threading.Event().wait(0.05)
        raise RuntimeError("upstream did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)
