"""``ResponseGate.response`` for a body under the one-pass head (``_plain_small_head`` took
it, its fields unchanged since) runs the redactor's pre-check first and the no-body test
(HEAD, 1xx, 204, 304) only for a body in which a form may be: a body the pre-check clears is
left as it is whichever way that test goes. Compared with the hook as it was (``_Ref`` below,
main 36b6d1b) over seeded replies: a canary in every encoding the redactor knows, at random
in bodies that fit in one read and in long ones, bodies empty or absent, and, after the head
was taken, the method made HEAD, the status made 1xx, 204 or 304, a field or a coding
added, a refusal (with and without its reply), trailers (HTTP/1 and HTTP/2 agents), a
streamed body, no redactor; four redactors (a digits secret, one not in play, none)."""

from __future__ import annotations

import gzip
import random
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from tests.unit.test_speed_response_head import (  # noqa: F401 - rt: a fixture
    DIGITS,
    REDACTOR,
    SECRET,
    rt,
)
from tests.unit.test_speed_response_out import FORMS, OTHER, PIECES
from vaultproxy.stages import Runtime
from vaultproxy.stages import response_gate as gate
from vaultproxy.stages.flowrecord import KEY, FlowRecord, Refusal, handed, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.values.redact import Redactor, refuse_folded

EMPTY = Redactor([])
REDACTORS = [REDACTOR, DIGITS, OTHER, EMPTY]


class _Ref(gate.ResponseGate):
    """The gate with ``response`` as it was (main 36b6d1b)."""

    @guarded
    @handed
    def response(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:
            rec = flow.metadata.get(KEY) or record_of(flow)
        refusal = rec.refusal
        if refusal is not None and refusal.reply is not None:
            if flow.response is not refusal.reply:
                flow.response = refusal.reply
            return
        resp = flow.response
        if rec.retried and resp is not None and isinstance(resp.stream, gate._Resent):
            gate._resent_body(resp, resp.stream)
            return
        redactor = rec.redactor
        if redactor is None or resp is None:
            return
        trailers = resp.data.trailers
        if trailers:
            if flow.request.http_version.startswith("HTTP/1"):
                resp.trailers = None
            else:
                refuse_folded(trailers)
                redactor.redact_headers(trailers)
        if resp.stream:
            return
        code = resp.data.status_code
        if flow.request.data.method.upper() == b"HEAD" or code < 200 or code in (204, 304):
            return
        if refusal is None:
            if rec.plain_fields is not None and resp.data.headers.fields is rec.plain_fields:
                body = resp.data.content or b""
                out = redactor.redact(body)
                if out is not body:
                    resp.raw_content = out
                    resp.headers["content-length"] = str(len(out))
                return
            encoding = resp.headers.get("content-encoding", "").strip().lower()
            encoding = "" if encoding == "identity" else encoding
            limit = self.rt.state().registry.config.proxy.max_body_mb * 1024 * 1024 \
                if encoding else 0
            gate._redact_whole(flow, redactor, encoding, limit)
        elif resp.raw_content:
            resp.raw_content = redactor.redact(resp.raw_content)


FILLERS = [b"x" * 1023 + b"\n", b'{"ok": true, "n": 1}', b"", b"%", b"\\u00", b"+"]
METHODS = [b"HEAD", b"head", b"Head", b"CONNECT", b"GET", b"get", b"POST", b"OPTIONS"]


def _body(rng: random.Random) -> bytes:
    parts = [rng.choice(FILLERS) for _ in range(rng.randint(0, 3))]
    for _ in range(rng.randint(0, 3)):
        parts.insert(rng.randint(0, len(parts)),
                     rng.choice(FORMS) if rng.random() < 0.4 else rng.choice(PIECES))
    return b"".join(parts)


def _flow(seed: float) -> tuple[http.HTTPFlow, dict[str, int]]:
    """A flow as ``responseheaders`` leaves it (the one-pass head taken where it takes it),
    then changed as a stage might have changed it before ``response``."""
    rng = random.Random(seed)
    hit: dict[str, int] = {}
    body = _body(rng)
    redactor = rng.choice(REDACTORS)
    f = tflow.tflow()
    f.request.data.method = rng.choice([b"GET", b"POST", b"get"])
    fields = [(b"Content-Length", b"%d" % len(body))]
    if rng.random() < 0.3:
        fields.insert(0, (b"Server", b"nginx"))
    if rng.random() < 0.1:
        fields.append((b"X-Echo", rng.choice(FORMS)))
    f.response = http.Response(b"HTTP/1.1", rng.choice([200, 200, 201, 404, 500]), b"OK",
                               http.Headers(fields), body, None, 0.0, None)
    rec = record_of(f)
    rec.redactor = redactor
    if gate._plain_small_head(f, f.response, redactor, "svc"):
        rec.plain_fields = f.response.data.headers.fields
        hit["taken"] = 1
    resp = f.response
    r = rng.random()
    if r < 0.12:
        f.request.data.method = rng.choice(METHODS)
        hit["method"] = 1
    elif r < 0.24:
        resp.data.status_code = rng.choice([100, 101, 199, 204, 304, 200])
        hit["status"] = 1
    elif r < 0.32:
        resp.data.content = rng.choice([None, b""])
        hit["empty"] = 1
    elif r < 0.38:
        if rng.random() < 0.5:
            resp.raw_content = gzip.compress(body)
            resp.headers["content-encoding"] = "gzip"
        else:
            resp.headers["x-a"] = "b"
        hit["fields"] = 1
    elif r < 0.44:
        reply = http.Response.make(403, b"refused") if rng.random() < 0.5 else None
        rec.refusal = Refusal("denied", "no", reply)
        hit["refusal"] = 1
    elif r < 0.50:
        resp.data.trailers = http.Headers([(b"X-T", rng.choice(FORMS + PIECES))])
        f.request.http_version = rng.choice(["HTTP/1.1", "HTTP/2.0"])
        hit["trailers"] = 1
    elif r < 0.54:
        resp.stream = True
        hit["stream"] = 1
    elif r < 0.58:
        rec.redactor = None
        hit["no_redactor"] = 1
    return f, hit


def _state(f: http.HTTPFlow) -> tuple[Any, ...]:
    resp = f.response
    if resp is None:
        return (None,)
    trailers = resp.data.trailers
    refusal = record_of(f).refusal
    return (resp.data.status_code, resp.data.reason, resp.data.content,
            resp.headers.fields, None if trailers is None else trailers.fields,
            bool(resp.stream), None if refusal is None else (
                refusal.code, refusal.message, refusal.reply is None, refusal.reply is resp))


def test_the_plain_body_is_judged_as_it_was(rt: Runtime) -> None:  # noqa: F811 - the fixture
    now, ref = gate.ResponseGate(rt), _Ref(rt)
    rng = random.Random(1017)
    counts: dict[str, int] = {}
    redacted = 0
    for _ in range(6000):
        seed = rng.random()
        (a, hit), (b, _) = _flow(seed), _flow(seed)
        ref.response(a)
        now.response(b)
        assert _state(b) == _state(a)  # (no message: the state may hold a canary)
        for k in hit:
            counts[k] = counts.get(k, 0) + 1
        if "taken" in hit and a.response is not None and a.response.data.content:
            redacted += b"__vault." in a.response.data.content
    # twins: every change is reached, and bodies are redacted under the one-pass head
    assert min(counts.values()) > 150 and counts["taken"] > 4000, counts
    assert redacted > 500, redacted


def test_a_head_made_bodiless_after_the_head_keeps_its_body_unscanned(
        rt: Runtime) -> None:  # noqa: F811 - the fixture
    """As before: a body the pre-check flags, on a response made 204 (or to a HEAD) after
    the one-pass head, is left as it is (the no-body test still decides it); one it clears is
    left too; a 200's is redacted."""
    for change in ("status", "method", None):
        f = tflow.tflow()
        body = b"a" + SECRET
        f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
            [(b"Content-Length", b"%d" % len(body))]), body, None, 0.0, None)
        rec = record_of(f)
        rec.redactor = REDACTOR
        assert gate._plain_small_head(f, f.response, REDACTOR, "svc")
        rec.plain_fields = f.response.data.headers.fields
        if change == "status":
            f.response.data.status_code = 204
        elif change == "method":
            f.request.data.method = b"HEAD"
        gate.ResponseGate(rt).response(f)
        want = body if change else b"a__vault.svc__"
        assert f.response.data.content == want, change


def _cases(word: bytes) -> list[bytes]:
    """Every mix of letter case of ``word``."""
    out = [b""]
    for ch in word:
        out = [o + bytes([c]) for o in out for c in {ch, bytes([ch]).upper()[0]}]
    return out


def test_the_head_declines_a_head_or_connect_in_any_case() -> None:
    """``_plain_small_head``'s method test (the common methods told by a set look-up, any
    other by ``upper()``) against ``upper() in (HEAD, CONNECT)`` as it was: every case of
    HEAD and CONNECT, the common methods in other cases, and seeded random methods."""
    rng = random.Random(55)
    methods = _cases(b"head") + _cases(b"connect") + sorted(gate._OTHER_METHODS)
    methods += [m.lower() for m in gate._OTHER_METHODS] + [b"HEAD ", b"HEADX", b"\xffHEAD"]
    methods += [bytes(rng.choice(b"HEADCONTGPSUhecdontgpsu\xff") for _ in range(rng.randint(0, 8)))
                for _ in range(2000)]
    declined = 0
    for method in methods:
        f = tflow.tflow()
        f.request.data.method = method
        f.response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
            [(b"Content-Length", b"2")]), b"ok", None, 0.0, None)
        took = gate._plain_small_head(f, f.response, REDACTOR, "svc")
        want = method.upper() not in (b"HEAD", b"CONNECT")
        assert took is want, method
        declined += not want
    assert declined >= 16 + 128  # twin: every case of both is declined, the rest taken
