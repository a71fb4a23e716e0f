"""The pool's HTTP/1.1 client spares coroutines on the common exchange, and each form
answers exactly as the one it replaces (seeded: the same cases every run):

* ``_Conn.read_head`` waits inline (a ``types.coroutine`` generator that yields the
  waiter) where it awaited ``wait``, which awaited ``_done``: the same head, the same
  refusal, the same timeout (``ReadTimeout``, the connection closed), the same cancel, the
  same state left behind; the old ``read_head`` is here as the reference.
* ``H1Response.body_now`` takes a body whose every byte is already read in one call, where
  the stage called ``next_chunk`` until its end: the same bytes, the same connection state
  (bytes after the response seen, released to the pool or closed), or None with nothing
  taken when a byte is still to come."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from typing import Any

import h11
import httpcore

from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import H1Pool, H1Response, ResponseHead, _Conn, parse_head
from vaultproxy.net.outbound import head_seen

WHERE = ("127.0.0.1", 443, "hi.test")
_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (never dials: no trust store read)


class _Transport:
    """What ``_Conn`` asks of its transport; records what it was told."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _reference_read_head(self: _Conn, timeout: float) -> ResponseHead | None:
    """``_Conn.read_head`` as it was before the inline wait (session 10)."""
    try:
        await self.wait(timeout)
    except TimeoutError:
        self.close()
        raise httpcore.ReadTimeout("the upstream did not answer in time") from None
    data = self.take() if self.inbox else b""
    head = parse_head(data, self.method) if data else None
    if head is None:
        conn = self.h11 = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=h1pool.MAX_INCOMPLETE_EVENT)
        conn.send(h11.Request(method=self.method, target=b"/", headers=self.state,
                              _parsed=True))
        conn.send(h11.EndOfMessage())
        self.scan.start()
        if data:
            self.inbox.insert(0, data)
            self.inbox_len += len(data)
        return None
    # (``head_seen.set(Head(head.status, False))`` here before pool11: ``read_head`` leaves
    # it as it was for a head it read now; tests/unit/test_speed_pool11.py compares that)
    if self.sessions is not None:
        self.keep_session()
    self.trailing = len(data) - head.end > head.length
    body = data[head.end:head.end + head.length]
    if body:
        self.inbox.append(body)
        self.inbox_len += len(body)
    self.left = head.length
    self.keep = self.keep and head.keep_alive
    return head


def _response(rng: random.Random) -> bytes:
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 300])))
    conn = rng.choice([b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n"])
    head = b"HTTP/1.1 200 OK\r\nServer: t\r\n%sContent-Length: %d\r\n\r\n" % (conn, len(body))
    shape = rng.choice(["plain", "plain", "chunked", "after", "short", "bare LF"])
    if shape == "chunked":
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    if shape == "after":
        return head + body + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    if shape == "short":
        return head + body[:len(body) // 2]
    if shape == "bare LF":
        return head.replace(b"\r\n", b"\n") + body
    return head + body


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    parts = []
    while data:
        n = rng.randint(1, max(1, len(data)))
        parts.append(data[:n])
        data = data[n:]
    return parts


def _state(conn: _Conn) -> tuple[Any, ...]:
    return (conn.closed, conn.eof, conn.waiter is None, conn.h11 is None, b"".join(conn.inbox),
            conn.inbox_len, conn.left, conn.keep, conn.trailing, conn.busy,
            conn.transport.closing, conn.scan.active)


def _fresh() -> _Conn:
    conn = _Conn(WHERE)
    conn.connection_made(_Transport())
    conn.send(b"GET", b"/", [(b"Host", b"hi.test"), (b"Accept", b"*/*")], b"")
    return conn


async def _read_once(case: tuple[Any, ...], inline: bool) -> tuple[Any, ...]:
    kind, when, parts = case
    conn = _fresh()
    head_seen.set(None)

    def arrive() -> None:
        if kind == "eof":
            conn.eof_received()
            conn.connection_lost(None)
            return
        for part in parts:
            conn.data_received(part)

    seen: list[Any] = []

    async def reads() -> Any:
        timeout = 0.01 if kind == "never" else 5.0
        try:
            if inline:
                return await conn.read_head(timeout)
            return await _reference_read_head(conn, timeout)
        finally:
            seen.append(head_seen.get())  # (the task's own context)

    if when == 0 and kind != "never":
        arrive()
    task = asyncio.ensure_future(reads())
    for _ in range(when):
        await asyncio.sleep(0)
    if kind == "task-cancel":
        task.cancel("stop")
    elif when and kind != "never":
        arrive()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(task), 2.0)
    if task.cancelled():
        outcome: Any = "cancelled"
    elif task.exception() is not None:
        exc = task.exception()
        outcome = (type(exc).__name__, str(exc))
    else:
        head = task.result()
        outcome = None if head is None else (head.status, head.reason, head.headers,
                                             head.length, head.keep_alive, head.end)
    return outcome, _state(conn), [None if h is None else (h.status, h.folded) for h in seen]


def test_read_head_waits_inline_as_through_wait() -> None:
    async def main() -> set[str]:
        rng = random.Random(0x29A1)
        seen: set[str] = set()
        for _ in range(300):
            kind = rng.choice(["data", "data", "data", "eof", "never", "task-cancel"])
            case = (kind, rng.randint(0, 2), _split(rng, _response(rng)))
            want = await _read_once(case, inline=False)
            got = await _read_once(case, inline=True)
            assert got == want, case
            outcome = want[0]
            seen.add("head" if isinstance(outcome, tuple) and isinstance(outcome[0], int)
                     else outcome[0] if isinstance(outcome, tuple) else str(outcome))
        return seen

    seen = asyncio.run(main())
    # twin: a head read, h11's (None), a timeout and a cancel were all reached
    assert seen == {"head", "None", "ReadTimeout", "cancelled"}, seen


async def _body_once(parts: list[bytes], split_at: int, direct: bool,
                     ) -> tuple[Any, ...] | None:
    pool = H1Pool(_CONTEXT, 30.0)
    conn = _fresh()
    for part in parts[:split_at]:
        conn.data_received(part)
    head = await conn.read_head(5.0)
    if head is None:
        return None
    resp = H1Response(pool, conn, head.status, head.headers, b"1.1", head.reason, 5.0)
    for part in parts[split_at:]:
        conn.data_received(part)
    if direct:
        before = _state(conn)
        body = resp.body_now()
        if body is None:
            assert _state(conn) == before  # nothing taken
            return ("waits", before)
    else:
        if conn.inbox_len < conn.left:
            return ("waits", _state(conn))
        got = bytearray()
        while (chunk := await resp.next_chunk(5.0)) is not None:
            got += chunk
        body = bytes(got)
    return body, _state(conn), pool.idle_count(), resp._conn is None


def test_body_now_reads_as_next_chunk_to_the_end() -> None:
    async def main() -> set[str]:
        rng = random.Random(0x29A2)
        seen: set[str] = set()
        for _ in range(600):
            data = _response(rng)
            parts = _split(rng, data)
            split_at = rng.randint(1, len(parts))
            want = await _body_once(parts, split_at, direct=False)
            got = await _body_once(parts, split_at, direct=True)
            assert got == want, (parts, split_at)
            if want is not None:
                seen.add("waits" if want[0] == "waits" else
                         "kept" if want[2] else "closed")
        return seen

    # twin: a body taken with its connection kept, one closed (bytes after it, close),
    # and one still to come
    assert asyncio.run(main()) == {"waits", "kept", "closed"}
