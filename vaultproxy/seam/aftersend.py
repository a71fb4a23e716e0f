"""Bookkeeping a ``response`` hook leaves for after the response's bytes reached the agent.

Work that runs after the response is written to the agent's socket (and before the agent's
next request arrives) is off the agent's clock. The lean HTTP/1.1 layer (seam/lean.py)
opens a flow's list (``open``) just before the ``response`` hook of a response it sends
whole, and runs it (``run``) right after that response's one write (seam/connio.py writes
inline: the bytes are in the socket when the layer resumes), in the same call, so before
this process handles any other event of any connection. On any other end of the request (a
kill after the hook, a failure, a cancelled hook task) the list runs at once, before the
connection is closed or answered otherwise: whatever a stage left in it runs exactly once.

A stage asks ``later(flow)``: a list to append ``(callable, argument)`` to, or None (no
layer will run it: do the work now). Only what cannot change or refuse the response goes
there: the Record stage's write of the ``request`` record (stages/record.py), built before
the send (its bytes, timestamp and duration as without this module), handed to the audit
sink after it. Nothing else on mitmproxy's own HTTP path, or on the streamed path, uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: the flow's ``metadata`` key of the list (present only between ``open`` and ``run``)
KEY = "vaultproxy.after_send"

Pending = list[tuple[Callable[[Any], object], Any]]


def open_for(flow: Any) -> Pending:
    """Open the flow's list (the lean layer, before the ``response`` hook)."""
    pending: Pending = []
    flow.metadata[KEY] = pending
    return pending


def later(flow: Any) -> Pending | None:
    """The flow's open list, or None: nothing runs after the send, do the work now."""
    return flow.metadata.get(KEY)  # type: ignore[no-any-return]


def run(flow: Any) -> None:
    """Close the flow's list and run what it holds, in order, each once. Never raises: a
    step that fails is logged (its type only) and the next one still runs."""
    pending: Pending | None = flow.metadata.pop(KEY, None)
    if pending:
        for fn, arg in pending:
            try:
                fn(arg)
            except Exception as e:  # noqa: BLE001 - never a connection left without its end
                logger.error("a step after the response's send failed (%s)", type(e).__name__)


class Later:
    """An audit sink that keeps each record for the flow's list, for ``sink``'s ``record``
    (what audit/canonical.py's ``decision_record`` calls on any sink but an ``AuditLog``
    itself; ``AuditLog.record`` of the record writes the very line its shortcut would,
    SECURITY row 60). ``counts_metrics`` is ``sink``'s: the record is counted when it is
    made, as before."""

    __slots__ = ("counts_metrics", "pending", "sink")

    def __init__(self, sink: Any, pending: Pending) -> None:
        self.sink = sink
        self.pending = pending
        self.counts_metrics = getattr(sink, "counts_metrics", True)

    def record(self, event: Any) -> bool:
        self.pending.append((self.sink.record, event))
        return True
