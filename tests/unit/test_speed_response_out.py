"""The response's way out, told once: the response gate's one-pass head checks and redacts
over the fields' wire block (``gate_wire_head``) exactly as ``gate_head`` does over its own
join, and the note it leaves for the lean layer (seam/objects.py ``HEAD_NOTE``) is what the
send would compute again: the head's bytes (``_head``) and ``closes``. Seeded comparisons
against the code each one stands for, with a canary in every encoding the redactor knows."""

from __future__ import annotations

import base64
import json
import random
import urllib.parse
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from tests.canary import make_canary
from tests.unit.test_speed_response_head import (  # noqa: F401 - rt: a fixture
    DIGITS,
    REDACTOR,
    SECRET,
    _buffered,
    _flow,
    rt,
)
from vaultproxy.errors import VaultproxyError
from vaultproxy.inject import names
from vaultproxy.seam import headers as fast_headers
from vaultproxy.seam import lean
from vaultproxy.seam.objects import HEAD_NOTE, wire_block
from vaultproxy.stages import Runtime
from vaultproxy.stages import response_gate as gate
from vaultproxy.values.redact import Redactor, gate_head, gate_wire_head

# the canary in every encoding the redactor matches, and pieces that trip the fold check
FORMS = [
    SECRET, urllib.parse.quote(SECRET.decode(), safe="").encode(),
    SECRET.replace(b"_", b"%5f"), json.dumps(SECRET.decode()).encode()[1:-1],
    "".join(f"\\u{ord(c):04x}" for c in SECRET.decode()).encode(),
    base64.b64encode(SECRET), base64.b64encode(b"u:" + SECRET),
    base64.urlsafe_b64encode(b"xy" + SECRET).rstrip(b"="), SECRET.hex().encode(),
    SECRET.hex().upper().encode(), base64.b32encode(SECRET),
]
PIECES = [b"", b"a", b"nginx", b"keep-alive", b"close", b": ", b"%", b"\\", b"+", b"1024",
          b"\xff", b"%5F", b"\\u0076"]
FOLDS = [b"\r", b"\n", b"\x00", b"a\r\n b", b"\r\n"]
NAMES = [b"Server", b"X-Token", b"Location", b"Connection", b"connection", b"CONNECTION",
         b"Set-Cookie", b"set-cookie", b"Content-Length", b"Date", b"\xffOdd", b"",
         b"X-A", b"X-B", b"X-C", b"X\rY", b"X\nY", b"X\x00"]
OTHER = Redactor([(make_canary().encode(), b"__vault.other__")])  # a secret not in play


def _piece(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 3)):
        r = rng.random()
        parts.append(rng.choice(FORMS) if r < 0.2 else rng.choice(FOLDS) if r < 0.23
                     else rng.choice(PIECES))
    return b"".join(parts)


def _fields(rng: random.Random) -> tuple[tuple[bytes, bytes], ...]:
    fields = []
    for _ in range(rng.randint(0, 8)):
        name = rng.choice(NAMES) if rng.random() < 0.8 else _piece(rng)
        fields.append((name, _piece(rng)))
    return tuple(fields)


def _outcome(wire: bool, redactor: Redactor, fields: tuple[tuple[bytes, bytes], ...],
             cookie: bool) -> tuple[Any, ...]:
    headers = http.Headers(fields)
    try:
        if wire:
            gate_wire_head(redactor, headers, wire_block(headers.fields), cookie)
        else:
            gate_head(redactor, headers, plain=not cookie)
    except VaultproxyError as e:
        return ("raise", type(e), str(e), headers.fields)
    return ("ok", headers.fields)


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert fast_headers.install()  # as the proxy runs


def test_the_wire_head_is_gate_head() -> None:
    rng = random.Random(68)
    seen = {"raise": 0, "redacted": 0, "clean": 0}
    for i in range(6000):
        fields = _fields(rng)
        redactor = (REDACTOR, DIGITS, OTHER)[i % 3]
        cookie = any(k.lower() == b"set-cookie" for k, _ in fields)
        want = _outcome(False, redactor, fields, cookie)
        got = _outcome(True, redactor, fields, cookie)
        assert got == want, (i, fields)
        if want[0] == "raise":
            seen["raise"] += 1
        elif b"__vault." in b"".join(k + v for k, v in want[1]):
            seen["redacted"] += 1
        else:
            seen["clean"] += 1
    # twins: refusals, redactions and clean heads are all reached
    assert min(seen.values()) > 500, seen


def test_the_note_is_what_the_send_would_compute() -> None:
    rng = random.Random(168)
    noted = plain = kept = 0
    for i in range(4000):
        f = _flow(random.Random(rng.random()))
        resp = f.response
        assert resp is not None
        if rng.random() < 0.5:  # more of the common head
            resp.data.http_version, resp.data.status_code = b"HTTP/1.1", 200
            f.request.data.method = b"GET"
        if rng.random() < 0.5:  # Connection fields of every kind
            conn = rng.choice([b"keep-alive", b"close", b"Keep-Alive", b"keep-alive, close",
                               b" close", b"upgrade", b""])
            fields = list(resp.headers.fields)
            for _ in range(rng.choice([1, 1, 2])):
                fields.insert(rng.randint(0, len(fields)), (b"Connection", conn))
            resp.headers.fields = tuple(fields)
        try:
            took = gate._plain_small_head(f, resp, (REDACTOR, DIGITS)[i % 2], "svc")
        except VaultproxyError:
            assert HEAD_NOTE not in f.metadata
            continue
        note = f.metadata.get(HEAD_NOTE)
        fields = resp.data.headers.fields
        if note is None:
            continue
        plain += 1
        assert took and note[0] is fields and note[1] == wire_block(fields)
        rnames = {k.lower() for k, _ in fields}
        says = b"connection" in rnames and lean._says_close(fields)
        if note[2]:  # True: no Connection field says close (False: closes_noted looks)
            kept += 1
            assert not says
        else:
            assert any(k.lower() == b"connection" for k, _ in fields)
        assert b"transfer-encoding" not in rnames  # (the send's ``chunked`` test)
        if resp.data.http_version == b"HTTP/1.1":
            noted += 1
            # the send's head (seam/lean.py ``_serve``) is ``_head``'s
            assert lean._head(resp) == b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (
                resp.data.status_code, resp.data.reason, note[1])
    # twins: HTTP/1.0 heads are noted (not sent so), and heads whose Connection is looked at
    assert noted > 150 and plain > noted and plain > kept > 50, (noted, plain, kept)


def test_closes_noted_is_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "_names_memo", names._names_memo)  # (restored after)
    rng = random.Random(268)
    answers = {True: 0, False: 0}
    memos = 0
    for _ in range(4000):
        conn = rng.choice([b"keep-alive", b"close", b"Keep-Alive", b"keep-alive, close",
                           b"upgrade", b"CLOSE", b"close "])
        rfields = [(b"Content-Length", b"2"), (b"Server", b"x")]
        for _ in range(rng.choice([0, 1, 1, 2])):
            rfields.insert(rng.randint(0, len(rfields)), (b"Connection", conn))
        f = tflow.tflow()
        f.request.data.http_version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0",
                                                  b"HTTP/2.0"])
        qfields = [(b"Host", b"h")]
        for _ in range(rng.choice([0, 0, 1, 2])):
            qfields.append((rng.choice([b"Connection", b"connection"]),
                            rng.choice([b"close", b"keep-alive", b"Upgrade, close"])))
        f.request.headers = http.Headers(qfields)
        f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(rfields), b"ok",
                                   None, 0.0, None)
        assert gate._plain_small_head(f, f.response, REDACTOR, "svc")
        note = f.metadata[HEAD_NOTE]
        resp = f.response
        change = rng.random()
        if change < 0.1:
            resp.data.status_code = 101
        elif change < 0.2:
            resp.data.http_version = b"HTTP/1.0"
        elif change < 0.3:
            resp.headers["connection"] = "close"  # a new fields tuple: not the note's
        want = lean.closes(f.request, resp)
        qtuple = f.request.data.headers.fields
        memo = rng.random()
        if memo < 0.4:
            # the stages' names memo of the request's very fields (inject/names.py): the
            # request's Connection test reads its names
            names._names_memo = (qtuple, tuple([k.lower() for k, _ in qtuple]))
            memos += 1
        elif memo < 0.6:
            # (an equal tuple that is not the request's: the loop reads it)
            names._names_memo = (tuple(list(qtuple)), tuple([k.lower() for k, _ in qtuple]))
        assert lean.closes_noted(f.request, resp, note) == want
        answers[want] += 1
    assert min(answers.values()) > 800, answers
    assert memos > 1000, memos


def test_the_plain_body_is_redact_whole(rt: Runtime) -> None:  # noqa: F811 - the fixture
    """``response``'s inline redaction of a body under the one-pass head is ``_redact_whole``
    without an encoding (its body and Content-Length)."""
    rng = random.Random(368)
    changed = 0
    for _ in range(600):
        body = b"".join(rng.choice(FORMS) if rng.random() < 0.1 else rng.choice(PIECES)
                        for _ in range(rng.randint(0, 12)))
        a, b = _buffered(rt, body), _buffered(rt, body)
        gate.ResponseGate(rt).response(a)
        gate._redact_whole(b, REDACTOR, "", 0)
        assert a.response is not None and b.response is not None
        assert a.response.data.content == b.response.data.content
        assert a.response.headers.fields == b.response.headers.fields
        changed += a.response.data.content != body
    assert 100 < changed < 500  # twins: bodies with a form and without
