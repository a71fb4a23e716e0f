"""The audit sink: ``record()`` buffers in memory, ``flush()`` appends to ``audit.jsonl``.

``record()`` never blocks on I/O and never raises, so proxy hooks (on the asyncio loop) and
worker threads can call it freely. A background ``run_flusher()`` task writes the buffer at
least every ``interval`` seconds; ``close()`` writes whatever is left. A failed write keeps
its lines for the next try; the buffer is bounded and drops its oldest lines when full,
counting them in ``dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from vaultproxy.audit.event import AuditEvent
from vaultproxy.audit.jsonl_file import JsonlFile
from vaultproxy.audit.tail import read_tail

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
DEFAULT_MAX_BUFFERED = 100_000


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        echo: bool = False,
    ) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.path = Path(path)
        self.echo = echo
        self._file = JsonlFile(self.path, max_bytes=max_bytes, backups=backups)
        self._max_buffered = max_buffered
        self._lock = threading.Lock()  # guards the buffers and counters; held briefly
        self._io_lock = threading.Lock()  # one writer/reader of the files at a time
        self._pending: deque[str] = deque()  # recorded, not yet tried
        self._retry: deque[str] = deque()  # tried and failed; written before _pending
        self._dropped = 0
        self._dropped_reported = 0

    @property
    def dropped(self) -> int:
        """Lines lost so far because the buffer was full (or an event would not serialise)."""
        with self._lock:
            return self._dropped

    @property
    def buffered(self) -> int:
        """Lines waiting to be written."""
        with self._lock:
            return len(self._pending) + len(self._retry)

    def record(self, event: AuditEvent) -> None:
        """Queue one event. Cheap, thread-safe, never raises."""
        try:
            line = event.to_json_line()
        except Exception as e:  # auditing must never break the request path
            self._drop(f"event not recorded ({type(e).__name__})")
            return
        self._queue(line)

    def record_line(self, line: str) -> None:
        """Queue one record a worker process already serialised (``--workers``)."""
        if not line.endswith("\n") or "\n" in line[:-1] or not line.startswith("{"):
            self._drop("a worker sent a malformed record; dropped")
            return
        self._queue(line)

    def _queue(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            self._trim()

    def _drop(self, why: str) -> None:
        log.error("audit: %s", why)
        with self._lock:
            self._dropped += 1

    def flush(self) -> None:
        """Write every buffered line. Never raises; a failed write keeps its lines."""
        with self._io_lock:
            self._flush_locked()

    def close(self) -> None:
        """Write what is left. The log stays usable; a later ``record`` is buffered again."""
        self.flush()

    async def run_flusher(self, interval: float = 1.0) -> None:
        """Flush every ``interval`` seconds (off the loop) until cancelled, then once more."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        try:
            while True:
                await asyncio.sleep(interval)
                await asyncio.to_thread(self.flush)
        finally:
            self.flush()

    def tail(
        self, limit: int = 100, since: str | None = None, service: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` records (newest last), buffered ones included.

        ``since`` keeps records with ``ts >= since`` (ISO strings compare in time order);
        ``service`` keeps one service's records. Rotated files are read as needed.
        """
        with self._io_lock:
            self._flush_locked()
            return read_tail(
                self.path,
                backups=self._file.backups,
                limit=limit,
                since=since,
                service=service,
            )

    def _flush_locked(self) -> None:
        with self._lock:
            fresh = list(self._pending)
            self._pending.clear()
            batch = list(self._retry) + fresh
            self._retry.clear()
            dropped = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
        if dropped:
            log.warning("audit: %d event(s) dropped (buffer full or unserialisable)", dropped)
        if self.echo and fresh:
            self._echo(fresh)
        if not batch:
            return
        try:
            self._file.append(batch)
        except Exception as e:  # keep the lines whatever went wrong; flush never raises
            written = int(getattr(e, "written", 0))
            log.error(
                "audit: writing %s failed (%s); %d line(s) kept for retry",
                self.path,
                type(e).__name__,
                len(batch) - written,
            )
            with self._lock:
                self._retry.extend(batch[written:])
                self._trim()

    def _trim(self) -> None:
        """Drop the oldest lines beyond the bound (caller holds ``_lock``)."""
        excess = len(self._retry) + len(self._pending) - self._max_buffered
        while excess > 0:
            (self._retry or self._pending).popleft()
            self._dropped += 1
            excess -= 1

    @staticmethod
    def _echo(lines: list[str]) -> None:
        try:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
        except (OSError, ValueError) as e:
            log.error("audit: echo to stdout failed (%s)", type(e).__name__)
