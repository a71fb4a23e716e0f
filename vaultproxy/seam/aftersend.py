"""Bookkeeping a ``response`` hook leaves for after the response's bytes reached the agent.

Work that runs after the response is written to the agent's socket (and before the agent's
next request arrives) is off the agent's clock. The lean HTTP/1.1 layer (seam/lean.py)
opens a flow's ``Later`` just before the ``response`` hook of a response it sends
whole, and runs it (``Later.run``) right after that response's one write (seam/connio.py writes
inline: the bytes are in the socket when the layer resumes), in the same call, so before
this process handles any other event of any connection. On any other end of the request (a
kill after the hook, a failure) it runs at once, before the connection is closed or
answered otherwise, and the hook task runs one the layer did not (a cancellation): what a
stage left in it runs exactly once.

The Record stage (stages/record.py) finds the flow's ``Later`` under ``KEY`` (none: no layer
will run it, it writes now) and makes the ``request`` record as before (its bytes,
timestamp, duration and metrics as without this module), handing it to the ``Later`` in the
audit sink's stead; the sink gets it after the send. Only that goes there: nothing that can
change or refuse the response. Nothing on mitmproxy's own HTTP path, or on the streamed
path, opens one.
"""

from __future__ import annotations

import logging
from typing import Any

from vaultproxy.audit.event import LINE_AT, RequestEvent
from vaultproxy.audit.log import AuditLog

logger = logging.getLogger(__name__)

#: the flow's ``metadata`` key of its ``Later`` (present only between the job's opening it
#: and the layer's ``run``)
KEY = "vaultproxy.after_send"


class Later:
    """A flow's work for after its response's send: an audit sink that keeps the record it
    is handed (``record``) for ``sink``, which ``run`` hands it to as audit/canonical.py's
    ``decision_record`` would have: its line to an ``AuditLog``'s one write path (``_write``,
    kept for a retry if that fails), any other sink the record itself (SECURITY row 60).
    ``counts_metrics`` is ``sink``'s: the record is counted when it is made, as before. One
    record per flow (the Record stage writes one); a second one sends the first on at once.
    (Plain class attributes as defaults, no ``__init__``: one per request.)"""

    sink: Any = None
    event: Any = None
    counts_metrics = True

    def bind(self, sink: Any) -> Later:
        """This, as the stand-in for ``sink`` (the Record stage, as it makes the record)."""
        self.sink = sink
        if not getattr(sink, "counts_metrics", True):
            self.counts_metrics = False
        return self

    def record(self, event: Any) -> bool:
        if self.event is not None:  # (never: one record per flow)
            self.run(None)
        self.event = event
        return True

    def run(self, flow: Any) -> None:
        """Close the flow's ``Later`` and hand the record it holds to its sink. Never raises:
        a sink that raises is logged (its type only), as a tap is (audit/log.py)."""
        if flow is not None:
            flow.metadata.pop(KEY, None)
        event = self.event
        if event is None:
            return
        self.event = None
        sink = self.sink
        try:
            line = event[LINE_AT] if type(event) is RequestEvent else None
            if line is not None and type(sink) is AuditLog:
                sink._write(line, keep=True)  # (``decision_record``'s own shortcut)
            else:
                sink.record(event)
        except Exception as e:  # noqa: BLE001 - never a connection left without its end
            logger.error("audit: a record after the response's send failed (%s)",
                         type(e).__name__)
