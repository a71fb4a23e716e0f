"""``request_bytes`` reads what the field names alone tell once per set of names
(net/h1pool.py ``_SHAPES``, by the names joined) and the values every time; and its value
pattern spells h11's ``[^\\x00\\s]`` out as one table. Both answer exactly as the
``request_bytes`` before them (kept here, verbatim, as the reference), on seeded requests
whose sets of names repeat (each set read once, then found), with hostile bytes in names and
values, and on names that join alike but are not alike (one name holding ":" against two
names).

The twin: the set of names found, without its count of names, takes ``Host:X`` (one field
whose name holds ":", which h11 refuses) for the ``Host`` and ``X`` of another request."""

from __future__ import annotations

import random
import re

import pytest

from tests.canary import make_canary
from tests.unit.test_speed_h1request import _fields, _h11
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import request_bytes

_OLD_NAME = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_OLD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_OLD_NAMES = re.compile(_OLD_NAME + rb"(?::" + _OLD_NAME + rb")*")
_OLD_VALUES = re.compile(_OLD_VALUE + rb"(?:\n" + _OLD_VALUE + rb")*")
_OLD_REQUEST_LINE = re.compile(_OLD_NAME + rb" [\x21-\x7e]+")


def reference(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]],
              body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """request_bytes as it was (session 10), verbatim."""
    n = len(fields)
    names = b":".join([k for k, _ in fields])
    values = b"\n".join([v for _, v in fields])
    if not (_OLD_NAMES.fullmatch(names) and names.count(b":") == n - 1
            and _OLD_VALUES.fullmatch(values) and values.count(b"\n") == n - 1
            and _OLD_REQUEST_LINE.fullmatch(b"%s %s" % (method, target))):
        return None
    low = names.lower().split(b":")
    if low.count(b"host") != 1 or b"transfer-encoding" in low:
        return None
    lengths = low.count(b"content-length")
    if lengths > 1 or (body and not lengths):
        return None
    if lengths and not any(k.lower() == b"content-length" and v == b"%d" % len(body)
                           for k, v in fields):
        return None
    if low[0] != b"host":
        fields = ([f for f in fields if f[0].lower() == b"host"]
                  + [f for f in fields if f[0].lower() != b"host"])
    state = [(b"host", fields[0][1])]
    if b"connection" in low or b"expect" in low:
        state += [(k.lower(), v) for k, v in fields[1:]
                  if k.lower() in (b"connection", b"expect")]
    head = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target,
                                                   b"\r\n".join(map(b": ".join, fields)))
    return (head + body if body else head), state


def test_the_value_table_is_h11s_class() -> None:
    for i in range(256):
        byte = bytes([i])
        assert bool(re.fullmatch(rb"[^\x00\s]", byte)) == bool(
            re.fullmatch(rb"[^\x00\t\n\x0b\x0c\r ]", byte)), byte
    values = re.compile(h1pool._VALUES.pattern)
    rng = random.Random(0x29B0)
    alphabet = [bytes([i]) for i in range(256)] + [b"a"] * 64
    for _ in range(20000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert bool(values.fullmatch(data)) == bool(_OLD_VALUES.fullmatch(data)), data
    # (the possessive runs: the bytes where a run of one kind ends and another begins)
    alphabet = [b"a", b"a", b"\xff", b" ", b"\t", b"\n", b"\x00", b"\r", b"\x0b", b":"]
    for _ in range(40000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        assert bool(values.fullmatch(data)) == bool(_OLD_VALUES.fullmatch(data)), data


_CANARY = make_canary().encode()


def _mixed(rng: random.Random, sets: list[list[tuple[bytes, bytes]]],
           ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A request: often one of a few sets of names again, with fresh values."""
    if sets and rng.random() < 0.7:
        names = rng.choice(sets[-50:])  # (recent: mostly still kept)
        body = b"x" * rng.choice([0, 0, 3])
        fields = []
        for name, _ in names:
            if name.lower() == b"content-length":
                value = rng.choice([b"%d" % len(body), b"0", b"3, 3"])
            else:
                value = rng.choice([b"v", b"a b", b"", b"Bearer " + _CANARY, b"v", b"a b",
                                    b"", b"Bearer " + _CANARY, b" v", b"v\r\nX: 1",
                                    b"\x00"])
            fields.append((name, value))
        return fields, body
    fields, body = _fields(rng)
    sets.append(fields)
    return fields, body


def test_names_read_once_answer_as_the_reference() -> None:
    rng = random.Random(0x29B1)
    h1pool._SHAPES.clear()
    sets: list[list[tuple[bytes, bytes]]] = []
    fast = refused = found = 0
    for _ in range(8000):
        fields, body = _mixed(rng, sets)
        found += b":".join(k for k, _ in fields) in h1pool._SHAPES
        method = rng.choice([b"GET", b"GET", b"POST", b"G T"])
        target = rng.choice([b"/v1/x?a=1", b"/", b"/a b"])
        want = reference(method, target, fields, body)
        assert request_bytes(method, target, fields, body) == want, (method, fields, body)
        if want is None:
            refused += 1
        else:
            fast += 1
            assert want[0] == _h11(method, target, fields, body)
    assert fast > 400 and refused > 2000 and found > 4000  # both sides; sets found again
    assert len(h1pool._SHAPES) <= h1pool._SHAPES_MAX


def test_names_that_join_alike_are_told_apart_by_their_count() -> None:
    h1pool._SHAPES.clear()
    two = [(b"Host", b"api.example.test"), (b"X", b"1")]
    one = [(b"Host:X", b"api.example.test")]
    assert request_bytes(b"GET", b"/", two, b"") is not None
    assert request_bytes(b"GET", b"/", one, b"") is None
    assert reference(b"GET", b"/", one, b"") is None and _h11(b"GET", b"/", one, b"") is None

    # the twin: without the count of names, the set found for ``two`` is taken for
    # ``one`` (its head, made for two values, then fails on one: never a None)
    saved = h1pool._SHAPES[b"Host:X"]
    h1pool._SHAPES[b"Host:X"] = (1, *saved[1:])
    try:
        with pytest.raises(TypeError):
            request_bytes(b"GET", b"/", one, b"")
    finally:
        h1pool._SHAPES.clear()


def test_the_sets_kept_are_bounded_and_hold_no_value() -> None:
    h1pool._SHAPES.clear()
    secret = make_canary().encode()
    for i in range(3 * h1pool._SHAPES_MAX):
        request_bytes(b"GET", b"/", [(b"Host", b"h"), (b"X-%d" % i, secret)], b"")
        assert len(h1pool._SHAPES) <= h1pool._SHAPES_MAX
    long = [(b"Host", b"h"), (b"X" * (h1pool._SHAPE_NAMES_MAX + 1), b"v")]
    assert request_bytes(b"GET", b"/", long, b"") is not None
    assert all(len(k) <= h1pool._SHAPE_NAMES_MAX for k in h1pool._SHAPES)
    assert not any(secret in k or secret in repr(v).encode()
                   for k, v in h1pool._SHAPES.items())
    h1pool._SHAPES.clear()


def test_the_request_line_test_takes_what_the_pattern_takes() -> None:
    """``request_bytes``' test of a method of letters and a target of visible characters
    (``_VISIBLE``) answers as ``_REQUEST_LINE`` does, on seeded methods and targets of
    hostile bytes (spaces, controls, DEL, 8-bit bytes, empty ones); where it declines, the
    pattern decides."""
    rng = random.Random(0x62A)
    alphabet = [bytes([i]) for i in range(256)] + [b"G", b"e", b"/", b"a"] * 32

    def fast(method: bytes, target: bytes) -> bool:
        return bool(method.isalpha() and target
                    and not target.translate(None, h1pool._VISIBLE))

    took = 0
    for i in range(40000):
        method = b"".join(rng.choices(alphabet, k=rng.randint(0, 6)))
        target = b"".join(rng.choices(alphabet, k=rng.randint(0, 8)))
        if i % 3 == 0:
            method = rng.choice([b"GET", b"POST", b"get", b"M-SEARCH", b"G\xc3\xa9T", b""])
        want = bool(h1pool._REQUEST_LINE.fullmatch(b"%s %s" % (method, target)))
        if fast(method, target):
            assert want, (method, target)
            took += 1
        fields = [(b"Host", b"a")]
        assert (request_bytes(method, target, fields, b"") is None) == (not want) == (
            reference(method, target, fields, b"") is None), (method, target)
    assert took > 1000, took
