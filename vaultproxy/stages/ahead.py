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

from vaultproxy.audit.canonical import ahead_record
from vaultproxy.audit.event import forward_made
from vaultproxy.audit.log import AuditLog
from vaultproxy.core.pipeline import record_forward
from vaultproxy.core.state import ProxyState
from vaultproxy.errors import AuditUnavailable
from vaultproxy.stages.flowrecord import FlowRecord

#: ``Request.method`` of the request methods an agent sends (the head's bytes, as
#: ``Request.method`` decodes and upper-cases them: the same text), for the two audit lines
#: of a request; any other method's bytes are decoded by ``Request.method`` itself.
METHOD_TEXT: dict[bytes, str] = {
    name.encode(): name
    for name in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
                 "TRACE")
}


def forward_ahead(st: ProxyState, flow: http.HTTPFlow, rec: FlowRecord) -> None:
    """Write the ``forward`` record of a request that now carries a credential (raises
    AuditUnavailable when that fails under ``deny``). Inject calls it once per flow: when
    ``injected`` first turns true."""
    decision = rec.decision
    request = flow.request
    audit = st.audit
    if decision is not None:
        service, target = decision.service, decision.target
        if service is not None and target is not None:
            # ``record_forward`` with a service and a target, without its call (it stays
            # the one for any other decision)
            raw = request.data.method
            method = METHOD_TEXT.get(raw) if type(raw) is bytes else None
            if method is None:
                method = request.method
            kind = type(audit)
            if kind is AuditLog or getattr(kind, "takes_lines", False) is True:
                # ``ahead_record``'s own first step, for the same logs (an ``AuditLog``, a
                # ``--workers`` process's ``WorkerAudit``), without its call (one frame less
                # before the upstream write): the line alone when ``forward_line`` takes the
                # values (``forward_made``: that line, and its texts kept on the record,
                # ``ahead``, for the flow's ``request`` line: stages/record.py uses them
                # only for these very objects)
                made = forward_made(decision.agent, service.name, service.mode, method,
                                    target[0], rec.path, decision, raw, audit)
                if made is not None:
                    rec.ahead = made
                    continue_ = audit.on_failure == "continue"
                    if not audit._write(made[0], continue_) and not continue_:
                        raise AuditUnavailable()
                    return
            if not ahead_record(
                audit, decision.agent, service.name, service.mode, method, target[0], rec.path,
            ) and audit.on_failure != "continue":
                raise AuditUnavailable()
            return
    target = decision.target if decision is not None else None
    service = decision.service if decision is not None else None
    record_forward(  # by position
        audit, audit.on_failure, decision.agent if decision is not None else None, service,
        request.method, target[0] if target is not None else None, rec.path,
    )
