"""The audit record: SPEC §8 field set, query stripping, timestamps, immutability."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from vaultproxy.audit import ADMIN_EVENT, SPEC_FIELDS, AuditEvent, strip_query, utc_timestamp

SPEC_8_KEYS = {
    "ts", "event", "agent", "service", "mode", "method", "host", "path",
    "status", "duration_ms", "outcome", "reason",
}  # fmt: skip


def _request(**overrides: object) -> AuditEvent:
    fields: dict[str, object] = {
        "event": "request",
        "agent": "claude",
        "service": "openai",
        "mode": "placeholder",
        "method": "POST",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 12.3456,
        "outcome": "allowed",
        "reason": None,
    }
    fields.update(overrides)
    return AuditEvent.model_validate(fields)


def test_spec_fields_constant_matches_spec_8() -> None:
    assert set(SPEC_FIELDS) == SPEC_8_KEYS
    assert len(SPEC_FIELDS) == len(SPEC_8_KEYS)


def test_request_record_has_exactly_the_spec_keys() -> None:
    record = json.loads(_request().to_json_line())
    assert set(record) == SPEC_8_KEYS
    assert record["service"] == "openai"
    assert record["status"] == 200
    assert record["duration_ms"] == 12.346
    assert record["reason"] is None


def test_missing_fields_are_null_not_absent() -> None:
    event = AuditEvent(event="tunnel_refused", host="evil.example", outcome="denied")
    record = json.loads(event.to_json_line())
    assert set(record) == SPEC_8_KEYS
    for key in ("agent", "service", "mode", "method", "path", "status", "duration_ms"):
        assert record[key] is None


def test_admin_record_adds_caller_only() -> None:
    event = AuditEvent(event=ADMIN_EVENT, method="POST", path="/v1/reload", outcome="ok",
                       caller="uid:1000")  # fmt: skip
    record = json.loads(event.to_json_line())
    assert set(record) == SPEC_8_KEYS | {"caller"}
    assert record["caller"] == "uid:1000"


def test_admin_record_without_caller_still_has_the_key() -> None:
    record = json.loads(AuditEvent(event=ADMIN_EVENT, outcome="ok").to_json_line())
    assert set(record) == SPEC_8_KEYS | {"caller"}
    assert record["caller"] is None


def test_caller_on_a_non_admin_event_is_refused() -> None:
    with pytest.raises(ValidationError):
        _request(caller="uid:1000")


def test_json_line_is_one_compact_line() -> None:
    line = _request(reason="multi\nline").to_json_line()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert ", " not in line and '": ' not in line


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models?key=abc", "/v1/models"),
        ("/v1/models?", "/v1/models"),
        ("/v1/models#frag", "/v1/models"),
        ("/v1/models?a=1#frag", "/v1/models"),
        ("/v1/models#frag?a=1", "/v1/models"),
        ("?only=query", ""),
        ("", ""),
    ],
)
def test_strip_query(raw: str, expected: str) -> None:
    assert strip_query(raw) == expected
    assert _request(path=raw).path == expected


def test_query_secret_never_reaches_the_line(canary: Callable[[], str]) -> None:
    secret = canary()
    event = _request(path=f"/v1/models?key={secret}&x=1#{secret}")
    line = event.to_json_line()
    assert secret not in line
    assert json.loads(line)["path"] == "/v1/models"


def test_path_none_stays_none() -> None:
    assert _request(path=None).path is None


def test_default_ts_is_utc_with_milliseconds() -> None:
    event = _request()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", event.ts)
    now = datetime.now(UTC)
    parsed = datetime.strptime(event.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(now - parsed) < timedelta(seconds=5)


def test_utc_timestamp_converts_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    when = datetime(2026, 11, 23, 13, 0, 0, 123456, tzinfo=cet)
    assert utc_timestamp(when) == "2026-11-23T12:00:00.123Z"


@pytest.mark.parametrize("bad", ["2026-11-23T12:00:00Z", "2026-11-23 12:00:00.123", "yesterday"])
def test_malformed_ts_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        _request(ts=bad)


def test_extra_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        _request(body="{}")


def test_event_is_frozen() -> None:
    event = _request()
    with pytest.raises(ValidationError):
        event.path = "/other?x=1"  # type: ignore[misc]


def test_non_finite_duration_is_refused() -> None:
    with pytest.raises(ValidationError):
        _request(duration_ms=float("nan"))


def test_validation_errors_do_not_echo_input(canary: Callable[[], str]) -> None:
    secret = canary()
    with pytest.raises(ValidationError) as info:
        _request(ts=secret)
    assert secret not in str(info.value)


def _reference_line(event: AuditEvent) -> str:
    return json.dumps(event.to_record(), separators=(",", ":"), allow_nan=False) + "\n"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"agent": None, "service": None, "mode": None, "status": None, "duration_ms": None},
        {"reason": 'quote " backslash \\ tab \t nl \n nul \x00 del \x7f'},
        {"host": "bücher.example", "agent": "日本語", "reason": "emoji \U0001f600 \u2028"},
        {"path": "/a b/%2F/\u00e9", "method": "PATCH"},
        {"status": 599, "duration_ms": 0.0},
        {"duration_ms": 1e-7},
        {"duration_ms": 12345678901234.5},
        {"duration_ms": 3.0},
        {"status": 10**20},
    ],
)
def test_json_line_is_byte_identical_to_json_dumps(overrides: dict[str, object]) -> None:
    event = _request(**overrides)
    assert event.to_json_line() == _reference_line(event)


def test_admin_json_line_is_byte_identical_to_json_dumps() -> None:
    for caller in ("uid:1000", None, "tok\u00e9n"):
        event = AuditEvent(event=ADMIN_EVENT, method="POST", path="/v1/x", outcome="ok",
                           caller=caller)  # fmt: skip
        assert event.to_json_line() == _reference_line(event)


def test_default_ts_tracks_the_clock_across_seconds() -> None:
    first = utc_timestamp()
    later = utc_timestamp()
    assert later >= first
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", later)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")
    assert later[:16] in (
        now,
        (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),
    )


# -- RequestEvent: the request path's record, the same line without pydantic's validation ------

_REQUEST_CASES = [
    {},
    {"agent": None, "service": None, "mode": None, "status": None, "duration_ms": None},
    {"reason": 'quote " backslash \\ tab \t nl \n nul \x00 del \x7f'},
    {"host": "bücher.example", "agent": "日本語", "reason": "emoji \U0001f600 \u2028"},
    {"path": "/a b/%2F/\u00e9?key=secret#frag", "method": "PATCH"},
    {"path": None},
    {"status": 599, "duration_ms": 0.0},
    {"duration_ms": 1e-7},
    {"duration_ms": 12.3456},
    {"duration_ms": 12345678901234.5},
    {"duration_ms": 3},
    {"status": 10**20},
    {"via": "api"},
    {"event": "forward", "outcome": "forwarding", "status": None, "duration_ms": None,
     "via": "mcp"},
    {"event": "tunnel_refused", "outcome": "denied", "path": None, "reason": "egress_blocked"},
]


@pytest.mark.parametrize("overrides", _REQUEST_CASES)
def test_request_event_line_is_the_audit_event_line(overrides: dict[str, object]) -> None:
    from vaultproxy.audit.event import RequestEvent

    fields: dict[str, object] = {
        "event": "request", "agent": "claude", "service": "openai", "mode": "host_inject",
        "method": "POST", "host": "api.openai.com", "path": "/v1/chat", "status": 200,
        "duration_ms": 1.5, "outcome": "injected", "reason": None, "via": None,
    }
    fields.update(overrides)
    fast = RequestEvent(**fields)  # type: ignore[arg-type]
    model = AuditEvent.model_validate({**fields, "ts": fast.ts})
    assert fast.to_json_line() == model.to_json_line() == _reference_line(model)
    assert fast.to_record() == model.to_record()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", fast.ts)


def test_request_event_strips_the_query(canary: Callable[[], str]) -> None:
    from vaultproxy.audit.event import RequestEvent

    secret = canary()
    event = RequestEvent("request", "injected", agent=None, service="s", mode=None,
                         method="GET", host="h", path=f"/x?key={secret}#{secret}", status=200,
                         duration_ms=None, reason=None)
    assert secret not in event.to_json_line()
    assert json.loads(event.to_json_line())["path"] == "/x"


@pytest.mark.parametrize(
    ("event", "outcome", "duration"),
    [("request", "injected", float("nan")), ("request", "injected", float("inf")),
     ("", "injected", None), ("request", "", None), (ADMIN_EVENT, "ok", None),
     ("approval", "approve", None)],
)
def test_request_event_refuses_what_the_model_refuses(
    event: str, outcome: str, duration: float | None
) -> None:
    from vaultproxy.audit.event import RequestEvent

    with pytest.raises(ValueError):
        RequestEvent(event, outcome, agent=None, service=None, mode=None, method=None,
                     host=None, path=None, status=None, duration_ms=duration, reason=None)
