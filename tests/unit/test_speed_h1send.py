"""``request_bytes`` reads the values with bytes operations (one ``translate`` of the values
joined by "\\n", a count of separators, two ``find``s and the two ends) and writes the head
from one ``%`` of the head its names make (``_names_shape``: Host first, each name's ``%``
doubled). Both answer exactly as before: seeded values over every byte (each of NUL, CR,
LF, VT, FF, spaces and tabs at the ends and next to another value), names holding ``%``
and other token bytes, Host anywhere, ``Content-Length`` right and wrong, compared with the
``request_bytes`` of session 10 (test_speed_h1names.py ``reference``, which reads the
values with ``_VALUES``) and with h11 itself.

The twin: a credential with a space before a line break (``"Bearer x \\r\\nX: 1"``), or a
value led by a tab, is refused as h11 refuses it; the same credential without them goes
out in one line."""

from __future__ import annotations

import random

from tests.canary import make_canary
from tests.unit.test_speed_h1names import reference
from tests.unit.test_speed_h1request import _h11
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import request_bytes

_CANARY = make_canary().encode()
BYTES = [bytes([i]) for i in range(256)]
EDGES = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x0b", b"\x0c", b"\xff", b"a", b"a"]
NAMES = [b"Host", b"host", b"Accept", b"Authorization", b"X-%s", b"%d%%", b"x%", b"Expect",
         b"Connection", b"Content-Length", b"!#$&'*+-.^_`|~", b"X-Api-Key"]


def _value(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return b"".join(rng.choice(BYTES) for _ in range(rng.randint(0, 6)))
    core = rng.choice([b"v", b"a b", b"a\tb", b"", b"Bearer " + _CANARY, b"100-continue",
                       b"close", b"keep-alive, close"])
    if kind < 0.7:  # a hostile byte at an end or inside
        edge = rng.choice(EDGES)
        at = rng.choice([0, len(core), rng.randint(0, len(core))])
        core = core[:at] + edge + core[at:]
    return core


def _fields(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = b"x" * rng.choice([0, 0, 2, 11])
    fields = [(rng.choice(NAMES), _value(rng)) for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.9:
        fields.insert(rng.randint(0, len(fields)), (b"Host", rng.choice(
            [b"api.example.test", b"api.example.test:8443", b" api", b"a\x00"])))
    if body and rng.random() < 0.8:
        fields.append((b"Content-Length", rng.choice([b"%d" % len(body), b"%d" % len(body),
                                                      b"0", b" %d" % len(body)])))
    return fields, body


def test_the_values_read_as_bytes_answer_as_the_pattern() -> None:
    rng = random.Random(0x29D1)
    h1pool._SHAPES.clear()
    fast = refused = 0
    for _ in range(12000):
        fields, body = _fields(rng)
        method = rng.choice([b"GET", b"GET", b"POST", b"M-SEARCH", b"G T"])
        target = rng.choice([b"/v1/x?a=%s", b"/", b"/%d%%", b"/a b"])
        want = reference(method, target, fields, body)
        got = request_bytes(method, target, fields, body)
        assert got == want, (method, target, fields, body)
        if want is None:
            refused += 1
            continue
        fast += 1
        assert want[0] == _h11(method, target, fields, body)
    assert fast > 500 and refused > 3000, (fast, refused)  # both sides exercised
    h1pool._SHAPES.clear()


def test_each_forbidden_byte_is_refused_where_it_stands() -> None:
    # every byte at the start, the end and the middle of a value, the value first, last
    # and between two others: exactly what the session-10 reading refuses, and h11
    for i in range(256):
        byte = bytes([i])
        for value in (byte + b"v", b"v" + byte, b"a" + byte + b"b", byte):
            for at in range(3):
                fields = [(b"Accept", b"x"), (b"X-Key", b"y")]
                fields.insert(at, (b"Authorization", value))
                fields.insert(1, (b"Host", b"api.example.test"))
                want = reference(b"GET", b"/", fields, b"")
                assert request_bytes(b"GET", b"/", fields, b"") == want, (value, at)
                assert (want is None) == (_h11(b"GET", b"/", fields, b"") is None)


def test_a_space_before_a_line_break_never_reaches_the_wire() -> None:
    secret = b"Bearer " + _CANARY
    for value in (secret + b" \r\nX-Injected: 1", secret + b"\t", b"\t" + secret,
                  secret + b" \nX: 1", secret + b"\x0b"):
        fields = [(b"Host", b"api.example.test"), (b"Authorization", value),
                  (b"Accept", b"*/*")]
        assert request_bytes(b"GET", b"/", fields, b"") is None, value
        assert _h11(b"GET", b"/", fields, b"") is None
    # the twin: the same credential, clean, goes out as one line
    fields = [(b"Host", b"api.example.test"), (b"Authorization", secret), (b"Accept", b"*/*")]
    got = request_bytes(b"GET", b"/", fields, b"")
    assert got is not None and got[0] == _h11(b"GET", b"/", fields, b"")
    assert got[0].count(b"\r\n") == 5


def test_a_percent_in_a_name_or_the_target_is_written_as_it_is() -> None:
    h1pool._SHAPES.clear()
    fields = [(b"X-%s%d", b"%s"), (b"Host", b"h%%"), (b"%", b"%d")]
    got = request_bytes(b"GET", b"/%s%%", fields, b"")
    assert got is not None and got[0] == _h11(b"GET", b"/%s%%", fields, b"")
    assert got[0] == b"GET /%s%% HTTP/1.1\r\nHost: h%%\r\nX-%s%d: %s\r\n%: %d\r\n\r\n"
    h1pool._SHAPES.clear()
