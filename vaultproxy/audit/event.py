"""The audit record (SPEC §8): one frozen event, one fixed set of JSON fields.

``path`` never carries a query string or fragment: the model strips them on construction,
so a caller cannot leak a ``?key=...`` into ``audit.jsonl`` by accident. The other fields
are identifiers chosen by the caller (service, agent, reason code); the caller must pass the
path the *agent* sent (before any placeholder substitution), never a secret or a body.
"""

from __future__ import annotations

import json
import math
import operator
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The fields every record carries, in this order, ``null`` when unknown (SPEC §8).
SPEC_FIELDS: tuple[str, ...] = (
    "ts",
    "event",
    "agent",
    "service",
    "mode",
    "method",
    "host",
    "path",
    "status",
    "duration_ms",
    "outcome",
    "reason",
)

#: The event name whose records also carry ``caller`` (who used the admin API).
ADMIN_EVENT = "admin"

#: The event whose records also carry ``id``, ``decision`` and ``decided_by`` (SPEC §10).
APPROVAL_EVENT = "approval"
APPROVAL_FIELDS: tuple[str, ...] = ("id", "decision", "decided_by")

TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


def utc_timestamp(when: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2026-11-23T12:00:00.123Z``."""
    if when is None:
        return _now_timestamp()
    moment = when.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# The current second: its bounds as floats and its "YYYY-MM-DDTHH:MM:SS." (two audit records
# per request: strftime on every one of them was a measurable share of the Record stage).
_second: tuple[float, float, str] = (0.0, -1.0, "")
_time = time.time
_floor = math.floor


def _now_timestamp() -> str:
    """The clock's current millisecond as ``utc_timestamp`` writes it, from one float read
    (``time.time()``: an int ``divmod`` of ``time_ns`` was most of a record's timestamp).
    ``t - lo`` is exact (``lo`` is ``floor(t)``, within a factor 2 of ``t``) and below 1, so
    the millisecond is 0..999."""
    return _timestamp_at(_time())


def _timestamp_at(t: float) -> str:
    """``_now_timestamp`` of the clock value ``t`` (``forward_line`` and ``request_line``
    read the clock and the kept second themselves, and call this outside it)."""
    global _second
    lo, hi, prefix = _second
    if not lo <= t < hi:
        sec = math.floor(t)
        lo, hi = float(sec), float(sec + 1)
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second = (lo, hi, prefix)
    return prefix + _MILLIS_Z[_floor((t - lo) * 1000.0)]  # (floor: an int() call costs 2x)


# "000" .. "999" (an ``int.__format__`` with a spec was a visible share of a record).
_MILLIS: tuple[str, ...] = tuple(f"{ms:03d}" for ms in range(1000))
_MILLIS_Z: tuple[str, ...] = tuple(f"{ms}Z" for ms in _MILLIS)


def strip_query(path: str) -> str:
    """``path`` up to (not including) the first ``?`` or ``#``."""
    if "?" not in path and "#" not in path:
        return path  # the common case: nothing to strip
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path


class AuditEvent(BaseModel):
    """One audit record. Build it, hand it to ``AuditLog.record``; it cannot be changed."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    ts: str = Field(default_factory=utc_timestamp, pattern=TS_PATTERN)
    event: str = Field(min_length=1)
    agent: str | None = None
    service: str | None = None
    mode: str | None = None
    method: str | None = None
    host: str | None = None
    path: str | None = None
    status: int | None = None
    duration_ms: float | None = Field(default=None, allow_inf_nan=False)
    outcome: str = Field(min_length=1)
    reason: str | None = None
    caller: str | None = None
    via: str | None = None  # proxy | api | mcp; written only when set (SPEC §8)
    # approval events only (SPEC §8/§10): which approval, what was decided, by whom
    id: str | None = None
    decision: str | None = None
    decided_by: str | None = None

    @field_validator("path")
    @classmethod
    def _no_query(cls, value: str | None) -> str | None:
        return None if value is None else strip_query(value)

    @field_validator("duration_ms")
    @classmethod
    def _round_ms(cls, value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    @model_validator(mode="after")
    def _caller_only_for_admin(self) -> AuditEvent:
        if self.caller is not None and self.event != ADMIN_EVENT:
            raise ValueError(f"caller is only recorded for {ADMIN_EVENT!r} events")
        if self.event != APPROVAL_EVENT and any(
            getattr(self, name) is not None for name in APPROVAL_FIELDS
        ):
            raise ValueError(f"id/decision/decided_by are only for {APPROVAL_EVENT!r} events")
        return self

    def to_record(self) -> dict[str, Any]:
        """The JSON object: the SPEC §8 fields always, plus ``caller`` for admin events."""
        record: dict[str, Any] = {name: getattr(self, name) for name in SPEC_FIELDS}
        if self.event == ADMIN_EVENT:
            record["caller"] = self.caller
        if self.event == APPROVAL_EVENT:
            record.update({name: getattr(self, name) for name in APPROVAL_FIELDS})
        if self.via is not None:
            record["via"] = self.via
        return record

    def to_json_line(self) -> str:
        """One compact JSON object and a newline, as written to ``audit.jsonl``.

        Byte for byte ``json.dumps(self.to_record(), separators=(",", ":"), allow_nan=False)``
        plus ``"\\n"``, built from pre-encoded keys (this runs once per proxied request)."""
        values = self.__dict__
        parts = [key + _json_value(values[name]) for key, name in _KEYS]
        if self.event == ADMIN_EVENT:
            parts.append('"caller":' + _json_value(self.caller))
        if self.event == APPROVAL_EVENT:
            parts.extend(f'"{name}":' + _json_value(values[name]) for name in APPROVAL_FIELDS)
        if self.via is not None:
            parts.append('"via":' + _json_value(self.via))
        return "{" + ",".join(parts) + "}\n"


class RequestEvent(tuple[Any, ...]):
    """The record of one proxied request (``forward``, ``request``, ``tunnel_refused``: the
    canonical lines of audit/canonical.py), built twice per request from values the proxy's
    own stages made. Same fields, same rules and byte for byte the same line as
    ``AuditEvent`` (tests/unit/test_audit_event.py builds both from the same values), without
    pydantic's validation, which was most of a record's cost: the path loses its query and
    fragment, the duration is rounded to 3 decimals and must be finite, the timestamp is the
    model's default, and the event is neither ``admin`` nor ``approval`` (whose extra fields
    this record never carries).

    A tuple (its fields read by name), so it cannot be changed once built: its JSON line is
    made with it (``request_event``), from the values as they arrive, whenever each is of
    the plain type the stages pass (str or None; an int status; a str path); any other
    value leaves the line to ``to_json_line``, which encodes it as ``json.dumps`` would (or
    raises as it would, for ``AuditLog.record`` to count)."""

    __slots__ = ()

    if TYPE_CHECKING:
        ts: str
        event: str
        agent: str | None
        service: str | None
        mode: str | None
        method: str | None
        host: str | None
        path: str | None
        status: int | None
        duration_ms: float | None
        outcome: str
        reason: str | None
        via: str | None

    def __new__(
        cls, event: str, outcome: str, agent: str | None, service: str | None,
        mode: str | None, method: str | None, host: str | None, path: str | None,
        status: int | None, duration_ms: float | None, reason: str | None,
        via: str | None = None,
    ) -> RequestEvent:
        return request_event(event, outcome, agent, service, mode, method, host, path, status,
                             duration_ms, reason, via)

    def to_record(self) -> dict[str, Any]:
        """The JSON object, as ``AuditEvent.to_record``."""
        record: dict[str, Any] = {name: self[i] for i, name in enumerate(SPEC_FIELDS)}
        if self[_VIA] is not None:
            record["via"] = self[_VIA]
        return record

    def to_json_line(self) -> str:
        """One compact JSON line, byte for byte ``AuditEvent.to_json_line``: the one made
        with the record, else (a value of another type) encoded now as ``json.dumps``
        would (tests/unit/test_speed_audit.py compares both with it on hostile values)."""
        line: str | None = self[_LINE]
        if line is not None:
            return line
        return "{" + ",".join(
            key + _json_value(self[i]) for i, key in enumerate(_SPEC_KEYS)
        ) + ("" if self[_VIA] is None else ',"via":' + _json_value(self[_VIA])) + "}\n"


# Each field read by name (the C getter namedtuple uses; a property of itemgetter elsewhere).
try:
    from _collections import _tuplegetter as _getter  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - another Python
    def _getter(index: int, doc: str | None) -> Any:
        return property(operator.itemgetter(index), doc=doc)

for _i, _name in enumerate((*SPEC_FIELDS, "via")):
    setattr(RequestEvent, _name, _getter(_i, None))
_VIA = len(SPEC_FIELDS)
_LINE = _VIA + 1
LINE_AT = _LINE  # where a record's line (or None) is, in it and in ``request_fields``
DURATION_AT = SPEC_FIELDS.index("duration_ms")
_tuple_new = tuple.__new__


def request_event(
    event: str, outcome: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, status: int | None,
    duration_ms: float | None, reason: str | None, via: str | None = None,
) -> RequestEvent:
    """A ``RequestEvent`` and its line: ``request_fields`` made a record."""
    return _tuple_new(RequestEvent, request_fields(  # type: ignore[no-any-return]
        event, outcome, agent, service, mode, method, host, path, status, duration_ms, reason,
        via,
    ))


def request_fields(
    event: str, outcome: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, status: int | None,
    duration_ms: float | None, reason: str | None, via: str | None = None,
) -> tuple[Any, ...]:
    """The fields of a ``RequestEvent`` and its line (``LINE_AT``: None when it is left to
    ``to_json_line``), as a plain tuple: audit/canonical.py makes the record of it only for
    a sink that takes records (an ``AuditLog`` itself is handed the line; no record is made).
    By position: no class call, no keywords. The fast parts, each for the values it handles
    exactly:

    - a duration in [0, 1e9) ms: ``f"{d:.3f}"`` is the digits ``round(d, 3)`` rounds to (the same
      correctly rounded decimal conversion), so ``float`` of it is ``round(d, 3)`` and, at
      most 12 significant digits, its text without trailing zeros is that float's ``repr``;
      any other duration is rounded and written by ``round`` and ``repr``;
    - the runs of fields before ``path`` and after ``duration_ms`` from ``_FRAGMENTS`` (str
      and None values only), the path by ``json``'s own string encoder, the status by
      text of an exact int (``int.__repr__``, what ``json.dumps`` writes for an int);
    - the timestamp by ``_now_timestamp``."""
    if not event or not outcome or event == "admin" or event == "approval":  # ADMIN/APPROVAL
        raise ValueError("a request record needs an event (not admin/approval) and outcome")
    if duration_ms is None:
        duration = "null"
    else:
        if type(duration_ms) is not float:
            duration_ms = float(duration_ms)  # as the model's float field: 3 is 3.0
        if 0.0 <= duration_ms < 1e9:
            fixed = f"{duration_ms:.3f}"
            duration_ms = float(fixed)
            duration = fixed.rstrip("0")
            if duration[-1] == ".":
                duration += "0"
        else:
            if not math.isfinite(duration_ms):
                raise ValueError("duration_ms must be finite")
            duration_ms = round(duration_ms, 3)
            duration = float.__repr__(duration_ms)
    if type(path) is str:
        if "?" in path or "#" in path:  # strip_query's own first test, inline
            path = strip_query(path)
    elif path is not None:
        path = strip_query(path)  # (another type fails there, as it did)
    ts = _now_timestamp()
    line: str | None = None
    if (
        type(event) is str and type(outcome) is str
        and (agent is None or type(agent) is str) and (service is None or type(service) is str)
        and (mode is None or type(mode) is str) and (method is None or type(method) is str)
        and (host is None or type(host) is str) and (reason is None or type(reason) is str)
        and (status is None or type(status) is int) and (via is None or type(via) is str)
        and (path is None or type(path) is str)
    ):
        kept = _FRAGMENTS.get((event, agent, service, mode, method, host, outcome, reason))
        if kept is None:
            kept = _fragments((event, agent, service, mode, method, host, outcome, reason))
        head, tail = kept
        path_text = "null" if path is None else _encode_str(path)
        # an exact int's f-string text is int.__repr__'s (PyObject_Format -> str -> repr)
        status_text = "null" if status is None else f"{status}"
        if via is None:
            line = (f'{{"ts":"{ts}",{head},"path":{path_text},"status":{status_text},'
                    f'"duration_ms":{duration},{tail}}}\n')
        else:
            line = (f'{{"ts":"{ts}",{head},"path":{path_text},"status":{status_text},'
                    f'"duration_ms":{duration},{tail},"via":{_encode_str(via)}}}\n')
    return (ts, event, agent, service, mode, method, host, path, status, duration_ms, outcome,
            reason, via, line)


# -- the two lines of a proxied request, for an ``AuditLog`` itself (audit/canonical.py) -------
#
# ``forward_line`` and ``request_line`` make the line ``request_fields`` makes of the same
# values, and nothing else (no fields tuple, no record): the texts around the path and the
# duration are kept by the values of every other field (``_LINES``, ``_FORWARDS``), so a
# line is the clock's text, those kept texts, the path's encoding and the duration's text.
# Each takes only exact str/None values (an exact int status, an exact float duration in
# [0, 1e9) ms, or None) and returns None for anything else, which the caller leaves to
# ``request_fields`` (the same line, or the same exception). A key of exact str, int and
# None values equals only the same texts, so a kept text is the one those values encode to;
# the event and outcome were checked (non-empty, not admin/approval) when it was kept.
# tests/unit/test_speed_audit.py compares both with request_fields on seeded values.

_LINES: dict[tuple[object, ...], tuple[str, str, str]] = {}
_FORWARDS: dict[tuple[object, ...], tuple[str, str, str]] = {}  # (+ the request head)
_MAX_LINES = 1024  # each; all forgotten at once past that (hosts may be the agent's choice)
_NONE = type(None)


def _texts(
    event: str, outcome: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, status: int | None, reason: str | None,
    via: str | None,
) -> tuple[str, str, str]:
    head = '",' + ",".join(
        key + _json_value(value) for key, value in zip(
            _HEAD_KEYS, (event, agent, service, mode, method, host), strict=True)
    ) + ',"path":'
    mid = ',"status":' + _json_value(status) + ',"duration_ms":'
    tail = (',"outcome":' + _encode_str(outcome) + ',"reason":' + _json_value(reason)
            + ("" if via is None else ',"via":' + _encode_str(via)) + "}\n")
    return head, mid, tail


def forward_line(
    agent: str | None, service: str | None, mode: str | None, method: str | None,
    host: str | None, path: str | None, via: str | None,
) -> str | None:
    """The line of ``request_fields("forward", "forwarding", agent, service, mode, method,
    host, path, None, None, None, via)``, or None: those values are left to it."""
    if (
        (type(agent) is str or agent is None) and (type(service) is str or service is None)
        and (type(mode) is str or mode is None) and (type(method) is str or method is None)
        and (type(host) is str or host is None) and (via is None or type(via) is str)
    ):
        key = (agent, service, mode, method, host, via)
        kept = _FORWARDS.get(key)
        if kept is None:
            kept = _forward_texts(agent, service, mode, method, host, via, key)
        # (the path's text and the time as in request_line, repeated on purpose: a shared
        # helper costs a call per line, +0.35k instructions each; forward_line made by
        # request_line +2.0k: bench/auditpath.py --callgrind, session 14)
        if type(path) is str:
            if "?" in path or "#" in path:
                path = strip_query(path)
            path_text = _encode_str(path)
        elif path is None:
            path_text = "null"
        else:
            return None
        t = _time()  # _now_timestamp, inline while the second is the kept one
        lo, hi, prefix = _second
        if lo <= t < hi:
            return (f'{{"ts":"{prefix}{_MILLIS_Z[_floor((t - lo) * 1000.0)]}{kept[0]}'
                    f'{path_text}{kept[1]}')
        return f'{{"ts":"{_timestamp_at(t)}{kept[0]}{path_text}{kept[1]}'
    return None


def _forward_texts(
    agent: str | None, service: str | None, mode: str | None, method: str | None,
    host: str | None, via: str | None, key: tuple[object, ...],
) -> tuple[str, str, str]:
    """The forward line's texts around its path (``_texts`` of ``forward``), and the head
    of the ``request`` line of the same values (``forward_made``): kept in ``_FORWARDS``."""
    texts = _texts("forward", "forwarding", agent, service, mode, method, host, None, None,
                   via)
    kept = (texts[0], texts[1] + "null" + texts[2],
            _texts("request", "x", agent, service, mode, method, host, None, None, via)[0])
    if len(kept[0]) + len(kept[1]) + len(kept[2]) <= _MAX_STORED_CHARS:
        if len(_FORWARDS) >= _MAX_LINES:
            _FORWARDS.clear()
        _FORWARDS[key] = kept
    return kept


def forward_made(
    agent: str | None, service: str | None, mode: str | None, method: str | None,
    host: str | None, path: str | None, decision: object, raw: object, log: object,
) -> tuple[Any, ...] | None:
    """``forward_line(agent, service, mode, method, host, path, None)`` (the same line, or
    None: those values are left to it), with what the same flow's ``request`` line reuses
    of it: ``(line, request_head, path_text, service, decision, raw, path, log)``. The
    ``request`` line of ``decision_record(log, "request", agent, service, mode, method,
    host, path, ...)`` is the clock's text, ``request_head`` (the encoded fields event ..
    host, ``"request"`` the event), ``path_text`` (the path's encoding, its query
    stripped), then the status, duration, outcome and reason (``ahead_line``). stages/
    record.py uses it only for the very ``decision``, raw method bytes and ``path`` objects
    (and the very ``log``) it was made of: values that give the same texts."""
    if (
        (type(agent) is str or agent is None) and (type(service) is str or service is None)
        and (type(mode) is str or mode is None) and (type(method) is str or method is None)
        and (type(host) is str or host is None)
    ):
        key = (agent, service, mode, method, host, None)
        kept = _FORWARDS.get(key)
        if kept is None:
            kept = _forward_texts(agent, service, mode, method, host, None, key)
        # (as forward_line, repeated on purpose: see there)
        if type(path) is str:
            path_text = _encode_str(strip_query(path) if "?" in path or "#" in path else path)
        elif path is None:
            path_text = "null"
        else:
            return None
        t = _time()
        lo, hi, prefix = _second
        if lo <= t < hi:
            line = (f'{{"ts":"{prefix}{_MILLIS_Z[_floor((t - lo) * 1000.0)]}{kept[0]}'
                    f'{path_text}{kept[1]}')
        else:
            line = f'{{"ts":"{_timestamp_at(t)}{kept[0]}{path_text}{kept[1]}'
        return line, kept[2], path_text, service, decision, raw, path, log
    return None


def ahead_line(taken: tuple[Any, ...]) -> tuple[str, float | None]:
    """``taken_line``'s line and rounded duration of the ``request`` record whose event ..
    path are those of ``forward_made``'s answer (``taken[0]``), of what audit/canonical.py
    ``ahead_request`` took: ``(made, status, duration_ms, outcome, reason, t)``, values it
    checked as ``request_taken`` does (an exact int status or None, a str or None reason,
    a non-empty str outcome, a float duration in [0, 1e9) or None; ``via`` None)."""
    made, status, duration_ms, outcome, reason, t = taken
    if duration_ms is None:
        duration = "null"
    else:
        fixed = f"{duration_ms:.3f}"  # (as request_fields: see there)
        duration_ms = float(fixed)
        duration = fixed.rstrip("0")
        if duration[-1] == ".":
            duration += "0"
    tail = _TAILS.get(outcome if reason is None else (outcome, reason))
    if tail is None:
        tail = _tail(outcome, reason)
    status_text = "null" if status is None else f"{status}"  # (int.__repr__: see above)
    lo, hi, prefix = _second  # _now_timestamp, inline while the second is the kept one
    if lo <= t < hi:
        return (f'{{"ts":"{prefix}{_MILLIS_Z[_floor((t - lo) * 1000.0)]}{made[1]}{made[2]}'
                f',"status":{status_text},"duration_ms":{duration}{tail}'), duration_ms
    return (f'{{"ts":"{_timestamp_at(t)}{made[1]}{made[2]},"status":{status_text},'
            f'"duration_ms":{duration}{tail}'), duration_ms


#: ``_texts``' tail (via None) by the outcome (reason None) or the (outcome, reason) pair
_TAILS: dict[object, str] = {}


def _tail(outcome: str, reason: str | None) -> str:
    tail = _texts("request", outcome, None, None, None, None, None, None, reason, None)[2]
    if len(tail) <= _MAX_STORED_CHARS:
        if len(_TAILS) >= _MAX_LINES:
            _TAILS.clear()
        _TAILS[outcome if reason is None else (outcome, reason)] = tail
    return tail


def request_taken(
    event: str, outcome: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, status: int | None,
    duration_ms: float | None, reason: str | None, via: str | None,
) -> tuple[Any, ...] | None:
    """The twelve values and the clock now (``_time()``: the line's ``ts``) when
    ``request_line`` makes a line of these values (``taken_line`` of this tuple is that
    line), else None: they are left to ``request_fields``. seam/aftersend.py makes the line
    of what the ``response`` hook took after the response's send: the same bytes."""
    if (
        type(event) is str and type(outcome) is str
        and (type(agent) is str or agent is None) and (type(service) is str or service is None)
        and (type(mode) is str or mode is None) and (type(method) is str or method is None)
        and (type(host) is str or host is None) and (reason is None or type(reason) is str)
        and (type(status) is int or status is None) and (via is None or type(via) is str)
        and (type(path) is str or path is None)
        and (duration_ms is None or (type(duration_ms) is float and 0.0 <= duration_ms < 1e9))
        and event and outcome and event != "admin" and event != "approval"  # (as above)
    ):
        return (event, outcome, agent, service, mode, method, host, path, status, duration_ms,
                reason, via, _time())
    return None


def request_line(
    event: str, outcome: str, agent: str | None, service: str | None, mode: str | None,
    method: str | None, host: str | None, path: str | None, status: int | None,
    duration_ms: float | None, reason: str | None, via: str | None,
) -> tuple[str, float | None] | None:
    """The line of ``request_fields`` of the same values and the duration as it rounds it
    (``DURATION_AT``: what the metrics count), or None: those values are left to it."""
    taken = request_taken(event, outcome, agent, service, mode, method, host, path, status,
                          duration_ms, reason, via)
    return None if taken is None else taken_line(taken)


def taken_line(taken: tuple[Any, ...]) -> tuple[str, float | None]:
    """``request_line``'s line and rounded duration of what ``request_taken`` took (values
    it checked, and the clock of the ``ts``)."""
    event, outcome, agent, service, mode, method, host, path, status, duration_ms, reason, \
        via, t = taken
    if duration_ms is None:
        duration = "null"
    else:
        fixed = f"{duration_ms:.3f}"  # (as request_fields: see there)
        duration_ms = float(fixed)
        duration = fixed.rstrip("0")
        if duration[-1] == ".":
            duration += "0"
    if path is None:
        path_text = "null"
    else:
        if "?" in path or "#" in path:
            path = strip_query(path)
        path_text = _encode_str(path)
    key = (event, outcome, agent, service, mode, method, host, status, reason, via)
    kept = _LINES.get(key)
    if kept is None:
        kept = _texts(event, outcome, agent, service, mode, method, host, status, reason, via)
        if len(kept[0]) + len(kept[2]) <= _MAX_STORED_CHARS:
            if len(_LINES) >= _MAX_LINES:
                _LINES.clear()
            _LINES[key] = kept
    lo, hi, prefix = _second  # _now_timestamp, inline while the second is the kept one
    if lo <= t < hi:
        return (f'{{"ts":"{prefix}{_MILLIS_Z[_floor((t - lo) * 1000.0)]}{kept[0]}'
                f'{path_text}{kept[1]}{duration}{kept[2]}'), duration_ms
    return (f'{{"ts":"{_timestamp_at(t)}{kept[0]}{path_text}{kept[1]}{duration}'
            f'{kept[2]}'), duration_ms


#: Either kind of record: what the audit log, its sinks and the metrics accept.
AnyEvent = AuditEvent | RequestEvent


_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii)
_fallback = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_KEYS = tuple((_encode_str(name) + ":", name) for name in SPEC_FIELDS)
_SPEC_KEYS = tuple(key for key, _name in _KEYS)


_HEAD_KEYS = tuple(_encode_str(name) + ":" for name in SPEC_FIELDS[1:7])
_TAIL_KEYS = tuple(_encode_str(name) + ":" for name in SPEC_FIELDS[10:12])

# The encoded runs of fields before ``path`` (event .. host) and after ``duration_ms``
# (outcome, reason) by the values of those eight fields (``request_event``): only tuples of
# str and None are stored (a str key equals only that str: the same text), at most
# _MAX_FRAGMENTS (all forgotten at once past that: hosts of refused tunnels are the agent's
# choice).
_FRAGMENTS: dict[tuple[object, ...], tuple[str, str]] = {}
_MAX_FRAGMENTS = 1024
_MAX_STORED_CHARS = 512  # bounded: ~1 MB at most (keys and texts)


def _fragments(values: tuple[object, ...]) -> tuple[str, str]:
    """The two runs, ``"name":value`` pairs joined by commas, each value as ``_json_value``
    encodes it; kept in ``_FRAGMENTS`` when every value is a str or None and the text is
    short."""
    head = ",".join(key + _json_value(value)
                    for key, value in zip(_HEAD_KEYS, values[:6], strict=True))
    tail = ",".join(key + _json_value(value)
                    for key, value in zip(_TAIL_KEYS, values[6:], strict=True))
    if len(head) + len(tail) <= _MAX_STORED_CHARS and all(
        value is None or type(value) is str for value in values
    ):
        if len(_FRAGMENTS) >= _MAX_FRAGMENTS:
            _FRAGMENTS.clear()
        _FRAGMENTS[values] = (head, tail)
    return head, tail


def _json_value(value: object) -> str:
    """``json.dumps(value)`` for one field value (the common types without the encoder)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _encode_str(value)  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    if kind is float and math.isfinite(value):  # type: ignore[arg-type]
        return float.__repr__(value)  # type: ignore[arg-type]
    return _fallback.encode(value)  # anything else (and NaN: ValueError) as json.dumps
