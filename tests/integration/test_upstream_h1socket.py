"""The pool's HTTP/1.1 connections run on a non-blocking ``ssl.SSLSocket`` (net/h1pool.py
``_TLSSocket``: OpenSSL reads and writes the socket) instead of the loop's TLS transport
(``H1Pool(transport="loop")``, what they ran on before). Against a hostile raw-socket TLS
upstream, each exchange ends the same on both, on asyncio's loop and on uvloop: the same
status and body, or the same failure (``pool_error_text``), and the same connection kept or
dropped. The upstream's shapes are seeded: responses cut into segments with pauses,
Content-Length (the fast reader), chunked and close-delimited bodies (h11), bodies past the
read high-water mark read by a slow client (pause/resume), a request body larger than the
socket buffers (a blocked ``SSL_write`` retried as the socket drains), close_notify, a bare
FIN, a TLS close mid-head and mid-body, a half-close, bytes while idle; a TLS 1.2
renegotiation request mid-response.

Every connection is verified as before (a wrong name fails the handshake on both), resumes
its TLS session (tests/integration/test_upstream_resume.py runs on the new transport), and
has TCP_NODELAY."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import pytest
import uvloop
from OpenSSL import SSL

from tests.harness.tls_server import TLSServer, content_length, read_body, read_head
from tests.harness.upstream import Upstream
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import H1Pool
from vaultproxy.net.outbound import UpstreamKey, pool_context, pool_error_text

pytestmark = pytest.mark.integration

NAME = "sock.api.test"
SIZES = [0, 5, 1000, 20000, 300_000]
ENDS = ["keep", "keep", "close_notify", "fin", "cut_notify", "cut_fin", "half", "idle_bytes"]


def scenario(seed: int) -> dict[str, Any]:
    """What the upstream does for request ``/<seed>`` (the client draws nothing)."""
    rng = random.Random(seed)
    size = rng.choice(SIZES)
    body = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
    body = body[:size]
    kind = rng.choice(["length", "length", "length", "chunked", "close"])
    if kind == "length":
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Seed: %d\r\n\r\n" % (size, seed)
        wire = head + body
    elif kind == "chunked":
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        parts, at = [], 0
        while at < size:
            n = rng.randint(1, 9000)
            parts.append(b"%x\r\n%s\r\n" % (len(body[at:at + n]), body[at:at + n]))
            at += n
        wire = head + b"".join(parts) + b"0\r\n\r\n"
    else:
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        wire = head + body
    end = rng.choice(ENDS)
    if kind == "close" and end in ("keep", "idle_bytes"):
        end = "fin"
    if end.startswith("cut"):
        wire = wire[:rng.randrange(1, len(wire))] if len(wire) > 1 else wire
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 4))))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    return {"pieces": pieces, "body": body, "pause": rng.choice([0.0, 0.0, 0.002, 0.01]),
            "end": end, "slow_client": rng.random() < 0.3, "post": rng.random() < 0.1}


@dataclass
class HostileUpstream(TLSServer):
    names: tuple[str, ...] = (NAME,)

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        conn.settimeout(5)
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            length = content_length(head)
            sc = scenario(int(head.split(b" ")[1].strip(b"/")))
            if sc["post"]:
                time.sleep(0.05)  # the client's write blocks meanwhile
            _, buf = read_body(conn, buf, length)
            for piece in sc["pieces"]:
                conn.sendall(piece)
                if sc["pause"]:
                    time.sleep(sc["pause"])
            end = sc["end"]
            if end == "keep":
                continue
            if end == "idle_bytes":
                time.sleep(0.01)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nunasked!")
                time.sleep(0.2)
                return
            if end in ("close_notify", "cut_notify"):
                try:
                    conn.unwrap()
                except (OSError, ssl.SSLError):
                    pass
                return
            if end == "half":  # close_notify, then wait for the client's end
                try:
                    conn.unwrap().recv(1)
                except (OSError, ssl.SSLError):
                    pass
                return
            conn.shutdown(socket.SHUT_RDWR)  # a bare FIN: no close_notify
            return


@pytest.fixture(scope="module")
def hostile(upstream: Upstream) -> Iterator[HostileUpstream]:
    up = HostileUpstream(upstream.ca).start()
    yield up
    up.stop()


def _pool(upstream: Upstream, transport: str) -> H1Pool:
    return H1Pool(pool_context(UpstreamKey("sock", NAME, upstream.ca_file, False),
                               http2=False), idle=30, transport=transport)


async def _one(pool: H1Pool, port: int, seed: int) -> tuple[Any, ...]:
    sc = scenario(seed)
    method, body = (b"POST", b"p" * (8 << 20)) if sc["post"] else (b"GET", b"")
    headers = [(b"Host", NAME.encode())]
    if body:
        headers.append((b"Content-Length", b"%d" % len(body)))
    got = hashlib.sha256()
    try:
        resp = await pool.exchange("127.0.0.1", port, NAME, method, b"/%d" % seed, headers,
                                   body, 5.0, 5.0)
        if sc["slow_client"]:
            await asyncio.sleep(0.05)  # past the high-water mark: reading pauses
        n = 0
        while (chunk := await resp.next_chunk(5.0)) is not None:
            got.update(chunk)
            n += len(chunk)
        out: tuple[Any, ...] = ("read", resp.status, n, got.hexdigest())
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as e:
        out = ("failed", pool_error_text(e))
    # an upstream that ends the connection: until the client has seen it (the machine is
    # shared and the upstream a thread: no fixed wait would do), at most a second
    for _ in range(1 if sc["end"] == "keep" else 100):
        await asyncio.sleep(0.01)
        pool.drop_expired()
        if not pool.idle_count():
            break
    return (*out, pool.idle_count())


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())


SEEDS = list(range(1, 49))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_seeded_exchange_ends_as_on_the_loops_tls_transport(
        hostile: HostileUpstream, upstream: Upstream, loop: str) -> None:
    async def run(transport: str) -> list[tuple[Any, ...]]:
        pool = _pool(upstream, transport)
        out = []
        for seed in SEEDS:
            out.append(await _one(pool, hostile.port, seed))
            assert pool.idle_count() <= 1
        await pool.aclose()
        await asyncio.sleep(0.5)  # (uvloop's TLS transports end their shutdowns)
        return out

    new, old = _run(loop, lambda: run("socket")), _run(loop, lambda: run("loop"))
    exact = 0
    for seed, a, b in zip(SEEDS, new, old, strict=True):
        sc = scenario(seed)
        if sc["end"].startswith("cut"):  # (h11's or the fast reader's failure, or a
            assert a[:-1] == b[:-1], (seed, sc["end"], a, b)  # shorter close-delimited body)
        else:  # the whole response was sent: this transport reads all of it, always
            body = sc["body"]
            assert a[:-1] == ("read", 200, len(body), hashlib.sha256(body).hexdigest()), (
                seed, sc["end"], a, b)
            # (the loop's transport sometimes loses the end of a paused read at a
            # close_notify, asyncio's: its failure is the only difference allowed)
            assert b[:-1] == a[:-1] or b[0] == "failed", (seed, sc["end"], a, b)
        # the connection kept alike; uvloop's transport may not yet have told the client
        # of a close_notify the upstream sent before waiting (it keeps a dead connection)
        # where this one has read it and dropped it: never the other way round
        assert a[-1] == b[-1] or (a[-1] < b[-1] and sc["end"] == "half"), (
            seed, sc["end"], a, b)
        exact += a == b
    assert exact >= len(SEEDS) - 4
    kinds = {r[0] for r in new}
    assert kinds == {"read", "failed"}
    assert any(r[-1] == 1 for r in new) and any(r[-1] == 0 for r in new)


def test_the_socket_transport_is_what_carries_the_connections(
        hostile: HostileUpstream, upstream: Upstream) -> None:
    async def run() -> tuple[str, int]:
        pool = _pool(upstream, "socket")
        await _one(pool, hostile.port, _seed_where(lambda s: s["end"] == "keep"))
        conn = next(iter(pool._idle.values()))[0]
        kind = type(conn.transport).__name__
        sock = conn.transport.get_extra_info("socket")
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await pool.aclose()
        return kind, nodelay

    kind, nodelay = asyncio.run(run())
    assert kind == "_TLSSocket"
    assert nodelay


def _seed_where(pred: Callable[[dict[str, Any]], bool]) -> int:
    return next(s for s in range(1, 10_000) if pred(scenario(s)))


def test_a_wrong_name_fails_the_handshake_on_both(hostile: HostileUpstream,
                                                  upstream: Upstream) -> None:
    async def run(transport: str) -> str:
        pool = H1Pool(pool_context(UpstreamKey("sock", "other.api.test", upstream.ca_file,
                                               False), http2=False), 30, transport=transport)
        try:
            await pool.exchange("127.0.0.1", hostile.port, "other.api.test", b"GET", b"/1",
                                [(b"Host", b"other.api.test")], b"", 5.0, 5.0)
        except httpcore.ConnectError as e:
            return pool_error_text(e)
        return "connected"

    assert asyncio.run(run("socket")) == asyncio.run(run("loop")) == (
        "TLS handshake with the upstream failed")


def test_bytes_while_idle_drop_the_connection_and_the_next_request_dials(
        hostile: HostileUpstream, upstream: Upstream) -> None:
    seed = _seed_where(lambda s: s["end"] == "idle_bytes" and not s["post"]
                       and len(b"".join(s["pieces"])) < 2000)
    keep = _seed_where(lambda s: s["end"] == "keep" and not s["post"])

    async def run() -> tuple[Any, ...]:
        pool = _pool(upstream, "socket")
        first = await _one(pool, hostile.port, seed)
        before = pool.dials
        second = await _one(pool, hostile.port, keep)
        await pool.aclose()
        return first, second, pool.dials - before

    first, second, dials = asyncio.run(run())
    assert first[0] == "read" and first[-1] == 0  # dropped, never kept
    assert second[0] == "read" and dials == 1  # a new connection, not the dirty one


@dataclass
class Renegotiating:
    """A TLS 1.2 upstream (pyOpenSSL) that asks for a renegotiation mid-response."""

    ca: Any
    port: int = 0

    def start(self) -> Renegotiating:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        cert = self.ca.issue_cert(NAME)
        with cert.private_key_pem.tempfile() as key, cert.cert_chain_pems[0].tempfile() as crt:
            ctx.use_privatekey_file(key)
            ctx.use_certificate_file(crt)
        self._ctx = ctx
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn = SSL.Connection(self._ctx, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            conn.renegotiate()
            try:
                conn.do_handshake()
            except SSL.Error:
                pass
            conn.sendall(b"world")
            time.sleep(0.2)
        except (OSError, SSL.Error):
            pass
        finally:
            raw.close()

    def stop(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_renegotiation_request_ends_as_on_the_loops_tls_transport(
        upstream: Upstream, loop: str) -> None:
    reneg = Renegotiating(upstream.ca).start()

    async def run(transport: str) -> tuple[Any, ...]:
        pool = _pool(upstream, transport)
        try:
            resp = await pool.exchange("127.0.0.1", reneg.port, NAME, b"GET", b"/",
                                       [(b"Host", NAME.encode())], b"", 5.0, 5.0)
            body = b""
            while (chunk := await resp.next_chunk(2.0)) is not None:
                body += chunk
            out: tuple[Any, ...] = ("read", resp.status, body)
        except (httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.TimeoutException) as e:
            out = ("failed", pool_error_text(e))
        await pool.aclose()
        return out

    try:
        new, old = _run(loop, lambda: run("socket")), _run(loop, lambda: run("loop"))
    finally:
        reneg.stop()
    assert new == old
    assert h1pool._TLSSocket.__name__  # (the module under test)


def test_a_close_mid_handshake_fails_alike_on_both(upstream: Upstream) -> None:
    # an upstream that reads the ClientHello and closes: "could not connect" on both (not
    # a certificate failure), on asyncio's loop and on uvloop
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                raw, _ = server.accept()
            except OSError:
                return
            raw.recv(4096)
            raw.close()

    threading.Thread(target=serve, daemon=True).start()

    async def run(transport: str) -> str:
        pool = _pool(upstream, transport)
        try:
            await pool.exchange("127.0.0.1", port, NAME, b"GET", b"/", [(b"Host", b"x")],
                                b"", 5.0, 5.0)
        except httpcore.ConnectError as e:
            return pool_error_text(e)
        return "connected"

    try:
        got = {(loop, t): _run(loop, lambda t=t: run(t))  # type: ignore[misc]
               for loop in ("asyncio", "uvloop") for t in ("socket", "loop")}
    finally:
        server.close()
    assert set(got.values()) == {"could not connect to the upstream"}, got


# --- the idle connection's liveness look (``H1Pool._take``) --------------------------------

IDLE_ACTS = ["none", "none", "bytes", "notify", "fin", "rst"]


@dataclass
class IdleActs(TLSServer):
    """Answers ``GET /<act>``, then, while the client's connection waits idle, does
    ``act``: nothing, bytes nobody asked for, close_notify, a bare FIN, a reset."""

    names: tuple[str, ...] = (NAME,)
    go: threading.Event = field(default_factory=threading.Event)  # the client waits idle

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        conn.settimeout(5)
        got = read_head(conn, b"")
        if got is None:
            return
        act = got[0].split(b" ")[1].strip(b"/").decode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.go.wait(5)  # (the client has read the response and keeps the connection)
        if act == "bytes":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        elif act == "notify":
            conn.unwrap()
        elif act == "fin":
            conn.shutdown(socket.SHUT_RDWR)
        elif act == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        time.sleep(1.0)  # (until the client has looked)


async def _reference_take(self: H1Pool, where: tuple[str, int, str]) -> Any:
    """``H1Pool._take`` before session 13 (``readable_now()``, then ``reusable()`` again)."""
    stack = self._idle.get(where)
    now = time.monotonic()
    while stack:
        conn = stack.pop()
        if conn.reusable() and conn.expire_at > now:
            if type(conn.transport) is h1pool._TLSSocket:
                conn.transport.readable_now()
            elif h1pool.readable(conn.sock):
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            if conn.reusable():
                return conn
        conn.close()
    return None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_idle_look_inline_answers_as_readable_now(upstream: Upstream, loop: str) -> None:
    """Seeded: a connection left idle meets what the upstream did meanwhile (nothing,
    bytes, close_notify, FIN, reset) only at ``_take``'s poll (the loop does not turn in
    between); the inline poll keeps or drops it as the old ``readable_now`` path did."""
    server = IdleActs(upstream.ca).start()
    rng = random.Random(0x1316)
    acts = IDLE_ACTS + [rng.choice(IDLE_ACTS) for _ in range(4)]
    rng.shuffle(acts)

    async def one(act: str, reference: bool) -> tuple[Any, ...]:
        pool = _pool(upstream, "socket")
        where = ("127.0.0.1", server.port, NAME)
        server.go.clear()
        resp = await pool.exchange(*where, b"GET", b"/" + act.encode(),
                                   [(b"Host", NAME.encode())], b"", 5.0, 5.0)
        while await resp.next_chunk(5.0) is not None:
            pass
        for _ in range(3):  # (the TLS 1.3 tickets read: the connection waits idle)
            await asyncio.sleep(0.005)
        server.go.set()
        time.sleep(0.3)  # the upstream acts; the loop does not turn, nothing reads it
        idle = pool.idle_count()
        conn = next(iter(pool._idle.values()))[-1] if idle else None
        if reference:
            took = await _reference_take(pool, where)
        else:  # (what ``H1Pool.exchange`` does)
            took = pool._take_now(where)
            assert took is not False  # (every connection here is on _TLSSocket)
        out = (idle, took is conn and took is not None,
               None if conn is None else (conn.closed, conn.eof, conn.unasked,
                                          conn.transport.is_closing()))
        await pool.aclose()
        return out

    async def main() -> list[tuple[str, Any, Any]]:
        return [(act, await one(act, False), await one(act, True)) for act in acts]

    try:
        got = _run(loop, main)
    finally:
        server.stop()
    for act, new, old in got:
        assert new == old, (act, new, old)
    # twin: a connection kept (nothing happened) and one dropped (the upstream acted)
    assert {new[1] for _, new, _ in got} == {True, False}
    assert all(new[1] is (act == "none") for act, new, _ in got), got
