"""``parse_known`` reads a response head whose field names are those of an earlier head
with one pattern made for those names (net/h1pool.py ``_Known``), where ``parse_head``
finds every field line, makes every name and looks the set of names up. What it takes it
reads exactly as ``parse_head`` (the reference: it reads every head ``parse_known``
declines) reads the same bytes, and it declines anything else: compared on the named shapes,
on hostile heads (obs-fold, bare CR and LF, NUL, VT, FF, 8-bit bytes, duplicate and
contradicting Content-Length, Transfer-Encoding forms, names that changed case or place,
heads past the limit) and on seeded mutations of them, each with the pattern of the
unmutated head's names.

The twin: a pattern without ``(?<![ \\t])`` takes a value that ends in a space or tab
with it, where ``parse_head`` strips it."""

from __future__ import annotations

import random
import re

from tests.unit.test_speed_h1fields import PIECES
from tests.unit.test_speed_h1response import SHAPES
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import (
    MAX_INCOMPLETE_EVENT,
    ResponseHead,
    _head_shape,
    _Known,
    known_of,
    parse_head,
    parse_known,
)

_NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 15:13:43 GMT\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 1024\r\n"
          b"Last-Modified: Mon, 07 Dec 2026 15:13:43 GMT\r\nConnection: keep-alive\r\n"
          b"ETag: \"6b16cd27-400\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 1024)


def _fields(head: ResponseHead) -> tuple[object, ...]:
    return (head.status, head.reason, list(head.headers), head.length, head.keep_alive,
            head.end)


def _known(data: bytes) -> _Known:
    head = parse_head(data, b"GET")
    assert head is not None
    names = tuple(name for name, _ in head.headers)
    shape = _head_shape(names)
    assert shape is not None
    return _Known(names, shape)


def _same(data: bytes, method: bytes, known: _Known) -> bool:
    """parse_known takes nothing parse_head does not, and reads what it takes as it does."""
    got, want = parse_known(data, method, known), parse_head(data, method)
    if got is None:
        return False
    assert want is not None, data
    assert _fields(got) == _fields(want), data
    assert type(got.headers) is tuple  # (``headers_made`` takes it as it is)
    assert all(type(f) is tuple and len(f) == 2 and type(f[0]) is bytes
               and type(f[1]) is bytes for f in got.headers)
    return True


_BASES = [_NGINX] + [data for _, data, fast in SHAPES if fast]

HOSTILE = [
    b"HTTP/1.1 200 OK\r\nServer: a\r\n b\r\nContent-Length: 2\r\n\r\nok",  # obs-fold
    b"HTTP/1.1 200 OK\r\nServer: a\r\n\tb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\nContent-Length: 2\r\n\r\nok",  # bare LF
    b"HTTP/1.1 200 OK\r\nServer: a\rContent-Length: 2\r\n\r\nok",  # bare CR
    b"HTTP/1.1 200 OK\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\x00b\r\nContent-Length: 2\r\n\r\nok",  # NUL
    b"HTTP/1.1 200 OK\r\nServer: a\x0bb\r\nContent-Length: 2\r\n\r\nok",  # VT
    b"HTTP/1.1 200 OK\r\nServer: a\x0cb\r\nContent-Length: 2\r\n\r\nok",  # FF
    b"HTTP/1.1 200 OK\r\nServer: caf\xc3\xa9\xff\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a \r\nContent-Length: 2\r\n\r\nok",  # trailing space
    b"HTTP/1.1 200 OK\r\nServer: a\t\r\nContent-Length: 2 \r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: \r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer:\r\nContent-Length:2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer : a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nserver: a\r\nContent-Length: 2\r\n\r\nok",  # name's case
    b"HTTP/1.1 200 OK\r\nServer: a\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: a\r\n\r\nok",  # order
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 0x2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 9999999999999999999\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: \xd9\xa2\r\n\r\nok",  # not ASCII digits
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n"
    b"\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\nServer: b\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\n",  # body to come
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n",  # head not whole
    b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 304 No\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 600 No\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 O\x00K\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\r\nServer: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 404\r\nServer: a\r\nContent-Length: 2\r\n\r\nno",
    b"HTTP/1.1 599 Odd \xff\r\nServer: a\r\nContent-Length: 2\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nServer: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    # past the limit: the blank line too far, whatever the names
    b"HTTP/1.1 200 OK\r\nServer: " + b"a" * MAX_INCOMPLETE_EVENT + b"\r\nContent-Length: 2"
    b"\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: " + b"a" * (MAX_INCOMPLETE_EVENT - 60) + b"\r\n"
    b"Content-Length: 2\r\n\r\nok",
] + [  # the blank line at the limit (taken) and one byte past it (declined)
    b"HTTP/1.1 200 OK\r\nServer: " + b"a" * (MAX_INCOMPLETE_EVENT - 44 + past)
    + b"\r\nContent-Length: 2\r\n\r\nok" for past in (0, 1)]


def test_the_named_and_hostile_heads_read_as_parse_head_reads_them() -> None:
    took = 0
    knowns = [_known(base) for base in _BASES] + [
        _known(b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok"),
        _known(b"HTTP/1.1 200 OK\r\nServer: a\r\nConnection: close\r\nContent-Length: 2"
               b"\r\n\r\nok")]
    for known in knowns:
        for data in _BASES + HOSTILE:
            for method in (b"GET", b"POST", b"HEAD"):
                took += _same(data, method, known)
    for base in _BASES:  # each base with its own names' pattern: taken unless it ends in OWS
        if not re.search(rb"[ \t]\r\n", base[:base.find(b"\r\n\r\n") + 2]):
            assert parse_known(base, b"GET", _known(base)) is not None, base
    assert took > 15
    known = _known(b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok")
    at, past = HOSTILE[-2:]
    assert at.find(b"\r\n\r\n") == MAX_INCOMPLETE_EVENT
    assert parse_known(at, b"GET", known) is not None
    assert parse_known(past, b"GET", known) is None


def test_seeded_mutations_read_as_parse_head_reads_them() -> None:
    rng = random.Random(0x4B0E)
    pieces = PIECES + [b"Server: a\r\n", b"Content-Length: 7\r\n", b"\r\n\r\n", b"ETag",
                       b"Server", b"SERVER", b"Date: x\r\n"]
    bases = _BASES + HOSTILE[:-2]
    took = declined = 0
    for _ in range(30000):
        base = rng.choice(bases)
        known = _known(rng.choice(_BASES)) if rng.random() < 0.3 else None
        data = bytearray(base)
        for _ in range(rng.randint(0, 4)):
            at = data.find(b"\r\n", rng.randrange(len(data) + 1))
            at = at + 2 if at >= 0 and rng.random() < 0.6 else rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(pieces)
            else:
                del data[at:at + rng.randint(1, 3)]
        if known is None:
            try:
                known = _known(base)
            except AssertionError:
                known = _known(_NGINX)
        if _same(bytes(data), rng.choice([b"GET", b"GET", b"POST", b"HEAD"]), known):
            took += 1
        else:
            declined += 1
    assert took > 1000 and declined > 3000  # both sides were exercised


def test_a_pattern_is_made_on_the_second_read_and_holds_no_value() -> None:
    """``known_of`` makes a set's pattern the second time ``parse_head`` read its names
    (never on one read), for heads ``parse_head`` frames itself only, bounded; names only
    (the canary in a value is nowhere in it)."""
    from tests.canary import make_canary

    secret = make_canary().encode()
    h1pool._KNOWN.clear()
    h1pool._known_made[:] = [0.0, 0]
    head = parse_head(b"HTTP/1.1 200 OK\r\nSet-Cookie: " + secret + b"\r\nContent-Length: 2"
                      b"\r\n\r\nok", b"GET")
    assert head is not None
    assert known_of(head.headers) is None  # (once)
    known = known_of(head.headers)
    assert known is not None and known is known_of(head.headers)
    assert known.names == (b"Set-Cookie", b"Content-Length")
    assert secret not in repr((h1pool._KNOWN, known.names, known.match.__self__.pattern,
                               known.length, known.connection)).encode()
    many = [(b"X-%d" % i, b"v") for i in range(h1pool._HEAD_NAMES_MAX)] + [
        (b"Content-Length", b"0")]
    assert known_of(many) is None and known_of(many) is None  # (too many names)
    for i in range(3 * h1pool._KNOWN_MAX):
        h1pool._known_made[:] = [0.0, 0]  # (a fresh budget each time)
        fields = [(b"X-%d" % i, b"v"), (b"Content-Length", b"0")]
        known_of(fields)
        assert known_of(fields) is not None
        assert len(h1pool._KNOWN) <= h1pool._KNOWN_MAX
    h1pool._KNOWN.clear()


def test_at_most_a_budget_of_patterns_is_made_per_window(monkeypatch: object) -> None:
    """An upstream whose names change all the time makes at most ``_KNOWN_BUDGET``
    patterns per ``_KNOWN_WINDOW`` seconds; past it the set is made when the next window
    allows (its heads read by ``parse_head`` meanwhile)."""
    clock = [1000.0]
    monkeypatch.setattr(h1pool.time, "monotonic", lambda: clock[0])  # type: ignore[attr-defined]
    h1pool._KNOWN.clear()
    h1pool._known_made[:] = [0.0, 0]
    made = 0
    for i in range(3 * h1pool._KNOWN_BUDGET):
        fields = [(b"Y-%d" % i, b"v"), (b"Content-Length", b"0")]
        known_of(fields)
        made += known_of(fields) is not None
    assert made == h1pool._KNOWN_BUDGET
    late = [(b"Y-%d" % (3 * h1pool._KNOWN_BUDGET - 1), b"v"), (b"Content-Length", b"0")]
    assert known_of(late) is None
    clock[0] += h1pool._KNOWN_WINDOW
    assert known_of(late) is not None  # (the next window)
    h1pool._KNOWN.clear()
    h1pool._known_made[:] = [0.0, 0]


def test_twin_without_the_lookbehind_takes_a_value_with_its_trailing_space() -> None:
    data = b"HTTP/1.1 200 OK\r\nServer: a \r\nContent-Length: 2\r\n\r\nok"
    known = _known(data)
    want = parse_head(data, b"GET")
    assert want is not None and want.headers[0] == (b"Server", b"a")
    assert parse_known(data, b"GET", known) is None
    for name in ("match", "ok"):  # (the status line "200 OK" folded in, and after it)
        pattern = getattr(known, name).__self__.pattern
        assert rb"(?<![ \t])" in pattern
        setattr(known, name, re.compile(pattern.replace(rb"(?<![ \t])", b"")).match)
    got = parse_known(data, b"GET", known)
    assert got is not None and got.headers[0] == (b"Server", b"a ")  # not as parse_head
    got = parse_known(data.replace(b"200 OK", b"201 Made"), b"GET", known)
    assert got is not None and got.headers[0] == (b"Server", b"a ")


def test_twin_without_the_digits_in_the_pattern_takes_a_length_parse_head_declines() -> None:
    """The Content-Length value is read by the pattern (``_KNOWN_LENGTH``: ASCII digits, at
    most 18); with the other values' class it would take lengths ``parse_head`` declines
    (``int`` reads a sign, spaces, an underscore, non-ASCII digits)."""
    known = _known(b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok")
    odd = [b"+2", b"2_0", b"\xd9\xa2", b"1" * 19, b"-0"]
    datas = [b"HTTP/1.1 %s\r\nServer: a\r\nContent-Length: %s\r\n\r\nok" % (line, value)
             for line in (b"200 OK", b"404 Gone") for value in odd]
    for data in datas:
        assert parse_head(data, b"GET") is None and parse_known(data, b"GET", known) is None
    for name in ("match", "ok"):
        pattern = getattr(known, name).__self__.pattern
        assert h1pool._KNOWN_LENGTH in pattern
        setattr(known, name, re.compile(pattern.replace(h1pool._KNOWN_LENGTH,
                                                        h1pool._KNOWN_VALUE)).match)
    took = 0
    for data in datas:
        try:
            took += parse_known(data, b"GET", known) is not None
        except ValueError:
            took += 1  # (``int`` refused it: not the same either)
    assert took == len(datas)


def test_the_pool_reads_a_connection_s_later_heads_with_the_pattern() -> None:
    """The third head of one set of names on a connection is read by ``parse_known``
    (the first two by ``parse_head``: the pattern is made on the second)."""
    import asyncio

    from vaultproxy.net.h1pool import _Conn

    class _Transport:
        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    async def exchange(conn: _Conn, data: bytes) -> ResponseHead | None:
        conn.busy = False
        conn.send(b"GET", b"/", [(b"Host", b"a")], b"")
        conn.data_received(data)
        head = await conn.read_head(5.0)
        conn.inbox.clear()
        conn.inbox_len = 0
        return head

    async def main() -> None:
        h1pool._KNOWN.clear()
        h1pool._known_made[:] = [0.0, 0]
        conn = _Conn(("127.0.0.1", 443, "a"))
        conn.connection_made(_Transport())
        calls = []
        real = h1pool.parse_known

        def spy(*args: object) -> object:
            result = real(*args)  # type: ignore[arg-type]
            calls.append(result is not None)
            return result

        h1pool.parse_known = spy  # type: ignore[assignment]
        try:
            for _ in range(3):
                head = await exchange(conn, _NGINX)
                assert head is not None and _fields(head) == _fields(
                    parse_head(_NGINX, b"GET"))  # type: ignore[arg-type]
            other = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            head = await exchange(conn, other)
            assert head is not None and head.headers == [(b"Content-Length", b"2")]
        finally:
            h1pool.parse_known = real  # type: ignore[assignment]
        assert calls == [True, False]  # (the third nginx head; the other one declined)
        conn.close()

    asyncio.run(main())
