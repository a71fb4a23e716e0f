"""The response gate's one-pass path for the common head (``_plain_small_head``) does exactly
what the full rules (``_gate_head``) do with the same head, and leaves every other head to
them untouched: compared over random heads built from fields and statuses that trip each rule
(seeded: the same cases every run), a secret in a header field among them."""

from __future__ import annotations

import base64
import gzip
import random
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from tests.canary import make_canary
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import UpstreamProtocol, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.seam import headers as fast_headers
from vaultproxy.stages import Runtime
from vaultproxy.stages import response_gate as gate
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.values import redact
from vaultproxy.values.minted_values import RedactorChain
from vaultproxy.values.redact import Redactor

SECRET = make_canary().encode()
REDACTOR = Redactor([(SECRET, b"__vault.svc__")])
# A secret made of digits: it can turn up in a Content-Length.
DIGITS = Redactor([(b"1024", b"__vault.num__"), (SECRET, b"__vault.svc__")])

FIELDS: list[tuple[bytes, bytes]] = [
    (b"Server", b"nginx"), (b"Date", b"Sun, 06 Dec 2026 20:50:00 GMT"),
    (b"Content-Type", b"application/json"), (b"ETag", b'"6753a1b0-400"'),
    (b"Content-Length", b"1024"), (b"content-length", b"0"), (b"Content-Length", b"01024"),
    (b"Content-Length", b"131072"), (b"Content-Length", b"131073"), (b"Content-Length", b""),
    (b"Content-Length", b" 12"), (b"Content-Length", b"12 "), (b"Content-Length", b"+12"),
    (b"Content-Length", b"1\n"), (b"CONTENT-LENGTH", b"7"),
    (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"gzip, chunked"),
    (b"Transfer-Encoding", b""), (b"Content-Encoding", b"gzip"),
    (b"Content-Encoding", b"identity"), (b"Content-Encoding", b"br, zstd"),
    (b"Content-Encoding", b"x-unknown"), (b"Set-Cookie", b"a=b"), (b"SET-COOKIE", b"c=d"),
    (b"Upgrade", b"websocket"), (b"X-Folded", b"a\r\n b"), (b"X-Nul", b"a\x00b"),
    (b"X\rName", b"v"), (b"X-Lf", b"a\nb"), (b"X-Token", SECRET),
    (b"X-Quoted", b"tok=" + SECRET.replace(b"_", b"%5F")),
    (b"X-B64", base64.b64encode(b"u:" + SECRET)), (b"X-Empty", b""), (b"\xffOdd", b"\xfe"),
    (b"Connection", b"keep-alive"), (b"Location", b"/" + SECRET),
]
PLAIN = FIELDS[:4] + [(b"X-Token", SECRET), (b"Set-Cookie", b"a=b"), (b"Connection", b"close")]
STATUSES = [200, 200, 200, 201, 404, 500, 101, 204, 304, 100, 199, 599, 999]
METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"head", b"CONNECT", b"OPTIONS"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9"]


def _flow(rng: random.Random) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.data.method = rng.choice(METHODS)
    f.request.headers["upgrade"] = "websocket" if rng.random() < 0.1 else "h2c"
    fields = [rng.choice(FIELDS) if rng.random() < 0.15 else rng.choice(PLAIN)
              for _ in range(rng.randint(0, 7))]
    if rng.random() < 0.6:
        fields.insert(rng.randint(0, len(fields)), (b"Content-Length", b"1024"))
    f.response = http.Response(
        rng.choice(VERSIONS), rng.choice(STATUSES), b"Whatever The Upstream Said",
        http.Headers(fields), b"", None, 0.0, None)
    if rng.random() < 0.05:
        f.response.stream = True
    return f


def _state(f: http.HTTPFlow) -> tuple[Any, ...]:
    resp = f.response
    assert resp is not None
    stream = resp.stream
    kind = stream if isinstance(stream, bool) else type(stream).__name__
    return (resp.data.status_code, resp.data.reason, resp.data.http_version,
            resp.headers.fields, kind)


def _general(f: http.HTTPFlow, redactor: Redactor) -> tuple[Any, ...]:
    assert f.response is not None
    try:
        gate._gate_head(f, f.response, redactor, "svc")
    except VaultproxyError as e:
        return ("raise", type(e), str(e), _state(f))
    return ("ok", _state(f))


def _fast(f: http.HTTPFlow, redactor: Redactor) -> tuple[Any, ...]:
    assert f.response is not None
    before = _state(f)
    try:
        if gate._plain_small_head(f, f.response, redactor, "svc"):
            return ("ok", _state(f))
    except VaultproxyError as e:
        return ("raise", type(e), str(e), _state(f))
    assert _state(f) == before  # declined: nothing changed
    return _general(f, redactor)


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert fast_headers.install()  # as the proxy runs


def test_the_fast_head_is_the_full_rules() -> None:
    rng = random.Random(29)
    taken = refused = redacted = 0
    for i in range(3000):
        seed = rng.random()
        a, b, c = (_flow(random.Random(seed)) for _ in range(3))
        assert a.response is not None and c.response is not None
        redactor = DIGITS if i % 5 == 0 else REDACTOR
        want = _general(a, redactor)
        try:
            took = gate._plain_small_head(c, c.response, redactor, "svc")
        except VaultproxyError:
            took = True
        assert _fast(b, redactor) == want, (i, a.response.headers.fields)
        taken += took
        refused += want[0] == "raise"
        redacted += want[0] == "ok" and b"__vault.svc__" in b"".join(
            v for _, v in want[1][3])
    # twins: the cases reach the fast path, the refusals and the redaction
    assert taken > 150 and refused > 150 and redacted > 100


def test_a_secret_in_a_header_of_the_common_head_is_redacted() -> None:
    f = tflow.tflow()
    f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
        [(b"Content-Length", b"2"), (b"X-Token", SECRET), (b"Set-Cookie", b"s=" + SECRET)]),
        b"ok", None, 0.0, None)
    assert gate._plain_small_head(f, f.response, REDACTOR, "svc")  # the fast path took it
    assert f.response.headers.fields == ((b"Content-Length", b"2"),
                                         (b"X-Token", b"__vault.svc__"))
    assert f.response.data.reason == b"OK" and f.response.stream is False


def test_a_coded_head_is_left_to_the_full_rules() -> None:
    for extra in [(b"Content-Encoding", b"gzip"),
                  (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"1024")]:
        f = tflow.tflow()
        f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
            [(b"Content-Length", b"1024"), extra]), b"", None, 0.0, None)
        assert not gate._plain_small_head(f, f.response, REDACTOR, "svc"), extra


def _folded_loop(fields: tuple[tuple[bytes, bytes], ...]) -> bool:
    """refuse_folded as its field-by-field loop only (what it was before its joined look)."""
    return any(redact._LINE_BREAK.search(v) or redact._LINE_BREAK.search(k) for k, v in fields)


def test_refuse_folded_is_the_field_loop() -> None:
    pieces = [b"", b"a", b"\n", b"\r", b"\x00", b"a\r\n b", b"\r\n", b"x\ny", b"\xff", b"v v"]
    rng = random.Random(5)
    refused = 0
    for _ in range(20_000):
        fields = tuple((rng.choice(pieces), rng.choice(pieces))
                       for _ in range(rng.randint(0, 4)))
        want = _folded_loop(fields)
        try:
            redact.refuse_folded(http.Headers(fields))
            got = False
        except UpstreamProtocol:
            got = True
        assert got == want, fields
        refused += want
    assert 2000 < refused < 18_000  # twin: both answers are reached


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    home = Home(tmp_path_factory.mktemp("rg") / "home")
    home.create()
    home.services.write_text("")
    return Runtime(Live(ProxyState.load(home)))


def _buffered(rt: Runtime, body: bytes) -> http.HTTPFlow:
    """A flow whose common head the one-pass path took (as responseheaders does)."""
    f = tflow.tflow()
    f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
        [(b"Content-Length", str(len(body)).encode())]), body, None, 0.0, None)
    rec = record_of(f)
    rec.redactor = REDACTOR
    assert gate._plain_small_head(f, f.response, REDACTOR, "svc")
    rec.plain_fields = f.response.data.headers.fields
    return f


def test_a_body_after_the_fast_head_is_redacted(rt: Runtime) -> None:
    f = _buffered(rt, b'{"token": "' + SECRET + b'"}')
    gate.ResponseGate(rt).response(f)
    assert f.response is not None and f.response.raw_content == b'{"token": "__vault.svc__"}'


def test_a_coding_added_after_the_fast_head_is_still_decoded_and_redacted(rt: Runtime) -> None:
    """The twin of skipping the Content-Encoding lookup: once the head's fields changed after
    the one-pass path took it, the body is decoded as the full rules do."""
    packed = gzip.compress(b"x" + SECRET)
    f = _buffered(rt, packed)
    assert f.response is not None
    f.response.headers["content-encoding"] = "gzip"  # the fields are no longer the ones seen
    gate.ResponseGate(rt).response(f)
    assert f.response.raw_content == b"x__vault.svc__"
    assert "content-encoding" not in f.response.headers


def test_a_chain_redacts_every_part_in_the_headers_once_one_part_changed_them() -> None:
    """gate_head hands its joined fields to the redactor's pre-check; in a chain (a service's
    static secrets plus minted values) every part's secret is still redacted, whichever
    parts match, and a part after one that changed the fields joins them afresh."""
    other = make_canary().encode()
    chain = RedactorChain([REDACTOR, Redactor([(other, b"__vault.two__")])])
    for fields in ([(b"A", SECRET), (b"B", other)], [(b"A", b"x"), (b"B", other)],
                   [(b"A", SECRET), (b"B", b"y")]):
        h = http.Headers(fields)
        assert redact.gate_head(chain, h) == ("", None)
        joined = b"".join(v for _, v in h.fields)
        assert SECRET not in joined and other not in joined
        assert h.fields == tuple((k, {SECRET: b"__vault.svc__", other: b"__vault.two__"}
                                  .get(v, v)) for k, v in fields)
