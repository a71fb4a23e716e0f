"""The audit sink: every record is written to ``audit.jsonl`` when it is recorded.

``record()`` appends the record's line with one ``write`` (audit/jsonl_file.py) before it
returns, so a record is on disk (in the page cache: it survives the process being killed)
as soon as the stage that made it moves on, and the lines of one process are in the order
they were recorded. It never raises.

When a write fails (disk full, file system read-only, quota), the line is kept in a bounded
memory buffer and written, in order and before any newer line, once writing works again;
beyond the bound the oldest kept lines are dropped and counted. The audit is then
*unhealthy*; what happens to requests that would carry a credential is the ``[audit]
on_failure`` policy (audit/policy.py): ``deny`` (the default) refuses them, ``continue``
forwards them unaudited. ``stats()`` feeds ``/metrics`` and ``/v1/health``;
``summary()`` is the line printed at shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from vaultproxy.audit.event import LINE_AT, AnyEvent, RequestEvent
from vaultproxy.audit.jsonl_file import JsonlFile
from vaultproxy.audit.tail import read_tail

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
DEFAULT_MAX_BUFFERED = 100_000

OnFailure = Literal["deny", "continue"]
DEFAULT_ON_FAILURE: OnFailure = "deny"


class AuditLog:
    #: Does ``record_decision`` count this log's records for /metrics here (False: another
    #: process counts them from the lines it is sent, engine/worker_audit.py).
    counts_metrics = True
    #: Is ``_write(line, keep)`` all that ``record``/``ahead`` do with a request record's
    #: line, so that audit/canonical.py may hand this log the line alone (no record made)?
    #: Declared by each class for itself, never inherited (``__init_subclass__``): a
    #: subclass that changes ``record`` or ``ahead`` is handed records, as before.
    takes_lines = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "takes_lines" not in cls.__dict__:
            cls.takes_lines = False

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        echo: bool = False,
        on_failure: OnFailure = DEFAULT_ON_FAILURE,
    ) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.path = Path(path)
        self.echo = echo
        self.on_failure: OnFailure = on_failure
        self._file = JsonlFile(self.path, max_bytes=max_bytes, backups=backups)
        self._max_buffered = max_buffered
        self._lock = threading.Lock()  # one writer at a time; guards the counters
        self._retry: deque[str] = deque()  # failed lines, oldest first
        self._written = 0
        self._failed = 0
        self._dropped = 0
        self._error: str | None = None  # why writing fails now (None: it works)
        # Each is called with every line that is written (or kept for a retry): the audit
        # sinks (vaultproxy/sinks/) in the supervisor, the channel to it in a worker, the
        # dashboard's feed. Replaced, never edited (``add_tap``, ``remove_tap``): a line
        # being handed to the taps, on any thread, goes to the list it started with.
        self.taps: list[Callable[[str], None]] = []
        # ``run_flusher`` asleep with nothing kept: woken by the next kept line (any thread)
        self._flush_waiter: asyncio.Future[None] | None = None

    def add_tap(self, tap: Callable[[str], None]) -> None:
        """Hand every line from now on to ``tap`` too (a new list: see ``taps``)."""
        with self._lock:
            self.taps = [*self.taps, tap]

    def remove_tap(self, tap: Callable[[str], None]) -> None:
        """Stop handing lines to ``tap`` (if it is one; a new list: see ``taps``)."""
        with self._lock:
            taps = list(self.taps)
            if tap in taps:
                taps.remove(tap)
                self.taps = taps

    # -- counters -------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Records lost for good (the retry buffer was full, or a record would not serialise)."""
        with self._lock:
            return self._dropped

    @property
    def buffered(self) -> int:
        """Records whose write failed and that wait for writing to work again."""
        with self._lock:
            return len(self._retry)

    @property
    def healthy(self) -> bool:
        """True while records are being written (the last write worked, nothing waits)."""
        return self._error is None

    @property
    def error(self) -> str | None:
        """Why writing fails, without any record content (``OSError ENOSPC``), or None."""
        return self._error

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "written": self._written,
                "failed": self._failed,
                "dropped": self._dropped,
                "pending": len(self._retry),
                "healthy": self._error is None,
                "error": self._error,
            }

    def summary(self) -> str:
        s = self.stats()
        return summary_line(s)

    # -- recording ------------------------------------------------------------------------
    def record(self, event: AnyEvent) -> bool:
        """Write one event now (kept for a retry if that fails). Thread-safe, never raises;
        True if it is in the file."""
        try:
            # a RequestEvent's line made with it (its to_json_line without the call), else
            # the event's to_json_line
            line = event[LINE_AT] if type(event) is RequestEvent else None  # type: ignore[index]
            if line is None:
                line = event.to_json_line()
        except Exception as e:  # auditing must never break the request path
            self._drop(f"event not recorded ({type(e).__name__})")
            return False
        return self._write(line, keep=True)

    def ahead(self, event: AnyEvent) -> bool:
        """Write a record that must be in the file *before* the request it describes goes
        out. True if it is. On failure it is kept for a retry only under ``continue`` (the
        request goes ahead); under ``deny`` the caller refuses the request instead."""
        try:
            line = event[LINE_AT] if type(event) is RequestEvent else None  # type: ignore[index]
            if line is None:  # (as record)
                line = event.to_json_line()
        except Exception as e:  # noqa: BLE001
            self._drop(f"event not recorded ({type(e).__name__})")
            return False
        return self._write(line, keep=self.on_failure == "continue")

    def record_line(self, line: str) -> bool:
        """Write one record another process already serialised."""
        if not line.endswith("\n") or "\n" in line[:-1] or not line.startswith("{"):
            self._drop("a malformed record was not written")
            return False
        return self._write(line, keep=True)

    def _drop(self, why: str) -> None:
        log.error("audit: %s", why)
        with self._lock:
            self._dropped += 1

    def _write(self, line: str, keep: bool) -> bool:
        """Store the line (or keep it for a retry), then hand it to the taps. One method,
        not two: it runs twice per proxied request. The lock by ``acquire``/``release``
        (a ``with`` looks both special methods up on every use: ~1.6k instructions more)."""
        if self.echo:
            self._echo(line)
        lock = self._lock
        lock.acquire()
        try:
            if self._retry and not self._write_retry_locked():
                self._failed += 1
                ok = False
            else:
                try:
                    self._file.write_line(line.encode())  # (UTF-8: the default, no argument)
                except OSError as e:
                    self._failed += 1
                    self._failing_locked(e)
                    ok = False
                else:
                    self._written += 1
                    if self._error is not None:
                        self._recovered_locked()
                    ok = True
            if not ok and keep:
                self._keep_locked(line)
        finally:
            lock.release()
        if (ok or keep) and self.taps:
            for tap in self.taps:
                try:
                    tap(line)
                except Exception as e:  # noqa: BLE001 - a sink must never break the audit path
                    log.error("audit: a sink refused a record (%s)", type(e).__name__)
        return ok

    def _write_retry_locked(self) -> bool:
        """Write the kept lines, oldest first; True once none is left."""
        while self._retry:
            try:
                self._file.write_line(self._retry[0].encode("utf-8"))
            except OSError as e:
                self._failing_locked(e)
                return False
            self._retry.popleft()
            self._written += 1
        if self._error is not None:
            self._recovered_locked()
        return True

    def _keep_locked(self, line: str) -> None:
        self._retry.append(line)
        while len(self._retry) > self._max_buffered:
            self._retry.popleft()
            self._dropped += 1
        waiter = self._flush_waiter
        if waiter is not None:  # the flusher sleeps until a line is kept: this one
            self._flush_waiter = None
            try:
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # (its loop is closed: no flusher runs)
                pass

    def _failing_locked(self, e: OSError) -> None:
        name = errno.errorcode.get(e.errno or 0, type(e).__name__)
        why = f"{type(e).__name__} {name}"
        if self._error is None:
            what = (
                "requests that need a credential are refused (on_failure = deny)"
                if self.on_failure == "deny"
                else "requests keep being forwarded UNAUDITED (on_failure = continue)"
            )
            log.error("audit: writing %s failed (%s); %s until it works again", self.path,
                      why, what)
        self._error = why

    def _recovered_locked(self) -> None:
        self._error = None
        log.warning("audit: writing %s works again (%d record(s) failed so far, %d dropped)",
                    self.path, self._failed, self._dropped)

    # -- retry, shutdown, reading ---------------------------------------------------------
    def flush(self) -> None:
        """Try the kept lines again. Never raises."""
        with self._lock:
            if self._retry:
                self._write_retry_locked()

    def close(self) -> None:
        """Try the kept lines once more and close the file (a later record reopens it)."""
        with self._lock:
            if self._retry:
                self._write_retry_locked()
            self._file.close()

    async def run_flusher(self, interval: float = 1.0) -> None:
        """Retry kept lines every ``interval`` seconds (off the loop) until cancelled; while
        none is kept it sleeps until one is (no timer: an idle proxy is not woken), the
        first retry ``interval`` seconds after that (at most as late as a tick's)."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._retry:
                    waiter: asyncio.Future[None] | None = loop.create_future()
                    with self._lock:  # (``_keep_locked`` reads it under the lock)
                        if self._retry:
                            waiter = None
                        else:
                            self._flush_waiter = waiter
                    if waiter is not None:
                        try:
                            await waiter
                        finally:
                            with self._lock:
                                if self._flush_waiter is waiter:
                                    self._flush_waiter = None
                await asyncio.sleep(interval)
                if self._retry:
                    await asyncio.to_thread(self.flush)
        finally:
            self.flush()

    def tail(
        self, limit: int = 100, since: str | None = None, service: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` records in the files (newest last).

        ``since`` keeps records with ``ts >= since`` (ISO strings compare in time order);
        ``service`` keeps one service's records. Rotated files are read as needed.
        """
        self.flush()
        with self._lock:
            return read_tail(
                self.path,
                backups=self._file.backups,
                limit=limit,
                since=since,
                service=service,
            )

    @staticmethod
    def _echo(line: str) -> None:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError) as e:
            log.error("audit: echo to stdout failed (%s)", type(e).__name__)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def summary_line(s: dict[str, Any]) -> str:
    """The shutdown line: what was written, what failed, what is lost."""
    lost = int(s.get("dropped", 0)) + int(s.get("pending", 0))
    return (
        f"audit: {s.get('written', 0)} record(s) written, {s.get('failed', 0)} write(s) "
        f"failed, {lost} record(s) lost"
        + (f" ({s.get('pending', 0)} still unwritten at exit)" if s.get("pending") else "")
    )
