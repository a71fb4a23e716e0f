"""An injected request's ``request`` line from its ``forward`` line's texts (audit11).

stages/ahead.py keeps what ``forward_made`` made of the forward line on the flow's record
(``FlowRecord.ahead``: the ``request`` head of the same event .. host values, the path's
encoding, the decision, raw method bytes, path and log it was made of); stages/record.py
uses it for the ``request`` line written after the send (``ahead_request``, then
seam/aftersend.py ``ahead_line``) only when the decision, the raw method and the path are
those very objects and the log the very one. Here, against the code it replaces
(``decision_record`` -> ``request_taken`` -> ``taken_line``, kept as it is):

- on seeded hostile values at seeded clocks: ``forward_made`` makes ``forward_line``'s line
  (or leaves the same values to it), ``ahead_request`` takes exactly what ``request_taken``
  takes and ``ahead_line`` of it is ``taken_line``'s line and duration;
- on seeded flows through the real stages (percent, unicode, query and canary paths,
  refusals, statuses, durations): the same bytes in ``audit.jsonl`` and the same metrics
  with the shortcut as with it turned off;
- negative twins: another decision, path, method or log than the forward line's gives the
  request line of the new values (the shortcut not taken); ``Decision`` and ``Service``
  are frozen (what the identity test relies on).
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHook

from tests.unit.test_aftersend import _counters
from tests.unit.test_refusal_marker import HOST, _chain, _flow, fire, world  # noqa: F401
from tests.unit.test_speed_audit import (
    _FAST_PATHS,
    _FAST_STATUSES,
    _FAST_TEXTS,
    _clock,
    _Str,
)
from vaultproxy.audit import canonical
from vaultproxy.audit import event as module
from vaultproxy.audit.log import AuditLog
from vaultproxy.seam import aftersend
from vaultproxy.stages import Runtime
from vaultproxy.stages import record as record_stage
from vaultproxy.stages.flowrecord import record_of


def test_ahead_line_is_taken_line_on_seeded_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    """``forward_made`` vs ``forward_line``; ``ahead_request`` + ``ahead_line`` vs
    ``decision_record``'s ``request_taken`` + ``taken_line`` (the same clocks)."""
    log = AuditLog(tmp_path / "audit.jsonl")
    other = AuditLog(tmp_path / "other.jsonl")
    rng = random.Random(1101)
    pick = rng.choice
    mono = 5000.0
    monkeypatch.setattr(canonical, "time", SimpleNamespace(monotonic=lambda: mono))
    made_n = left_n = taken_n = refused_n = 0
    for n in range(12_000):
        if n % 3000 == 0:
            module._FORWARDS.clear()
            module._TAILS.clear()
        now = _clock(rng)
        monkeypatch.setattr(module, "_time", lambda now=now: now)
        if rng.random() < 0.5:
            monkeypatch.setattr(module, "_second", (0.0, -1.0, ""))
        common = [pick(_FAST_TEXTS[:5]) if rng.random() < 0.6 else pick(_FAST_TEXTS)
                  for _ in range(5)]
        path = pick(_FAST_PATHS[:3]) if rng.random() < 0.5 else pick(
            [*_FAST_PATHS, "/a%2Fb%3F?c", "/\u00e9/%C3%A9", "/x?k=vpcanary_00ff"])
        decision, raw = object(), pick([b"GET", b"POST"])
        made = module.forward_made(*common, path, decision, raw, log)  # type: ignore[arg-type]
        want = module.forward_line(*common, path, None)  # type: ignore[arg-type]
        assert (made is None) == (want is None), (common, path)
        if made is None:
            left_n += 1
            continue
        made_n += 1
        assert made[0] == want
        assert made[3] is common[1] and made[4] is decision and made[5] is raw
        assert made[6] is path and made[7] is log
        # the rest, as the Record stage hands it on
        status = pick(_FAST_STATUSES[:3]) if rng.random() < 0.6 else pick(_FAST_STATUSES)
        started = pick([None, mono, mono - 0.0123456, mono - 1.5, mono + 1.0, mono - 2e6,
                        float("nan"), mono - rng.random() * 10.0 ** rng.randint(-6, 3)])
        outcome = pick(["injected", "forwarded", "denied", "error"]) if rng.random(
        ) < 0.85 else pick(["", _Str("x"), None, "ok", "caf\u00e9"])
        reason = pick([None, None, "r", "upstream_tls", _Str("r"), "\n", 3, "\u00e9"])
        duration = (mono - started) * 1000 if started is not None else None
        taken = module.request_taken("request", outcome, *common, path, status,  # type: ignore[arg-type]
                                     duration, reason, None)
        later = aftersend.Later()
        sink = other if rng.random() < 0.05 else log
        got = canonical.ahead_request(sink, made, status, started, outcome, reason,  # type: ignore[arg-type]
                                      later)
        assert got == (taken is not None and sink is log), (status, started, outcome, reason)
        if not got:
            refused_n += 1
            assert later.ahead is None and later.log is None
            continue
        taken_n += 1
        assert later.log is log and later.ahead is not None and later.ahead[5] == now
        # the line after the send, at a later clock (in or out of the kept second)
        later_t = now + pick([0.0, 1e-4, 0.0011, 0.7, 1.0, 90.0])
        monkeypatch.setattr(module, "_time", lambda later_t=later_t: later_t)
        if rng.random() < 0.5:
            monkeypatch.setattr(module, "_second", (0.0, -1.0, ""))
        line, rounded = module.ahead_line(later.ahead)
        want_line, want_rounded = module.taken_line(taken)  # type: ignore[arg-type]
        assert line == want_line, (common, path, status, duration, outcome, reason)
        assert str(rounded) == str(want_rounded)
    assert made_n > 6000 and left_n > 1000  # twins: each answer reached
    assert taken_n > 1500 and refused_n > 1000
    assert len(module._TAILS) <= module._MAX_LINES


def _hostile_flow(
    rt: Runtime, rng: random.Random, secret: str,
) -> tuple[http.HTTPFlow, list[object]]:
    chain = _chain(rt)
    refused = rng.random() < 0.1
    f = _flow(rt, "evil.example.com" if refused else HOST)
    f.request.method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "PROPFIND"])
    f.request.path = rng.choice([
        "/v1/x", "/v1/x?key=" + secret, "/a%2Fb%3F?c=%C3%A9", "/caf\u00e9/\u00e9t\u00e9",
        "/q\"\\x#frag", "/" + "p" * 600, "/v1/x#" + secret, "/%00%ff",
    ])
    fire(chain, HttpRequestHeadersHook(f), HttpRequestHook(f))
    record_of(f).t0 = 1000.0 - rng.choice([0.0, 0.0005, 0.0123, 1.5, 30.0, -1.0])
    if f.response is None:  # (a refusal answered it)
        status = rng.choice([200, 200, 201, 204, 301, 404, 429, 500, 502, 503])
        f.response = http.Response.make(status, rng.choice([b"", b"ok", b"x" * 300]))
    return f, chain


def _respond(rt: Runtime, f: http.HTTPFlow, chain: list[object],
             clock: dict[str, float]) -> tuple[bytes, dict[str, float], bool]:
    """The bytes of the ``response`` hook's record through a ``Later`` run after the send,
    the metrics it counted, and whether the shortcut (``Later.ahead``) carried it."""
    later = aftersend.Later()
    f.metadata[aftersend.KEY] = later
    audit = rt.state().audit
    path = audit.path
    size = path.stat().st_size if path.exists() else 0
    before = _counters()
    fire(chain[4:], HttpResponseHook(f))
    shortcut = later.ahead is not None
    clock["wall"] += 0.0011
    clock["mono"] += 0.0011
    later.run(f)
    audit.flush()
    after = _counters()
    counted = {k: round(v - before.get(k, 0.0), 9) for k, v in after.items()
               if v != before.get(k, 0.0)}
    return path.read_bytes()[size:], counted, shortcut


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    now = {"wall": 1_790_000_000.0, "mono": 1000.0}
    monkeypatch.setattr(module, "_time", lambda: now["wall"])
    monkeypatch.setattr(canonical, "time", SimpleNamespace(monotonic=lambda: now["mono"]))
    return now


def test_seeded_flows_write_what_the_replaced_code_wrote(
    world: Any, clock: dict[str, float], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """The same flow (the same stages' values, the same clocks) with the shortcut and with
    it off (``ahead_request`` answering False: ``decision_record`` as before): the same
    bytes, the same metrics; the shortcut carries every injected flow's line."""
    rt, _home, secret = world
    real = canonical.ahead_request
    shortcuts = injected = 0
    for seed in range(80):
        lines = []
        for on in (True, False):
            monkeypatch.setattr(record_stage, "ahead_request",
                                real if on else (lambda *a: False))
            clock.update(wall=1_790_000_000.0 + seed, mono=1000.0)
            f, chain = _hostile_flow(rt, random.Random(seed), secret)
            data, counted, shortcut = _respond(rt, f, chain, clock)
            lines.append((data, counted))
            if on:
                shortcuts += shortcut
                kept = record_of(f).ahead is not None
                positive = record_of(f).t0 <= 1000.0  # type: ignore[operator]
                injected += b'"outcome":"injected"' in data and positive
                assert shortcut == (kept and positive)  # (a negative duration: left)
            else:
                assert not shortcut
        assert lines[0] == lines[1], seed
        assert lines[0][0].count(b"\n") == 1 and secret.encode() not in lines[0][0]
    assert injected > 30 and shortcuts >= injected  # twin: the shortcut was compared


@pytest.mark.parametrize("change", ["decision", "path", "method", "log", "none"])
def test_another_decision_path_method_or_log_is_not_the_forward_lines(
    world: Any, clock: dict[str, float], change: str, tmp_path: Any,  # noqa: F811
) -> None:
    """Negative twins: the forward line's texts are used only for the very objects they were
    made of; a new decision (another agent), path, method or log gives the new values'
    line, as the replaced code does."""
    rt = world[0]
    f, chain = _hostile_flow(rt, random.Random(7), "vpcanary_00")
    rec = record_of(f)
    assert rec.ahead is not None  # (an injected flow)
    rec.t0 = 999.99  # (a duration the shortcut takes)
    st = rt.state()
    original = st.audit
    if change == "decision":
        rec.decision = dataclasses.replace(rec.decision, agent="someone-else")  # type: ignore[type-var]
    elif change == "path":
        rec.path = "/changed/\u00e9"
    elif change == "method":
        f.request.data.method = b"PATCH"
    elif change == "log":
        st.audit = AuditLog(tmp_path / "audit.jsonl")
    try:
        data, _counted, shortcut = _respond(rt, f, chain, clock)
    finally:
        if st.audit is not original:
            st.audit.close()
            st.audit = original
    assert shortcut == (change == "none")
    want = {"decision": b'"agent":"someone-else"', "path": b'"path":"/changed/\\u00e9"',
            "method": b'"method":"PATCH"', "log": b'"event":"request"',
            "none": b'"outcome":"injected"'}[change]
    assert want in data and data.count(b"\n") == 1


def test_decision_and_service_are_frozen(world: Any) -> None:  # noqa: F811
    """The identity test stands for the values: a decision's and a service's fields cannot
    be changed (its twin: a plain object's can)."""
    rt = world[0]
    f, _chain_ = _hostile_flow(rt, random.Random(7), "vpcanary_00")
    decision = record_of(f).decision
    assert decision is not None and decision.service is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.agent = "x"  # type: ignore[misc]
    with pytest.raises(Exception, match="frozen"):
        decision.service.name = "x"  # type: ignore[misc]
    plain = SimpleNamespace(agent=None)
    plain.agent = "x"
    assert plain.agent == "x"
