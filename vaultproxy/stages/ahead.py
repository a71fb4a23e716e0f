"""What Inject does once a request carries a credential, before it leaves (issue 15):

- the ``forward`` audit record goes into ``audit.jsonl`` first (audit/canonical.py
  ``record_ahead``); if it cannot be written and ``[audit] on_failure = "deny"``, the
  request is refused with ``503 audit_unavailable`` instead of being forwarded unaudited;
- the flow keeps the redactor it was injected under, so a ``lock`` (or a reload) while the
  request is in flight still scrubs its response, rather than failing it half-way.
"""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.audit.canonical import record_ahead
from vaultproxy.errors import AuditUnavailable
from vaultproxy.stages.flowrecord import FlowRecord
from vaultproxy.state import ProxyState


def keep_redactor(st: ProxyState, rec: FlowRecord) -> None:
    """Pin the service's current redactor on the flow (None when locked: the gate refuses)."""
    if rec.redactor is None and rec.service is not None:
        rec.redactor = st.session.redactor_for(rec.service)


def forward_ahead(st: ProxyState, flow: http.HTTPFlow, rec: FlowRecord, host: str) -> None:
    """Write the ``forward`` record of an injected request; refuse it under ``deny`` when
    that fails (raises AuditUnavailable). Once per flow."""
    if rec.ahead:
        return
    service = rec.service
    ok = record_ahead(
        st.audit,
        agent=rec.agent,
        service=service.name if service is not None else None,
        mode=service.mode if service is not None else None,
        method=flow.request.method,
        host=host,
        path=rec.path,
    )
    rec.ahead = True
    if not ok and st.audit.on_failure != "continue":
        raise AuditUnavailable()
