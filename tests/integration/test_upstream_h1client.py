"""The pool's own HTTP/1.1 client (net/h1pool.py): what it adds to the httpcore pool's
guarantees, on its own transport, against raw-socket TLS upstreams.

* An upstream that sends a second, unasked response after the one asked for (a response
  queued for whoever asks next, the upstream half of a desync) never answers the next
  request: the connection had bytes after its response, so it is closed, not reused. The
  twin: httpcore's pool (the path before this client) hands that queued response to the
  next request.
* A re-resolved address never reuses a connection to the old one (as the httpcore pool:
  test_upstream_readdress.py).
* A connection the upstream closed while idle is never used again: a POST (never resent)
  goes out on a new connection.
* An upstream that chooses HTTP/2 is not this client's (``WantsHTTP2``): the stage sends
  its requests through httpcore's pool."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpcore
import pytest
import trustme

from tests.harness.upstream import Upstream
from tests.integration.test_upstream_pool import CountingUpstream
from tests.integration.test_upstream_readdress import _on
from vaultproxy.net.h1pool import H1Pool, H1Response, WantsHTTP2
from vaultproxy.net.outbound import UpstreamKey, pool_context, pool_transport

pytestmark = pytest.mark.integration

NAME = "h1.api.test"
SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"


@dataclass
class RawUpstream:
    """TLS, HTTP/1.1 keep-alive, one thread per connection. Each answer names its
    connection; ``/two`` is followed, in the same write, by ``SMUGGLED``; ``/bye`` closes
    the connection 0.2 s after its answer (an upstream's short keep-alive timeout)."""

    ca: trustme.CA
    alpn: tuple[str, ...] = ("http/1.1",)
    accepted: int = 0
    methods: list[str] = field(default_factory=list)

    def start(self) -> RawUpstream:
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(NAME).configure_cert(self._ctx)
        self._ctx.set_alpn_protocols(list(self.alpn))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._sock.close()

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
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except (OSError, ssl.SSLError):
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                self.methods.append(method.decode())
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                body = json.dumps({"conn": n, "path": path.decode()}).encode()
                out = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                if path == b"/two":
                    out += SMUGGLED
                conn.sendall(out)
                if path == b"/bye":
                    time.sleep(0.2)
                    return


@pytest.fixture(scope="module")
def raw(upstream: Upstream) -> Iterator[RawUpstream]:
    up = RawUpstream(upstream.ca).start()
    yield up
    up.stop()


def _h1(upstream: Upstream) -> H1Pool:
    key = UpstreamKey("h1", NAME, upstream.ca_file, False)
    return H1Pool(pool_context(key, http2=True), idle=30)


async def _read(resp: H1Response) -> bytes:
    body = b""
    while (chunk := await resp.next_chunk(5.0)) is not None:
        body += chunk
    return body


async def _get(pool: H1Pool, port: int, path: str, method: bytes = b"GET",
               ip: str = "127.0.0.1") -> bytes:
    resp = await pool.exchange(ip, port, NAME, method, path.encode(),
                               [(b"Host", NAME.encode()), (b"Content-Length", b"0")], b"",
                               5.0, 5.0)
    assert resp.status == 200
    return await _read(resp)


def test_an_unasked_second_response_never_answers_the_next_request(
        raw: RawUpstream, upstream: Upstream) -> None:
    async def run() -> list[bytes]:
        pool = _h1(upstream)
        got = [await _get(pool, raw.port, "/two"), await _get(pool, raw.port, "/next")]
        await pool.aclose()
        return got

    first, second = asyncio.run(run())
    assert json.loads(first)["path"] == "/two"
    assert json.loads(second)["path"] == "/next"  # a fresh answer, on a new connection
    assert json.loads(second)["conn"] != json.loads(first)["conn"]


def test_twin_httpcores_pool_hands_the_queued_response_to_the_next_request(
        raw: RawUpstream, upstream: Upstream) -> None:
    async def run() -> list[bytes]:
        pool = pool_transport(UpstreamKey("h1", NAME, upstream.ca_file, False), http2=False,
                              idle=30)
        got = []
        for path in ("/two", "/next"):
            r = await pool.request("GET", f"https://127.0.0.1:{raw.port}{path}",
                                   headers={"Host": NAME}, extensions={"sni_hostname": NAME})
            got.append(r.content)
        await pool.aclose()
        return got

    assert asyncio.run(run())[1] == b"smuggled"


def test_a_kept_connection_is_reused(raw: RawUpstream, upstream: Upstream) -> None:
    """The twin of the two tests around it: a clean response leaves the connection warm."""
    async def run() -> list[int]:
        pool = _h1(upstream)
        got = [json.loads(await _get(pool, raw.port, p))["conn"] for p in ("/a", "/b", "/c")]
        assert pool.dials == 1
        await pool.aclose()
        return got

    got = asyncio.run(run())
    assert got[0] == got[1] == got[2]


def test_a_connection_the_upstream_closed_while_idle_is_not_used(
        raw: RawUpstream, upstream: Upstream) -> None:
    async def run() -> list[int]:
        pool = _h1(upstream)
        first = json.loads(await _get(pool, raw.port, "/bye"))["conn"]
        await asyncio.sleep(0.6)  # the upstream closed it meanwhile
        second = json.loads(await _get(pool, raw.port, "/post", method=b"POST"))["conn"]
        await pool.aclose()
        return [first, second]

    first, second = asyncio.run(run())
    assert second != first
    assert raw.methods.count("POST") == 1  # sent once: on the live connection


@pytest.fixture(scope="module")
def two(upstream: Upstream) -> Iterator[tuple[CountingUpstream, CountingUpstream]]:
    old = CountingUpstream(upstream.ca, (NAME,)).start()
    new = _on(CountingUpstream(upstream.ca, (NAME,)), "127.0.0.2", old.port)
    yield old, new
    old.stop()
    new.stop()


def test_a_new_address_never_reuses_a_connection_to_the_old(
        two: tuple[CountingUpstream, CountingUpstream], upstream: Upstream) -> None:
    old, new = two

    async def run() -> list[int]:
        pool = _h1(upstream)
        got = [json.loads(await _get(pool, old.port, "/", ip=ip))["conn"]
               for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2")]
        await pool.aclose()
        return got

    got = asyncio.run(run())
    assert old.accepted == 1 and new.accepted == 1  # one connection each, each reused
    assert got == [1, 1, 1, 1]


def test_an_http2_upstream_is_handed_back(upstream: Upstream) -> None:
    h2 = RawUpstream(upstream.ca, alpn=("h2",)).start()

    async def run() -> None:
        pool = _h1(upstream)
        with pytest.raises(WantsHTTP2):
            await _get(pool, h2.port, "/")
        with pytest.raises(WantsHTTP2):
            await pool.prewarm("127.0.0.1", h2.port, NAME, 5.0)
        await pool.aclose()

    try:
        asyncio.run(run())
    finally:
        h2.stop()


def test_twin_an_http11_upstream_is_served(raw: RawUpstream, upstream: Upstream) -> None:
    async def run() -> str:
        pool = _h1(upstream)
        assert await pool.prewarm("127.0.0.1", raw.port, NAME, 5.0) == "http/1.1"
        before = raw.accepted
        await _get(pool, raw.port, "/")
        assert raw.accepted == before  # on the pre-warmed connection
        await pool.aclose()
        return "ok"

    assert asyncio.run(run()) == "ok"


def test_errors_are_httpcores_types(upstream: Upstream) -> None:
    """The stage's wording (``pool_error_text``) and resend rule read httpcore's types."""
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()

    async def run() -> None:
        pool = _h1(upstream)
        with pytest.raises(httpcore.ConnectError):
            await _get(pool, port, "/")
        await pool.aclose()

    asyncio.run(run())
