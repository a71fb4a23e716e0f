"""The audit path's shortcuts say what the general code says: a prebuilt frame header is the
frame ``frame`` builds; ``strip_query``'s early return keeps every path it kept; a
``--workers`` process leaves /metrics counting to the supervisor while a single process
counts its own records; a request record's line is ``json.dumps`` of its fields (seeded,
varied inputs)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import pytest

from vaultproxy.audit import metrics
from vaultproxy.audit.canonical import record_decision
from vaultproxy.audit.event import SPEC_FIELDS, AuditEvent, RequestEvent, strip_query
from vaultproxy.audit.log import AuditLog
from vaultproxy.engine.channel import frame, frame_head
from vaultproxy.engine.worker_audit import WorkerAudit


def test_a_prebuilt_frame_header_is_the_frame() -> None:
    rng = random.Random(3)
    for header in ({"op": "audit", "ok": True}, {"op": "audit", "ok": False},
                   {"op": "x", "n": 7, "s": "caf\u00e9 \"q\""}):
        build = frame_head(header)
        for _ in range(200):
            payload = rng.randbytes(rng.randint(0, 300))
            assert build(payload) == frame(header, payload)
            assert build(bytearray(payload)) == frame(header, bytearray(payload))


def _strip_loop(path: str) -> str:
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path


def test_strip_query_is_the_split_loop() -> None:
    rng = random.Random(9)
    pieces = ["/", "a", "?", "#", "%3F", "\u00e9", "?k=v", "#f", "", "\x00", "&"]
    stripped = 0
    for _ in range(20_000):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        assert strip_query(path) == _strip_loop(path), path
        stripped += strip_query(path) != path
    assert 2000 < stripped < 18_000  # twin: both answers are reached


def _flows(service: str) -> float:
    return metrics.FLOWS.value(service, "injected")


def _record(log: AuditLog, service: str) -> None:
    record_decision(log, event="request", agent="a", service=service, mode="host_inject",
                    method="GET", host="h.example", path="/x", status=200, started=None,
                    outcome="injected", reason=None)


def test_only_the_process_that_serves_metrics_counts_its_records(tmp_path: Path) -> None:
    single = AuditLog(tmp_path / "single.jsonl")
    before = _flows("svc-single")
    _record(single, "svc-single")
    assert _flows("svc-single") == before + 1  # the twin: a single process counts

    async def worker() -> None:
        a, b = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=a)
        _r, w2 = await asyncio.open_unix_connection(sock=b)
        log = WorkerAudit(tmp_path / "worker.jsonl", writer, asyncio.get_running_loop())
        _record(log, "svc-worker")
        writer.close()
        w2.close()

    before = _flows("svc-worker")
    asyncio.run(worker())
    assert _flows("svc-worker") == before  # the supervisor counts the line it is sent
    assert '"service":"svc-worker"' in (tmp_path / "worker.jsonl").read_text()


# -- RequestEvent.to_json_line: kept fragments and inline encodings vs json.dumps -----------

_HOSTILE: list[object] = [
    None, "", "a", "agent-1", 'q"uote', "back\\slash", "\x00\x01\x1f\x7f", "\n\r\t",
    "caf\u00e9", "\u2028\u2029", "\ud800", "\udcff lone", "\U0001f600", "x" * 5000,
    "</script>", "\\u0000", 7, True, 1.5, ["list"], {"d": 1},
]
_STATUSES: list[object] = [None, 0, 200, 599, -1, 10**30, True, False, 2.0, "200"]
_DURATIONS: list[object] = [None, 0.0, 1.0, 12.345, 1e-7, 1e300, -0.0, 3, float("nan"),
                            float("inf"), "1"]


def _reference(ev: object) -> str:
    record = ev.to_record()  # type: ignore[attr-defined]
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


_PATHS: list[object] = ["/x", "/a?b=c", None, "/\ud800", "", "#f", "/caf\u00e9?q#f"]


def _random_values(rng: random.Random) -> tuple[object, ...]:
    """Constructor arguments: hostile where RequestEvent passes a value through as it is."""
    pick = rng.choice

    def text() -> object:
        return pick(_HOSTILE)

    event = pick(["request", "forward", "tunnel_refused"]) if rng.random() < 0.9 else text()
    outcome = pick(["injected", "forwarding", "denied"]) if rng.random() < 0.9 else text()
    return (event, outcome, text(), text(), text(), text(), text(),
            pick([p for p in _PATHS if type(p) is str or p is None]), pick(_STATUSES),
            pick([d for d in _DURATIONS if d is None or type(d) is float and d == d
                  and d not in (float("inf"),)] + [3, "1"]),
            text(), pick([None, None, "proxy", "mcp", 7, "caf\u00e9"]))


def _raw_event(rng: random.Random) -> RequestEvent:
    """A record with any values at all (what the constructor would refuse or convert too),
    with no line made: ``to_json_line`` encodes it."""
    pick = rng.choice
    values = [pick(_HOSTILE) for _ in range(13)]
    values[0] = "2026-12-07T00:00:00.000Z"
    values[7], values[8], values[9] = pick(_PATHS), pick(_STATUSES), pick(_DURATIONS)
    return tuple.__new__(RequestEvent, (*values, None))  # type: ignore[type-var]


def _expect(ev: RequestEvent) -> str | type[Exception]:
    try:
        return _reference(ev)
    except (ValueError, TypeError) as e:
        return type(e)


def test_request_line_is_json_dumps_on_hostile_values() -> None:
    """The line made with the record (the fragments kept or not yet) and the one encoded
    later are each ``json.dumps`` of the record's fields, or fail as it fails."""
    rng = random.Random(29)
    made = 0
    for _ in range(6000):
        args = _random_values(rng)
        try:
            first = RequestEvent(*args)  # type: ignore[arg-type]
        except (ValueError, TypeError) as e:  # what the constructor refuses, refused alike
            with pytest.raises(type(e)):
                AuditEvent(**dict(zip(("event", "outcome", "agent", "service", "mode",
                                       "method", "host", "path", "status", "duration_ms",
                                       "reason", "via"), args, strict=True)))
            continue
        again = RequestEvent(*args)  # type: ignore[arg-type]  # from the kept fragments
        made += first[-1] is not None
        for ev in (first, again):
            want = _expect(ev)
            if isinstance(want, str):
                assert ev.to_json_line() == want, args
            else:
                with pytest.raises((ValueError, TypeError)):
                    ev.to_json_line()
    assert 300 < made < 5000  # twin: both the made line and the later encoding are reached
    for _ in range(3000):
        ev = _raw_event(rng)
        want = _expect(ev)
        if isinstance(want, str):
            assert ev.to_json_line() == want
        else:
            with pytest.raises((ValueError, TypeError)):
                ev.to_json_line()


def test_a_request_record_cannot_be_changed() -> None:
    ev = RequestEvent("request", "injected", "a", "s", "m", "GET", "h", "/p", 200, 1.5, None)
    line = ev.to_json_line()
    for name in ("status", "path", "agent", "ts"):
        with pytest.raises(AttributeError):
            setattr(ev, name, "x")
    assert ev.to_json_line() == line == _reference(ev)
    assert (ev.status, ev.path, ev.duration_ms, ev.via) == (200, "/p", 1.5, None)


def _round_repr(d: float) -> tuple[float, str]:
    """What RequestEvent did before: ``round`` to 3 decimals, then ``repr``."""
    r = round(d, 3)
    return r, repr(r)


def test_duration_text_is_repr_of_round() -> None:
    """The duration's fast text (``"%.3f"`` without trailing zeros, for [0, 1e9) ms) and its
    value are ``repr(round(d, 3))`` and ``round(d, 3)``, on seeded values of every scale,
    the halfway cases and the bounds; outside the range the round/repr path writes it."""
    rng = random.Random(113)
    values = [0.0, -0.0, 5e-4, 1.5e-3, 2.5e-3, 2.675, 1.0005, 0.0004999, 999999999.9995,
              999999999.9999999, 1e9, 1e9 + 0.5, 123456789.0125, 1e-300, 5e-324]
    for _ in range(60_000):
        scale = 10.0 ** rng.randint(-8, 14)
        values.append(rng.random() * scale)
        values.append(rng.randint(0, 10**12) / 1000 + rng.choice([0, 5e-4, -5e-4]))
        values.append(rng.randint(0, 2**40) / 2**rng.randint(0, 40))
    fast = 0
    for d in values:
        if not 0.0 <= d < 1e15:
            continue
        ev = RequestEvent("request", "injected", None, None, None, None, None, None, None, d,
                          None)
        want_value, want_text = _round_repr(d)
        assert ev.duration_ms == want_value and str(ev.duration_ms) == want_text, d
        assert f'"duration_ms":{want_text},' in ev.to_json_line(), d
        fast += d < 1e9
    assert 100_000 < fast < len(values) - 10_000  # twin: the round/repr path is reached too
    for d in (-1.0, -5e-4, -0.0004, 1e12 + 0.0005, 1e20):  # the other path
        ev = RequestEvent("request", "injected", None, None, None, None, None, None, None, d,
                          None)
        want_value, want_text = _round_repr(d)
        assert ev.duration_ms == want_value
        assert f'"duration_ms":{want_text},' in ev.to_json_line()


def test_request_line_every_field_present_or_absent() -> None:
    names = ("agent", "service", "mode", "method", "host", "path", "status", "duration_ms",
             "reason", "via")
    full: dict[str, object] = dict(agent="a\u00e9", service="s\"", mode="m", method="GET",
                                   host="h\\", path="/p", status=201, duration_ms=2.5,
                                   reason="r\x01", via="api")
    for mask in range(1 << len(names)):
        values = {n: (full[n] if mask >> i & 1 else None) for i, n in enumerate(names)}
        ev = RequestEvent("request", "injected", **values)  # type: ignore[arg-type]
        assert ev.to_json_line() == _reference(ev) == ev.to_json_line()


def test_kept_fragments_stay_bounded_and_exact() -> None:
    from vaultproxy.audit import event as module

    for i in range(module._MAX_FRAGMENTS + 50):
        ev = RequestEvent("tunnel_refused", "denied", agent=None, service=None, mode=None,
                          method="CONNECT", host=f"h{i}.example", path=None, status=403,
                          duration_ms=None, reason="unknown_host")
        assert ev.to_json_line() == _reference(ev)
        assert len(module._FRAGMENTS) <= module._MAX_FRAGMENTS


def test_request_event_path_is_strip_query_of_it() -> None:
    """RequestEvent tests a str path for ``?``/``#`` inline; every path still comes out as
    ``strip_query`` makes it (and a path of another type still fails as it did)."""
    rng = random.Random(31)
    pieces = ["/", "a", "?", "#", "%3F", "\u00e9", "?k=v", "#f", "", "\x00", "&"]
    stripped = 0
    for _ in range(5000):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        ev = RequestEvent("request", "injected", None, "s", None, "GET", "h", path, 200, 1.0,
                          None)
        assert ev.path == strip_query(path), path
        stripped += ev.path != path
    assert 500 < stripped < 4500  # twin: both answers are reached
    assert RequestEvent("forward", "forwarding", None, None, None, None, None, None, None,
                        None, None).path is None
    with pytest.raises(TypeError):
        RequestEvent("request", "injected", None, None, None, None, None,
                     b"/x?y", None, None, None)  # type: ignore[arg-type]


def test_now_timestamp_is_the_clocks_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's timestamp from one ``time.time()``: the UTC second and the millisecond
    floored from the float's exact value (Decimal), on seeded clock values around second
    and millisecond boundaries, in and out of the kept second."""
    import time
    from datetime import UTC, datetime
    from decimal import Decimal

    from vaultproxy.audit import event as module

    rng = random.Random(71)
    clock: list[float] = []
    for _ in range(20_000):
        base = float(rng.randint(10**9, 4 * 10**9))
        step = rng.choice([0.0, 1e-3, 0.5, 1.0 - 1e-6, rng.random()])
        t = base + step + rng.choice([0.0, 2.0**-22, -(2.0**-22), 1e-7])
        clock.append(t)
        if rng.random() < 0.5:
            clock.append(t + rng.random() * 2e-3)  # often the same second: the kept prefix
    for t in clock:
        monkeypatch.setattr(module, "_time", lambda t=t: t)
        exact = Decimal(t)
        sec = int(exact // 1)
        ms = int((exact - sec) * 1000 // 1)
        want = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"
        assert module._now_timestamp() == want, t
    monkeypatch.undo()
    now = module._now_timestamp()
    assert abs(datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
               - time.time()) < 5


def test_request_event_timestamp_is_now_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """``request_event``'s timestamp (``_now_timestamp``): on seeded clock values (second and
    millisecond boundaries, the kept second shared with ``_now_timestamp`` in either order)
    it is ``_now_timestamp``'s and the clock's exact millisecond, and the line starts with
    it."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from vaultproxy.audit import event as module

    rng = random.Random(73)
    for _ in range(20_000):
        base = float(rng.randint(10**9, 4 * 10**9))
        t = base + rng.choice([0.0, 1e-3, 0.5, 1.0 - 1e-6, rng.random()]) + rng.choice(
            [0.0, 2.0**-22, -(2.0**-22), 1e-7])
        for now in (t, t + rng.random() * 2e-3):  # often the same second: the kept prefix
            monkeypatch.setattr(module, "_time", lambda now=now: now)
            first_inline = rng.random() < 0.5
            if not first_inline:
                reference = module._now_timestamp()
            ev = module.request_event("request", "injected", None, "s", None, "GET", "h",
                                      "/p", 200, 1.0, None)
            if first_inline:
                reference = module._now_timestamp()
            exact = Decimal(now)
            sec = int(exact // 1)
            ms = int((exact - sec) * 1000 // 1)
            want = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"
            assert ev.ts == reference == want, now
            assert ev.to_json_line().startswith(f'{{"ts":"{want}",')


def test_record_and_ahead_write_the_events_line(tmp_path: Path) -> None:
    """``AuditLog.record``/``ahead`` take a RequestEvent's line from the tuple (no
    ``to_json_line`` call): on seeded events (lines made or not, AuditEvents too) the file
    holds exactly ``to_json_line()`` of each, and an event that cannot be encoded is
    dropped as before."""
    rng = random.Random(37)
    log = AuditLog(tmp_path / "audit.jsonl", on_failure="continue")
    want: list[str] = []
    dropped = made = 0
    for n in range(3000):
        kind = rng.random()
        if kind < 0.6:
            try:
                ev: object = RequestEvent(*_random_values(rng))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                continue
            made += ev[-1] is not None  # type: ignore[index]
        elif kind < 0.9:
            ev = _raw_event(rng)
        else:
            ev = AuditEvent(event="sync", outcome="ok", reason=f"r{n}")
        expected = _expect(ev)  # type: ignore[arg-type]
        ok = (log.ahead if rng.random() < 0.5 else log.record)(ev)  # type: ignore[arg-type]
        if isinstance(expected, str):
            assert ok and ev.to_json_line() == expected  # type: ignore[attr-defined]
            want.append(expected)
        else:
            assert not ok
            dropped += 1
    log.close()
    assert (tmp_path / "audit.jsonl").read_text().splitlines(keepends=True) == want
    assert log.dropped == dropped > 0 and made > 100  # twin: both kinds reached


def test_record_forward_writes_the_forward_line() -> None:
    """``record_forward`` by position (stages/ahead.py) hands the sink the same record as
    ``request_event`` makes of the same values (service or none), and refuses as before."""
    from vaultproxy.audit.event import request_event
    from vaultproxy.config.models import Service
    from vaultproxy.core.pipeline import record_forward
    from vaultproxy.errors import AuditUnavailable

    class Sink:
        def __init__(self, ok: bool) -> None:
            self.ok, self.events = ok, []  # type: ignore[var-annotated]

        def ahead(self, event: RequestEvent) -> bool:
            self.events.append(event)
            return self.ok

    rng = random.Random(41)
    svc = Service.model_validate({"name": "hi", "hosts": ["hi.example"], "mode": "host_inject",
                                  "auth": "bearer"})
    for _ in range(500):
        agent, host, path = rng.choice(_HOSTILE[:12]), rng.choice(_HOSTILE[:12]), rng.choice(
            _PATHS)
        service = rng.choice([None, svc])
        via = rng.choice([None, "api"])
        sink = Sink(True)
        record_forward(sink, "deny", agent, service, "GET", host, path, via)  # type: ignore[arg-type]
        ev = request_event("forward", "forwarding", agent, service and service.name,  # type: ignore[arg-type]
                           service and service.mode, "GET", host, path, None, None, None, via)  # type: ignore[arg-type]
        (got,) = sink.events
        assert got[1:-1] == ev[1:-1]
        assert got.to_json_line().split(",", 1)[1] == ev.to_json_line().split(",", 1)[1]
    with pytest.raises(AuditUnavailable):
        record_forward(Sink(False), "deny", None, svc, "GET", "h", "/p")  # type: ignore[arg-type]
    record_forward(Sink(False), "continue", None, svc, "GET", "h", "/p")  # type: ignore[arg-type]


class _Subclassed(AuditLog):
    """An AuditLog that is not one exactly: canonical.py makes it the record and calls its
    ``record``/``ahead`` (the code the shortcut replaces)."""


def test_an_audit_log_is_handed_the_line_as_its_record_would_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decision_record``/``ahead_record`` hand an ``AuditLog`` the line (no record made):
    on seeded values the file, the answers and the counters are those of the same calls on
    a log that takes the record (``record``/``ahead``), under ``deny`` and ``continue``,
    while writing fails and after it works again."""
    import types

    from vaultproxy.audit import canonical
    from vaultproxy.audit import event as module

    monkeypatch.setattr(module, "_time", lambda: 1_800_000_000.25)
    monkeypatch.setattr(canonical, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
    monkeypatch.setattr(metrics, "counted", lambda *a: None)
    rng = random.Random(43)
    for policy in ("deny", "continue"):
        missing = tmp_path / policy
        fast = AuditLog(missing / "a" / "audit.jsonl", on_failure=policy)  # type: ignore[arg-type]
        slow = _Subclassed(missing / "b" / "audit.jsonl", on_failure=policy)  # type: ignore[arg-type]
        taken: list[int] = []  # the records fast was handed as records (no line made)
        for name in ("record", "ahead"):
            method = getattr(fast, name)
            monkeypatch.setattr(fast, name, lambda ev, m=method, t=taken: t.append(1) or m(ev))
        for n in range(2000):
            if n == 300:  # writing works from here on
                (missing / "a").mkdir(parents=True)
                (missing / "b").mkdir()
            event, outcome, agent, service, mode, method, host, path, status, _d, reason, via = (
                _random_values(rng))
            if rng.random() < 0.5:  # the values the stages pass (a line is made)
                agent, service, mode, method, host, reason, via = rng.choice(
                    [(None, "hi", "host_inject", "GET", "hi.example", None, None),
                     ("bot", "gh", "placeholder", "POST", "api.github.com", "r", "api")])
            started = rng.choice([None, 99.5, 100.0, 99.987654])
            ahead = rng.random() < 0.5 or n < 300
            answers = []
            for log in (fast, slow):
                try:
                    if ahead:
                        answers.append(canonical.ahead_record(  # type: ignore[arg-type]
                            log, agent, service, mode, method, host, path, via))
                    else:
                        answers.append(canonical.decision_record(  # type: ignore[arg-type]
                            log, event, agent, service, mode, method, host, path, status,
                            started, outcome, reason, via))
                except (ValueError, TypeError) as e:
                    answers.append(type(e))
            assert answers[0] == answers[1], answers
            assert fast.stats() == slow.stats()
            assert fast.buffered == slow.buffered and fast.dropped == slow.dropped
        fast.close()
        slow.close()
        assert ((missing / "a" / "audit.jsonl").read_bytes()
                == (missing / "b" / "audit.jsonl").read_bytes())
        assert fast.stats()["written"] > 500 and fast.stats()["failed"] > 100
        assert 50 < len(taken) < 1800  # twin: both the shortcut and the record reached


# -- forward_line / request_line (an AuditLog's two lines) vs request_fields ---------------


class _Str(str):
    """A str subclass: never taken by the fast lines (left to request_fields)."""


class _Liar(str):
    """Equal to every str, with its hash: a kept text must never be taken for it."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("hi")


_FAST_TEXTS: list[object] = [
    None, "hi", "host_inject", "GET", "hi.example", "a\u00e9", 'q"', "\x00\x1f",
    "\ud800", "\U0001f600", "x" * 700, _Str("hi"), _Liar("zz"), 7, b"hi",
]
_FAST_PATHS: list[object] = [None, "/1k", "/a?b=c", "#f", "", "/caf\u00e9?x#y", "/\ud800",
                             "/" + "p" * 5000, "/\"\\\n", _Str("/s"), b"/b", 3]
_FAST_DURATIONS: list[object] = [None, 0.0, -0.0, 0.1234567, 1.0005, 2.675, 999999999.9999,
                                 1e9, -1.0, 3, True, float("nan"), float("inf"), 12.5, 1e-300]
_FAST_STATUSES: list[object] = [None, 200, 0, -1, 599, 10**30, True, 200.0, "200", _Str("2")]


def _clock(rng: random.Random) -> float:
    base = float(rng.randint(10**9, 4 * 10**9))
    return base + rng.choice([0.0, 1e-3, 0.5, 1.0 - 1e-6, rng.random()]) + rng.choice(
        [0.0, 2.0**-22, -(2.0**-22), 1e-7])


def _fields_or_error(*args: object) -> tuple[object, ...] | type[Exception]:
    from vaultproxy.audit.event import request_fields

    try:
        return request_fields(*args)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        return type(e)


def test_forward_and_request_lines_are_request_fields_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``forward_line``/``request_line`` (an AuditLog's lines, no record made) on seeded
    values, hostile ones included, at seeded clock values (second and millisecond bounds,
    in and out of the kept second), with the texts kept and not yet: each line is the one
    ``request_fields`` makes of the same values at the same clock (the code they stand in
    for), byte for byte, and the duration is the one it rounds to; anything else is left
    to it (None), never a different line. ``request_taken`` takes what ``request_line``
    takes, and ``taken_line`` of what it took, at a later clock, is the same line."""
    from vaultproxy.audit import event as module
    from vaultproxy.audit.event import DURATION_AT, LINE_AT

    rng = random.Random(59)
    pick = rng.choice
    made_f = made_r = left_f = left_r = 0
    for n in range(12_000):
        if n % 3000 == 0:
            module._LINES.clear()
            module._FORWARDS.clear()
        now = _clock(rng)
        monkeypatch.setattr(module, "_time", lambda now=now: now)
        common = [pick(_FAST_TEXTS[:5]) if rng.random() < 0.6 else pick(_FAST_TEXTS)
                  for _ in range(5)]
        path = pick(_FAST_PATHS[:3]) if rng.random() < 0.5 else pick(_FAST_PATHS)
        via = pick([None, None, "api", "mcp", "caf\u00e9", _Str("api"), 7])
        # the forward line, out of the kept second (a new clock) and in it (the same again)
        if rng.random() < 0.5:
            monkeypatch.setattr(module, "_second", (0.0, -1.0, ""))
        for _ in range(2):
            got = module.forward_line(*common, path, via)  # type: ignore[arg-type]
            want = _fields_or_error("forward", "forwarding", *common, path, None, None, None,
                                    via)
            if got is None:
                left_f += 1
            else:
                made_f += 1
                assert isinstance(want, tuple) and got == want[LINE_AT], (common, path, via)
                assert got == _reference(tuple.__new__(RequestEvent, want))
        # the request line
        event = pick(["request", "tunnel_refused"]) if rng.random() < 0.85 else pick(
            ["", "admin", "approval", "forward", _Str("request"), None, 5])
        outcome = pick(["injected", "forwarded", "denied", "error"]) if rng.random(
        ) < 0.85 else pick(["", _Str("x"), None, "ok"])
        status, duration = pick(_FAST_STATUSES), pick(_FAST_DURATIONS)
        if rng.random() < 0.5:
            duration = rng.random() * 10.0 ** rng.randint(-4, 8)
        reason = pick([None, None, "r", "upstream_tls", _Str("r"), "\n"])
        args = (event, outcome, *common, path, status, duration, reason, via)
        if rng.random() < 0.5:  # out of the kept second, or in it
            monkeypatch.setattr(module, "_second", (0.0, -1.0, ""))
        got_r = module.request_line(*args)  # type: ignore[arg-type]
        want = _fields_or_error(*args)
        # request_taken (a line made after the send, seam/aftersend.py): takes exactly the
        # values request_line takes, and the line of what it took, made at a later clock
        # (in or out of the kept second), is the one request_line made of them now
        taken = module.request_taken(*args)  # type: ignore[arg-type]
        assert (taken is None) == (got_r is None), args
        if taken is not None:
            assert all(a is b for a, b in zip(taken, args, strict=False)) and len(taken) == 13
            assert taken[12] == now
            later = now + pick([0.0, 1e-4, 0.0011, 0.7, 1.0, 90.0])
            monkeypatch.setattr(module, "_time", lambda later=later: later)
            if rng.random() < 0.5:
                monkeypatch.setattr(module, "_second", (0.0, -1.0, ""))
            assert module.taken_line(taken) == got_r, args
        if got_r is None:
            left_r += 1
        else:
            made_r += 1
            assert isinstance(want, tuple), args
            assert got_r == (want[LINE_AT], want[DURATION_AT]), args
            assert str(got_r[1]) == str(want[DURATION_AT])  # (-0.0 and 0.0 alike)
    assert made_f > 6000 and left_f > 2000  # twin: the fast line and the fallback, both
    assert made_r > 1000 and left_r > 1000
    assert module._LINES and module._FORWARDS


def test_the_fast_lines_keep_bounded_texts() -> None:
    """The kept texts stay bounded (forgotten at once past the bound; a long value is not
    kept at all) and every line is still request_fields' line."""
    from vaultproxy.audit import event as module
    from vaultproxy.audit.event import LINE_AT, forward_line, request_fields, request_line

    for i in range(module._MAX_LINES + 50):
        host = f"h{i}.example" if i % 7 else "h" * 600
        line = forward_line(None, "s", "m", "GET", host, "/p", None)
        want = request_fields("forward", "forwarding", None, "s", "m", "GET", host, "/p",
                              None, None, None)[LINE_AT]
        assert line is not None and line.split('",', 1)[1] == want.split('",', 1)[1]
        made = request_line("tunnel_refused", "denied", None, None, None, "CONNECT", host,
                            None, 403, None, "unknown_host", None)
        want = request_fields("tunnel_refused", "denied", None, None, None, "CONNECT", host,
                              None, 403, None, "unknown_host")[LINE_AT]
        assert made is not None and made[0].split('",', 1)[1] == want.split('",', 1)[1]
        assert len(module._LINES) <= module._MAX_LINES
        assert len(module._FORWARDS) <= module._MAX_LINES
    assert not any("h" * 600 in k for k in module._FORWARDS)  # type: ignore[operator]


def _forward_ahead_before(st: object, flow: object, rec: object) -> None:
    """stages/ahead.forward_ahead as it was (the reference): every decision through
    ``record_forward``, the method as ``Request.method`` reads it."""
    from vaultproxy.core.pipeline import record_forward

    decision = rec.decision  # type: ignore[attr-defined]
    target = decision.target if decision is not None else None
    service = decision.service if decision is not None else None
    audit = st.audit  # type: ignore[attr-defined]
    record_forward(
        audit, audit.on_failure, decision.agent if decision is not None else None, service,
        flow.request.method, target[0] if target is not None else None,  # type: ignore[attr-defined]
        rec.path,  # type: ignore[attr-defined]
    )


def test_forward_ahead_writes_what_it_wrote_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``forward_ahead`` (its own ``ahead_record`` call for a decision with a service and a
    target, the method from ``METHOD_TEXT``) against the code it replaces, on seeded flows
    (methods of every case and byte, decisions with and without a service or a target):
    the same lines in the file, the same answers and refusals (AuditUnavailable under
    ``deny`` while the file cannot be written, none under ``continue``), the same counters."""
    import types

    from mitmproxy.test import tflow

    from vaultproxy.audit import event as module
    from vaultproxy.config.models import Service
    from vaultproxy.errors import AuditUnavailable
    from vaultproxy.stages.ahead import METHOD_TEXT, forward_ahead
    from vaultproxy.stages.flowrecord import record_of

    monkeypatch.setattr(module, "_time", lambda: 1_800_000_000.5)
    svc = Service.model_validate({"name": "hi", "hosts": ["hi.example"], "mode": "host_inject",
                                  "auth": "bearer"})
    methods = [*METHOD_TEXT, b"get", b"Post", b"PROPFIND", b"G\xffT", b"", b"M-SEARCH"]
    rng = random.Random(61)
    for policy in ("deny", "continue"):
        base = tmp_path / policy
        logs = [AuditLog(base / d / "audit.jsonl", on_failure=policy)  # type: ignore[arg-type]
                for d in ("now", "before")]
        fast = 0
        for n in range(1500):
            if n == 200:
                for d in ("now", "before"):
                    (base / d).mkdir(parents=True)
            flow = tflow.tflow()
            flow.request.data.method = rng.choice(methods)
            rec = record_of(flow)
            rec.path = rng.choice(["/p", "/q?x", None, "/caf\u00e9"])
            service = rng.choice([svc, svc, None])
            target = rng.choice([("hi.example", 443), ("h\u00e9", 1), None])
            agent = rng.choice([None, "bot", "a\"b"])
            rec.decision = rng.choice([None, types.SimpleNamespace(
                agent=agent, service=service, target=target)])
            fast += rec.decision is not None and service is not None and target is not None
            answers = []
            for log, write in zip(logs, (forward_ahead, _forward_ahead_before), strict=True):
                try:
                    write(types.SimpleNamespace(audit=log), flow, rec)  # type: ignore[arg-type]
                    answers.append("ok")
                except AuditUnavailable:
                    answers.append("refused")
            assert answers[0] == answers[1]
            assert logs[0].stats() == logs[1].stats()
        for log in logs:
            log.close()
        assert ((base / "now" / "audit.jsonl").read_bytes()
                == (base / "before" / "audit.jsonl").read_bytes())
        assert logs[0].stats()["failed"] > 100 and 200 < fast < 1300  # twin: both reached
        if policy == "deny":
            assert logs[0].stats()["written"] < 1400


def test_method_text_is_request_method() -> None:
    """``METHOD_TEXT`` (stages/ahead.py, stages/record.py) is ``Request.method`` of each."""
    from mitmproxy.test import tflow

    from vaultproxy.stages.ahead import METHOD_TEXT

    for raw, text in METHOD_TEXT.items():
        flow = tflow.tflow()
        flow.request.data.method = raw
        assert flow.request.method == text and type(text) is str


def test_record_response_writes_the_request_line_and_counts_inflight(tmp_path: Path) -> None:
    """``Record.response`` (its ``_finish`` inline, the method from ``METHOD_TEXT``) on
    seeded flows of a real proxy state: each ``request`` line names ``Request.method`` of
    its flow (any case, any bytes), the fields of the flow's decision, its status, and
    nothing else; ``inflight`` goes up at the head and back down at the response, only for
    a flow that was counted (twin: an uncounted flow leaves it alone)."""
    import time

    from mitmproxy import http
    from mitmproxy.test import tflow

    from tests.harness.proxy import ProxyHome, cheap_kdf_floor
    from vaultproxy.core.decide import Decision
    from vaultproxy.core.state import Live, ProxyState
    from vaultproxy.files.home import Home
    from vaultproxy.stages.flowrecord import record_of
    from vaultproxy.stages.record import Record
    from vaultproxy.stages.runtime import Runtime

    services = ('[[service]]\nname = "hi"\nhosts = ["hi.test"]\nmode = "host_inject"\n'
                'auth = "bearer"\n')
    canary = "vpcanary_" + "5a" * 16
    with cheap_kdf_floor():
        home = ProxyHome.create(tmp_path, services, {"hi": canary})
    st = ProxyState.load(Home(home.path))
    rt = Runtime(Live(st))
    stage = Record(rt)
    rng = random.Random(67)
    methods = [b"GET", b"POST", b"get", b"PaTcH", b"PROPFIND", b"G\xffT", b"DELETE"]
    want: list[tuple[str, int]] = []
    for n in range(300):
        flow = tflow.tflow(resp=True)
        flow.request.data.method = rng.choice(methods)
        flow.response = http.Response(b"HTTP/1.1", rng.choice([200, 404, 502]), b"",
                                      http.Headers(), b"", None, timestamp_start=time.time(),
                                      timestamp_end=None)
        rec = record_of(flow)
        rec.decision = Decision(st.registry.services[0], "bot" if n % 2 else None,
                                ("127.0.0.1", 9), target=("hi.test", 443))
        rec.path, rec.t0, rec.injected = f"/p{n}", time.monotonic(), bool(n % 3)
        counted = rng.random() < 0.7
        before = st.inflight
        if counted:
            stage.requestheaders(flow)
            assert st.inflight == before + 1
        stage.response(flow)
        assert st.inflight == before  # back where it was (or untouched)
        stage.websocket_end(flow)  # (``_finish`` again: the flow is no longer counted)
        assert st.inflight == before
        want.append((flow.request.method, flow.response.status_code))
    st.audit.close()
    lines = (st.audit.path).read_text().splitlines()
    assert canary not in "".join(lines)
    got = [json.loads(line) for line in lines if '"event":"request"' in line]
    assert [(r["method"], r["status"]) for r in got] == want
    assert {r["service"] for r in got} == {"hi"} and {r["host"] for r in got} == {"hi.test"}
    assert all(list(r) == list(SPEC_FIELDS) for r in got)
