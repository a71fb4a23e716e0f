"""An HTTP/1.0 upstream whose body is delimited by connection close still reaches the agent
whole (the redacting stream re-frames it with chunks), with the credential injected."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from tests.canary import make_canary
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

BODY = b"hello from an HTTP/1.0 server " * 200


@pytest.fixture(scope="module")
def http10(upstream: Upstream) -> Iterator[tuple[int, list[bytes]]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(upstream.cert_file))
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except TimeoutError:
                continue
            with ctx.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                seen.append(data)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
                try:
                    conn.unwrap()
                except (ssl.SSLError, OSError):
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port, seen
    stop.set()
    t.join(5)
    srv.close()


def test_close_delimited_http10_body_arrives_whole(start_proxy, http10):  # type: ignore[no-untyped-def]
    port, seen = http10
    secret = make_canary()
    proxy = start_proxy(service_block("old", "host_inject", "bearer", port), {"old": secret})
    with agent_client(proxy) as c:
        r = c.get("https://old.api.test/legacy")
    assert r.status_code == 200
    assert r.content == BODY
    assert f"authorization: Bearer {secret}".lower().encode() in seen[-1].lower()
