"""The pool's HTTP/1.1 client writes a request head itself (net/h1pool.py
``request_bytes``): byte for byte what h11's writer makes of it, and only for a request h11
accepts; anything else goes through h11 (which refuses it, or writes it its own way).

Seeded, varied input (hostile bytes in names and values, duplicate and wrong lengths,
missing and repeated Host) is compared with h11 itself. The twin: the one-regex check
without its separator count lets a credential holding a CRLF pass as two header lines; with
it, that value never reaches the wire."""

from __future__ import annotations

import asyncio
import random

import h11
import httpcore
import pytest

from tests.canary import make_canary
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import _VALUES, request_bytes

ALPHABET = [b"a", b"Z", b"0", b"-", b"!", b"~", b" ", b"\t", b":", b"\r", b"\n", b"\r\n",
            b"\x00", b"\x01", b"\x7f", b"\xff", b"\xc3\xa9", b"/", b"=", b'"', b"\x0b", b"\x0c"]
NAMES = [b"Host", b"host", b"Content-Length", b"Accept", b"Authorization", b"X-Api-Key",
         b"Connection", b"Expect", b"Transfer-Encoding", b"Cookie"]


def _h11(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]],
         body: bytes) -> bytes | None:
    """What h11 sends for this request; None if it refuses it."""
    conn = h11.Connection(h11.CLIENT)
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data += conn.send(h11.Data(data=body))  # type: ignore[operator]
        data += conn.send(h11.EndOfMessage())  # type: ignore[operator]
    except h11.LocalProtocolError:
        return None
    return data


def _word(rng: random.Random, hostile: float) -> bytes:
    return b"".join(rng.choice(ALPHABET) if rng.random() < hostile else
                    rng.choice([b"a", b"b", b"Q", b"1", b"-", b"."])
                    for _ in range(rng.randint(0, 12)))


def _fields(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = b"x" * rng.choice([0, 0, 3, 17])
    fields = [(b"Host", b"api.example.test")] if rng.random() < 0.9 else []
    for _ in range(rng.randint(0, 7)):
        hostile = rng.choice([0.0, 0.0, 0.05, 0.3])
        name = rng.choice(NAMES) if rng.random() < 0.6 else _word(rng, hostile)
        if name.lower() == b"content-length":
            value = rng.choice([b"%d" % len(body), b"%d" % len(body), b"0", b"05", b"3, 3",
                                b" 3", b"+3", b"abc"])
        elif name.lower() == b"transfer-encoding":
            value = rng.choice([b"chunked", b"gzip"])
        else:
            value = _word(rng, hostile)
        fields.append((name, value))
    rng.shuffle(fields)
    if body and rng.random() < 0.7 and not any(k.lower() == b"content-length"
                                                for k, _ in fields):
        fields.append((b"Content-Length", b"%d" % len(body)))
    return fields, body


def test_the_fast_head_is_h11s_bytes_and_only_for_what_h11_accepts() -> None:
    rng = random.Random(0x29)
    fast = refused = 0
    for _ in range(6000):
        fields, body = _fields(rng)
        method = rng.choice([b"GET", b"GET", b"POST", b"HEAD", b"G T", b"GET\r\n"])
        target = rng.choice([b"/v1/x?a=1", b"/", b"/", b"/a b", b"/\x00"])
        want = _h11(method, target, fields, body)
        got = request_bytes(method, target, fields, body)
        if got is None:
            refused += want is None
            continue  # h11 writes or refuses it in _Conn.send
        fast += 1
        assert got[0] == want, (method, target, fields, body)
        # what h11 is told of it, should it read the response (framing, keep-alive)
        assert sorted(got[1]) == sorted((k.lower(), v) for k, v in fields
                                        if k.lower() in (b"host", b"connection", b"expect"))
    assert fast > 400 and refused > 1500  # both sides of the check were exercised


def _conn() -> h1pool._Conn:
    async def make() -> h1pool._Conn:
        return h1pool._Conn(("127.0.0.1", 443, "api.example.test"))

    conn = asyncio.run(make())

    class Transport:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    conn.transport = Transport()
    return conn


def test_a_credential_holding_a_crlf_never_splits_a_header() -> None:
    # (a stand-in transport: what is written is the point, not a socket)
    secret = make_canary()
    value = b"Bearer " + secret.encode() + b"\r\nX-Injected: 1"
    fields = [(b"Host", b"api.example.test"), (b"Authorization", value)]
    assert request_bytes(b"GET", b"/", fields, b"") is None
    conn = _conn()
    with pytest.raises(httpcore.LocalProtocolError):
        conn.send(b"GET", b"/", fields, b"")
    assert conn.transport.written == []
    assert conn.closed

    # the twin: the same value, only without the line break, goes out in one header
    clean = [(b"Host", b"api.example.test"), (b"Authorization", b"Bearer " + secret.encode())]
    conn = _conn()
    conn.send(b"GET", b"/", clean, b"")
    assert conn.transport.written[-1].count(b"\r\n") == 4  # request line, 2 fields, end


def test_the_separator_count_is_what_catches_a_line_break() -> None:
    # The twin of the check itself: the joined values match the value grammar with a CRLF
    # inside one of them (the "\n" reads as a separator); the count says there is one too many.
    values = [b"Bearer abc\r\nX-Injected: 1".replace(b"\r", b""), b"api.example.test"]
    joined = b"\n".join(values)
    assert _VALUES.fullmatch(joined)
    assert joined.count(b"\n") != len(values) - 1
    assert request_bytes(b"GET", b"/", [(b"Authorization", values[0]),
                                         (b"Host", values[1])], b"") is None


def test_a_second_request_while_one_is_in_flight_is_refused() -> None:
    conn = _conn()
    fields = [(b"Host", b"api.example.test")]
    conn.send(b"GET", b"/", fields, b"")
    with pytest.raises(httpcore.LocalProtocolError):
        conn.send(b"GET", b"/again", fields, b"")
    assert len(conn.transport.written) == 1
