"""The audit record (SPEC §8): one frozen event, one fixed set of JSON fields.

``path`` never carries a query string or fragment: the model strips them on construction,
so a caller cannot leak a ``?key=...`` into ``audit.jsonl`` by accident. The other fields
are identifiers chosen by the caller (service, agent, reason code); the caller must pass the
path the *agent* sent (before any placeholder substitution), never a secret or a body.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

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


# The current second's "YYYY-MM-DDTHH:MM:SS." (one audit record per request: strftime on
# every one of them was a measurable share of the Record stage).
_second: tuple[int, str] = (-1, "")


def _now_timestamp() -> str:
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
    return f"{cached[1]}{_MILLIS[ns // 1_000_000]}Z"


# "000" .. "999" (an ``int.__format__`` with a spec was a visible share of a record).
_MILLIS: tuple[str, ...] = tuple(f"{ms:03d}" for ms in range(1000))


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


class RequestEvent:
    """The record of one proxied request (``forward``, ``request``, ``tunnel_refused``: the
    canonical lines of audit/canonical.py), built twice per request from values the proxy's
    own stages made. Same fields, same rules and byte for byte the same line as
    ``AuditEvent`` (tests/unit/test_audit_event.py builds both from the same values), without
    pydantic's validation, which was most of a record's cost: the path loses its query and
    fragment, the duration is rounded to 3 decimals and must be finite, the timestamp is the
    model's default, and the event is neither ``admin`` nor ``approval`` (whose extra fields
    this record never carries)."""

    __slots__ = (*SPEC_FIELDS, "via")

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

    def __init__(
        self, event: str, outcome: str, agent: str | None, service: str | None,
        mode: str | None, method: str | None, host: str | None, path: str | None,
        status: int | None, duration_ms: float | None, reason: str | None,
        via: str | None = None,
    ) -> None:
        """audit/canonical.py passes every argument by position: a class called with
        keywords gets them as a new dict (two records per request)."""
        if not event or not outcome or event in (ADMIN_EVENT, APPROVAL_EVENT):
            raise ValueError("a request record needs an event (not admin/approval) and outcome")
        if duration_ms is not None:
            if type(duration_ms) is not float:
                duration_ms = float(duration_ms)  # as the model's float field: 3 is 3.0
            if not math.isfinite(duration_ms):
                raise ValueError("duration_ms must be finite")
            duration_ms = round(duration_ms, 3)
        self.ts = _now_timestamp()
        self.event = event
        self.outcome = outcome
        self.reason = reason
        self.via = via
        self.agent = agent
        self.service = service
        self.mode = mode
        self.method = method
        self.host = host
        self.status = status
        self.duration_ms = duration_ms
        # strip_query's own first test, inline (a str path; anything else takes the call)
        self.path = path if (type(path) is str and "?" not in path and "#" not in path) \
            or path is None else strip_query(path)

    def to_record(self) -> dict[str, Any]:
        """The JSON object, as ``AuditEvent.to_record``."""
        record: dict[str, Any] = {name: getattr(self, name) for name in SPEC_FIELDS}
        if self.via is not None:
            record["via"] = self.via
        return record

    def to_json_line(self) -> str:
        """One compact JSON line, byte for byte ``AuditEvent.to_json_line``.

        The fields before ``path`` and the two after ``duration_ms`` repeat from request to
        request (a service's agents, hosts, outcomes): their encoded text is kept by value
        (``_fragment``), for str and None values only; the timestamp is ASCII digits and
        punctuation (no escaping); the path, status and duration are encoded each time, any
        value not a str, int or finite float as ``_json_value`` would
        (tests/unit/test_speed_audit.py compares it with ``json.dumps`` on hostile values)."""
        event, agent, service = self.event, self.agent, self.service
        mode, method, host = self.mode, self.method, self.host
        try:
            head = _FRAGMENTS.get((event, agent, service, mode, method, host))
        except TypeError:  # an unhashable value: encoded below as json.dumps would
            head = None
        if head is None or not (
            type(event) is str and (agent is None or type(agent) is str)
            and (service is None or type(service) is str) and (mode is None or type(mode) is str)
            and (method is None or type(method) is str) and (host is None or type(host) is str)
        ):
            head = _fragment(_HEAD_KEYS, (event, agent, service, mode, method, host))
        outcome, reason = self.outcome, self.reason
        try:
            tail = _FRAGMENTS.get((outcome, reason))
        except TypeError:
            tail = None
        if tail is None or not (
            type(outcome) is str and (reason is None or type(reason) is str)
        ):
            tail = _fragment(_TAIL_KEYS, (outcome, reason))
        x: object = self.path
        path = _encode_str(x) if type(x) is str else _json_value(x)  # type: ignore[arg-type]
        x = self.status
        status = repr(x) if type(x) is int else _json_value(x)
        x = self.duration_ms
        duration = repr(x) if type(x) is float and x - x == 0.0 else _json_value(x)
        line = (f'{{"ts":"{self.ts}",{head},"path":{path},"status":{status},'
                f'"duration_ms":{duration},{tail}')
        if self.via is not None:
            return f'{line},"via":{_json_value(self.via)}}}\n'
        return line + "}\n"


#: Either kind of record: what the audit log, its sinks and the metrics accept.
AnyEvent = AuditEvent | RequestEvent


_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii)
_fallback = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_KEYS = tuple((_encode_str(name) + ":", name) for name in SPEC_FIELDS)


_HEAD_KEYS = tuple(_encode_str(name) + ":" for name in SPEC_FIELDS[1:7])
_TAIL_KEYS = tuple(_encode_str(name) + ":" for name in SPEC_FIELDS[10:12])

# Encoded runs of fields by their values (``RequestEvent.to_json_line``): only tuples of str
# and None are stored (a str key equals only that str: the same text), at most _MAX_FRAGMENTS
# (all forgotten at once past that: hosts of refused tunnels are the agent's choice).
_FRAGMENTS: dict[tuple[object, ...], str] = {}
_MAX_FRAGMENTS = 1024
_MAX_STORED_CHARS = 512  # bounded: ~1 MB at most (keys and texts)


def _fragment(keys: tuple[str, ...], values: tuple[object, ...]) -> str:
    """``"name":value`` pairs joined by commas, each value as ``_json_value`` encodes it;
    kept in ``_FRAGMENTS`` when every value is a str or None and the text is short."""
    text = ",".join(key + _json_value(value) for key, value in zip(keys, values, strict=True))
    if len(text) <= _MAX_STORED_CHARS and all(
        value is None or type(value) is str for value in values
    ):
        if len(_FRAGMENTS) >= _MAX_FRAGMENTS:
            _FRAGMENTS.clear()
        _FRAGMENTS[values] = text
    return text


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
