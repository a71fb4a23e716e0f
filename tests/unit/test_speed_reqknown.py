"""``LeanLayer._take`` reads an agent's request head whose field names are those of the
connection's last fast head with one pattern made for those names (seam/lean.py ``_Known``,
``LeanLayer._known``), where ``fast_head`` splits every line and ``_take`` reads the names
again. What it takes it reads exactly as ``_take`` before it (``_Today``, kept here as the
reference: it reads every head the pattern declines) reads the same bytes, and it declines
anything else: compared on the common agents' heads, on hostile heads (duplicates, obs-fold,
bare CR and LF, NUL, VT, spaces before the colon, trailing spaces, huge values,
Transfer-Encoding with Content-Length, odd lengths, Connection values, CONNECT, a method
with a body and no length, canaries and placeholders in values) and on seeded mutations of
them, each with the pattern of a base head's names. The stages' view of the names the
pattern leaves (inject/names.py ``header_names``, ``canonical_names``) is what they compute.

The twins: a pattern without ``(?<![ \\t])`` takes a value with its trailing space (where
``fast_head`` strips it); one with the other values' class for the Content-Length takes a
length ``_take`` refuses."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from mitmproxy import http

from tests.canary import make_canary
from tests.unit import test_lean_events as lean_events
from vaultproxy.inject import names as names_mod
from vaultproxy.seam import lean

_CANARY = make_canary().encode()
_PLACEHOLDER = b"__vault.github__"


class _Today(lean.LeanLayer):
    """``_take`` as it was before the pattern (session 16's main): ``fast_head`` on every
    head, the names read per request."""

    def _take(self) -> http.Request | None | str:
        if self.pending is not None:  # a head read earlier, its body still arriving
            waiting, at, body_len = self.pending
            if len(self.buf) < at + body_len:
                return None
            self.pending = None
            return self._body(waiting, at, body_len)
        buf = self.buf
        fast = lean.fast_head(buf)
        req: http.Request
        head_len: int
        if fast:
            req, head_len = fast
            if req.data.method == b"CONNECT":
                return "CONNECT or absolute form"
        else:
            head = lean.general_head(buf)
            if head is None or isinstance(head, str):
                return head
            req, head_len = head
            if req.http_version != "HTTP/1.1":
                return req.http_version  # type: ignore[no-any-return]
            if req.method == "CONNECT" or req.authority:
                return "CONNECT or absolute form"
        headers = req.data.headers
        fields = headers.fields
        names = {k.lower() for k, _ in fields}
        if not lean._SKIP_NAMES.isdisjoint(names):
            for name, key in lean._SKIP_KEYS:
                if key in names:
                    return name
        if b"connection" in names:
            if fast:
                for k, v in fields:
                    if (len(k) == 10 and k.lower() == b"connection" and v != b"keep-alive"
                            and v.decode("utf-8", "surrogateescape").strip().lower()
                            != "keep-alive"):
                        return "connection"
            elif any(v.strip().lower() != "keep-alive" for v in headers.get_all("connection")):
                return "connection"
        length: list[Any]
        if b"content-length" not in names:
            length = []
        elif fast:
            length = [v for k, v in fields if len(k) == 14 and k.lower() == b"content-length"]
        else:
            length = headers.get_all("content-length")
        if not length:
            raw = req.data.method
            if (raw not in lean._NO_BODY_RAW if raw in lean._PLAIN_METHODS else
                    raw.decode("utf-8", "surrogateescape").upper() not in lean._NO_BODY_METHODS):
                return "no content-length"
            size = 0
        else:
            if len(length) != 1:
                return "content-length"
            try:
                size = lean.parse_content_length(length[0])
            except ValueError:
                return "content-length"
            if size > self.max_body:
                return "content-length"
        if not fast and lean.lhttp.validate_request(lean.lhttp.HTTPMode.transparent, req,
                                                    self.validate):
            return "head refused"
        end = head_len + size
        if len(buf) < end:
            self.pending = (req, head_len, size)
            return None
        if not self.pooled():
            return "not pooled"
        body = bytes(buf[head_len:end])
        del buf[:end]
        req.data.content = body
        return req


_BASES = [
    # http.client (bench/hops.py), curl, python-requests, httpx, an SDK's POST with a body
    b"GET /1k HTTP/1.1\r\nHost: api.github.com\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /user HTTP/1.1\r\nHost: api.github.com\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n",
    b"GET /repos?page=2 HTTP/1.1\r\nHost: api.github.com\r\nUser-Agent: python-requests/2.32"
    b"\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
    b"Authorization: Bearer " + _PLACEHOLDER + b"\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nAccept: application/json\r\n"
    b"Content-Type: application/json\r\nX-Api-Key: " + _PLACEHOLDER + b"\r\n"
    b"Content-Length: 11\r\nConnection: keep-alive\r\n\r\n{\"a\": \"b\"}x",
    b"DELETE /x HTTP/1.1\r\nhost: a.test\r\nx_custom: 1\r\n\r\n",
    b"OPTIONS / HTTP/1.1\r\n\r\n",
]

_HOSTILE = [
    b"GET /1k HTTP/1.1\r\nHost: a\r\nHost: b\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n x\r\n\r\n",  # obs-fold
    b"GET /1k HTTP/1.1\r\nHost: a\r\n\tx\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\nAccept-Encoding: identity\r\n\r\n",  # bare LF
    b"GET /1k HTTP/1.1\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\rAccept-Encoding: identity\r\n\r\n",  # bare CR
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\n\n",
    b"GET /1k HTTP/1.1\r\nHost: a\x00b\r\nAccept-Encoding: identity\r\n\r\n",  # NUL
    b"GET /1k HTTP/1.1\r\nHost: a\x0bb\r\nAccept-Encoding: identity\r\n\r\n",  # VT
    b"GET /1k HTTP/1.1\r\nHost: a\x7f\r\nAccept-Encoding: identity\r\n\r\n",  # DEL
    b"GET /1k HTTP/1.1\r\nHost : a\r\nAccept-Encoding: identity\r\n\r\n",  # space, colon
    b"GET /1k HTTP/1.1\r\nHost\t: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a \r\nAccept-Encoding: identity\r\n\r\n",  # trailing OWS
    b"GET /1k HTTP/1.1\r\nHost: a\t\r\nAccept-Encoding:\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost:  \r\nAccept-Encoding:\t\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost:a\r\nAccept-Encoding:identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: \xc3\xa9\xff\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nhost: a\r\nAccept-Encoding: identity\r\n\r\n",  # name's case
    b"GET /1k HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: a\r\n\r\n",  # order
    b"GET /1k HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\nX: y\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: " + b"a" * 70000 + b"\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: " + b"i" * 5000 + b"\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n",  # not whole yet
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\nGET / HTTP/1.1\r\n",
    b"GET /1k HTTP/1.0\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET https://a/1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"CONNECT /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"get /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"POST /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",  # no length
    b"BREW /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k  HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: a\r\nAccept-Encoding: " + _CANARY + b"\r\n\r\n",
    b"GET /1k HTTP/1.1\r\nHost: " + _PLACEHOLDER + b"\r\nAccept-Encoding: identity\r\n\r\n",
    # Transfer-Encoding, Upgrade, Expect, TE, two lengths, odd lengths and Connections
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
    b"\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /x HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 4\r\n\r\nabcd",
] + [
    b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nAccept: application/json\r\n"
    b"Content-Type: application/json\r\nX-Api-Key: k\r\nContent-Length: " + length
    + b"\r\nConnection: " + conn + b"\r\n\r\n" + b"x" * 70
    for length in (b"0", b"11", b"64", b"65", b"007", b"00", b"+5", b"5 ", b"1_0",
                   b"\xd9\xa3", b"", b"-1", b"9" * 18, b"9" * 19, b"3, 3")
    for conn in (b"keep-alive", b"Keep-Alive", b"close", b"keep-alive, close", b"")
]


_CTX: list[Any] = []


def _layer(kind: type[lean.LeanLayer], pooled: bool = True) -> lean.LeanLayer:
    if not _CTX:
        _CTX.append(lean_events._Side(lean.LeanLayer).ctx)
    return kind(_CTX[0], lambda: pooled, max_body=64)


def _known(data: bytes) -> lean._Known:
    """The pattern of a base head's names (as ``known_of`` makes it)."""
    fast = lean.fast_head(data)
    assert fast is not None
    known = lean.known_for(tuple(k for k, _ in fast[0].data.headers.fields))
    assert known is not None
    return known


def _taken(side: lean.LeanLayer) -> Any:
    got = side._take()
    if isinstance(got, http.Request):
        state = got.get_state()
        del state["timestamp_start"]
        fields = got.data.headers.fields
        assert type(fields) is tuple and all(  # (as ``fast_head`` makes them)
            type(f) is tuple and len(f) == 2 and type(f[0]) is bytes and type(f[1]) is bytes
            for f in fields)
        assert type(got.data.method) is bytes and type(got.data.path) is bytes
        assert type(got.data.content) is bytes  # (an empty body too: ``b""``)
        # the stages' view of the names, as they compute it
        assert names_mod.header_names(fields) == tuple([k.lower() for k, _ in fields])
        names_mod._names_memo = ((), ())
        want = names_mod.canonical_names(fields)
        assert want == tuple([k.lower().replace(b"_", b"-") for k, _ in fields])
        got = ("request", state)
    pending = side.pending
    return got, bytes(side.buf), pending and (pending[0].get_state()["path"], pending[1:])


#: per head the new side read: did the pattern take it (True), or match it and leave it to
#: ``_read`` (False)? (a head the pattern does not match: nothing)
_took: list[bool] = []
_FAST_HEAD = lean.fast_head


def _watched(side: lean.LeanLayer, known: lean._Known | None) -> Any:
    """``_taken(side)`` with ``known`` as its pattern, noting in ``_took`` what it did."""
    side.known = known
    matched = []
    read = []
    if known is not None:
        real = known.match

        def match(buf: Any) -> Any:
            got = real(buf)
            matched.append(got is not None)
            return got

        known.match = match  # type: ignore[assignment]

    def fast_head(buf: Any) -> Any:
        read.append(1)
        return _FAST_HEAD(buf)

    lean.fast_head = fast_head  # type: ignore[assignment]
    try:
        got = _taken(side)
    finally:
        lean.fast_head = _FAST_HEAD  # type: ignore[assignment]
        if known is not None:
            known.match = real  # type: ignore[assignment]
    if matched and matched[0]:
        _took.append(not read)
    return got


def _same(data: bytes, known: lean._Known | None, pooled: bool = True) -> None:
    old, new = _layer(_Today, pooled), _layer(lean.LeanLayer, pooled)
    old.buf += data
    new.buf += data
    for _ in range(2):  # (a pending body: the second asks again)
        names_mod._names_memo = names_mod._canonical_memo = ((), ())
        want = _taken(old)
        names_mod._names_memo = names_mod._canonical_memo = ((), ())
        assert _watched(new, known) == want, data


def test_the_common_and_hostile_heads_read_as_today() -> None:
    _took.clear()
    knowns = [_known(base) for base in _BASES] + [_known(_HOSTILE[0]), _known(_HOSTILE[-1])]
    for known in knowns:
        for data in _BASES + _HOSTILE:
            for pooled in (True, False):
                _same(data, known, pooled)
    assert sum(_took) > 30 and _took.count(False) > 30
    for base in _BASES:  # each base with its own names' pattern: taken
        _took.clear()
        _same(base, _known(base))
        assert _took == [True], base


def test_seeded_mutations_read_as_today() -> None:
    rng = random.Random(0x5EC0)
    pieces = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"Host",
              b"Host: b\r\n", b"Content-Length: 3\r\n", b"Connection: close\r\n",
              b"Transfer-Encoding: chunked\r\n", b"0", b"9", b"abc", b"\r\n\r\n", b"_",
              _CANARY, _PLACEHOLDER, b"CONNECT", b"keep-alive"]
    bases = _BASES + _HOSTILE
    _took.clear()
    for _ in range(6000):
        base = rng.choice(_BASES if rng.random() < 0.5 else bases)
        own = base in _BASES and rng.random() < 0.8
        known = _known(base if own else rng.choice(_BASES))
        data = bytearray(base)
        for _ in range(rng.randint(0, 3)):
            at = data.find(b"\r\n", rng.randrange(len(data) + 1))
            at = at + 2 if at >= 0 and rng.random() < 0.6 else rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(pieces)
            else:
                del data[at:at + rng.randint(1, 3)]
        _same(bytes(data), known, rng.random() < 0.9)
    assert sum(_took) > 300 and _took.count(False) > 20  # (both sides exercised)


def test_intake_s_seeded_heads_read_as_today() -> None:
    """test_speed_intake.py's seeded heads (odd Connection and Content-Length values, cases
    and spacings), each with the pattern of its own names."""
    from tests.unit.test_speed_intake import _head

    _took.clear()
    for seed in range(20):
        rng = random.Random(seed)
        for _ in range(100):
            data = _head(rng)
            fast = lean.fast_head(data)
            if fast is None:
                continue
            _same(data, lean.known_for(tuple(k for k, _ in fast[0].data.headers.fields)))
    assert sum(_took) > 100 and _took.count(False) > 100


def _reset() -> None:
    lean._KNOWN.clear()
    lean._known_made[:] = [0.0, 0]


def test_a_pattern_is_made_on_the_second_read_and_holds_no_value() -> None:
    """``known_of`` makes a set's pattern the second time ``_take`` read its names (never on
    one read), bounded; none for names ``_take`` refuses; names only (the canary in a value
    is nowhere in it)."""
    _reset()
    fields = ((b"Host", b"a"), (b"Authorization", b"Bearer " + _CANARY))
    assert lean.known_of(fields) is None  # (once)
    known = lean.known_of(fields)
    assert known is not None and known is lean.known_of(fields)
    assert known.names == (b"Host", b"Authorization")
    assert known.lower == (b"host", b"authorization") and known.canonical is known.lower
    assert _CANARY not in repr((lean._KNOWN, known.names, known.match.__self__.pattern,
                                known.lower, known.canonical)).encode()
    for refused in ([(b"X-%d" % i, b"v") for i in range(lean._KNOWN_NAMES_MAX + 1)],
                    [(b"X-" + b"n" * lean._KNOWN_NAME_BYTES_MAX, b"v")],
                    [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")],
                    [(b"Host", b"a"), (b"upgrade", b"h2c")], [(b"Expect", b"100-continue")],
                    [(b"TE", b"trailers")],
                    [(b"Content-Length", b"1"), (b"content-length", b"1")]):
        assert lean.known_of(tuple(refused)) is None
        assert lean.known_of(tuple(refused)) is None
    for big in ([(b"X-%d" % i, b"v") for i in range(lean._KNOWN_NAMES_MAX + 1)],
                [(b"X-" + b"n" * lean._KNOWN_NAME_BYTES_MAX, b"v")]):  # (not even kept)
        assert tuple(k for k, _ in big) not in lean._KNOWN
    for i in range(3 * lean._KNOWN_MAX):
        lean._known_made[:] = [0.0, 0]  # (a fresh budget each time)
        one = ((b"X-%d" % i, b"v"),)
        lean.known_of(one)
        assert lean.known_of(one) is not None
        assert len(lean._KNOWN) <= lean._KNOWN_MAX
    _reset()


def test_at_most_a_budget_of_patterns_is_made_per_window(monkeypatch: Any) -> None:
    """An agent whose names change on every request makes at most ``_KNOWN_BUDGET``
    patterns per ``_KNOWN_WINDOW`` seconds; past it the set is made when the next window
    allows (its heads read by ``fast_head`` meanwhile)."""
    clock = [1000.0]
    monkeypatch.setattr(lean.time, "monotonic", lambda: clock[0])
    _reset()
    made = 0
    for i in range(3 * lean._KNOWN_BUDGET):
        fields = ((b"Y-%d" % i, b"v"), (b"Host", b"a"))
        lean.known_of(fields)
        made += lean.known_of(fields) is not None
    assert made == lean._KNOWN_BUDGET
    late = ((b"Y-%d" % (3 * lean._KNOWN_BUDGET - 1), b"v"), (b"Host", b"a"))
    assert lean.known_of(late) is None
    clock[0] += lean._KNOWN_WINDOW
    assert lean.known_of(late) is not None  # (the next window)
    _reset()


def test_an_agent_that_changes_its_names_every_request_compiles_a_bounded_number(
        monkeypatch: Any) -> None:
    """Through the layer: each request with new names (each seen twice, the worst case) is
    read by today's code, and patterns are made at most ``_KNOWN_BUDGET`` per window."""
    monkeypatch.setattr(lean.time, "monotonic", lambda: 5000.0)
    _reset()
    compiled = []
    real = lean._Known.__init__

    def counting(self: lean._Known, *args: Any) -> None:
        compiled.append(1)
        real(self, *args)

    monkeypatch.setattr(lean._Known, "__init__", counting)
    side = _layer(lean.LeanLayer)
    _took.clear()
    for i in range(200):
        for _ in range(2):
            side.buf += b"GET / HTTP/1.1\r\nHost: a\r\nX-%d: v\r\n\r\n" % i
            assert isinstance(_watched(side, side.known)[0][0], str)
    assert len(compiled) == lean._KNOWN_BUDGET and not any(_took)
    _reset()


def test_the_layer_reads_a_connection_s_later_heads_with_the_pattern() -> None:
    """The third head of one set of names on a connection is read by the pattern (the first
    two by ``fast_head``: the pattern is made on the second); a head of other names by
    ``fast_head`` again, and the pattern follows it."""
    _reset()
    side, ref = _layer(lean.LeanLayer), _layer(_Today)
    read = []

    def fast_head(buf: Any) -> Any:
        read.append(len(seen))
        return _FAST_HEAD(buf)

    heads = [_BASES[2]] * 4 + [_BASES[0]] * 3 + [_BASES[2]]
    seen: list[bytes] = []
    for data in heads:
        for lay in (side, ref):
            lay.buf += data
        want = _taken(ref)
        lean.fast_head = fast_head  # type: ignore[assignment]
        try:
            assert _taken(side) == want
        finally:
            lean.fast_head = _FAST_HEAD  # type: ignore[assignment]
        seen.append(data)
    assert read == [0, 1, 4, 5, 7]  # (the 3rd, 4th and 7th by the pattern)
    assert side.known is not None and side.known.names[-1] == b"Authorization"
    _reset()


def test_twin_without_the_lookbehind_takes_a_value_with_its_trailing_space() -> None:
    data = b"GET /1k HTTP/1.1\r\nHost: a \r\nAccept-Encoding: identity\r\n\r\n"
    known = _known(_BASES[0])
    _same(data, known)
    pattern = known.match.__self__.pattern
    assert rb"(?<![ \t])" in pattern
    known.match = re.compile(pattern.replace(rb"(?<![ \t])", b"")).match
    new = _layer(lean.LeanLayer)
    new.known = known
    new.buf += data
    got = new._take()
    assert isinstance(got, http.Request) and got.data.headers.fields[0] == (b"Host", b"a ")
    with pytest.raises(AssertionError):
        _same(data, known)


def test_twin_without_the_digits_in_the_pattern_takes_a_length_today_refuses() -> None:
    """The Content-Length value is read by the pattern (``_KNOWN_LENGTH``: what
    ``parse_content_length`` takes without a word); with the other values' class the
    pattern would take lengths ``_take`` refuses (a leading zero, a sign, an underscore)."""
    base = _BASES[3]
    known = _known(base)
    odd = [b"011", b"+11", b"1_1", b"00"]
    datas = [base.replace(b"Length: 11", b"Length: " + value) for value in odd]
    for data in datas:
        _same(data, known)
    pattern = known.match.__self__.pattern
    assert lean._KNOWN_LENGTH in pattern
    known.match = re.compile(pattern.replace(lean._KNOWN_LENGTH, lean._KNOWN_VALUE)).match
    for data in datas:
        with pytest.raises(AssertionError):
            _same(data, known)
