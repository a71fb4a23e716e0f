"""AuditLog.tail: newest records, filters, rotated files, buffered records, bad lines."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vaultproxy.audit import AuditEvent, AuditLog, rotated_path, utc_timestamp
from vaultproxy.audit.tail import read_tail

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def _event(n: int, service: str = "openai") -> AuditEvent:
    return AuditEvent(
        ts=utc_timestamp(T0 + timedelta(seconds=n)),
        event="request",
        service=service,
        path=f"/v1/item/{n}",
        outcome="allowed",
    )


def _numbers(records: list[dict[str, object]]) -> list[int]:
    return [int(str(r["path"]).rsplit("/", 1)[1]) for r in records]


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(10):
        log.record(_event(n, service="openai" if n % 2 == 0 else "github"))
    log.flush()
    return log


def test_tail_returns_newest_last(audit: AuditLog) -> None:
    assert _numbers(audit.tail()) == list(range(10))
    assert _numbers(audit.tail(limit=3)) == [7, 8, 9]


def test_tail_limit_zero_or_negative_is_empty(audit: AuditLog) -> None:
    assert audit.tail(limit=0) == []
    assert audit.tail(limit=-1) == []


def test_tail_filters_by_service(audit: AuditLog) -> None:
    assert _numbers(audit.tail(service="github")) == [1, 3, 5, 7, 9]
    assert _numbers(audit.tail(limit=2, service="openai")) == [6, 8]
    assert audit.tail(service="nope") == []


def test_tail_filters_by_since(audit: AuditLog) -> None:
    since = utc_timestamp(T0 + timedelta(seconds=6))
    assert _numbers(audit.tail(since=since)) == [6, 7, 8, 9]
    assert _numbers(audit.tail(since="2026-11-23T12:00:08")) == [8, 9]  # a prefix works too
    assert _numbers(audit.tail(since=since, service="openai", limit=1)) == [8]
    assert audit.tail(since="2027") == []


def test_tail_includes_buffered_records(audit: AuditLog) -> None:
    audit.record(_event(10))
    assert _numbers(audit.tail(limit=2)) == [9, 10]
    assert audit.buffered == 0


def test_tail_reads_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    line_size = len(_event(10).to_json_line())
    log = AuditLog(path, max_bytes=line_size * 3, backups=5)
    for n in range(10, 22):
        log.record(_event(n, service="a" if n < 13 else "b"))
    log.flush()
    assert rotated_path(path, 3).exists()
    assert _numbers(log.tail(limit=100)) == list(range(10, 22))
    assert _numbers(log.tail(limit=5)) == list(range(17, 22))
    assert _numbers(log.tail(service="a")) == [10, 11, 12]  # all in the oldest file


def test_tail_on_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "audit.jsonl").tail() == []


def test_tail_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    good = _event(1).to_json_line()
    path.write_text('{"torn":\n' + good + "[1,2]\n\n" + "not json\n" + _event(2).to_json_line())
    os.chmod(path, 0o600)
    assert _numbers(AuditLog(path).tail()) == [1, 2]


def test_read_tail_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    n_lines = 3000  # ~100 bytes each: several 64 KiB blocks
    path.write_text("".join(_event(n).to_json_line() for n in range(n_lines)))
    records = read_tail(path, backups=0, limit=n_lines + 10)
    assert _numbers(records) == list(range(n_lines))
    assert _numbers(read_tail(path, backups=0, limit=2)) == [n_lines - 2, n_lines - 1]
