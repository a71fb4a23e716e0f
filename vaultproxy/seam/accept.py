"""The proxy's accept loop: bounded under descriptor exhaustion, never a spin.

asyncio's own loop (``BaseSelectorEventLoop._accept_connection``) logs a traceback per
retry when ``accept()`` fails with EMFILE and accepts right up to the last descriptor, so
the upstream dial, the audit file and the admin socket fail next. Here:

* a connection whose descriptor lands in the **reserve** (the top ``reserve`` descriptors
  below RLIMIT_NOFILE -- Linux hands out the lowest free number, so a high number means all
  below it are taken) is answered ``503 overloaded`` and closed at once;
* ``accept()`` failing for want of descriptors (EMFILE/ENFILE/ENOBUFS/ENOMEM) closes one
  spare descriptor held for this moment, refuses what waits in the queue the same way,
  takes the spare back, and pauses accepting with exponential backoff (50 ms .. 1 s);
* ``Meter`` logs one WARNING line per interval with the counts, and one when it recovers.

``SharedServer`` looks like the ``asyncio.Server`` mitmproxy expects (``sockets``,
``close``, ``wait_closed``, ``is_serving``). It needs nothing of the loop but ``add_reader``,
``remove_reader``, ``call_later`` and ``open_connection(sock=...)``: it accepts the same way
on uvloop's loop (engine/loop.py; libuv polls level-triggered, as the selector does, so one
connection per wake-up holds there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vaultproxy.errors import Overloaded, error_body

logger = logging.getLogger("vaultproxy.overload")

RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
MIN_BACKOFF, MAX_BACKOFF = 0.05, 1.0
BATCH = 64  # refusals drained per wake-up (asyncio's default backlog loop does 100)
LOG_INTERVAL = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reserve_for(limit: int) -> int:
    """Descriptors kept free for the admin socket, the audit file and upstream dials."""
    return max(16, min(128, limit // 8))


def _refusal() -> bytes:
    body = error_body(Overloaded.code, Overloaded.public)
    head = (
        f"HTTP/1.1 {Overloaded.status} Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"x-vaultproxy-error: {Overloaded.code}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSAL = _refusal()


def nodelay(conn: socket.socket) -> None:
    """TCP_NODELAY on an accepted connection. asyncio sets it only on sockets whose ``proto``
    is IPPROTO_TCP, and a socket built from a passed descriptor (or ``socket(AF_INET,
    SOCK_STREAM)``) says 0: without this every response written in two pieces (head, then
    body) waits ~40 ms for the client's delayed ACK (Nagle)."""
    if conn.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def refuse(conn: socket.socket) -> None:
    """Answer ``503 overloaded`` and close, without waiting: read what already arrived (so
    the close is a FIN, not a reset that could overtake the answer), send, close."""
    try:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.recv(65536)
        with contextlib.suppress(OSError):
            conn.send(REFUSAL)
            conn.shutdown(socket.SHUT_WR)
    finally:
        conn.close()


class Meter:
    """Counts refusals and pauses; logs at most one line per ``interval``."""

    def __init__(self, limit: int, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.interval = interval
        self.clock = clock
        self.refused = 0
        self.pauses = 0
        self.total_refused = 0
        self._since: float | None = None  # start of the current overload episode
        self._logged: float | None = None

    def note(self, refused: int = 0, paused: bool = False) -> None:
        self.refused += refused
        self.total_refused += refused
        self.pauses += int(paused)
        now = self.clock()
        if self._since is None:
            self._since = now
        if self._logged is None or now - self._logged >= self.interval:
            self._log(now, "overloaded")

    def ok(self) -> None:
        """A connection was accepted normally: close an episode (one line) if one is open."""
        if self._since is None:
            return
        now = self.clock()
        if self._logged is not None and now - self._logged < self.interval:
            return  # the next line says it, at most one per interval
        self._log(now, "recovered")
        self._since = None
        self._logged = None

    def _log(self, now: float, what: str) -> None:
        assert self._since is not None
        logger.warning(
            "%s: out of file descriptors (limit %d, %.0f s so far): %d connection(s) "
            "refused with 503 overloaded, accept paused %d time(s) since the last line",
            what, self.limit, now - self._since, self.refused, self.pauses,
        )
        self.refused = 0
        self.pauses = 0
        self._logged = now


class Occupancy:
    """The connections this process's SharedServers serve, and a callback on the
    first one (``notify(True)``) and the end of the last one (``notify(False)``): a
    ``--workers`` process tells its supervisor whether it holds any connection, and one
    that holds none is not pinged (engine/worker.py ``_Occupancy``, engine/workers.py: an
    idle proxy sleeps). Loop thread."""

    def __init__(self) -> None:
        self.count = 0
        self.notify: Callable[[bool], None] | None = None

    def opened(self) -> None:
        self.count += 1
        if self.count == 1 and self.notify is not None:
            self.notify(True)

    def closed(self, _task: object = None) -> None:
        self.count -= 1
        if self.count == 0 and self.notify is not None:
            self.notify(False)


#: this process's (one per process: every SharedServer counts here)
OCCUPANCY = Occupancy()


class SharedServer:
    """Serves ``sock`` (a listening socket, possibly shared with other processes)."""

    def __init__(self, sock: socket.socket, handle: Handler,
                 loop: asyncio.AbstractEventLoop) -> None:
        sock.setblocking(False)
        self.sockets = [sock]
        self._sock = sock
        self._handle = handle
        self._loop = loop
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = limit if limit != resource.RLIM_INFINITY and limit > 0 else 1 << 20
        self._threshold = max(1, limit - reserve_for(limit))
        self.meter = Meter(limit)
        self._backoff = MIN_BACKOFF
        self._retry: asyncio.TimerHandle | None = None
        self._spare: int | None = self._open_spare()
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving = True
        loop.add_reader(sock.fileno(), self._on_readable)

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _on_readable(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                if e.errno in RESOURCE_ERRORS:
                    self._exhausted()
                    return
                logger.warning("accept failed: %s", e.strerror)
                return
            if conn.fileno() >= self._threshold:
                refuse(conn)
                self.meter.note(refused=1)
                continue
            self._backoff = MIN_BACKOFF
            self.meter.ok()
            self._start(conn)
            # One served connection per wake-up (nginx's ``multi_accept off``): with
            # ``--workers N`` every process waits on this one queue, and a process that
            # took a whole burst at once would serve it alone while the others idle.
            return

    def _exhausted(self) -> None:
        """Out of descriptors: refuse what waits (with the spare), pause, back off."""
        refused = 0
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            for _ in range(BATCH):
                try:
                    conn, _addr = self._sock.accept()
                except OSError:
                    break
                refuse(conn)
                refused += 1
            self._spare = self._open_spare()
        self.meter.note(refused=refused, paused=True)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._retry = self._loop.call_later(self._backoff, self._resume)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            if self._spare is None:
                self._spare = self._open_spare()
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        nodelay(conn)
        OCCUPANCY.opened()  # (before the task: a task done at once still ends after this)
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(OCCUPANCY.closed)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        await self._handle(reader, writer)

    # -- what mitmproxy calls on an asyncio.Server ------------------------------------------
    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        """Stop accepting (connections already accepted carry on, as asyncio's close)."""
        if not self._serving:
            return
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> Any:
        return self._loop
