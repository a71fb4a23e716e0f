"""The canonical decision line: one audit record per decided request or refused tunnel,
built and written here and nowhere else (SPEC §8; smokescreen's CANONICAL-PROXY-DECISION).

The proxy's Record stage and ``POST /proxy`` both call ``record_decision``; it fills the
fixed SPEC §8 fields, counts the event for ``/metrics`` (in the process that serves them:
a ``--workers`` process's lines are counted by the supervisor) and queues it on the audit
log."""

from __future__ import annotations

import time
from typing import Any, Protocol

from vaultproxy.audit import event as _event
from vaultproxy.audit import metrics
from vaultproxy.audit.event import (
    DURATION_AT,
    LINE_AT,
    AnyEvent,
    AuditEvent,
    RequestEvent,
    forward_line,
    request_fields,
    request_line,
    request_taken,
)
from vaultproxy.audit.log import AuditLog

_tuple_new = tuple.__new__


class Later(Protocol):
    """What ``decision_record`` leaves a record's write in: seam/aftersend.py ``Later`` (named
    here by its shape, so the audit package imports nothing of the seam above it)."""

    taken: tuple[Any, ...] | None
    ahead: tuple[Any, ...] | None
    line: str | None
    log: Any
    event: Any
    sink: Any

    def run(self, flow: Any) -> None: ...


class Sink(Protocol):
    def record(self, event: AnyEvent) -> object: ...


def record_decision(
    sink: Sink,
    *,
    event: str,
    agent: str | None,
    service: str | None,
    mode: str | None,
    method: str | None,
    host: str | None,
    path: str | None,
    status: int | None,
    started: float | None,
    outcome: str,
    reason: str | None,
    via: str | None = None,
) -> None:
    """``started``: ``time.monotonic()`` when the request began (None: no duration)."""
    decision_record(sink, event, agent, service, mode, method, host, path, status, started,
                    outcome, reason, via)


def decision_record(
    sink: Sink, event: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, status: int | None,
    started: float | None, outcome: str, reason: str | None, via: str | None = None,
    later: Later | None = None,
) -> None:
    """``record_decision`` by position (the Record stage's call, once per request: twelve
    keywords cost ~0.9k instructions to match). A log whose class ``takes_lines`` (an
    ``AuditLog``, a ``--workers`` process's ``WorkerAudit``: audit/log.py) is handed the line
    alone, through its ``_write`` (what its ``record`` would call); any other sink the record.
    ``later``: the flow's ``Later`` (seam/aftersend.py), which the lean layer runs right after
    the response's send: for such a log and values ``request_line`` takes, the values, the
    duration and the clock are taken now (``request_taken``) and the line, its metrics and
    its write are left to ``later`` (``taken_line`` of them there: the bytes
    ``request_line`` makes here); otherwise the record is made now, exactly as without it,
    and its write left to ``later`` (the line and the log for such a log, else the record
    and the sink)."""
    duration = (time.monotonic() - started) * 1000 if started is not None else None
    if later is not None and (
        later.taken is not None or later.ahead is not None or later.line is not None
        or later.event is not None
    ):
        later.run(None)  # (never: one record per flow; nothing overwritten if it were)
    kind = type(sink)
    lines = kind is AuditLog or getattr(kind, "takes_lines", False) is True
    log: AuditLog = sink  # type: ignore[assignment]  # (used only when ``lines``)
    if lines:
        if later is not None:
            # the values and the clock now, when request_line makes their line: the line,
            # its metrics and its write after the send (seam/aftersend.py), the same bytes
            taken = request_taken(event, outcome, agent, service, mode, method, host, path,
                                  status, duration, reason, via)
            if taken is not None:
                later.log = log
                later.taken = taken
                return
        # the line alone, when request_line takes these values (else request_fields below)
        made = request_line(event, outcome, agent, service, mode, method, host, path, status,
                            duration, reason, via)
        if made is not None:
            if log.counts_metrics:  # (as below: the duration as the record rounds it)
                metrics.counted(event, service, outcome, reason, made[1])
            if later is None:
                log._write(made[0], True)
            else:  # (the same call, after the send)
                later.log = log
                later.line = made[0]
            return
    fields = request_fields(  # by position
        event, outcome, agent, service, mode, method, host, path, status, duration, reason,
        via,
    )
    if getattr(sink, "counts_metrics", True):
        # metrics.observed(record), from the values the record is made of (its own fields;
        # the duration as the record rounded it): no field read back by name
        metrics.counted(event, service, outcome, reason, fields[DURATION_AT])
    line = fields[LINE_AT]
    if line is not None and lines:
        if later is None:
            log._write(line, True)  # AuditLog.record(record) without making the record
        else:
            later.log = log
            later.line = line
    elif later is None:
        sink.record(_tuple_new(RequestEvent, fields))
    else:
        later.sink = sink
        later.event = _tuple_new(RequestEvent, fields)


def ahead_request(
    sink: Sink, made: tuple[Any, ...], status: int | None, started: float | None,
    outcome: str, reason: str | None, later: Later,
) -> bool:
    """``decision_record(sink, "request", agent, service, mode, method, host, path, status,
    started, outcome, reason, None, later)`` for the values ``made`` (audit/event.py
    ``forward_made``: the flow's ``forward`` line) was made of, when ``sink`` is the very log
    that line went to and ``request_taken`` would take the rest (an exact int status or None,
    a str or None reason, a non-empty str outcome, a duration in [0, 1e9) ms or None): the
    rest and the clock are taken now (``later.ahead``) and ``later`` makes the line of them
    (``ahead_line``: ``taken_line``'s bytes) after the send. True when taken; False: the
    caller hands the values to ``decision_record``, which makes everything again."""
    if sink is not made[7]:
        return False
    duration = (time.monotonic() - started) * 1000 if started is not None else None
    if (
        (type(status) is int or status is None) and (reason is None or type(reason) is str)
        and type(outcome) is str and outcome
        and (duration is None or (type(duration) is float and 0.0 <= duration < 1e9))
    ):
        if (later.taken is not None or later.ahead is not None or later.line is not None
                or later.event is not None):
            later.run(None)  # (never: as decision_record)
        later.log = sink
        later.ahead = (made, status, duration, outcome, reason, _event._time())
        return True
    return False


#: The event of the record written *before* a request that carries a credential leaves.
FORWARD_EVENT = "forward"


def record_ahead(
    sink: AheadSink,
    *,
    agent: str | None,
    service: str | None,
    mode: str | None,
    method: str | None,
    host: str | None,
    path: str | None,
    via: str | None = None,
) -> bool:
    """Write the ``forward`` record of a request about to leave with a credential (status
    ``null``; its ``request`` record follows with the status). False when it could not be
    written: under ``[audit] on_failure = "deny"`` the caller must then refuse the request
    (``AuditUnavailable``), so that every use of a credential is in the file before it
    happens, even if the process is killed the next instant."""
    return ahead_record(sink, agent, service, mode, method, host, path, via)


def ahead_record(
    sink: AheadSink, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, via: str | None = None,
) -> bool:
    """``record_ahead`` by position (stages/ahead.py's call, once per injected request
    whose line forward_ahead does not make itself: for an ``AuditLog`` and values
    ``forward_line`` takes, forward_ahead makes and writes that line, exactly as here)."""
    kind = type(sink)
    lines = kind is AuditLog or getattr(kind, "takes_lines", False) is True
    log: AuditLog = sink  # type: ignore[assignment]  # (used only when ``lines``)
    if lines:
        # the line alone, when forward_line takes these values (else request_fields below)
        line = forward_line(agent, service, mode, method, host, path, via)
        if line is not None:
            return log._write(line, log.on_failure == "continue")
    fields = request_fields(  # by position
        FORWARD_EVENT, "forwarding", agent, service, mode, method, host, path, None, None,
        None, via,
    )
    line = fields[LINE_AT]
    if line is not None and lines:
        # AuditLog.ahead(record) without making the record
        return log._write(line, log.on_failure == "continue")
    return sink.ahead(_tuple_new(RequestEvent, fields))  # type: ignore[arg-type]


class AheadSink(Protocol):
    def ahead(self, event: AnyEvent) -> bool: ...


SYNC_EVENT = "sync"


def record_sync(sink: Sink, *, source: str, host: str | None, ok: bool, reason: str) -> None:
    """One record per sync of an external source (SPEC §9): ``event = "sync"``, the
    source's host, ``outcome`` ok/failed, and a reason naming the source, counts or the
    failure (never a value: source errors are built to hold none)."""
    outcome = "ok" if ok else "failed"
    metrics.SOURCE_SYNCS.labels(source, outcome).inc()
    sink.record(metrics.observed(AuditEvent(event=SYNC_EVENT, host=host, outcome=outcome,
                                            reason=reason)))


APPROVAL_EVENT = "approval"
HONEYTOKEN_EVENT = "honeytoken"


def record_approval(
    sink: Sink, *, approval_id: str, decision: str, decided_by: str | None,
    agent: str | None, service: str, method: str, host: str, path: str,
) -> None:
    """One ``approval`` record (SPEC §8/§10): ``decision`` is ``requested`` when a request is
    held, then ``approve``, ``deny`` or ``timeout``; ``decided_by`` cli/api/dashboard/timeout."""
    sink.record(metrics.observed(AuditEvent(
        event=APPROVAL_EVENT, agent=agent, service=service, method=method, host=host,
        path=path, outcome=decision, reason=None, id=approval_id, decision=decision,
        decided_by=decided_by,
    )))


def record_honeytoken(
    sink: Sink, *, name: str, agent: str | None, service: str | None, method: str | None,
    host: str | None, path: str | None, surface: str, via: str,
) -> None:
    """One ``honeytoken`` record: a decoy credential was used (the request was refused).
    ``reason`` names the honeytoken, the surface it was found in and the entry (never the
    value, which is in the operator's config anyway)."""
    sink.record(metrics.observed(AuditEvent(
        event=HONEYTOKEN_EVENT, agent=agent, service=service, method=method, host=host,
        path=path, status=403, outcome="blocked",
        reason=f"honeytoken {name} in {surface} (via {via})",
    )))
