"""The upstream leg of a pooled request makes fewer Python calls (session 13), and each
shortcut answers exactly as the code it replaces, which is kept here as the reference
(seeded: the same cases every run):

* ``_Conn.reusable`` reads ``_TLSSocket``'s closing flag instead of calling
  ``is_closing()`` (any other transport is still asked);
* ``_TLSSocket.write`` holds a copy of ``_send`` (``SSL_write``, then what a partial,
  blocked or failed write leaves) instead of calling it;
* ``_TLSSocket._on_readable`` holds a copy of ``_read``'s loop;
* ``H1Pool.exchange`` builds the fast path's ``H1Response`` without its ``__init__``;
* the stage's ``_end`` closes an exchange whose H1Response already went back to its pool
  without the two coroutines of ``Exchange.close`` (which would do nothing more).

``H1Pool._take_now`` (``_take`` without a coroutine for connections on ``_TLSSocket``, its
liveness poll inline) is compared with the old ``_take`` on real TLS connections in
tests/integration/test_upstream_h1socket.py."""

from __future__ import annotations

import ast
import asyncio
import inspect
import random
import ssl
import textwrap
from collections import deque
from types import SimpleNamespace
from typing import Any

from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import H1Pool, H1Response, _Conn, _TLSSocket
from vaultproxy.stages import pool as pool_stage

WHERE = ("127.0.0.1", 443, "hi.test")
_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (never dials: no trust store read)


# --- _Conn.reusable ----------------------------------------------------------------------


def _reference_reusable(self: _Conn) -> bool:
    """``_Conn.reusable`` before session 13."""
    return not (self.closed or self.eof or self.unasked or self.inbox
                or self.transport.is_closing())


class _Transport:
    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing


def _tls_socket(closing: bool) -> _TLSSocket:
    sock = _TLSSocket.__new__(_TLSSocket)  # (no socket: only the flag is read)
    sock._closing = closing
    return sock


def test_reusable_reads_the_tls_sockets_flag_as_is_closing_answers() -> None:
    async def main() -> set[bool]:
        rng = random.Random(0x1313)
        seen: set[bool] = set()
        for _ in range(2000):
            conn = _Conn(WHERE)
            conn.closed, conn.eof, conn.unasked = (rng.random() < 0.15 for _ in range(3))
            conn.inbox = [b"x"] if rng.random() < 0.15 else []
            closing = rng.random() < 0.3
            conn.transport = (_tls_socket(closing) if rng.random() < 0.5
                              else _Transport(closing))
            want = _reference_reusable(conn)
            assert conn.reusable() is want
            seen.add(want)
        return seen

    assert asyncio.run(main()) == {True, False}


# --- _TLSSocket.write --------------------------------------------------------------------


def _reference_send(self: _TLSSocket, data: bytes) -> None:
    """``_TLSSocket._send`` before session 13 (``write`` called it)."""
    try:
        n = self._obj.write(data)
    except ssl.SSLWantWriteError:
        n = 0
    except ssl.SSLWantReadError:
        self._pending = data
        self._write_wants_read = True
        if not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
        return
    except (ssl.SSLError, OSError) as e:
        self._fail(e)
        return
    if n < len(data):
        self._pending = data[n:] if n else data
        self._writer(True)


def _reference_write(self: _TLSSocket, data: bytes) -> None:
    if self._closing or not data:
        return
    if self._pending is not None:
        self._buffer.append(data)
        return
    _reference_send(self, data)


class _Loop:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def add_reader(self, fd: int, cb: Any) -> None:
        self.calls.append(("add_reader", cb.__name__))

    def remove_reader(self, fd: int) -> None:
        self.calls.append(("remove_reader", fd))

    def add_writer(self, fd: int, cb: Any) -> None:
        self.calls.append(("add_writer", cb.__name__))

    def remove_writer(self, fd: int) -> None:
        self.calls.append(("remove_writer", fd))

    def call_soon(self, cb: Any, *args: Any) -> None:
        self.calls.append(("call_soon", (cb.__name__, *map(repr, args))))


class _Obj:
    """``SSL_write`` as the seed says: all, part, nothing (blocked), wants a read, fails."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.written: list[bytes] = []

    def write(self, data: bytes) -> int:
        roll = self.rng.random()
        if roll < 0.1:
            raise ssl.SSLWantWriteError()
        if roll < 0.17:
            raise ssl.SSLWantReadError()
        if roll < 0.22:
            raise ssl.SSLError("bad record mac")
        if roll < 0.26:
            raise ConnectionResetError(104, "reset")
        n = len(data) if roll < 0.8 else self.rng.randint(0, len(data))
        self.written.append(data[:n])
        return n


class _Sock:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _socket_for(seed: int) -> _TLSSocket:
    sock = _TLSSocket.__new__(_TLSSocket)
    sock._loop = _Loop()  # type: ignore[assignment]
    sock._obj = _Obj(random.Random(seed))
    sock._sock = _Sock()  # type: ignore[assignment]
    sock._fd = 7
    sock._protocol = SimpleNamespace(connection_lost=lambda exc: None)  # type: ignore[assignment]
    sock._pending = None
    sock._buffer = deque()
    sock._closing = False
    sock._reading = random.Random(seed).random() < 0.8
    sock._writing = False
    sock._read_wants_write = False
    sock._write_wants_read = False
    return sock


def _written_state(sock: _TLSSocket) -> tuple[Any, ...]:
    return (sock._obj.written, sock._pending, list(sock._buffer), sock._closing,
            sock._writing, sock._write_wants_read, sock._loop.calls, sock._sock.closed)


def test_write_sends_as_through_send() -> None:
    rng = random.Random(0x1314)
    seen: set[str] = set()
    for case in range(1500):
        writes = [bytes([65 + i]) * rng.choice([0, 1, 7, 300]) for i in range(rng.randint(1, 5))]
        new, old = _socket_for(case), _socket_for(case)
        for data in writes:
            new.write(data)
            _reference_write(old, data)
            # (between writes the socket may drain: ``_flush`` sends what waits, alike)
            if rng.random() < 0.3:
                new._flush()
                old._flush()
        assert _written_state(new) == _written_state(old), (case, writes)
        seen.add("failed" if new._closing else "wants read" if new._write_wants_read
                 else "waits" if new._pending is not None else "sent")
    # twin: every outcome was reached
    assert seen == {"failed", "wants read", "waits", "sent"}, seen


# --- _TLSSocket._on_readable ---------------------------------------------------------------


def _statements(func: Any) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return [ast.dump(s) for s in body if not (isinstance(s, ast.Expr)
                                              and isinstance(s.value, ast.Constant))]


def test_on_readable_reads_with_reads_own_loop() -> None:
    """``_on_readable`` ends with ``_read``'s statements, word for word (the copy that
    spares the call): a change to one that is not made to the other fails here."""
    read = _statements(_TLSSocket._read)
    on_readable = _statements(_TLSSocket._on_readable)
    assert on_readable[-len(read):] == read
    # and before them: the write that waited for a read, then ``_read``'s own condition
    src = inspect.getsource(_TLSSocket._on_readable)
    assert "if not self._reading or self._closing:\n            return" in src


# --- H1Pool.exchange's H1Response ----------------------------------------------------------


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_exchange_makes_the_response_its_init_would() -> None:
    async def main() -> None:
        rng = random.Random(0x1315)
        for _ in range(200):
            pool = H1Pool(_CONTEXT, 30.0)
            conn = _Conn(WHERE)
            conn.connection_made(_FakeTransport())

            async def take(where: Any, conn: _Conn = conn) -> _Conn:
                return conn

            pool._take = take  # type: ignore[method-assign]
            pool._take_now = lambda where: False  # type: ignore[method-assign]
            status = rng.choice([200, 201, 404, 500, 599])
            reason = rng.choice([b"", b"OK", b"Not Found", b"x y"])
            body = b"b" * rng.randint(0, 50)
            wire = (b"HTTP/1.1 %d%s\r\nA: 1\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, b" " + reason if reason else b"", len(body), body))
            timeout = rng.choice([1.0, 5.0, 30.0])
            asyncio.get_running_loop().call_soon(conn.data_received, wire)
            got = await pool.exchange("127.0.0.1", 443, "hi.test", b"GET", b"/",
                                      [(b"Host", b"hi.test")], b"", 5.0, timeout)
            head = h1pool.parse_head(wire, b"GET")
            assert head is not None
            want = H1Response(pool, conn, head.status, head.headers, b"1.1", head.reason,
                              timeout)
            want.length = head.length
            assert type(got) is H1Response
            seen = got.head  # the head it was made of (its own object: compared by parts)
            assert seen is not None and (seen.status, seen.reason, list(seen.headers),
                                         seen.length) == (head.status, head.reason,
                                                          list(head.headers), head.length)
            want.head = seen
            # (slotted: every slot set, to what ``__init__`` sets it)
            slots = H1Response.__slots__
            assert [getattr(got, k) for k in slots] == [getattr(want, k) for k in slots]
            assert got.extensions == want.extensions == {"http_version": b"HTTP/1.1",
                                                         "reason_phrase": reason}

    asyncio.run(main())


# --- the stage's _end ----------------------------------------------------------------------


def _reference_end(flow: Any) -> Any:
    """``Pool._end`` before session 13."""
    ex = flow.metadata.get(pool_stage.seam_pool.POOLED)
    if isinstance(ex, pool_stage.Exchange) and not ex.closed:
        return ex.close()
    return None


class _Closable:
    """An httpcore-like response: ``aclose`` counts."""

    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


def _exchange_case(rng: random.Random) -> tuple[Any, Any]:
    pool = H1Pool(_CONTEXT, 30.0)
    conn = _Conn(WHERE)
    conn.connection_made(_FakeTransport())
    kind = rng.choice(["h1 released", "h1 held", "h1 held", "core", "none", "not pooled"])
    resp: Any = None
    if kind.startswith("h1"):
        resp = H1Response(pool, conn, 200, [], b"1.1", b"OK", 5.0)
        resp.length = 0
        conn.h11 = None
        conn.left = rng.choice([0, 0, 3])
        conn.keep = rng.random() < 0.7
        if kind == "h1 released":
            resp._conn = None
    elif kind == "core":
        resp = _Closable()
    ex = pool_stage.Exchange(tunnel=None, body_limit=1)  # type: ignore[arg-type]
    ex.response = resp
    ex.closed = rng.random() < 0.2
    flow = SimpleNamespace(metadata={} if kind == "not pooled"
                           else {pool_stage.seam_pool.POOLED: ex})
    return flow, (pool, conn)


def _end_state(flow: Any, pool: H1Pool, conn: _Conn) -> tuple[Any, ...]:
    ex = flow.metadata.get(pool_stage.seam_pool.POOLED)
    if ex is None:
        return ("not pooled",)
    resp = ex.response
    return (ex.closed, getattr(resp, "closes", None),
            getattr(resp, "_conn", "-") is None, conn.closed, pool.idle_count())


def test_end_closes_as_exchange_close_does() -> None:
    async def main() -> set[str]:
        stage = pool_stage.Pool.__new__(pool_stage.Pool)
        seen: set[str] = set()
        for case in range(1000):
            got_flow, (got_pool, got_conn) = _exchange_case(random.Random(case))
            want_flow, (want_pool, want_conn) = _exchange_case(random.Random(case))
            got = stage._end(got_flow)
            want = _reference_end(want_flow)
            if got is not None:
                await got
            if want is not None:
                await want
            assert (_end_state(got_flow, got_pool, got_conn)
                    == _end_state(want_flow, want_pool, want_conn)), case
            seen.add("no coroutine" if got is None and want is not None
                     else "coroutine" if got is not None else "nothing")
        return seen

    # twin: a released H1Response closed without a coroutine, a held one (or httpcore's)
    # still through ``Exchange.close``, and nothing to do at all
    assert asyncio.run(main()) == {"no coroutine", "coroutine", "nothing"}


def _find_run(body: list[ast.stmt], want: list[str]) -> bool:
    """Whether ``want`` (dumped statements) occurs as a run in ``body`` or any nested body."""
    dumped = [ast.dump(s) for s in body]
    for i in range(len(dumped) - len(want) + 1):
        if dumped[i:i + len(want)] == want:
            return True
    return any(_find_run(getattr(s, name), want) for s in body
               for name in ("body", "orelse", "finalbody") if getattr(s, name, None))


def test_read_head_arms_with_arms_own_statements() -> None:
    """``read_head`` holds ``_arm``'s statements (but its ``return``), word for word."""
    arm = ast.parse(textwrap.dedent(inspect.getsource(_Conn._arm))).body[0]
    want = [ast.dump(s) for s in arm.body[1:-1]]  # type: ignore[attr-defined]
    assert len(want) == 3
    read_head = ast.parse(textwrap.dedent(inspect.getsource(_Conn.read_head))).body[0]
    assert _find_run(read_head.body, want)  # type: ignore[attr-defined]


# --- the stage's Exchange ----------------------------------------------------------------


def test_requestheaders_makes_the_exchange_its_init_would() -> None:
    """``Pool.requestheaders`` builds the flow's Exchange without the dataclass's
    ``__init__``: the same attributes, values and order as ``Exchange(tunnel=...,
    body_limit=..., idle=...)``, over seeded limits."""
    from mitmproxy.test import tflow

    rng = random.Random(0x1317)
    for _ in range(200):
        max_body_mb, idle_timeout = rng.choice([1, 10, 100]), rng.choice([1, 30, 300.5])
        service = SimpleNamespace(name="svc")
        tunnel = SimpleNamespace(decision=SimpleNamespace(service=service),
                                 pinned=("127.0.0.1", 443))
        proxy = SimpleNamespace(upstream_pool_idle=30, max_body_mb=max_body_mb,
                                idle_timeout=idle_timeout)
        st = SimpleNamespace(snapshot=SimpleNamespace(registry=SimpleNamespace(
            config=SimpleNamespace(proxy=proxy))))
        rt = SimpleNamespace(live=SimpleNamespace(state=st),
                             connections=SimpleNamespace(
                                 tunnel=lambda _id, t=tunnel: t,
                                 tunnels=SimpleNamespace(get=lambda _id, t=tunnel: t)),
                             stage_loaded=lambda name: None)
        stage = pool_stage.Pool.__new__(pool_stage.Pool)
        stage.rt = rt  # type: ignore[assignment]
        flow = tflow.tflow()
        record = SimpleNamespace(answered=False,
                                 decision=SimpleNamespace(plan=object()))
        original = pool_stage.record_of
        pool_stage.record_of = lambda f, r=record: r  # type: ignore[assignment]
        installed = pool_stage.seam_pool._installed
        pool_stage.seam_pool._installed = True
        try:
            pool_stage.Pool.requestheaders.__wrapped__(stage, flow)  # type: ignore[attr-defined]
        finally:
            pool_stage.record_of = original
            pool_stage.seam_pool._installed = installed
        got = flow.metadata[pool_stage.seam_pool.POOLED]
        want = pool_stage.Exchange(tunnel=tunnel,  # type: ignore[arg-type]
                                   body_limit=max_body_mb * 1024 * 1024,
                                   idle=float(idle_timeout))
        assert type(got) is pool_stage.Exchange
        assert vars(got) == vars(want) and list(vars(got)) == list(vars(want))
        assert got == want and repr(got) == repr(want)
