"""The audit trail's state across every process of a run: this process's
``AuditLog`` plus, with ``--workers N``, what each worker last reported
(engine/worker_audit.py). Read by ``/metrics`` (counters), ``/v1/health`` (``degraded``)
and the shutdown summary. Never carries a record's content."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from vaultproxy.audit.log import AuditLog

logger = logging.getLogger(__name__)

_peers: Callable[[], list[dict[str, Any]]] | None = None
_sink_problems: Callable[[], list[str]] | None = None


def set_peers(peers: Callable[[], list[dict[str, Any]]] | None) -> None:
    """The other processes' counters (the supervisor's workers); None: this process only."""
    global _peers
    _peers = peers


def combined(local: AuditLog) -> dict[str, Any]:
    """Summed counters; ``healthy`` only if every process writes; ``error`` names one cause."""
    every = [local.stats()]
    if _peers is not None:
        try:
            every += [dict(s) for s in _peers()]
        except Exception as e:  # noqa: BLE001 - a status read must not fail on a racing worker
            logger.debug("audit status: a worker's counters were unreadable (%s)",
                         type(e).__name__)
    out: dict[str, Any] = {
        key: sum(int(s.get(key) or 0) for s in every)
        for key in ("written", "failed", "dropped", "pending")
    }
    failing = [s for s in every if not s.get("healthy", True)]
    out["healthy"] = not failing
    out["error"] = str(failing[0].get("error") or "write failed") if failing else None
    out["on_failure"] = local.on_failure
    return out


def problem(local: AuditLog) -> str | None:
    """One sentence for ``/v1/health`` while the audit cannot be written, else None."""
    s = combined(local)
    if s["healthy"]:
        return None
    if s["on_failure"] == "deny":
        then = "requests that need a credential are refused (503 audit_unavailable)"
    else:
        then = "requests are forwarded WITHOUT audit records (on_failure = continue)"
    return f"audit.jsonl cannot be written ({s['error']}); {then}"


def set_sink_problems(read: Callable[[], list[str]] | None) -> None:
    """The audit sinks' problems (vaultproxy/sinks/hub.py: a sink failing for > 60 s)."""
    global _sink_problems
    _sink_problems = read


def problems(local: AuditLog) -> list[str]:
    """Every reason ``/v1/health`` is ``degraded``: audit.jsonl unwritable, a failing sink."""
    out = [p for p in (problem(local),) if p is not None]
    read = _sink_problems
    if read is not None:
        try:
            out += read()
        except Exception as e:  # noqa: BLE001 - a health read must not fail
            logger.debug("audit status: sink problems unreadable (%s)", type(e).__name__)
    return out
