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
* An upstream that chooses HTTP/2 is not this client's (``WantsHTTP2``): the connection
  goes to httpcore's HTTP/2 (multiplexing), and so do the stage's next requests."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import pytest
import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.harness.tls_server import TLSServer, content_length, read_body, read_head
from tests.harness.upstream import Upstream, free_port
from tests.integration.test_upstream_pool import CountingUpstream
from vaultproxy.net.h1pool import H1Pool, H1Response, HandedStream, WantsHTTP2
from vaultproxy.net.outbound import (
    UpstreamKey,
    adopt,
    drop_closed,
    pool_context,
    pool_transport,
)

pytestmark = pytest.mark.integration

NAME = "h1.api.test"
SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"


@dataclass
class RawUpstream(TLSServer):
    """TLS, HTTP/1.1 keep-alive, one thread per connection. Each answer names its
    connection; ``/two`` is followed, in the same write, by ``SMUGGLED``; ``/bye`` closes
    the connection 0.2 s after its answer (an upstream's short keep-alive timeout)."""

    names: tuple[str, ...] = (NAME,)
    methods: list[str] = field(default_factory=list)

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            method, path = head.split(b" ")[:2]
            self.methods.append(method.decode())
            _, buf = read_body(conn, buf, content_length(head))
            body = json.dumps({"conn": n, "path": path.decode()}).encode()
            out = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (
                len(body), b"" if method == b"HEAD" else body)
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


def test_a_head_response_leaves_the_connection_warm(raw: RawUpstream,
                                                    upstream: Upstream) -> None:
    """A response with no body to read (HEAD: its end comes with the head, which is all
    the stage reads) is no cut body: the connection is reused."""
    async def run() -> tuple[int, int]:
        pool = _h1(upstream)
        resp = await pool.exchange("127.0.0.1", raw.port, NAME, b"HEAD", b"/h",
                                   [(b"Host", NAME.encode())], b"", 5.0, 5.0)
        assert resp.status == 200
        await resp.aclose()  # as the stage does at the response's end
        conn = json.loads(await _get(pool, raw.port, "/after"))["conn"]
        await pool.aclose()
        return pool.dials, conn

    dials, _ = asyncio.run(run())
    assert dials == 1


def test_twin_a_body_not_read_to_its_end_closes_the_connection(raw: RawUpstream,
                                                               upstream: Upstream) -> None:
    async def run() -> int:
        pool = _h1(upstream)
        resp = await pool.exchange("127.0.0.1", raw.port, NAME, b"GET", b"/g",
                                   [(b"Host", NAME.encode())], b"", 5.0, 5.0)
        await resp.aclose()  # the body never read
        await _get(pool, raw.port, "/after")
        await pool.aclose()
        return pool.dials

    assert asyncio.run(run()) == 2


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
    new = CountingUpstream(upstream.ca, (NAME,), host="127.0.0.2", port=old.port).start()
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
        for attempt in (_get(pool, h2.port, "/"),
                        pool.prewarm("127.0.0.1", h2.port, NAME, 5.0)):
            with pytest.raises(WantsHTTP2) as caught:
                await attempt
            stream = caught.value.stream
            assert isinstance(stream, HandedStream)
            await stream.aclose()
            await asyncio.wait_for(asyncio.shield(stream.gone), 5)
        await pool.aclose()

    try:
        asyncio.run(run())
    finally:
        h2.stop()


def test_the_handed_back_connection_serves_httpcores_http2(tmp_path: Path) -> None:
    """The dial is not wasted: httpcore's HTTP/2 connection takes it over (``adopt``) and
    the request goes out on it (the upstream sees the same client port). Once the upstream
    closed it (its keep-alive timeout), ``drop_closed`` drops it and a POST (never resent)
    goes out on a new connection."""
    ca = trustme.CA()
    pem = tmp_path / "up.pem"
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["client"][1])
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> list[str]:
        cfg = Config()
        cfg.bind = [f"127.0.0.1:{port}"]
        cfg.certfile = cfg.keyfile = str(pem)
        cfg.alpn_protocols = ["h2"]
        cfg.keep_alive_timeout = 1
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        key = UpstreamKey("h1", NAME, ca_file, False)
        ctx = pool_context(key, http2=True)
        h1, core = H1Pool(ctx, 30), pool_transport(key, http2=True, idle=30, ssl_context=ctx)
        url = httpcore.URL(scheme=b"https", host=b"127.0.0.1", port=port, target=b"/")
        with pytest.raises(WantsHTTP2) as caught:
            await _get(h1, port, "/")
        local = caught.value.stream.get_extra_info("sockname")[1]
        assert adopt(core, caught.value.stream, url, 30, h2=True)
        got = []
        for _ in range(2):
            r = await core.request("GET", url, headers={"Host": NAME},
                                   extensions={"sni_hostname": NAME})
            got.append(f"{r.extensions['http_version'].decode()} {r.status}")
        assert seen == [local, local]
        await asyncio.sleep(2.0)  # past the upstream's keep-alive timeout
        assert await drop_closed(core) == 1
        r = await core.request("POST", url, headers={"Host": NAME, "Content-Length": "0"},
                               extensions={"sni_hostname": NAME})
        got.append(f"{r.extensions['http_version'].decode()} {r.status}")
        assert seen[-1] != local
        stream = caught.value.stream
        assert isinstance(stream, HandedStream)
        await core.aclose()  # (closes the adopted stream)
        await asyncio.wait_for(asyncio.shield(stream.gone), 5)
        await h1.aclose()
        stop.set()
        try:
            await asyncio.wait_for(server, 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - hypercorn's TLS shutdown noise
            pass
        return got

    assert asyncio.run(run()) == ["HTTP/2 200"] * 3


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
