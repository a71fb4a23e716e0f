"""Session 17 round 2 (``pool11``): ``_Conn.read_head`` no longer sets ``head_seen`` (a
ContextVar: a new context mapping and a Token per response, and the pool stage's reset of it
the next request) for a head its fast path read (``parse_known`` or ``parse_head``).

Exact because the pool stage (``Pool.vaultproxy_pool_exchange``) reads ``head_seen`` only

* when ``H1Pool.exchange`` raised: the resend rule (a response byte came) and the ``101``
  answer. ``exchange`` returns at once once ``read_head`` returned a head (no statement
  between that can raise), so a head the fast path read never reaches those reads;
* after its branch for a response whose ``length`` is set, i.e. only for a response h11
  read (``HeadScan`` sets ``head_seen`` for those, as before).

These tests drive the real ``H1Pool.exchange`` over seeded wires (heads the fast path
takes, known names included, and heads it leaves to h11: obs-folded, 1xx, 204, 304, HTTP/1.0,
no Content-Length, cut short, closed early), once with main's ``read_head`` (kept here,
verbatim, as the reference) and once with the new one, ``head_seen`` reset first as the stage
does: the same responses and errors, the same ``head_seen`` wherever the stage reads it, and
no exception ever after the reference set it for a head its fast path read.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import types
from collections.abc import Generator
from typing import Any

import h11
import httpcore
import pytest

from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import H1Pool, H1Response, ResponseHead, _Conn
from vaultproxy.net.outbound import Head, head_seen

WHERE = ("127.0.0.1", 443, "hi.test")
_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (never dials: no trust store read)
# (main's ``_SEEN``: one ``Head(status, False)`` per status)
_SEEN: dict[int, Head] = {}


@types.coroutine
def _reference_read_head(self: Any, timeout: float,
                         ) -> Generator[Any, None, ResponseHead | None]:
    """(main e3095f9's ``_Conn.read_head``, verbatim but for its module's names.)

    The fast path's response head, from the first bytes that come (``parse_known``
    with the pattern of this connection's last head's names, else ``parse_head``);
    None when h11 is to read this response (it then has the request's state and
    every byte read so far, and the scan of the head runs as on h11's own path).

    A generator (``types.coroutine``) with ``wait`` (its one read timer per connection
    included) and ``_done`` inline: the exchange's one suspension resumes two frames
    fewer (tests/unit/test_speed_h1wait.py)."""
    if not self.inbox and not self.eof:
        # (``waiter = self._arm(timeout)``, inline: a call less per response; the same
        # statements, ``timeout`` never None here)
        loop = self.loop
        waiter = self.waiter = loop.create_future()
        if timeout is not None:
            deadline = self.deadline = loop.time() + timeout
            timer = self.timer
            if timer is None or self.timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer_at = deadline
                self.timer = loop.call_at(deadline, self._timer_fired)
        try:
            try:
                if not waiter.done():
                    waiter._asyncio_future_blocking = True
                    yield waiter  # (the task waits for it)
                if not waiter.done():
                    raise RuntimeError("await wasn't used with future")
                waiter.result()  # (raises as the future's own __await__ would)
            finally:
                self.waiter = None
                self.deadline = None
        except TimeoutError:
            self.close()
            raise httpcore.ReadTimeout("the upstream did not answer in time") from None
    inbox = self.inbox
    if inbox:  # (``self.take()``, inline)
        data = b"".join(inbox) if len(inbox) > 1 else inbox[0]
        inbox.clear()
        self.inbox_len = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
    else:
        data = b""
    known = self.known  # (the pattern of this connection's last head's names)
    head = h1pool.parse_known(data, self.method, known) if known is not None and data else None
    if head is None:
        head = h1pool.parse_head(data, self.method) if data else None
        if head is not None:
            self.known = h1pool.known_of(head.headers)
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
    seen = _SEEN.get(head.status)  # (``Head(head.status, False)``: one per status)
    if seen is None:
        seen = _SEEN[head.status] = Head(head.status, False)
    head_seen.set(seen)
    if self.sessions is not None:
        self.keep_session()
    # bytes after the body (a second response nobody asked for): never read, and the
    # connection is closed after this response
    self.trailing = len(data) - head.end > head.length
    body = data[head.end:head.end + head.length]
    if body:
        self.inbox.append(body)
        self.inbox_len += len(body)
    self.left = head.length
    self.keep = self.keep and head.keep_alive
    return head


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
    status = rng.choice([b"200 OK", b"200 OK", b"201 Created", b"204 No Content",
                         b"304 Not Modified", b"404 Not Found", b"500 Oops", b"299",
                         b"101 Switching", b"100 Continue"])
    length = rng.choice([0, 3, 1024])
    fields = [(name, rng.choice([b"a", b"keep-alive", b"x y", b"close", b"a \x00b", b"t "]))
              for name in rng.sample(_NAMES, rng.randrange(len(_NAMES)))]
    if rng.random() < 0.85:
        fields.insert(rng.randrange(len(fields) + 1), (b"Content-Length", b"%d" % length))
    lines = [name + b": " + value + b"\r\n" for name, value in fields]
    if rng.random() < 0.2 and lines:  # an obs-folded line (a continuation)
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice([b" more\r\n", b"\tx\r\n"]))
    if rng.random() < 0.1 and lines:  # a bare CR or LF
        i = rng.randrange(len(lines))
        lines[i] = lines[i][:-2] + rng.choice([b"\n", b"\r", b"\rx\r\n"])
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
    return version + b" " + status + b"\r\n" + b"".join(lines) + b"\r\n" + b"b" * length


async def _run(seed: int, reference: bool) -> list[Any]:
    rng = random.Random(seed)
    pool = H1Pool(_CONTEXT, 30.0)
    conn = _Conn(WHERE)
    conn.connection_made(_FakeTransport())
    out: list[Any] = []
    for _ in range(60):
        if conn.closed:  # (a connection the last exchange closed: a new one)
            conn = _Conn(WHERE)
            conn.connection_made(_FakeTransport())

        async def take(where: Any, conn: _Conn = conn) -> _Conn:
            return conn

        pool._take = take  # type: ignore[method-assign]
        pool._take_now = lambda where: False  # type: ignore[method-assign]
        # the same head again and again (its names' pattern made and used), or another
        wire = _wire(random.Random(rng.randrange(3))) if rng.random() < 0.6 else _wire(rng)
        # (the end of the stream after it, or not: a head h11 waits for more after
        # (a 1xx, a line ending in a bare CR) times out then)
        ending = rng.choice(["whole", "whole", "eof", "eof", "cut"])
        loop = asyncio.get_running_loop()
        cut = rng.randrange(len(wire) + 1)
        if ending == "cut":  # a part, then the end
            loop.call_soon(conn.data_received, wire[:cut])
            loop.call_soon(conn.eof_received)
        else:
            loop.call_soon(conn.data_received, wire[:cut])
            loop.call_soon(conn.data_received, wire[cut:])
            if ending == "eof":
                loop.call_soon(conn.eof_received)
        method = rng.choice([b"GET", b"GET", b"GET", b"HEAD"])
        head_seen.set(None)  # (as the stage does first)
        try:
            resp = await pool.exchange("127.0.0.1", 443, "hi.test", method, b"/",
                                       [(b"Host", b"hi.test")], b"", 5.0, 0.1)
        except Exception as e:  # noqa: BLE001 - compared
            seen = head_seen.get()
            # the stage reads ``head_seen`` here: it is the same
            out.append(("raised", type(e).__name__, str(e),
                        None if seen is None else (seen.status, seen.folded)))
            continue
        assert type(resp) is H1Response
        seen = head_seen.get()
        if resp.length is not None:  # a head the fast path read: the stage reads no Head
            assert seen is None if not reference else (
                seen is _SEEN[resp.status] and not seen.folded)
            got: Any = "fast"
        else:  # h11's: the stage reads it (obs-fold), the same
            got = None if seen is None else (seen.status, seen.folded)
        body = resp.body_now() if resp.length is not None else None
        out.append(("response", resp.status, list(resp.headers), resp.reason, resp.length,
                    got, body))
        await resp.aclose()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_exchange_answers_as_with_the_reference_read_head(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    want = asyncio.run(_run_with(monkeypatch, seed, reference=True))
    got = asyncio.run(_run_with(monkeypatch, seed, reference=False))
    assert got == want
    kinds = {(o[0], o[5] if o[0] == "response" else o[3] is not None) for o in want}
    # twin: the seeds reach heads the fast path read, h11's heads (folded ones too) and
    # errors after a head h11 saw, where the stage reads ``head_seen``
    assert ("response", "fast") in kinds, kinds
    assert any(k[0] == "response" and k[1] != "fast" for k in kinds), kinds


def test_the_seeds_reach_a_folded_head_and_an_error_after_a_head() -> None:
    async def main() -> set[Any]:
        seen: set[Any] = set()
        for seed in range(6):
            for o in await _run(seed, reference=False):
                if o[0] == "response" and o[5] not in ("fast", None):
                    seen.add(("folded", o[5][1]))
                if o[0] == "raised":
                    seen.add(("raised", o[3] is not None))
        return seen

    seen = asyncio.run(main())
    assert {("folded", True), ("folded", False), ("raised", True), ("raised", False)} <= seen, (
        seen)


async def _run_with(monkeypatch: pytest.MonkeyPatch, seed: int, reference: bool) -> list[Any]:
    with monkeypatch.context() as m:
        if reference:
            m.setattr(_Conn, "read_head", _reference_read_head)
        # (the names' patterns: made afresh for each run, within a fresh budget)
        m.setattr(h1pool._SETS, "table", {})
        m.setattr(h1pool._SETS, "made", [0.0, 0])
        return await _run(seed, reference)


# -- the value class's ranges in the other order ---------------------------------------------

# main's patterns (e3095f9), verbatim: the value class with its ranges as they were
_OLD_KNOWN_VALUE = rb":[ \t]*+([\x01-\x09\x0e-\xff]*+)(?<![ \t])"
_OLD_FIELD_LINE = re.compile(rb"\r\n(" + h1pool._FIELD_NAME
                             + rb"+):[ \t]*+([\x01-\x09\x0e-\xff]*+)(?=\r\n)")


def _old_known(names: tuple[bytes, ...], length: int) -> tuple[Any, Any]:
    """``_Known``'s two patterns as main made them (``_KNOWN_VALUE`` before pool11)."""
    fields = b"".join([
        rb"\r\n" + re.escape(name) + (h1pool._KNOWN_LENGTH if i == length else _OLD_KNOWN_VALUE)
        for i, name in enumerate(names)]) + rb"\r\n\r\n"
    return re.compile(fields).match, re.compile(h1pool._KNOWN_OK + fields).match


_HOSTILE = [b"a", b"keep-alive", b"x y", b"", b" ", b"\t", b"v \t", b"v\t", b"a\x00b", b"a\rb",
            b"a\nb", b"a\r\n b", b"a\r\n\tb", b"a\x0bb", b"a\x0cb", b"\x0e\x0d", b"\x09\x0a",
            b"\x01\x09\x0e\xff", b"\x80\xfe caf\xc3\xa9", b"12", b"0", b"-1", b"1 ", b" 7",
            b"9" * 19, b"x" * 5000, b"\x7f", b"\x0d", b"\x0a"]


def _hostile_head(rng: random.Random, names: list[bytes], length: int) -> bytes:
    status = rng.choice([b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
                         b"HTTP/1.1 200 OK ", b"HTTP/1.1 200 Ok", b"HTTP/1.0 200 OK"])
    lines = []
    for i, name in enumerate(names):
        if rng.random() < 0.02:  # a near-miss name
            name = rng.choice([name.lower(), name + b" ", name[:-1], b" " + name, name + b"x"])
        value = (b"%d" % rng.choice([0, 3, 1024]) if i == length and rng.random() < 0.7
                 else rng.choice(_HOSTILE) if rng.random() < 0.06
                 else rng.choice([b"a", b"nginx/1.22.1", b"Mon, 07 Dec 2026 22:18:47 GMT"]))
        sep = (rng.choice([b":", b":\t", b": \t ", b" : "]) if rng.random() < 0.03
               else b": ")
        lines.append(b"\r\n" + name + sep + value)
    if rng.random() < 0.1 and lines:  # obs-fold, a bare CR or LF, a line more or less
        i = rng.randrange(len(lines))
        lines.insert(i, rng.choice([b"\r\n more", b"\r\n\tx", b"\n", b"\r", b"\r\nX-New: 1"]))
    if rng.random() < 0.05 and lines:
        del lines[rng.randrange(len(lines))]
    end = rng.choice([b"\r\n\r\n"] * 12 + [b"\r\n\n", b"\n\r\n", b"\r\n"])
    return status + b"".join(lines) + end + b"body" * rng.randrange(3)


@pytest.mark.parametrize("seed", range(8))
def test_known_pattern_matches_as_main_made_it(seed: int) -> None:
    """``_Known``'s patterns (``match`` from the status line's CRLF, ``ok`` with it) match
    the same heads, with the same groups and end, as main's, over seeded hostile heads."""
    rng = random.Random(0x9011 + seed)
    pool = [b"Server", b"Date", b"Content-Type", b"Content-Length", b"Last-Modified",
            b"Connection", b"ETag", b"Accept-Ranges", b"X-A", b"x-b"]
    took = refused = 0
    for _ in range(60):
        names = tuple(rng.sample(pool, rng.randrange(1, 8)))
        if b"Content-Length" not in names:
            names = (*names, b"Content-Length")
        shape = h1pool._head_shape(names)
        assert shape is not None
        known = h1pool._Known(names, shape)
        old_match, old_ok = _old_known(names, shape[0])
        for _ in range(40):
            data = _hostile_head(rng, list(names), shape[0])
            line_end = data.find(b"\r\n")
            for new, old, at in ((known.ok, old_ok, 0), (known.match, old_match, line_end)):
                got, want = new(data, at), old(data, at)
                assert (got is None) == (want is None), data
                if want is not None:
                    assert (got.groups(), got.end()) == (want.groups(), want.end())
                    took += 1
                else:
                    refused += 1
            want_head = h1pool.parse_known(data, b"GET", known)
            if want_head is not None:  # what parse_known made of it: parse_head's head
                ref = h1pool.parse_head(data, b"GET")
                assert ref is not None
                assert (want_head.headers, want_head.length, want_head.end) == (
                    tuple(ref.headers), ref.length, ref.end)
    assert took > 100 and refused > 100, (took, refused)


@pytest.mark.parametrize("seed", range(4))
def test_field_line_finds_as_main_made_it(seed: int) -> None:
    """``_FIELD_LINE`` (``parse_head``) finds the same lines as main's, over the same
    hostile heads, and its value class holds the very same bytes."""
    klass = re.compile(rb"[\x0e-\xff\x01-\x09]")
    assert [b for b in range(256) if klass.match(bytes([b]))] == [
        b for b in range(256) if re.match(rb"[\x01-\x09\x0e-\xff]", bytes([b]))]
    rng = random.Random(0x9021 + seed)
    names = [b"Server", b"Date", b"Content-Length", b"Connection", b"X-A"]
    for _ in range(400):
        data = _hostile_head(rng, rng.sample(names, rng.randrange(1, 5)), 0)
        end = data.find(b"\r\n\r\n")
        block = data[data.find(b"\r\n"):end + 2] if end >= 0 else data
        assert h1pool._FIELD_LINE.findall(block) == _OLD_FIELD_LINE.findall(block)
