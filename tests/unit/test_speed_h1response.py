"""The pool's HTTP/1.1 client reads the plainest response heads itself (net/h1pool.py
``parse_head``) and leaves every other to h11, the strict parser it used for all of them.

What it reads, it reads exactly as h11 reads the same bytes: status, reason, each header
(name as sent, value without its surrounding whitespace), the body (one Content-Length),
whether the connection may carry the next request, and whether bytes came after the
response. Every ambiguity an upstream can play on two parsers (duplicate or conflicting
Content-Length, Content-Length with Transfer-Encoding, obs-fold, bare LF, a space before the
colon, chunk-size overflow, garbage after a chunked body, HTTP/1.0 without a length, 1xx
before the final response, a 101, HEAD) is declined, so h11 reads (or refuses) it as before.
Compared on named shapes and on seeded mutations of them."""

from __future__ import annotations

import random
from typing import Any

import h11
import pytest

from vaultproxy.net.h1pool import parse_head

NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\n"
         b"Content-Type: application/octet-stream\r\nContent-Length: 5\r\n"
         b"Connection: keep-alive\r\nETag: \"abc-5\"\r\n\r\nhello")

# (name, bytes, whether the fast path is to take it for a GET)
SHAPES: list[tuple[str, bytes, bool]] = [
    ("plain", NGINX, True),
    ("no reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", True),
    ("empty reason", b"HTTP/1.1 404 \r\nContent-Length: 2\r\n\r\nno", True),
    ("empty body", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    ("value whitespace", b"HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nContent-Length:  2 \r\n\r\nok",
     True),
    ("empty value", b"HTTP/1.1 200 OK\r\nX-A:\r\nContent-Length: 2\r\n\r\nok", True),
    ("obs-text value", b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9 \xff\r\nContent-Length: 2\r\n\r\nok",
     True),
    ("connection close", b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\n"
     b"Content-Length: 2\r\n\r\nok", True),
    ("connection twice", b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n"
     b"Content-Length: 2\r\n\r\nok", True),
    ("bytes after the body", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", True),
    ("body still coming", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", True),
    ("duplicate content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"Content-Length: 2\r\n\r\nok", False),
    ("conflicting content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"Content-Length: 8\r\n\r\nokmuggled", False),
    ("content-length list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", False),
    ("content-length sign", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", False),
    ("content-length huge", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n"
     b"\r\nok", False),
    ("content-length and chunked", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    ("transfer-encoding gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n", False),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok", False),
    ("obs-fold tab", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\t2\r\nContent-Length: 2\r\n\r\nok", False),
    ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False),
    ("bare LF in a line", b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok", False),
    ("bare CR", b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 2\r\n\r\nok", False),
    ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", False),
    ("chunk-size overflow", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"ffffffffffffffffff2\r\nok\r\n0\r\n\r\n", False),
    ("garbage after chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\nGARBAGE", False),
    ("HTTP/1.0 without length", b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil the end", False),
    ("HTTP/1.0 with length", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("HTTP/1.1 without length", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end", False),
    ("1xx first", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
     False),
    ("204 with length", b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", False),
    ("304 with length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", False),
    ("NUL in value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", False),
    ("control in value", b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok",
     True),  # (h11 reads it too: only NUL, CR, LF, VT, FF are no field characters)
    ("control in reason", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok", True),
    ("NUL in reason", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok", False),
    ("LF in reason", b"HTTP/1.1 200 O\nK\r\nContent-Length: 2\r\n\r\nok", False),
    ("VT in value", b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 2\r\n\r\nok", False),
    ("status with a letter", b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("no space after the status", b"HTTP/1.1 200OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("empty name", b"HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 2\r\n\r\nok", False),
    ("leading space line", b"HTTP/1.1 200 OK\r\n X: 1\r\nContent-Length: 2\r\n\r\nok", False),
    ("lowercase version", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("two-digit status", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("head not whole", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", False),
    ("nothing", b"", False),
]


def _h11(data: bytes, method: bytes, eof: bool) -> dict[str, Any]:
    """What h11 reads of ``data`` after a request with ``method``."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    out: dict[str, Any] = {"body": b"", "end": False}
    try:
        while True:
            event = conn.next_event()
            if type(event) is h11.Response:
                out.update(status=event.status_code, reason=event.reason,
                           headers=event.headers.raw_items(), version=event.http_version)
            elif type(event) is h11.InformationalResponse:
                continue  # (the final response follows)
            elif type(event) is h11.Data:
                out["body"] += bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                out["end"] = True
                out["keep"] = conn.their_state is h11.DONE
                out["trailing"] = bool(conn.trailing_data[0])
                return out
            else:
                out["last"] = event if event is h11.NEED_DATA else type(event)
                return out
    except h11.RemoteProtocolError as e:
        out["error"] = str(e)
        return out


def _compare(data: bytes, method: bytes) -> bool:
    """Whether the fast path took ``data``; if so, that it read it as h11 does."""
    head = parse_head(data, method)
    if head is None:
        return False
    want = _h11(data, method, eof=False)
    assert "error" not in want, (data, want)
    assert want["version"] == b"1.1"
    assert (head.status, head.reason, head.headers) == (
        want["status"], want["reason"], want["headers"]), data
    body = data[head.end:head.end + head.length]
    assert body == want["body"], data
    whole = len(data) - head.end >= head.length
    assert whole == want["end"], data
    if whole:
        assert head.keep_alive == want["keep"], data
        assert (len(data) - head.end > head.length) == want["trailing"], data
    return True


@pytest.mark.parametrize(("name", "data", "fast"), SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("method", [b"GET", b"POST", b"HEAD"])
def test_a_shape_is_read_as_h11_reads_it_or_left_to_h11(
        name: str, data: bytes, fast: bool, method: bytes) -> None:
    took = _compare(data, method)
    assert took == (fast and method != b"HEAD"), name


def test_seeded_mutations_are_read_as_h11_reads_them_or_left_to_h11() -> None:
    rng = random.Random(0x29B)
    pieces = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x01", b"\xff", b",",
              b"\x0b", b"\x0c",
              b"Content-Length: 2\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
              b"Connection: close\r\n", b" x\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"0", b"9"]
    bases = [d for _, d, fast in SHAPES if fast]
    took = declined = 0
    for _ in range(8000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[at:at] = rng.choice(pieces)
            else:
                del data[at:at + rng.randint(1, 3)]
        if _compare(bytes(data), rng.choice([b"GET", b"GET", b"POST", b"HEAD"])):
            took += 1
        else:
            declined += 1
    assert took > 500 and declined > 1000  # both sides were exercised


def test_the_fast_path_is_strictly_narrower_than_h11_on_every_named_shape() -> None:
    # the twin of the comparison: each shape the fast path declines is one h11 reads
    # differently from a naive "first Content-Length wins" reader, or refuses
    naive_differs = 0
    for _, data, fast in SHAPES:
        if fast or not data:
            continue
        want = _h11(data, b"GET", eof=True)
        end = data.find(b"\r\n\r\n")
        lower = data.lower()
        at = lower.find(b"content-length:")
        if "error" in want or end < 0 or at < 0:
            naive_differs += 1
            continue
        length = lower[at + 15:lower.find(b"\r\n", at)].strip()
        naive = data[end + 4:end + 4 + int(length)] if length.isdigit() else None
        naive_differs += naive != want["body"] or want.get("status") != int(data[9:12])
    assert naive_differs >= 12
