"""Sleep until something is due or until woken: the upkeep loops of an idle proxy (the
pool's watcher, the sources' refresh) wait on this instead of a fixed tick, so an idle
proxy's event loop sleeps until a timer is actually due.

``wake()`` may be called from any thread (a state change can come from a worker thread:
``unlock`` runs the KDF off the loop). A wake while nobody sleeps is kept: the next
``sleep`` returns at once (so a change between a loop's look at the state and its sleep is
never lost; at worst the loop looks once more)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Wakeup:
    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._pending = False

    def wake(self) -> None:
        """End the current ``sleep`` (or the next one, at once). Thread-safe."""
        self._pending = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            with contextlib.suppress(RuntimeError):  # (its loop is closed: nobody sleeps)
                waiter.get_loop().call_soon_threadsafe(_release, waiter)

    async def sleep(self, delay: float | None) -> bool:
        """Sleep ``delay`` seconds (None: until woken), or less if woken; True if woken."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        if self._pending:  # (a wake before this sleep: checked after ``_waiter`` is set)
            self._pending = False
            self._waiter = None
            return True
        timer = loop.call_later(max(delay, 0.0), _release, waiter) if delay is not None else None
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
            if timer is not None:
                timer.cancel()
        woken = self._pending
        self._pending = False
        return woken


class StateWatch:
    """Wake ``wakeup`` on any change of ``live``'s state: its replacement (``Live.watch``) or
    a change of the state itself (reload, lock, unlock, keystore refresh: ``on_change``).
    ``close()`` takes the callbacks back."""

    def __init__(self, live: Any, wakeup: Wakeup) -> None:
        self.live, self.wakeup = live, wakeup
        self._on: Any = None
        live.watch(self._swapped)
        self._follow()

    def _swapped(self) -> None:
        self._follow()
        self.wakeup.wake()

    def _follow(self) -> None:
        st = self.live.state
        if st is self._on:
            return
        if self._on is not None:
            with contextlib.suppress(ValueError):
                self._on.on_change.remove(self.wakeup.wake)
        if st is not None:
            st.on_change.append(self.wakeup.wake)
        self._on = st

    def close(self) -> None:
        self.live.unwatch(self._swapped)
        if self._on is not None:
            with contextlib.suppress(ValueError):
                self._on.on_change.remove(self.wakeup.wake)
        self._on = None
