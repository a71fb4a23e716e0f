"""The lean layer's fast tests (seam/lean.py) answer exactly as mitmproxy's functions do, on
seeded random heads: ``closes`` (one pass over the names) against ``closes_general``
(``expected_http_body_size`` + ``connection_close``), which it falls back to for anything
but the common exchange. Twin: the general test itself flips on the fields that matter."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy import http

from vaultproxy.seam import headers, lean

VERSIONS = ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/0.9"]
METHODS = ["GET", "HEAD", "POST", "CONNECT", "get"]
STATUSES = [100, 101, 200, 204, 206, 304, 404, 502]
REQ_FIELDS = [
    (b"Host", b"a.test"), (b"Connection", b"close"), (b"connection", b"keep-alive"),
    (b"CONNECTION", b"Keep-Alive, Upgrade"), (b"Connection", b""), (b"Content-Length", b"3"),
    (b"Accept", b"*/*"), (b"Transfer-Encoding", b"chunked"), (b"X-Connection", b"close"),
    (b"Connection", b" close ,x"), (b"Connection", b"\x1cclose\x1f"), (b"connection", b"CLOSE"),
    (b"Connection", b"keep-alive,\xe2\x80\xa8close"), (b"Connection", b"closed"),
]
RESP_FIELDS = [
    (b"Content-Length", b"10"), (b"content-length", b"10"), (b"Content-Length", b"x"),
    (b"Content-Length", b"-1"), (b"Transfer-Encoding", b"chunked"),
    (b"transfer-encoding", b"gzip"), (b"Transfer-Encoding", b"gzip, chunked"),
    (b"Transfer-Encoding", b"bogus"), (b"Transfer-Encoding", b"identity"),
    (b"Connection", b"close"), (b"connection", b"keep-alive"), (b"Connection", b"Close"),
    (b"Server", b"nginx"), (b"Content-Type", b"text/plain"), (b"Keep-Alive", b"timeout=5"),
    (b"Connection", b"Keep-Alive, close"), (b"Connection", b"upgrade,\x1cclose"),
    (b"Connection", b"\xffclose"), (b"connection", b"close\xc2\x85"),
]


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return "raise", type(e)


def _exchange(rng: random.Random) -> tuple[http.Request, http.Response]:
    req = http.Request.make(rng.choice(METHODS), "https://a.test/x",
                            headers=rng.sample(REQ_FIELDS, rng.randint(0, 4)))
    req.http_version = rng.choice(VERSIONS)
    resp = http.Response.make(rng.choice(STATUSES))
    resp.headers = http.Headers(rng.sample(RESP_FIELDS, rng.randint(0, 4)))  # (not make's)
    resp.http_version = rng.choice(VERSIONS)
    return req, resp


@pytest.mark.parametrize("fast_headers", [False, True], ids=["stock headers", "fast headers"])
def test_closes_matches_mitmproxys_test(fast_headers: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """5 000 seeded exchanges, under mitmproxy's header lookups and under ours."""
    if fast_headers:
        assert headers.install()
    else:
        for name, stock in headers.STOCK.items():
            monkeypatch.setattr(http.Headers, name, stock)
    rng = random.Random(29)
    for i in range(5000):
        req, resp = _exchange(rng)
        want = _outcome(lean.closes_general, req, resp)
        got = _outcome(lean.closes, req, resp)
        assert got == want, (i, req.method, req.http_version, req.headers.fields,
                             resp.status_code, resp.http_version, resp.headers.fields)


def test_twin_the_general_test_sees_each_reason() -> None:
    """The comparison above is not vacuous: each reason to close flips the general test
    (and the fast one follows)."""
    def pair(req_fields: list[tuple[bytes, bytes]], resp_fields: list[tuple[bytes, bytes]],
             status: int = 200, version: str = "HTTP/1.1") -> tuple[bool, bool]:
        req = http.Request.make("GET", "https://a.test/x", headers=req_fields)
        resp = http.Response.make(status)
        resp.headers = http.Headers(resp_fields)
        resp.http_version = version
        return lean.closes_general(req, resp), lean.closes(req, resp)

    length = [(b"Content-Length", b"10")]
    assert pair([], length) == (False, False)
    assert pair([(b"Connection", b"close")], length) == (True, True)
    assert pair([], [*length, (b"Connection", b"close")]) == (True, True)
    assert pair([], [*length, (b"Connection", b"keep-alive")]) == (False, False)
    assert pair([], [*length, (b"Connection", b"keep-alive, \x1cclose")]) == (True, True)
    assert pair([], []) == (True, True)  # no length: read to the end
    assert pair([], [(b"Transfer-Encoding", b"gzip")]) == (True, True)
    assert pair([], length, status=101) == (True, True)
    assert pair([], length, version="HTTP/1.0") == (True, True)


PIECES = [b"GET / HTTP/1.1", b"Host: a", b"X: \r", b"", b"\r", b"\n", b"\r\n", b"\n\r",
          b"a\rb", b" folded", b"\x00", b"POST /x HTTP/1.0", b"k:v"]


def _receive_buffer(buf: bytes) -> tuple[list[bytes], int] | None:
    """h11's own: a fresh ReceiveBuffer holding ``buf`` (the lean layer's earlier code)."""
    from h11._receivebuffer import ReceiveBuffer

    rb = ReceiveBuffer()
    rb += buf
    lines = rb.maybe_extract_lines()
    if lines is None:
        return None
    return [bytes(x) for x in lines], len(buf) - len(rb)


def test_head_lines_match_h11s_receive_buffer() -> None:
    """20 000 seeded buffers of line pieces and line ends (CRLF, bare LF, bare CR, blank
    lines first or not): the same lines and head length, or the same "not yet"."""
    rng = random.Random(29)
    seps = [b"\r\n", b"\n", b"\r", b""]
    seen = {"head": 0, "blank": 0, "none": 0}
    for i in range(20000):
        buf = b"".join(rng.choice(PIECES) + rng.choice(seps) for _ in range(rng.randint(0, 8)))
        want = _receive_buffer(buf)
        assert lean.head_lines(bytearray(buf)) == want, (i, buf)
        assert lean.head_lines(buf) == want, (i, buf)
        seen["none" if want is None else "blank" if not want[0] else "head"] += 1
    assert min(seen.values()) > 1000, seen  # every outcome well covered
