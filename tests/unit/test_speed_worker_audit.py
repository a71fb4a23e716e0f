"""A ``--workers`` process's audit (engine/worker_audit.py) takes the single process's fast
lines (audit/canonical.py hands it the line alone): on seeded flows its file, its answers,
its counters and the frames it sends the supervisor are those of the code it replaces (kept
here as the reference, ``_OldWorkerAudit``: handed records, as before), and its lines are a
single process's lines for the same flows. The supervisor counts a worker's line for
/metrics without the model (``metrics.line_fields``) exactly as the model would."""

from __future__ import annotations

import asyncio
import json
import math
import random
import types
from pathlib import Path
from typing import Any

import pytest

from vaultproxy.audit import canonical, metrics
from vaultproxy.audit import event as event_module
from vaultproxy.audit.event import SPEC_FIELDS, AnyEvent, AuditEvent, request_fields
from vaultproxy.audit.log import AuditLog
from vaultproxy.engine.channel import frame, frame_head
from vaultproxy.engine.worker_audit import WorkerAudit
from vaultproxy.seam.aftersend import Later

_HEADS = {ok: frame_head({"op": "audit", "ok": ok}) for ok in (True, False)}


class _OldWorkerAudit(AuditLog):
    """WorkerAudit as it was (session 13): handed records (``takes_lines`` is not declared
    here, so audit/canonical.py makes the record and calls ``record``/``ahead``)."""

    counts_metrics = False

    def __init__(self, path: Path, writer: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(path)
        self._writer = writer
        self._loop = loop
        self._reported_healthy = True

    def record(self, event: AnyEvent) -> bool:
        ok = super().record(event)
        self._post(b"")
        return ok

    def ahead(self, event: AnyEvent) -> bool:
        ok = super().ahead(event)
        self._post(b"")
        return ok

    def _write(self, line: str, keep: bool) -> bool:
        ok = super()._write(line, keep=keep)
        if ok or keep:
            self._post(_HEADS[ok](line.encode()))
        return ok

    def report(self) -> dict[str, Any]:
        stats = self.stats()
        self._reported_healthy = bool(stats["healthy"])
        return stats

    def _post(self, data: bytes) -> None:
        if self.healthy != self._reported_healthy:
            data += frame({"op": "audit_state", "audit": self.report()})
        if not data:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._send(data)
        else:
            self._loop.call_soon_threadsafe(self._send, data)

    def _send(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class _Channel:
    """The worker's end of the channel: what it writes, kept."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


_TEXTS: list[object] = [None, "hi", "a\u00e9", 'q"', "\x00\x1f", "\ud800", "x" * 700, 7]
_PATHS: list[object] = [None, "/1k", "/a?b=c", "#f", "", "/caf\u00e9?x#y", "/\ud800", b"/b"]
_STATUSES: list[object] = [None, 200, 0, 599, True, 200.0, "200"]


def _values(rng: random.Random) -> tuple[Any, ...]:
    pick = rng.choice
    if rng.random() < 0.6:  # the values the stages pass
        agent, service, mode, method, host, reason, via = pick(
            [(None, "hi", "host_inject", "GET", "hi.example", None, None),
             ("bot", "gh", "placeholder", "POST", "api.github.com", "r", "api")])
    else:
        agent, service, mode, method, host, reason, via = (pick(_TEXTS) for _ in range(7))
    event = pick(["request", "tunnel_refused", "forward"]) if rng.random() < 0.95 else pick(
        ["", "admin", 7, None])
    outcome = pick(["injected", "denied", "forwarded"]) if rng.random() < 0.95 else pick(
        ["", 3])
    return (event, outcome, agent, service, mode, method, host, pick(_PATHS), pick(_STATUSES),
            reason, via)


def test_worker_audit_takes_lines_as_the_code_it_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seeded flows (hostile values too), both ``on_failure`` policies, while writing fails
    and after it works again, now and after the send (``Later``): WorkerAudit and the old
    code write the same file, answer alike, keep the same counters and send the supervisor
    the same bytes (the ``audit`` frames and the ``audit_state`` changes, in order); and
    the new one is handed lines (no record), the old one records."""
    monkeypatch.setattr(event_module, "_time", lambda: 1_800_000_000.25)
    monkeypatch.setattr(canonical, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
    counted: list[tuple[object, ...]] = []
    monkeypatch.setattr(metrics, "counted", lambda *a: counted.append(a))
    rng = random.Random(61)

    async def go(policy: str) -> None:
        loop = asyncio.get_running_loop()
        missing = tmp_path / policy
        new_ch, old_ch = _Channel(), _Channel()
        new = WorkerAudit(missing / "a" / "audit.jsonl", new_ch, loop)  # type: ignore[arg-type]
        old = _OldWorkerAudit(missing / "b" / "audit.jsonl", old_ch, loop)
        for log in (new, old):
            log.on_failure = policy  # type: ignore[assignment]
        records: list[int] = []
        for name in ("record", "ahead"):
            method = getattr(new, name)
            monkeypatch.setattr(new, name, lambda ev, m=method: records.append(1) or m(ev))
        later_new, later_old = Later(), Later()
        for n in range(2500):
            if n in (400, 1600):  # writing works from 400, fails again from 1600
                for sub in ("a", "b"):
                    d = missing / sub
                    if n == 400:
                        d.mkdir(parents=True)
                    else:
                        (d / "audit.jsonl").rename(d / "kept.jsonl")
                        d.rename(missing / f"{sub}-gone")
            elif n == 2000:
                for sub in ("a", "b"):
                    (missing / sub).mkdir()
            (event, outcome, agent, service, mode, method, host, path, status, reason,
             via) = _values(rng)
            ahead = rng.random() < 0.4
            after = rng.random() < 0.3
            started = rng.choice([None, 99.5, 100.0, 99.987654])
            answers = []
            for log, later in ((new, later_new), (old, later_old)):
                try:
                    if ahead:
                        answers.append(canonical.ahead_record(
                            log, agent, service, mode, method, host, path, via))
                    else:
                        answers.append(canonical.decision_record(
                            log, event, agent, service, mode, method, host, path, status,
                            started, outcome, reason, via, later if after else None))
                        if after:
                            later.run(None)
                except (ValueError, TypeError) as e:
                    answers.append(type(e))
            assert answers[0] == answers[1], answers
            assert new.stats() == old.stats()
            assert bytes(new_ch.data) == bytes(old_ch.data), n
        new.close()
        old.close()
        for name in ("audit.jsonl", "kept.jsonl"):
            for a, b in ((missing / "a", missing / "b"), (missing / "a-gone", missing / "b-gone")):
                if (a / name).exists() or (b / name).exists():
                    assert (a / name).read_bytes() == (b / name).read_bytes()
        stats = new.stats()
        assert stats["written"] > 1000 and stats["failed"] > 300, stats
        assert bytes(new_ch.data).count(b'"op":"audit_state"') >= 3  # down, up, down, up
        assert len(records) < 1200  # twin: most are lines (the stages' values); ...
        assert records  # ... a few (hostile values) still records

    for policy in ("deny", "continue"):
        asyncio.run(go(policy))
    assert counted == []  # a worker counts nothing for /metrics itself (the supervisor does)


def test_a_workers_lines_are_a_single_processs_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same flows through a single process's AuditLog and a worker's WorkerAudit: the
    same audit.jsonl, byte for byte, and every line the worker wrote is sent, whole, in
    one ``audit`` frame each, in order."""
    clock = [1_800_000_000.0]
    monkeypatch.setattr(event_module, "_time", lambda: clock[0])
    monkeypatch.setattr(canonical, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
    # the single process's log counts for /metrics: not into this process's registry (the
    # hostile values, a lone surrogate among them, would stay in it for later tests)
    monkeypatch.setattr(metrics, "counted", lambda *a: None)
    rng = random.Random(71)

    async def go() -> None:
        ch = _Channel()
        worker = WorkerAudit(tmp_path / "w.jsonl", ch, asyncio.get_running_loop())  # type: ignore[arg-type]
        single = AuditLog(tmp_path / "s.jsonl")
        for _ in range(3000):
            clock[0] += rng.choice([0.0, 0.0004, 0.25, 1.0])
            (event, outcome, agent, service, mode, method, host, path, status, reason,
             via) = _values(rng)
            started = rng.choice([None, 99.5, 99.987654])
            ahead = rng.random() < 0.4
            for log in (single, worker):
                try:
                    if ahead:
                        canonical.ahead_record(log, agent, service, mode, method, host, path,
                                               via)
                    else:
                        canonical.decision_record(log, event, agent, service, mode, method,
                                                  host, path, status, started, outcome,
                                                  reason, via)
                except (ValueError, TypeError):
                    pass
        worker.close()
        single.close()
        lines = (tmp_path / "w.jsonl").read_bytes()
        assert lines == (tmp_path / "s.jsonl").read_bytes()
        assert bytes(ch.data) == b"".join(_HEADS[True](x) for x in lines.splitlines(True))
        assert lines.count(b"\n") > 2000

    asyncio.run(go())


def test_a_subclass_that_changes_record_is_handed_records(tmp_path: Path) -> None:
    """``takes_lines`` is declared per class, never inherited: a subclass of WorkerAudit
    (or of AuditLog) that does not say so gets records through ``record``/``ahead``."""
    seen: list[object] = []

    class Watching(WorkerAudit):
        def record(self, event: AnyEvent) -> bool:
            seen.append(event)
            return super().record(event)

        def ahead(self, event: AnyEvent) -> bool:
            seen.append(event)
            return super().ahead(event)

    assert WorkerAudit.takes_lines is True and AuditLog.takes_lines is True
    assert Watching.takes_lines is False

    async def go() -> None:
        log = Watching(tmp_path / "x.jsonl", _Channel(), asyncio.get_running_loop())  # type: ignore[arg-type]
        canonical.ahead_record(log, None, "hi", "host_inject", "GET", "h", "/", None)
        canonical.decision_record(log, "request", None, "hi", "host_inject", "GET", "h", "/",
                                  200, None, "injected", None)
        log.close()

    asyncio.run(go())
    assert len(seen) == 2  # the negative twin of the shortcut


# -- the supervisor's count of a worker's line (metrics.line_fields) vs the model ---------


def _model_fields(record: dict[str, Any]) -> tuple[object, ...] | None:
    try:
        ev = AuditEvent(**record)
    except Exception:  # noqa: BLE001 - refused: not counted
        return None
    return (ev.event, ev.service, ev.outcome, ev.reason, ev.duration_ms)


_ODD: list[object] = [None, "", "x", "\u00e9", 0, 1, True, 1.5, float("nan"), float("inf"),
                      [1], {"a": 1}, "2026-12-07T00:00:00.000Z"]
_TS: list[object] = ["2026-12-07T00:00:00.000Z", "2026-12-07T00:00:00.000Z\n",
                     "2026-12-07T00:00:00Z", "\u0662026-12-07T00:00:00.000Z",
                     "2026-12-07T00:00:00.0001Z", "x2026-12-07T00:00:00.000Z", None, 7]


def test_line_fields_count_what_the_model_counts() -> None:
    """Seeded records: the canonical lines (parsed, as the supervisor does), and the same
    mutated (a field of another type, NaN and infinities as json.loads gives them, an int
    duration, a timestamp off its pattern or in non-ASCII digits, a field missing or one
    too many, admin and approval events): whenever ``line_fields`` takes a record, the model
    takes it too and gives the same five values; what it leaves goes to the model."""
    rng = random.Random(83)
    taken = left = 0
    for _ in range(6000):
        (event, outcome, agent, service, mode, method, host, path, status, reason,
         via) = _values(rng)
        duration = rng.choice([None, 0.0, 1.5, 12.3456789, 999999999.9999, 2.675, 1e12])
        try:
            line = request_fields(event, outcome, agent, service, mode, method, host, path,
                                  status, duration, reason, via)[-1]
        except (ValueError, TypeError):
            continue
        if line is None:
            continue
        record = json.loads(line)
        if rng.random() < 0.5:
            what = rng.randrange(6)
            if what == 0:
                record[rng.choice([*SPEC_FIELDS, "via"])] = rng.choice(_ODD)
            elif what == 1:
                record["ts"] = rng.choice(_TS)
            elif what == 2:
                record.pop(rng.choice(SPEC_FIELDS), None)
            elif what == 3:
                record[rng.choice(["caller", "id", "decision", "x"])] = rng.choice(_ODD)
            elif what == 4:
                record["event"] = rng.choice(["admin", "approval", "request"])
            else:
                record["duration_ms"] = rng.choice([3, float("nan"), -0.0, 1e-9, 5e-4,
                                                    float("-inf"), 1.0005])
        fast = metrics.line_fields(record)
        want = _model_fields(record)
        if fast is None:
            left += 1
            continue
        taken += 1
        assert want is not None, record
        assert fast == want, record
        assert all(type(a) is type(b) for a, b in zip(fast, want, strict=True))
        d = fast[-1]
        assert d is None or (math.isfinite(d) and d == round(d, 3))
    assert taken > 1000 and left > 500  # twin: both the shortcut and the model reached


def test_observed_line_counts_as_observed_of_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(metrics, "counted", lambda *a: calls.append(a))
    good = json.loads(request_fields("request", "injected", None, "hi", "host_inject", "GET",
                                     "h", "/", 200, 1.23456, None)[-1])
    metrics.observed_line(good)  # the shortcut
    metrics.observed_line({**good, "duration_ms": 3})  # the model (an int duration: 3.0)
    metrics.observed_line({**good, "extra": 1})  # refused by the model: not counted
    assert calls == [("request", "hi", "injected", None, 1.235),
                     ("request", "hi", "injected", None, 3.0)]


def _old_intake(line: str) -> None:
    """The supervisor's count of a worker's line before (engine/workers.py ``_audit``)."""
    try:
        record = json.loads(line)
        if record.get("event") == "request":
            metrics.observed(AuditEvent(**record))
    except Exception:  # noqa: BLE001, S110
        pass


def test_the_supervisor_counts_a_workers_lines_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Supervisor._audit`` (a forward line not parsed; a request line counted by
    ``line_fields``) counts what the code it replaces counted, on seeded lines: the
    canonical ones, and the same with escapes (an event spelt ``req\\u0075est``), a field
    whose value is "request", whitespace, another JSON value, broken JSON. Every line still
    reaches the sinks (``on_audit_line``), whole."""
    from vaultproxy.engine.workers import Supervisor

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(metrics, "counted", lambda *a: calls.append(a))
    offered: list[tuple[str, int]] = []
    fake = types.SimpleNamespace(on_audit_line=lambda line, pid: offered.append((line, pid)))
    rng = random.Random(97)
    skipped = 0
    for n in range(5000):
        (event, outcome, agent, service, mode, method, host, path, status, reason,
         via) = _values(rng)
        event = rng.choice(["request", "forward", event])
        duration = rng.choice([None, 1.5, 12.3456789])
        try:
            line = request_fields(event, outcome, agent, service, mode, method, host, path,
                                  status, duration, reason, via)[-1]
        except (ValueError, TypeError):
            continue
        if line is None:
            continue
        what = rng.randrange(8)
        if what == 0:
            line = line.replace('"request"', '"req\\u0075est"')
        elif what == 1:
            line = line.replace('"forward"', '"req\\u0075est"')
        elif what == 2:
            line = line.replace('"path":', '"path":"request","x":', 1)
        elif what == 3:
            line = line.replace('"event":', '"event" : ', 1)
        elif what == 4:
            line = rng.choice(['["request"]\n', '"request"\n', '{"event":"request"\n', "{}\n",
                               '{"event":"forward"}\n'])
        calls.clear()
        _old_intake(line)
        want = list(calls)
        calls.clear()
        Supervisor._audit(fake, bytearray(line.encode()), n)  # type: ignore[arg-type]
        assert calls == want, line
        assert offered[-1] == (line, n)
        skipped += '"request"' not in line and "\\" not in line
    assert 300 < skipped < 4000  # twin: both the unparsed and the parsed lines reached


def test_forward_ahead_of_a_worker_is_the_code_it_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stages/ahead.py ``forward_ahead`` writes a worker's forward line itself (as it does an
    AuditLog's): on seeded flows, both policies, while writing fails and after it works,
    WorkerAudit through ``forward_ahead`` and the old class through ``record_forward`` (the
    code it replaces) write the same file, answer alike (AuditUnavailable under ``deny``),
    keep the same counters and send the supervisor the same bytes; and on the stages'
    values the worker's line is written without ``ahead_record``'s call (twin: the old
    path made a record and called ``ahead``)."""
    from mitmproxy.test import tflow

    from vaultproxy.config.models import Service
    from vaultproxy.core.pipeline import record_forward
    from vaultproxy.errors import AuditUnavailable
    from vaultproxy.stages import ahead as ahead_module
    from vaultproxy.stages.ahead import METHOD_TEXT, forward_ahead
    from vaultproxy.stages.flowrecord import record_of

    monkeypatch.setattr(event_module, "_time", lambda: 1_800_000_000.25)
    via_call = []
    real = ahead_module.ahead_record
    monkeypatch.setattr(ahead_module, "ahead_record",
                        lambda *a: via_call.append(1) or real(*a))
    svc = Service.model_validate({"name": "hi", "hosts": ["hi.example"], "mode": "host_inject",
                                  "auth": "bearer"})
    methods = [*METHOD_TEXT, b"get", b"PROPFIND", b"G\xffT", b""]
    rng = random.Random(67)

    def before(log: Any, flow: Any, rec: Any) -> None:
        d = rec.decision
        record_forward(log, log.on_failure, d.agent, d.service, flow.request.method,
                       d.target[0], rec.path)

    async def go(policy: str) -> None:
        loop = asyncio.get_running_loop()
        base = tmp_path / policy
        new_ch, old_ch = _Channel(), _Channel()
        new = WorkerAudit(base / "a" / "audit.jsonl", new_ch, loop)  # type: ignore[arg-type]
        old = _OldWorkerAudit(base / "b" / "audit.jsonl", old_ch, loop)
        calls = []
        for log in (new, old):
            log.on_failure = policy  # type: ignore[assignment]
        method = old.ahead
        monkeypatch.setattr(old, "ahead", lambda ev: calls.append(1) or method(ev))
        via_call.clear()
        for n in range(800):
            if n == 150:
                for sub in ("a", "b"):
                    (base / sub).mkdir(parents=True)
            flow = tflow.tflow()
            flow.request.data.method = rng.choice(methods)
            rec = record_of(flow)
            rec.path = rng.choice(["/p", "/q?x", None, "/caf\u00e9"])
            rec.decision = types.SimpleNamespace(
                agent=rng.choice([None, "bot", 'a"b']), service=svc,
                target=rng.choice([("hi.example", 443), ("h\u00e9", 1)]))
            answers = []
            for log, write in ((new, None), (old, before)):
                try:
                    if write is None:
                        forward_ahead(types.SimpleNamespace(audit=log), flow, rec)  # type: ignore[arg-type]
                    else:
                        write(log, flow, rec)
                    answers.append("ok")
                except AuditUnavailable:
                    answers.append("refused")
            assert answers[0] == answers[1], n
            assert new.stats() == old.stats()
            assert bytes(new_ch.data) == bytes(old_ch.data), n
        new.close()
        old.close()
        files = [(base / sub / "audit.jsonl").read_bytes() for sub in ("a", "b")]
        assert files[0] == files[1]
        assert new.stats()["failed"] > 100 and new.stats()["written"] > 500
        assert via_call == [] and len(calls) == 800  # twin: the old path made records

    for policy in ("deny", "continue"):
        asyncio.run(go(policy))
