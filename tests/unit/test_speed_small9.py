"""small9 (session 16 round 2): the pool stage asks ``head_seen`` whether a response head
was obs-folded only for a response the fast path did not read.

``Pool.vaultproxy_pool_exchange`` used to read ``head_seen`` before its branch for an
``H1Response`` with ``length`` set (a head ``_Conn.read_head`` read: ``parse_head`` or
``parse_known``); it now reads it after that branch only. Exact because ``H1Pool.exchange``
returns such a response only for a head ``parse_head`` or ``parse_known`` read, never folded
(no continuation line), and ``read_head`` leaves ``head_seen`` as it was then (since pool11;
before, it set it to a Head never folded): these tests drive ``exchange`` over seeded wires
(folded ones too: those go to h11, ``length`` None) and check it. The stage's own
comparison against the code before it is tests/unit/test_speed_exch9.py (its reference
keeps the check first)."""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any

import httpcore

from vaultproxy.net.h1pool import H1Pool, H1Response, _Conn
from vaultproxy.net.outbound import Head, head_seen

WHERE = ("127.0.0.1", 443, "hi.test")
_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (never dials: no trust store read)


class _FakeTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


_NAMES = [b"Server", b"Date", b"Content-Type", b"ETag", b"Connection", b"X-A"]


def _wire(rng: random.Random) -> bytes:
    status = rng.choice([b"200 OK", b"201 Created", b"204 No Content", b"304 Not Modified",
                         b"404 Not Found", b"500 Oops", b"299", b"101 Switching"])
    length = rng.choice([0, 3, 1024])
    fields = [(name, rng.choice([b"a", b"keep-alive", b"x y", b"close"]))
              for name in rng.sample(_NAMES, rng.randrange(len(_NAMES)))]
    if rng.random() < 0.85:
        fields.insert(rng.randrange(len(fields) + 1), (b"Content-Length", b"%d" % length))
    lines = [name + b": " + value + b"\r\n" for name, value in fields]
    if rng.random() < 0.3 and lines:  # an obs-folded line (a continuation)
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice([b" more\r\n", b"\tx\r\n"]))
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
    return version + b" " + status + b"\r\n" + b"".join(lines) + b"\r\n" + b"b" * length


def test_a_head_the_fast_path_read_leaves_a_head_never_folded() -> None:
    kinds: set[tuple[str, bool]] = set()

    async def main() -> None:
        rng = random.Random(0x5319)
        for _ in range(400):
            pool = H1Pool(_CONTEXT, 30.0)
            conn = _Conn(WHERE)
            conn.connection_made(_FakeTransport())

            async def take(where: Any, conn: _Conn = conn) -> _Conn:
                return conn

            pool._take = take  # type: ignore[method-assign]
            pool._take_now = lambda where: False  # type: ignore[method-assign]
            wire = _wire(rng)
            # (a stale Head of an earlier try on this task, folded or not)
            stale = rng.choice([None, Head(200, True), Head(200, False)])
            head_seen.set(stale)
            loop = asyncio.get_running_loop()
            cut = rng.randrange(len(wire) + 1) if rng.random() < 0.3 else len(wire)
            loop.call_soon(conn.data_received, wire[:cut])
            loop.call_soon(conn.data_received, wire[cut:])
            loop.call_soon(conn.eof_received)
            method = rng.choice([b"GET", b"GET", b"HEAD"])
            try:
                resp = await pool.exchange("127.0.0.1", 443, "hi.test", method, b"/",
                                           [(b"Host", b"hi.test")], b"", 5.0, 5.0)
            except (httpcore.RemoteProtocolError, httpcore.ReadError):
                kinds.add(("error", True))
                continue
            assert type(resp) is H1Response
            fast = resp.length is not None
            seen = head_seen.get()
            kinds.add(("fast", fast))
            if fast:
                assert resp.head is not None and resp.length == resp.head.length
                assert seen is stale  # (as it was: the stage set None before)
                read = wire[:resp.head.end]  # (the head it read: no continuation line)
                assert b"\r\n " not in read and b"\r\n\t" not in read
            else:
                kinds.add(("folded", seen is not None and seen.folded))
            await resp.aclose()

    asyncio.run(main())
    # the seeds reach both paths, and h11's reads a folded head too
    assert {("fast", True), ("fast", False), ("folded", True)} <= kinds, sorted(kinds)
