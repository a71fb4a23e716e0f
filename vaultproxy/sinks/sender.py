"""One sink's delivery thread: a bounded queue, batches, retries with backoff, counters.

``offer()`` is what the request path calls: it appends a record under a lock and returns,
so no sink can slow or fail a request. A thread of the sink's own takes up to
``BATCH_MAX`` records (or what arrived within ``BATCH_SECONDS`` of the first one) and hands
them to the sink's ``send``. When that raises, the batch goes back to the front of the
queue (order kept) and is tried again after a backoff that doubles up to ``BACKOFF_MAX``.
The queue holds at most ``capacity`` records; beyond that the *oldest* are dropped and
counted, so a sink that is down for long ends up with the newest records, and memory stays
bounded. ``audit.jsonl`` keeps every record whatever happens here.

``failing_since`` is when the current run of failed sends began (None: the last send
worked); ``/v1/health`` reports a sink failing for longer than ``degraded_after`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

BATCH_MAX = 50
BATCH_SECONDS = 1.0
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
CAPACITY = 10_000
DEGRADED_AFTER = 60.0

Send = Callable[[Sequence[Any]], Awaitable[None]]


class SinkFailed(Exception):
    """A send did not deliver; the message names the sink's endpoint kind and the cause,
    never a record or a key."""


class Sender:
    def __init__(
        self,
        name: str,
        send: Send,
        *,
        capacity: int = CAPACITY,
        batch_max: int = BATCH_MAX,
        batch_seconds: float = BATCH_SECONDS,
        backoff_max: float = BACKOFF_MAX,
        degraded_after: float = DEGRADED_AFTER,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if capacity < 1 or batch_max < 1:
            raise ValueError("capacity and batch_max must be at least 1")
        self.name = name
        self._send = send
        self._close = close
        self.capacity = capacity
        self.batch_max = batch_max
        self.batch_seconds = batch_seconds
        self.backoff_max = backoff_max
        self.degraded_after = degraded_after
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.retried = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self.error: str | None = None
        self._inflight = 0  # records of the batch being sent

    # -- the request path -------------------------------------------------------------------
    def offer(self, item: Any) -> None:
        """Queue one record; never blocks on the sink, never raises."""
        with self._cond:
            self._queue.append(item)
            while len(self._queue) > self.capacity:
                self._queue.popleft()
                self.dropped += 1
            if len(self._queue) in (1, self.batch_max):  # the first of a batch, a full one
                self._cond.notify()

    # -- state --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"sent": self.sent, "retried": self.retried, "dropped": self.dropped,
                    "queued": len(self._queue), "failing_since": self.failing_since,
                    "error": self.error}

    def problem(self, now: float | None = None) -> str | None:
        """A sentence for ``/v1/health`` once the sink has failed for ``degraded_after``."""
        with self._cond:
            since, error = self.failing_since, self.error
        if since is None:
            return None
        failing = (time.monotonic() if now is None else now) - since
        if failing <= self.degraded_after:
            return None
        return (f"audit sink {self.name} has been failing for {failing:.0f} s ({error}); "
                "records wait in a bounded queue and the oldest are dropped when it is full")

    # -- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"audit-sink-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then give up (counted)."""
        self.begin_stop()
        self.finish_stop(timeout)

    def begin_stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def finish_stop(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                self.dropped += self._inflight  # still stuck in a send: given up
                self._inflight = 0
            self.dropped += len(self._queue)
            self._queue.clear()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            backoff = 0.0
            while True:
                batch = self._next_batch(backoff)
                if batch is None:
                    break
                if self._deliver(loop, batch):
                    backoff = 0.0
                else:
                    backoff = min(self.backoff_max, max(BACKOFF_START, backoff * 2))
        finally:
            if self._close is not None:
                try:
                    loop.run_until_complete(self._close())
                except Exception:  # noqa: BLE001 - closing a broken connection
                    log.debug("audit sink %s: close failed", self.name)
            loop.close()

    def _next_batch(self, backoff: float) -> list[Any] | None:
        """Wait for a full batch, ``batch_seconds`` after the first record, or the backoff
        after a failure; None once stopping with nothing left (or still failing)."""
        with self._cond:
            if backoff:
                self._cond.wait_for(lambda: self._stopping, timeout=backoff)
                if self._stopping:
                    return None  # still failing: what is queued is counted as dropped
            self._cond.wait_for(lambda: self._queue or self._stopping)
            if not self._queue:
                return None
            if not self._stopping and len(self._queue) < self.batch_max:
                self._cond.wait_for(
                    lambda: len(self._queue) >= self.batch_max or self._stopping,
                    timeout=self.batch_seconds,
                )
            n = min(self.batch_max, len(self._queue))
            self._inflight = n
            return [self._queue.popleft() for _ in range(n)]

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[Any]) -> bool:
        try:
            loop.run_until_complete(self._send(batch))
        except Exception as e:  # noqa: BLE001 - any failure is a retry, never the caller's
            why = str(e) if isinstance(e, SinkFailed) else type(e).__name__
            self._failed(batch, why)
            return False
        with self._cond:
            self._inflight = 0
            self.sent += len(batch)
            if self.failing_since is not None:
                log.warning("audit sink %s delivers again", self.name)
            self.failing_since = None
            self.error = None
        return True

    def _failed(self, batch: list[Any], why: str) -> None:
        with self._cond:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning("audit sink %s: sending failed (%s); retrying with backoff",
                            self.name, why)
            self.error = why
            self._inflight = 0
            self.retried += len(batch)
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.capacity:
                self._queue.popleft()
                self.dropped += 1
