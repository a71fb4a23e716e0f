"""What Inject does once a request carries a credential, before it leaves:

- the ``forward`` audit record goes into ``audit.jsonl`` first (core/pipeline.py
  ``record_forward``); if it cannot be written and ``[audit] on_failure = "deny"``, the
  request is refused with ``503 audit_unavailable`` instead of being forwarded unaudited;
- the flow keeps the redactor it was injected under (``Inject._head`` pins the service's
  current one, None when locked: the gate refuses), so a ``lock`` (or a reload) while the
  request is in flight still scrubs its response, rather than failing it half-way.
"""

from __future__ import annotations

from mitmproxy import http

from vaultproxy.core.pipeline import record_forward
from vaultproxy.core.state import ProxyState
from vaultproxy.stages.flowrecord import FlowRecord


def forward_ahead(st: ProxyState, flow: http.HTTPFlow, rec: FlowRecord) -> None:
    """Write the ``forward`` record of a request that now carries a credential (raises
    AuditUnavailable when that fails under ``deny``). Inject calls it once per flow: when
    ``injected`` first turns true."""
    decision = rec.decision
    target = decision.target if decision is not None else None
    service = decision.service if decision is not None else None
    audit = st.audit
    record_forward(  # by position
        audit, audit.on_failure, decision.agent if decision is not None else None, service,
        flow.request.method, target[0] if target is not None else None, rec.path,
    )
