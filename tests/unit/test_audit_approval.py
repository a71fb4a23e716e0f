"""``approval`` and ``honeytoken`` audit events (SPEC §8): fixed fields, no secret."""

from __future__ import annotations

import json

import pytest

from vaultproxy.audit.canonical import record_approval, record_honeytoken
from vaultproxy.audit.event import SPEC_FIELDS, AuditEvent


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_approval_record_carries_id_decision_decided_by() -> None:
    sink = Sink()
    record_approval(sink, approval_id="ab12", decision="approve", decided_by="cli",
                    agent="a", service="gh", method="POST", host="h", path="/x?q=1")
    (e,) = sink.events
    line = json.loads(e.to_json_line())
    assert line == e.to_record()
    assert list(line)[: len(SPEC_FIELDS)] == list(SPEC_FIELDS)
    assert (line["id"], line["decision"], line["decided_by"]) == ("ab12", "approve", "cli")
    assert line["path"] == "/x"  # never the query


def test_other_events_cannot_carry_approval_fields() -> None:
    with pytest.raises(ValueError, match="only for 'approval' events"):
        AuditEvent(event="request", outcome="x", decision="approve")
    line = json.loads(AuditEvent(event="request", outcome="x").to_json_line())
    assert "decision" not in line


def test_honeytoken_record_names_the_decoy_not_its_value() -> None:
    sink = Sink()
    record_honeytoken(sink, name="aws-prod", agent=None, service=None, method="GET",
                      host="example.org", path="/", surface="header", via="proxy")
    line = json.loads(sink.events[0].to_json_line())
    assert line["event"] == "honeytoken" and line["status"] == 403
    assert line["reason"] == "honeytoken aws-prod in header (via proxy)"
