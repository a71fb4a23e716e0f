"""The supervisor's audit record stream as the dashboard sees it: the last records (for a
page's first render and the per-minute counts) and live subscribers (Server-Sent Events).

Fed from ``AuditLog.taps`` and from the workers' lines (the supervisor's
``on_audit_line``), which may run on any thread: records are handed to the event loop with
``call_soon_threadsafe`` (``call_soon`` on the loop's own thread, in the same order). Audit
records carry no secret (SPEC §8), and only the fields of ``FIELDS`` are kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

KEEP = 5000  # records kept for the Requests page and the last hour's counts
QUEUE = 1000  # a subscriber this far behind misses the newest records (a reload shows them)
FIELDS = ("ts", "event", "agent", "service", "mode", "method", "host", "path", "status",
          "duration_ms", "outcome", "reason", "via", "id", "decision", "decided_by")
SHOWN_EVENTS = frozenset({"request", "honeytoken", "approval"})


def _parse(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in FIELDS if k in data} | {"_t": time.time()}


class AuditFeed:
    def __init__(self) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def seed(self, lines: Iterable[str]) -> None:
        for line in lines:
            rec = _parse(line)
            if rec is not None:
                rec["_t"] = 0.0  # from before this run: shown, not counted per minute
                self.records.append(rec)

    def offer(self, line: str, pid: int | None = None) -> None:
        """Any thread: one serialised audit record."""
        rec = _parse(line)
        if rec is None:
            return
        loop = self._loop
        if loop is None:
            with self._lock:
                self.records.append(rec)
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # the proxy's own stages: no wake-up write to the loop's pipe
            loop.call_soon(self._publish, rec)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
            loop.call_soon_threadsafe(self._publish, rec)

    def _publish(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(rec)
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(rec)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(q)

    def close(self) -> None:
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            shown = [r for r in self.records if r.get("event") in SHOWN_EVENTS]
        return shown[-limit:]

    def per_minute(self, minutes: int = 60, now: float | None = None
                   ) -> tuple[list[Counter[str]], list[Counter[str]]]:
        """Requests per minute over the last ``minutes``, oldest first: by service, by outcome."""
        now = time.time() if now is None else now
        by_service: list[Counter[str]] = [Counter() for _ in range(minutes)]
        by_outcome: list[Counter[str]] = [Counter() for _ in range(minutes)]
        with self._lock:
            recs = [r for r in self.records if r.get("event") == "request"]
        for r in recs:
            age = int((now - r["_t"]) // 60)
            if 0 <= age < minutes:
                slot = minutes - 1 - age
                by_service[slot][str(r.get("service") or "(passthrough)")] += 1
                by_outcome[slot][str(r.get("outcome") or "?")] += 1
        return by_service, by_outcome
