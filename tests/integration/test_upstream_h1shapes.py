"""Each response shape two HTTP/1 parsers might read differently, from a raw-socket TLS
upstream through the pool's own HTTP/1.1 client (net/h1pool.py), is refused or read exactly
as h11 reads the same bytes: the fast head reader takes none of the ambiguous ones.

The shapes are tests/unit/test_speed_h1response.py's. The twin: a plain response is read by
the fast path (``parse_head`` takes it) and its connection kept for the next request; the one
followed by a second, unasked response is read the same, and its connection is closed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpcore
import pytest

from tests.harness.tls_server import TLSServer, content_length, read_body, read_head
from tests.harness.upstream import Upstream
from tests.unit.test_speed_h1response import SHAPES, _h11
from vaultproxy.net.h1pool import H1Pool, parse_head
from vaultproxy.net.outbound import UpstreamKey, pool_context

pytestmark = pytest.mark.integration

NAME = "shapes.api.test"


@dataclass
class ShapeUpstream(TLSServer):
    """Answers ``/<i>`` with ``SHAPES[i]``'s bytes in one write; closes the connection after
    it unless the path ends in ``k`` (kept open for the next request)."""

    names: tuple[str, ...] = (NAME,)

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            _, buf = read_body(conn, buf, content_length(head))
            path = head.split(b" ")[1].decode()
            keep = path.endswith("k")
            conn.sendall(SHAPES[int(path.strip("/k"))][1])
            if not keep:
                return


@pytest.fixture(scope="module")
def shapes(upstream: Upstream) -> Iterator[ShapeUpstream]:
    up = ShapeUpstream(upstream.ca).start()
    yield up
    up.stop()


def _pool(upstream: Upstream) -> H1Pool:
    return H1Pool(pool_context(UpstreamKey("shapes", NAME, upstream.ca_file, False),
                               http2=False), idle=30)


async def _fetch(pool: H1Pool, port: int, path: str,
                 method: bytes = b"GET") -> tuple[str, int, bytes]:
    try:
        resp = await pool.exchange("127.0.0.1", port, NAME, method, path.encode(),
                                   [(b"Host", NAME.encode())], b"", 5.0, 5.0)
        body = b""
        while (chunk := await resp.next_chunk(5.0)) is not None:
            body += chunk
    except httpcore.ProtocolError:
        return "refused", 0, b""
    return "read", resp.status, body


# (every shape with bytes: an upstream that closes at once is test_upstream_h1client's)
SENT = [i for i, s in enumerate(SHAPES) if s[1]]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("i", SENT, ids=[SHAPES[i][0] for i in SENT])
def test_a_hostile_shape_is_refused_or_read_as_h11_reads_it(
        shapes: ShapeUpstream, upstream: Upstream, i: int, method: bytes) -> None:
    name, data, _ = SHAPES[i]

    async def run() -> tuple[str, int, bytes]:
        pool = _pool(upstream)
        try:
            return await _fetch(pool, shapes.port, f"/{i}", method)
        finally:
            await pool.aclose()

    got = asyncio.run(run())
    want = _h11(data, method, eof=True)
    if "error" in want or not want["end"]:
        assert got[0] == "refused", (name, got, want)
    else:
        assert got == ("read", want["status"], want["body"]), (name, got, want)


def test_a_plain_response_keeps_its_connection_and_a_queued_one_does_not(
        shapes: ShapeUpstream, upstream: Upstream) -> None:
    plain = next(i for i, s in enumerate(SHAPES) if s[0] == "plain")
    queued = next(i for i, s in enumerate(SHAPES) if s[0] == "bytes after the body")
    assert parse_head(SHAPES[plain][1], b"GET") is not None  # the fast path reads both
    assert parse_head(SHAPES[queued][1], b"GET") is not None

    async def run() -> tuple[list[tuple[str, int, bytes]], int, int]:
        pool = _pool(upstream)
        got = [await _fetch(pool, shapes.port, f"/{plain}k"),
               await _fetch(pool, shapes.port, f"/{plain}k")]
        kept = pool.dials
        got += [await _fetch(pool, shapes.port, f"/{queued}k"),
                await _fetch(pool, shapes.port, f"/{plain}k")]
        await pool.aclose()
        return got, kept, pool.dials

    got, kept, dials = asyncio.run(run())
    assert got[0] == got[1] == got[3] == ("read", 200, b"hello")
    assert got[2] == ("read", 200, b"ok")  # not "smuggled", and never for the next request
    assert kept == 1  # the twin: a clean response leaves its connection warm
    assert dials == 2  # the queued response's connection was closed, not reused
