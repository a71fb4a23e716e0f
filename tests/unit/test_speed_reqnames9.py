"""``check_headers`` (core/pipeline.py) of a request whose head ``LeanLayer._take`` read by
the pattern of its names (seam/lean.py ``_Known``) returns what the names tell without
reading the fields again (inject/names.py ``_checked_memo``: set by ``_take`` for a head of
at most ``_CHECKED_HEAD`` bytes, taken only while the request's fields are that very tuple).
Compared with ``check_headers`` as it was before (``_reference``, kept here) on the reqknown
test's common and hostile heads (smuggling shapes, Proxy-Authorization, Host duplicates,
obs-fold, NUL, huge values, placeholders, canaries) and on seeded mutations of them, each
read with a base head's pattern: the same names returned, the same refusal (type and text).
A stage that changes a field makes a new tuple: today's path reads it (the twin: a value
with a CR added after the pattern read the head is refused, as today)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from mitmproxy import http

from tests.unit import test_speed_reqknown as reqknown
from vaultproxy.core import pipeline
from vaultproxy.errors import InvalidRequest
from vaultproxy.inject import names as names_mod
from vaultproxy.seam import lean

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_MAX_FIELDS = 256
_MAX_BYTES = 64 * 1024


def _reference(fields: Any) -> tuple[bytes, ...]:
    """``check_headers`` before ``reqnames9`` (its field-by-field reading: what the
    all-at-once check and its memo give, tests/unit/test_speed_stages3.py)."""
    if len(fields) > _MAX_FIELDS:
        raise InvalidRequest(f"more than {_MAX_FIELDS} header fields")
    size = 0
    for i, (name, value) in enumerate(fields):
        size += len(name) + len(value)
        if not _TOKEN.match(name):
            raise InvalidRequest(f"header field {i + 1}: the name is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise InvalidRequest(
                f"header field {i + 1}: the value holds a line break (obs-fold) or NUL"
            )
    if size > _MAX_BYTES:
        raise InvalidRequest(f"the header section is over {_MAX_BYTES // 1024} KiB")
    return tuple([k.lower() for k, _ in fields])


def _outcome(check: Any, fields: Any) -> Any:
    try:
        return ("ok", check(fields))
    except InvalidRequest as e:
        return (type(e), str(e))


#: per request taken: did ``check_headers`` answer from the pattern's record?
_hits: list[bool] = []


def _same(data: bytes, known: lean._Known | None) -> None:
    side = reqknown._layer(lean.LeanLayer)
    side.buf += data
    side.known = known
    names_mod._checked_memo = ((), ())
    got = side._take()
    if not isinstance(got, http.Request):
        return
    fields = got.data.headers.fields
    hit = names_mod._checked_memo[0] is fields
    _hits.append(hit)
    names_mod._names_memo = names_mod._canonical_memo = ((), ())
    pipeline._names_ok = ((), 0)
    want = _outcome(_reference, fields)
    assert _outcome(pipeline.check_headers, fields) == want, data
    assert pipeline.header_names(fields) == want[1] if want[0] == "ok" else True
    # a stage that changes the fields (a new tuple): today's path reads them
    changed = fields + ((b"X-Added", b"a\r\nb"),)
    assert _outcome(pipeline.check_headers, changed) == _outcome(_reference, changed)


def test_the_common_and_hostile_heads_check_as_today() -> None:
    _hits.clear()
    knowns = ([reqknown._known(b) for b in reqknown._BASES]
              + [reqknown._known(reqknown._HOSTILE[0]), reqknown._known(reqknown._HOSTILE[-1])])
    for known in [*knowns, None]:
        for data in reqknown._BASES + reqknown._HOSTILE:
            _same(data, known)
    assert sum(_hits) > 20 and _hits.count(False) > 30


def test_seeded_mutations_check_as_today() -> None:
    rng = random.Random(0x9E9A)
    pieces = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"Host",
              b"Host: b\r\n", b"Proxy-Authorization: Basic eDp5\r\n", b"Content-Length: 3\r\n",
              b"Transfer-Encoding: chunked\r\n", b"0", b"abc", b"\r\n\r\n", b"_",
              reqknown._CANARY, reqknown._PLACEHOLDER, b"a" * 70000]
    bases = reqknown._BASES + reqknown._HOSTILE
    _hits.clear()
    for _ in range(4000):
        base = rng.choice(reqknown._BASES if rng.random() < 0.5 else bases)
        known = reqknown._known(base if base in reqknown._BASES and rng.random() < 0.8
                                else rng.choice(reqknown._BASES))
        data = bytearray(base)
        for _ in range(rng.randint(0, 3)):
            at = data.find(b"\r\n", rng.randrange(len(data) + 1))
            at = at + 2 if at >= 0 and rng.random() < 0.6 else rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(pieces)
            else:
                del data[at:at + rng.randint(1, 3)]
        _same(bytes(data), known)
    assert sum(_hits) > 300 and _hits.count(False) > 20


def test_a_head_past_the_bound_is_checked_as_today() -> None:
    """The pattern takes a head of any length; past ``_CHECKED_HEAD`` its fields are read."""
    assert lean._CHECKED_HEAD == pipeline.MAX_HEADER_BYTES
    known = reqknown._known(reqknown._BASES[0])
    side = reqknown._layer(lean.LeanLayer)
    big = b"GET /1k HTTP/1.1\r\nHost: " + b"a" * 70000 + b"\r\nAccept-Encoding: x\r\n\r\n"
    side.buf += big
    side.known = known
    names_mod._checked_memo = ((), ())
    got = side._take()
    assert isinstance(got, http.Request)
    assert names_mod._checked_memo[0] is not got.data.headers.fields
    with pytest.raises(InvalidRequest, match="over 64 KiB"):
        pipeline.check_headers(got.data.headers.fields)


def test_twin_a_memo_for_other_fields_is_not_taken() -> None:
    """The memo answers only for the very tuple: equal fields in another tuple, or the
    fields a stage changed, are read (a CR added after the head was read is refused)."""
    known = reqknown._known(reqknown._BASES[0])
    side = reqknown._layer(lean.LeanLayer)
    side.buf += reqknown._BASES[0]
    side.known = known
    got = side._take()
    assert isinstance(got, http.Request)
    fields = got.data.headers.fields
    assert names_mod._checked_memo[0] is fields
    bad = ((fields[0][0], fields[0][1] + b"\r\nX: y"),) + fields[1:]
    with pytest.raises(InvalidRequest, match="line break"):
        pipeline.check_headers(bad)
    assert pipeline.check_headers(tuple(list(fields))) == (b"host", b"accept-encoding")


def test_the_pattern_s_bound_is_check_headers_bound() -> None:
    """``_CHECKED_HEAD`` and ``_KNOWN_NAMES_MAX`` (seam/lean.py) are written apart from
    ``MAX_HEADER_BYTES`` and ``MAX_HEADER_FIELDS`` (core/pipeline.py: seam does not import
    core); a head the pattern took within them must be one ``check_headers`` would pass on
    size and count, so they may not exceed them."""
    from vaultproxy.core.pipeline import MAX_HEADER_BYTES, MAX_HEADER_FIELDS
    from vaultproxy.seam import lean

    assert lean._CHECKED_HEAD <= MAX_HEADER_BYTES
    assert lean._KNOWN_NAMES_MAX <= MAX_HEADER_FIELDS  # (a pattern's names: its fields)
