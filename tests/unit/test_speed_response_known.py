"""A response head the pool read by the pattern of its known names (net/h1pool.py
``parse_known``) reaches the response gate with its ``_Known``: the gate reads what the names
tell from the record kept on it (``_known_gate``) instead of its own memo, and skips the fold
test the pattern already made (no CR, LF or NUL in a token or a value of its class). Compared
with the gate as it was (``_reference``: ``_plain_small_head`` with its memo, main e5905eb,
then ``_gate_head`` as ``responseheaders`` runs them) over seeded hostile heads read from
bytes as the pool reads them: Set-Cookie, WWW-Authenticate, framing names in every case and
repeated, names with ``%``, a canary in every encoding in names and values, odd lengths and
Connection values, and each set of names first seen with a harmless reply, then with
reflecting ones."""

from __future__ import annotations

import random
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from tests.unit.test_speed_response_head import DIGITS, REDACTOR, SECRET
from tests.unit.test_speed_response_out import FORMS, OTHER, PIECES
from vaultproxy.errors import VaultproxyError
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import UPSTREAM_HEAD, ResponseHead, known_of, parse_head, parse_known
from vaultproxy.seam import headers as fast_headers
from vaultproxy.seam import objects
from vaultproxy.seam.objects import HEAD_NOTE
from vaultproxy.stages import response_gate as gate
from vaultproxy.values.redact import Redactor, gate_wire_head

_REF_SHAPES: dict[tuple[bytes, ...], Any] = {}  # the reference's own memo


def _ref_remember(names: tuple[bytes, ...], shape: Any) -> None:
    if (len(names) <= gate._SHAPE_NAMES_MAX
            and sum(map(len, names)) <= gate._SHAPE_NAME_BYTES_MAX):
        if len(_REF_SHAPES) >= gate._SHAPES_MAX:
            _REF_SHAPES.clear()
        _REF_SHAPES[names] = shape[:3] + (
            b"\r\n".join([name.replace(b"%", b"%%") + b": %b" for name in names]),)


def _ref_plain(flow: http.HTTPFlow, resp: http.Response, redactor: Redactor,
               service: str) -> bool:
    """``_plain_small_head`` as it was (main e5905eb), its memo ``_REF_SHAPES``."""
    data = resp.data
    code = data.status_code
    if (data.http_version not in (b"HTTP/1.1", b"HTTP/1.0") or code < 200 or code in (204, 304)
            or resp.stream or flow.request.data.method.upper() in (b"HEAD", b"CONNECT")):
        return False
    fields = data.headers.fields
    names = tuple(map(gate._NAME, fields))
    shape = _REF_SHAPES.get(names)
    fresh = shape is None
    if shape is None:
        shape = gate._names_shape(names)
        if shape is None:
            return False
    at, cookie, connection, wire = shape
    length = fields[at][1]
    if (not length.isdigit() or (length[0] == 48 and length != b"0")
            or int(length) > gate.SMALL_BODY):
        return False
    data.reason = gate._REASONS.get(code, b"")
    block = (b"\r\n".join([b": ".join(field) for field in fields]) if wire is None
             else wire % tuple([value for _, value in fields]))
    gate_wire_head(redactor, data.headers, block, cookie)
    if data.headers.fields is not fields:
        gate._gate_body(flow, resp, redactor, service, None)
    else:
        resp.stream = False
        flow.metadata[HEAD_NOTE] = (fields, block, connection == -1 or (
            connection >= 0 and fields[connection][1] == b"keep-alive"))
    if fresh:
        _ref_remember(names, shape)
    return True


def _reference(flow: http.HTTPFlow, resp: http.Response, redactor: Redactor,
               service: str) -> bool:
    """The gate's head rules as ``responseheaders`` ran them (main e5905eb)."""
    if _ref_plain(flow, resp, redactor, service):
        return True
    gate._gate_head(flow, resp, redactor, service)
    return False


def _now(flow: http.HTTPFlow, resp: http.Response, redactor: Redactor, service: str) -> bool:
    if gate._plain_small_head(flow, resp, redactor, service):
        return True
    gate._gate_head(flow, resp, redactor, service)
    return False


# token names (the pool reads no other): framing names in every case, look-alikes, names
# with ``%``, a canary and its token-shaped encodings as names
NAMES = [b"Server", b"X-%b", b"%s%%", b"Date", b"Content-Type", b"X-Token", b"Content-Length",
         b"content-length", b"CONTENT-LENGTH", b"Content_Length", b"Connection",
         b"connection", b"CONNECTION", b"Set-Cookie", b"set-cookie", b"SET-COOKIE",
         b"WWW-Authenticate", b"www-authenticate", b"Transfer-Encoding",
         b"Content-Encoding", b"content-encoding", b"Upgrade", b"Location",
         SECRET, b"X-" + SECRET, FORMS[1], SECRET.hex().encode(), b"X-A", b"X-B"]
LENGTHS = [b"1024", b"0", b"00", b"01024", b"131072", b"131073", b" 12", b"12 ",
           b"999999999999999999", b"1" * 19]
CONNECTIONS = [b"keep-alive", b"close", b"Keep-Alive", b"keep-alive, close", b"upgrade",
               b"x"]
CODINGS = [b"identity", b"gzip", b"", b"IDENTITY", b"br"]
STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 201 Created",
          b"HTTP/1.1 404 Nope " + SECRET, b"HTTP/1.1 500", b"HTTP/1.1 599 x",
          b"HTTP/1.1 200 " + FORMS[5]]


def _value(rng: random.Random, name: bytes, harmless: bool) -> bytes:
    lower = name.lower()
    if lower == b"content-length":
        return rng.choice(LENGTHS) if rng.random() < 0.25 else b"%d" % rng.randint(0, 4096)
    if lower == b"connection" and rng.random() < 0.7:
        return rng.choice(CONNECTIONS)
    if lower == b"content-encoding" and rng.random() < 0.7:
        return rng.choice(CODINGS)
    if harmless:
        return rng.choice([b"v", b"nginx", b"a=b; Path=/", b"Bearer realm=x"])
    parts = []
    for _ in range(rng.randint(0, 3)):
        parts.append(rng.choice(FORMS) if rng.random() < 0.3 else rng.choice(PIECES))
    value = b"".join(parts).strip(b" \t")
    return value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")


def _names(rng: random.Random) -> tuple[bytes, ...]:
    names = [rng.choice(NAMES[:6] + NAMES[10:11] + NAMES[13:14] + NAMES[16:17])
             if rng.random() < 0.6 else rng.choice(NAMES) for _ in range(rng.randint(0, 8))]
    names.insert(rng.randint(0, len(names)), rng.choice(NAMES[6:9]))
    if rng.random() < 0.1:  # a duplicate of one of them
        names.insert(rng.randint(0, len(names)), rng.choice(names))
    return tuple(names)


def _bytes(rng: random.Random, names: tuple[bytes, ...], harmless: bool) -> tuple[bytes, bytes]:
    status = STATUS[0] if harmless else rng.choice(STATUS)
    fields = b"".join(b"\r\n%s:%s%s" % (n, rng.choice([b" ", b"", b"\t "]),
                                        _value(rng, n, harmless)) for n in names)
    method = b"HEAD" if rng.random() < 0.03 else rng.choice([b"GET", b"POST", b"get"])
    return status + fields + b"\r\n\r\n" + b"x" * 16, method


def _pooled(data: bytes, method: bytes, known: Any, hand: bool) -> http.HTTPFlow | None:
    """The flow as the pool stage makes it of a head ``parse_known`` read (stages/pool.py)."""
    head = parse_known(data, method, known)
    if head is None:
        return None
    f = tflow.tflow()
    f.request.data.method = method
    f.response = objects.response_of(b"HTTP/1.1", head.status, head.reason,
                                     objects.headers_made(head.headers), 0.0)
    if hand:
        f.metadata[UPSTREAM_HEAD] = head
    return f


def _state(f: http.HTTPFlow) -> tuple[Any, ...]:
    resp = f.response
    assert resp is not None
    stream = resp.stream
    kind = stream if isinstance(stream, bool) else type(stream).__name__
    note = f.metadata.get(HEAD_NOTE)
    return (resp.data.status_code, resp.data.reason, resp.data.http_version,
            resp.headers.fields, kind, None if note is None else (note[1], note[2]))


def _run(fn: Any, f: http.HTTPFlow, redactor: Redactor) -> tuple[Any, ...]:
    assert f.response is not None
    try:
        took = fn(f, f.response, redactor, "svc")
    except VaultproxyError as e:
        return ("raise", type(e), str(e), _state(f))
    return (took, _state(f))


@pytest.fixture(autouse=True)
def _installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast_headers.install()  # as the proxy runs
    monkeypatch.setattr(h1pool._SETS, "budget", 10**9)  # (every set gets its pattern)


def _known(data: bytes) -> Any:
    """The ``_Known`` of the head's names, made as the pool makes it (the second read)."""
    head = parse_head(data, b"GET")
    if head is None:
        return None
    known_of(head.headers)
    return known_of(head.headers)


def test_the_known_head_is_the_gate_as_it_was() -> None:
    h1pool._KNOWN.clear()
    _REF_SHAPES.clear()
    rng = random.Random(2026)
    sets = [_names(rng) for _ in range(50)]
    counts = dict.fromkeys(("known", "taken", "refused", "declined", "noted", "redacted",
                            "dropped", "first_harmless"), 0)
    for i in range(5000):
        names = rng.choice(sets)
        seed = rng.random()
        # first a harmless reply with these names (the record filled by it), then the rest
        harmless = False
        if i < 100:
            names, harmless = sets[i % 50], i < 50
        data, method = _bytes(random.Random(seed), names, harmless)
        known = _known(data)
        if known is None:
            continue
        redactor = (DIGITS, REDACTOR, OTHER)[i % 3]
        a, b = _pooled(data, method, known, False), _pooled(data, method, known, True)
        if a is None or b is None:
            assert a is None and b is None
            continue
        counts["known"] += 1
        counts["first_harmless"] += harmless and known.gate is None
        want = _run(_reference, a, redactor)
        got = _run(_now, b, redactor)
        assert got == want, (i, data)
        assert UPSTREAM_HEAD not in b.metadata or want[0] is not True  # handed on once
        counts["taken"] += want[0] is True
        counts["refused"] += want[0] == "raise"
        counts["declined"] += want[0] is False
        counts["noted"] += want[0] is True and want[1][5] is not None
        if want[0] is not True and want[0] is not False:
            continue
        out = want[1][3]
        counts["redacted"] += b"__vault." in b"".join(v for _, v in out) + b"".join(
            k for k, _ in out)
        counts["dropped"] += len(out) < len(names)
    # twins: every outcome is reached, most heads by a kept record
    assert counts.pop("known") > 2500 and counts.pop("first_harmless") > 20, counts
    assert min(counts.values()) > 50, counts
    assert all(isinstance(k, h1pool._Known) and k.gate is not None
               for k in h1pool._KNOWN.values() if k), "the gate kept a record on each"


def _head(data: bytes) -> tuple[ResponseHead, http.HTTPFlow]:
    known = _known(data)
    f = _pooled(data, b"GET", known, True)
    assert f is not None
    head = f.metadata[UPSTREAM_HEAD]
    return head, f


def test_a_set_of_names_first_harmless_then_reflecting_is_redacted() -> None:
    h1pool._KNOWN.clear()
    names = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: %b\r\nX-Echo: %b\r\n\r\nok"
    head, f = _head(names % (b"a=b", b"hello"))
    assert gate._plain_small_head(f, f.response, REDACTOR, "svc")  # type: ignore[arg-type]
    assert f.response is not None and f.response.headers.fields == (
        (b"Content-Length", b"2"), (b"X-Echo", b"hello"))
    assert head.known is not None and head.known.gate is not None
    assert SECRET.decode() not in repr(head.known.gate)  # names only
    for form in FORMS:
        head, f = _head(names % (b"s=" + SECRET, form))
        assert head.known is not None and head.known.gate is not None  # the kept record
        assert gate._plain_small_head(f, f.response, REDACTOR, "svc")  # type: ignore[arg-type]
        assert f.response is not None
        fields = f.response.headers.fields
        assert SECRET not in b"".join(v for _, v in fields)
        assert fields[1] == (b"X-Echo", REDACTOR.redact(form)), form
        assert HEAD_NOTE not in f.metadata  # a field changed: the general body path
        assert f.response.stream is False


def test_a_head_changed_after_the_pool_is_read_again() -> None:
    h1pool._KNOWN.clear()
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n\r\nok"
    _head(data)
    head, f = _head(data)
    assert f.response is not None
    f.response.headers["X-A"] = "a\r\n b"  # a stage set a field: a new tuple, not the head's
    with pytest.raises(VaultproxyError):  # the fold test runs again
        gate._plain_small_head(f, f.response, REDACTOR, "svc")
    assert UPSTREAM_HEAD not in f.metadata


def test_the_names_the_gate_does_not_take_are_kept_as_such() -> None:
    h1pool._KNOWN.clear()
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\n\r\nok"
    head, f = _head(data)
    assert f.response is not None
    assert not gate._plain_small_head(f, f.response, REDACTOR, "svc")
    assert head.known is not None and head.known.gate is False
    assert f.response.headers.fields is head.headers  # nothing changed


def _check(fn: Any, *args: Any) -> str:
    try:
        fn(*args)
    except ValueError as e:
        return f"{type(e).__name__}: {e}"
    return "passed"


def test_the_known_head_is_checked_as_validate_headers_checks_it() -> None:
    """The lean layer's smuggling check of a response made of a known head
    (seam/lean.py ``check_pooled``) against ``check_headers`` and mitmproxy's own
    ``validate_headers``, over the same seeded heads (leading zeros in the length among
    them), and a head changed after the pool: read in full again."""
    from mitmproxy.net.http.validate import validate_headers

    from vaultproxy.seam import lean

    h1pool._KNOWN.clear()
    rng = random.Random(7)
    sets = [_names(rng) for _ in range(40)]
    checked = refused = 0
    for _ in range(3000):
        data, method = _bytes(random.Random(rng.random()), rng.choice(sets), False)
        known = _known(data)
        f = _pooled(data, method, known, True) if known is not None else None
        if f is None:
            continue
        resp = f.response
        assert resp is not None
        head = f.metadata[UPSTREAM_HEAD]
        want = _check(validate_headers, resp)
        assert _check(lean.check_headers, resp) == want
        assert _check(lean.check_pooled, resp, head) == want, data
        checked += 1
        refused += want != "passed"
    assert checked > 800 and refused > 30, (checked, refused)
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n\r\nok"
    _head(data)
    head, f = _head(data)
    assert f.response is not None
    f.response.headers["Transfer-Encoding"] = "chunked"  # a new tuple: read in full
    want = _check(validate_headers, f.response)
    assert want != "passed" and _check(lean.check_pooled, f.response, head) == want
