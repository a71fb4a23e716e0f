"""A ``--workers`` process's audit sink.

A worker writes its own records to ``audit.jsonl`` exactly as the supervisor does (one
whole-line ``O_APPEND`` write per record, audit/log.py): a record is in the file when the
request's stage moves on, whether or not the supervisor is still alive to receive it, and
one process's records keep their order. It also sends each line to the supervisor, which
counts it for ``/metrics`` and hands it to the audit sinks (it does not write it again), and
reports its counters (written, failed, dropped, healthy) in every ``pong`` and whenever its
health changes, for ``/metrics``, ``/v1/health`` and the shutdown summary.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from vaultproxy.audit import AuditLog
from vaultproxy.engine.channel import frame, frame_head

# The header of every ``audit`` frame, by whether the write worked (built once: two records
# per proxied request).
_AUDIT_HEADS = {ok: frame_head({"op": "audit", "ok": ok}) for ok in (True, False)}


class WorkerAudit(AuditLog):
    # The supervisor counts this worker's records for /metrics from the lines it is sent
    # (engine/workers.py); this process serves no /metrics, so it counts none itself.
    counts_metrics = False
    # ``record`` and ``ahead`` are AuditLog's: all they add to a line is ``_write`` (below),
    # so the proxy's two records per request are handed to it as lines, as to a single
    # process's AuditLog (audit/canonical.py): the same line, the same write, no record made.
    takes_lines = True

    def __init__(
        self, path: Path, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(path)
        self._writer = writer
        self._loop = loop
        self._reported_healthy = True

    def _write(self, line: str, keep: bool) -> bool:
        """Every line written or kept (``record`` and ``ahead``) also goes to the supervisor,
        which counts the written ones (``ok``: /metrics survive this worker's death) and feeds
        them to the audit sinks (vaultproxy/sinks/hub.py); a change of this log's health
        goes with it (``audit_state``), or alone when no line is sent (a refused ``ahead``)."""
        ok = AuditLog._write(self, line, keep)
        if ok or keep:
            data = _AUDIT_HEADS[ok](line.encode())
        elif (self._error is None) != self._reported_healthy:
            data = b""
        else:
            return ok
        self._post(data)
        return ok

    def _drop(self, why: str) -> None:
        """(A record that would not serialise, or a malformed line: no line is sent; a
        change of health since the last report still is, as with any record.)"""
        super()._drop(why)
        if (self._error is None) != self._reported_healthy:
            self._post(b"")

    def report(self) -> dict[str, Any]:
        """The counters, as sent in ``pong`` and ``audit_state`` frames."""
        stats = self.stats()
        self._reported_healthy = bool(stats["healthy"])
        return stats

    def _post(self, data: bytes) -> None:
        if (self._error is None) != self._reported_healthy:  # (``healthy``, inline)
            data += frame({"op": "audit_state", "audit": self.report()})
        if not data:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._send(data)
        else:
            self._loop.call_soon_threadsafe(self._send, data)

    def _send(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)
