"""``parse_head`` reads a response head's status line and field lines with two regular
expressions (net/h1pool.py ``_STATUS_LINE``, ``_FIELD_LINE``) where it read them line by
line: what it takes, and what it declines to h11, is exactly what the line-by-line reader
(kept here, verbatim, as the reference) took and declined, on the named shapes and on
seeded mutations of them (hostile bytes in names, values and line ends; lines without a
colon; obs-fold; duplicate lengths).

The twins: a ``findall`` without the CRLF before each field line would match the tail of a
line whose name is no token ("X A: b" from "A: b"), and one without the CRLF after it
would match a line cut by a bare LF ("X-A: 1" of "X-A: 1\nContent-Length: 2"); the count
of CRLFs is then still right, and such a head would be taken. The two CRLFs are what
decline them (they also stand for the separate counts of CR, LF, NUL, VT and FF the reader
made before)."""

from __future__ import annotations

import random
import re

from mitmproxy import http

from tests.unit.test_speed_h1response import SHAPES
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import MAX_INCOMPLETE_EVENT, ResponseHead, parse_head
from vaultproxy.seam import objects

_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NOT_IN_VALUE = b"\x00\r\n\x0b\x0c"


def reference(data: bytes, method: bytes) -> ResponseHead | None:
    """parse_head as it was (the line-by-line reader), verbatim."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_INCOMPLETE_EVENT or method == b"HEAD":
        return None
    line_end = data.find(b"\r\n")
    code = data[9:12]
    if not (data.startswith(b"HTTP/1.1 ") and code.isdigit() and len(code) == 3):
        return None
    if line_end == 12:
        reason = b""
    elif data[12:13] == b" ":
        reason = data[13:line_end]
        if len(reason.translate(None, _NOT_IN_VALUE)) != len(reason):
            return None
    else:
        return None
    status = int(code)
    if not 200 <= status < 600 or status == 204 or status == 304:
        return None
    block = data[line_end:end + 2]
    crlf = block.count(b"\r\n")
    if (block.count(b"\r") != crlf or block.count(b"\n") != crlf
            or len(block.translate(None, b"\x00\x0b\x0c")) != len(block)
            or b"\n " in block or b"\n\t" in block):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length = b""
    keep_alive = True
    for line in block[2:-2].split(b"\r\n") if crlf > 1 else ():
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):
            return None
        value = value.strip(b" \t")
        headers.append((name, value))
        low = name.lower()
        if low == b"content-length":
            if length or not value.isdigit() or len(value) > 18:
                return None
            length = value
        elif low == b"transfer-encoding":
            return None
        elif low == b"connection" and b"close" in [
                t.strip().lower() for t in value.split(b",")]:
            keep_alive = False
    if not length:
        return None
    return ResponseHead(status, reason, headers, int(length), keep_alive, end + 4)


_OLD_FIELD_LINE = re.compile(rb"\r\n(" + h1pool._FIELD_NAME
                             + rb"):[ \t]*([^\x00\r\n\x0b\x0c]*)(?=\r\n)")


def reference_lowered(data: bytes, method: bytes) -> ResponseHead | None:
    """parse_head before the names were read once per set (``_HEAD_SHAPES``): the
    lower-cased block searched per head, verbatim (its value class as it was)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_INCOMPLETE_EVENT or method == b"HEAD":
        return None
    status_line = h1pool._STATUS_LINE.match(data)
    if status_line is None:
        return None
    status = int(status_line[1])
    if not 200 <= status < 600 or status == 204 or status == 304:
        return None
    reason = status_line[2] or b""
    # the field lines: each a token, ":", a value (its OWS stripped, as h11 does)
    block = data[status_line.end() - 2:end + 2]  # (from the status line's CRLF)
    headers: list[tuple[bytes, bytes]] = _OLD_FIELD_LINE.findall(block)
    if len(headers) != block.count(b"\r\n") - 1:
        return None  # a line that is no field (no colon, no token, obs-fold, bare CR/LF...)
    if block.find(b" \r\n") >= 0 or block.find(b"\t\r\n") >= 0:  # trailing whitespace
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    low = block.lower()
    if low.find(b"\r\ntransfer-encoding:") >= 0:
        return None
    at = low.find(b"\r\ncontent-length:")
    if at < 0 or low.find(b"\r\ncontent-length:", at + 17) >= 0:
        return None  # none, or two
    length = block[at + 17:block.find(b"\r\n", at + 17)].strip(b" \t")
    if not length.isdigit() or len(length) > 18:
        return None
    keep_alive = True
    if low.find(b"close") >= 0:  # (else no Connection value holds the token)
        for name, value in headers:
            if name.lower() == b"connection" and b"close" in [
                    t.strip().lower() for t in value.split(b",")]:
                keep_alive = False
    return ResponseHead(status, reason, headers, int(length), keep_alive, end + 4)



def _same(data: bytes, method: bytes) -> bool:
    got, want = parse_head(data, method), reference(data, method)
    if got is not None:  # what the pool stage makes of its fields (seam/objects.py)
        made, stock = objects.headers_made(got.headers), http.Headers(got.headers)
        assert type(made.fields) is tuple and made.fields == stock.fields
        assert all(type(f) is tuple and len(f) == 2 and type(f[0]) is bytes
                   and type(f[1]) is bytes for f in made.fields)
    lowered = reference_lowered(data, method)
    assert (lowered is None) == (want is None), data
    if lowered is not None and want is not None:
        assert (lowered.status, lowered.reason, lowered.headers, lowered.length,
                lowered.keep_alive, lowered.end) == (want.status, want.reason, want.headers,
                                                     want.length, want.keep_alive, want.end)
    if want is None:
        assert got is None, data
        return False
    assert got is not None, data
    assert (got.status, got.reason, got.headers, got.length, got.keep_alive, got.end) == (
        want.status, want.reason, want.headers, want.length, want.keep_alive, want.end), data
    return True


PIECES = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x01", b"\xff", b",", b"\x0b",
          b"\x0c", b"X A: b\r\n", b": v\r\n", b"nocolon\r\n", b"Content-Length: 2\r\n",
          b"content-length: 3\r\n", b"Content-Length : 2\r\n", b"Transfer-Encoding: chunked\r\n",
          b"X-Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
          b"Connection: keep-alive, CLOSE \r\n", b"X-A: close\r\n", b" x\r\n", b"\tx\r\n",
          b"X-B: \t v \t\r\n", b"X-C:  \r\n", b"0", b"9", b"(", b"@"]


def test_the_named_shapes_are_read_as_the_line_reader_read_them() -> None:
    for _, data, _fast in SHAPES:
        for method in (b"GET", b"POST", b"HEAD"):
            _same(data, method)


def test_seeded_mutations_are_read_as_the_line_reader_read_them() -> None:
    rng = random.Random(0x29F1)
    bases = [d for _, d, fast in SHAPES if fast]
    took = declined = 0
    for _ in range(20000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            at = data.find(b"\r\n", rng.randrange(len(data) + 1))
            at = at + 2 if at >= 0 and rng.random() < 0.6 else rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(PIECES)
            else:
                del data[at:at + rng.randint(1, 3)]
        if _same(bytes(data), rng.choice([b"GET", b"GET", b"POST", b"HEAD"])):
            took += 1
        else:
            declined += 1
    assert took > 1000 and declined > 3000  # both sides were exercised


def _loose(data: bytes, pattern: bytes) -> ResponseHead | None:
    saved = h1pool._FIELD_LINE
    h1pool._FIELD_LINE = re.compile(pattern)
    try:
        return parse_head(data, b"GET")
    finally:
        h1pool._FIELD_LINE = saved


def test_twin_without_the_crlf_before_a_name_that_is_no_token_is_taken() -> None:
    data = b"HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nok"
    assert parse_head(data, b"GET") is None and reference(data, b"GET") is None
    pattern = h1pool._FIELD_LINE.pattern
    assert pattern.startswith(rb"\r\n(")
    head = _loose(data, pattern[len(rb"\r\n"):])
    assert head is not None and head.headers[0] == (b"A", b"b")  # the bad line, half read


def test_twin_without_the_crlf_after_a_bare_lf_is_taken() -> None:
    data = b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok"
    assert parse_head(data, b"GET") is None and reference(data, b"GET") is None
    pattern = h1pool._FIELD_LINE.pattern
    assert pattern.endswith(rb"(?=\r\n)")
    head = _loose(data, pattern[:-len(rb"(?=\r\n)")])
    assert head is None  # (no Content-Length read: the line after the bare LF is lost)
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\nX-B: 2\r\n\r\nok"
    assert parse_head(data, b"GET") is None and reference(data, b"GET") is None
    head = _loose(data, pattern[:-len(rb"(?=\r\n)")])
    assert head is not None and head.headers[1] == (b"X-A", b"1")  # X-B lost unseen


def test_the_value_class_spelled_as_ranges_is_the_negated_one() -> None:
    # (its ranges the common one first since pool11: the same bytes)
    new = re.compile(rb"[\x0e-\xff\x01-\x09]")
    old = re.compile(rb"[^\x00\r\n\x0b\x0c]")
    assert rb"([\x0e-\xff\x01-\x09]*+)" in h1pool._FIELD_LINE.pattern
    for i in range(256):
        assert bool(new.fullmatch(bytes([i]))) == bool(old.fullmatch(bytes([i]))), i


def test_the_names_are_read_once_per_set_and_never_a_value() -> None:
    """``_HEAD_SHAPES`` holds sets of names (never a value: the canary in a value, or a
    cookie, is nowhere in it), bounded; a head whose names changed case is read afresh, and
    every head reads as the reference does whether its names were known or not."""
    from tests.canary import make_canary

    secret = make_canary().encode()
    h1pool._HEAD_SHAPES.clear()
    rng = random.Random(0x5EED)
    names = [b"Server", b"Date", b"Content-Length", b"content-length", b"Connection",
             b"Transfer-Encoding", b"X-A", b"Set-Cookie", b"CONNECTION", b"ETag"]
    for _ in range(3000):
        fields = [(rng.choice(names), rng.choice([b"1", b"close", b"keep-alive, Close",
                                                  b"x", secret, b"12", b"chunked"]))
                  for _ in range(rng.randint(0, 6))]
        data = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % f for f in fields)
                + b"\r\n" + b"x" * 12)
        _same(data, b"GET")
        _same(data, b"GET")  # (the second time: its names known)
        assert len(h1pool._HEAD_SHAPES) <= h1pool._HEAD_SHAPES_MAX
    assert h1pool._HEAD_SHAPES
    for key, shape in h1pool._HEAD_SHAPES.items():
        assert all(type(n) is bytes and n in names for n in key)
        assert secret not in repr((key, shape)).encode()
    many = tuple(b"X-%d" % i for i in range(h1pool._HEAD_NAMES_MAX + 1))
    data = (b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": v\r\n" for n in many)
            + b"Content-Length: 0\r\n\r\n")
    assert parse_head(data, b"GET") is not None
    assert many + (b"Content-Length",) not in h1pool._HEAD_SHAPES  # (too many to keep)


def test_one_token_class_for_the_client_and_the_lean_layer() -> None:
    """net/grammar.py ``TOKEN`` (what h1pool's names are made of) takes exactly the bytes
    the lean layer's token takes (seam/lean.py ``_TOKEN``), and h11's ``tchar``."""
    from vaultproxy.net.grammar import TOKEN
    from vaultproxy.seam import lean

    one = re.compile(TOKEN)
    other = re.compile(lean._TOKEN)
    assert h1pool._FIELD_NAME == TOKEN
    for i in range(256):
        byte = bytes([i])
        assert bool(one.fullmatch(byte)) == bool(other.fullmatch(byte)) == (
            byte in _TOKEN), byte


# _FIELD_LINE before its runs were possessive, verbatim (net/h1pool.py)
_GREEDY_FIELD_LINE = re.compile(rb"\r\n(" + h1pool._FIELD_NAME
                                + rb"):[ \t]*([\x01-\x09\x0e-\xff]*)(?=\r\n)")


def test_the_possessive_field_line_finds_what_the_greedy_one_found() -> None:
    """60 000 seeded blocks of hostile bytes (obs-fold, bare CR and LF, NUL, DEL, VT, FF,
    8-bit bytes, tabs and spaces around values, empty values, colons in values, duplicate
    names, some long): ``findall`` of the possessive pattern is the greedy one's."""
    rng = random.Random(0x62B)
    alphabet = [b"\r\n", b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b"a", b"A-b", b"\x00",
                b"\x7f", b"\x0b", b"\x0c", b"\xff", b"\x80", b"\x01", b"\r\n ", b"\r\n\t",
                b"Content-Length", b"0", b"(", b","]
    for i in range(60000):
        block = b"\r\n" + b"".join(rng.choices(alphabet, k=rng.randint(0, 16)))
        if i % 100 == 0:
            block += b"X: " + b"v \t:" * rng.randint(100, 3000)
        block += rng.choice([b"\r\n", b"", b"\r"])
        assert h1pool._FIELD_LINE.findall(block) == _GREEDY_FIELD_LINE.findall(block), block


def test_the_common_status_line_is_what_the_pattern_reads() -> None:
    """``_OK_LINE`` (taken without ``_STATUS_LINE``) reads as the pattern reads it, and a
    line that only starts like it is still matched (and refused where it must be)."""
    m = h1pool._STATUS_LINE.match(h1pool._OK_LINE + b"Content-Length: 0\r\n\r\n")
    assert m is not None and (int(m[1]), m[2], m.end()) == (200, b"OK", len(h1pool._OK_LINE))
    for line in (b"HTTP/1.1 200 OKAY\r\n", b"HTTP/1.1 200 OK \r\n", b"HTTP/1.1 200 OK\n",
                 b"HTTP/1.1 200 OK\r\r\n", b"HTTP/1.1 200 O\x00K\r\n", b"HTTP/1.1 200\r\n"):
        data = line + b"Content-Length: 2\r\n\r\nok"
        _same(data, b"GET")
    head = parse_head(b"HTTP/1.1 200 OKAY\r\nContent-Length: 2\r\n\r\nok", b"GET")
    assert head is not None and head.reason == b"OKAY"
