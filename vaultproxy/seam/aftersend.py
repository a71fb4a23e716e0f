"""Bookkeeping a ``response`` hook leaves for after the response's bytes reached the agent.

Work that runs after the response is written to the agent's socket (and before the agent's
next request arrives) is off the agent's clock. The lean HTTP/1.1 layer (seam/lean.py)
opens a flow's ``Later`` (``open_for``) just before the ``response`` hook of a response it sends
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

logger = logging.getLogger(__name__)

#: the flow's ``metadata`` key of its ``Later`` (present only between the job's opening it
#: and the layer's ``run``)
KEY = "vaultproxy.after_send"


class Later:
    """A flow's work for after its response's send: an audit sink that keeps the record it
    is handed (``record``) for ``sink``'s own ``record``, called by ``run``. audit/canonical.py's
    ``decision_record`` hands any sink but an ``AuditLog`` itself the record (an
    ``AuditLog``'s ``record`` of it writes the very line its shortcut would: SECURITY row
    60); ``counts_metrics`` is ``sink``'s, so the record is counted when it is made, as
    before. One record per flow (the Record stage writes one); a second one would send the
    first on at once."""

    __slots__ = ("counts_metrics", "event", "sink")

    def __init__(self) -> None:
        self.sink: Any = None
        self.event: Any = None
        self.counts_metrics = True

    def bind(self, sink: Any) -> Later:
        """This, as the stand-in for ``sink`` (the Record stage, as it makes the record)."""
        self.sink = sink
        self.counts_metrics = getattr(sink, "counts_metrics", True)
        return self

    def record(self, event: Any) -> bool:
        if self.event is not None:  # (never: one record per flow)
            self._write()
        self.event = event
        return True

    def run(self, flow: Any) -> None:
        """Close the flow's ``Later`` and hand the record it holds to its sink. Never raises:
        a sink that raises is logged (its type only), as a tap is (audit/log.py)."""
        flow.metadata.pop(KEY, None)
        if self.event is not None:
            self._write()

    def _write(self) -> None:
        event, self.event = self.event, None
        try:
            self.sink.record(event)
        except Exception as e:  # noqa: BLE001 - never a connection left without its end
            logger.error("audit: a record after the response's send failed (%s)",
                         type(e).__name__)


def open_for(flow: Any) -> Later:
    """The flow's ``Later``, opened (the lean job, before the ``response`` hook)."""
    later = flow.metadata[KEY] = Later()
    return later
