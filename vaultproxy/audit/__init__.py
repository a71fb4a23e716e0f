"""Audit trail (SPEC §2, §8): the event model and its sinks (``audit.jsonl``, stdout)."""

from __future__ import annotations

from vaultproxy.audit.event import (
    ADMIN_EVENT,
    SPEC_FIELDS,
    AuditEvent,
    strip_query,
    utc_timestamp,
)
from vaultproxy.audit.jsonl_file import rotated_path
from vaultproxy.audit.log import AuditLog

__all__ = [
    "ADMIN_EVENT",
    "SPEC_FIELDS",
    "AuditEvent",
    "AuditLog",
    "rotated_path",
    "strip_query",
    "utc_timestamp",
]
