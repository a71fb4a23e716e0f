"""Bookkeeping a ``response`` hook leaves for after the response's bytes reached the agent.

Work that runs after the response is written to the agent's socket (and before the agent's
next request arrives) is off the agent's clock. The lean HTTP/1.1 layer (seam/lean.py)
opens its ``Later`` for a flow (under ``KEY`` in the flow's ``metadata``) just before the
``response`` hook of a response it sends whole, and runs it (``Later.run``) right after that
response's one write (seam/connio.py writes inline: the bytes are in the socket when the
layer resumes), in the same call, so before this process handles any other event of any
connection. On any other end of the request (a kill after the hook, a failure) it runs at
once, before the connection is closed or answered otherwise, and the hook task runs one the
layer did not (a cancellation): what a stage left in it is written exactly once.

The Record stage (stages/record.py) finds the flow's ``Later`` under ``KEY`` (none: no layer
will run it, it writes now) and hands it to audit/canonical.py ``decision_record``, which
takes the record's values, its duration and the clock (``ts``) in the hook as before. For a
log that takes lines (an ``AuditLog``, a ``WorkerAudit``) and values audit/event.py
``request_line`` takes (``request_taken``: exact types; its answer then is a line, never
None), only those are kept (``taken``, ``log``) and ``run`` makes the line of them
(``taken_line``: ``request_line``'s bytes of them, at the kept clock), counts it
(``metrics.counted``, what ``decision_record`` counted) and calls the log's one write path
(``_write(line, True)``), in that order, as ``decision_record`` did. Otherwise the record is
made in the hook exactly as without a ``Later`` and only the write moves: for such a log,
the line (a ``str``) and the log (``line``, ``log``), ``run`` calling ``_write(line,
True)``; for any other sink the record and the sink (``event``, ``sink``), and ``run`` hands
it over (``sink.record``). Only that goes there: nothing that can change or refuse the
response (``/metrics`` and the file are read by other events, which this process handles
only after ``run``). Nothing on mitmproxy's own HTTP path, or on the streamed path, opens
one.

One ``Later`` per lean layer (a connection serves one request at a time), reused: ``run``
empties it; ``decision_record`` writes at once rather than overwrite one that still holds
something (never: one record per flow, and the layer runs it before the next request).
"""

from __future__ import annotations

import logging
from typing import Any

from vaultproxy.audit.event import ahead_line as _ahead_line
from vaultproxy.audit.event import taken_line as _taken_line
from vaultproxy.audit.metrics import counted as _counted

logger = logging.getLogger(__name__)

#: the flow's ``metadata`` key of its ``Later`` (present only between the job's opening it
#: and its ``run``)
KEY = "vaultproxy.after_send"


class Later:
    """A request's audit line, count and write for after its response's send (see the
    module); one per lean layer. (Its attributes are set in ``__init__``, none a class
    attribute: CPython 3.12 specializes no read or write of an instance attribute that
    shadows one.)"""

    def __init__(self) -> None:
        #: ``request_taken``'s values and clock of an ``AuditLog``'s line (``log``), or None
        self.taken: tuple[Any, ...] | None = None
        #: ``ahead_request``'s values and clock of the same log's line (the flow's
        #: ``forward`` line's texts and the rest: audit/event.py ``ahead_line``), or None
        self.ahead: tuple[Any, ...] | None = None
        #: an ``AuditLog``'s line and that log (``decision_record``'s shortcut), or None
        self.line: str | None = None
        self.log: Any = None
        #: a record for any other sink, and that sink, or None
        self.event: Any = None
        self.sink: Any = None

    def run(self, flow: Any) -> None:
        """Close the flow's ``Later`` and write what it holds (once). Never raises: a sink
        that raises is logged (its type only), as a tap is (audit/log.py)."""
        if flow is not None:
            flow.metadata.pop(KEY, None)
        ahead = self.ahead
        if ahead is not None:
            self.ahead = None
            try:
                # (as below: ``decision_record``'s own calls, of what ``ahead_request`` took)
                made = _ahead_line(ahead)
                log = self.log
                if log.counts_metrics:
                    _counted("request", ahead[0][3], ahead[3], ahead[4], made[1])
                log._write(made[0], True)
            except Exception as e:  # noqa: BLE001 - (as below)
                logger.error("audit: a record after the response's send failed (%s)",
                             type(e).__name__)
        taken = self.taken
        if taken is not None:
            self.taken = None
            try:
                # ``decision_record``'s own calls, of the values and clock it took
                made = _taken_line(taken)
                log = self.log
                if log.counts_metrics:
                    _counted(taken[0], taken[3], taken[1], taken[10], made[1])
                log._write(made[0], True)
            except Exception as e:  # noqa: BLE001 - (as below)
                logger.error("audit: a record after the response's send failed (%s)",
                             type(e).__name__)
        line = self.line
        if line is not None:
            self.line = None
            try:
                self.log._write(line, True)  # (``decision_record``'s own call)
            except Exception as e:  # noqa: BLE001 - never a connection left without its end
                logger.error("audit: a record after the response's send failed (%s)",
                             type(e).__name__)
        event = self.event
        if event is not None:
            self.event = None
            try:
                self.sink.record(event)
            except Exception as e:  # noqa: BLE001 - (as above)
                logger.error("audit: a record after the response's send failed (%s)",
                             type(e).__name__)
