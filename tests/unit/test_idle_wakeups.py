"""An idle proxy's upkeep loops sleep until something is due (core/wakeup.py): the sources'
refresh loop while no source refreshes, the pool's watcher until the earliest idle
expiry. A state change (reload, lock, unlock, another state) or a new connection wakes them;
a wake while nobody sleeps is kept for the next sleep."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from vaultproxy.core.state import Live
from vaultproxy.core.wakeup import StateWatch, Wakeup
from vaultproxy.sync.run import Syncer


def _timers(loop: asyncio.AbstractEventLoop) -> list[Any]:
    return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


def test_wakeup_sleeps_until_woken_from_another_thread_or_its_delay() -> None:
    async def scenario() -> tuple[bool, bool, bool, float]:
        w = Wakeup()
        t = threading.Timer(0.05, w.wake)
        t.start()
        woken = await asyncio.wait_for(w.sleep(None), 2)
        t0 = time.monotonic()
        timed_out = await w.sleep(0.05)
        took = time.monotonic() - t0
        w.wake()  # nobody sleeps: kept, the next sleep returns at once
        early = await asyncio.wait_for(w.sleep(10), 0.5)
        return woken, timed_out, early, took

    woken, timed_out, early, took = asyncio.run(scenario())
    assert woken and early and not timed_out
    assert took >= 0.04


def test_live_assignment_and_state_changes_wake_the_watch() -> None:
    """Another state wakes it, and it follows the new state's ``on_change``; ``close``
    takes both back (twin: after close, nothing is registered)."""
    a = SimpleNamespace(on_change=[])
    b = SimpleNamespace(on_change=[])
    live = Live(a)  # type: ignore[arg-type]
    w = Wakeup()
    watch = StateWatch(live, w)
    assert a.on_change == [w.wake]
    live.state = b  # type: ignore[assignment]
    assert w._pending
    w._pending = False
    assert a.on_change == [] and b.on_change == [w.wake]
    for cb in b.on_change:
        cb()
    assert w._pending
    watch.close()
    assert b.on_change == [] and live._watchers == []


def _state(*refresh: float, locked: bool = False) -> SimpleNamespace:
    sources = [SimpleNamespace(name=f"s{i}", refresh_seconds=r) for i, r in enumerate(refresh)]
    return SimpleNamespace(locked=locked, on_change=[],
                           registry=SimpleNamespace(config=SimpleNamespace(sources=sources)))


def test_refresh_loop_sleeps_without_a_timer_until_a_source_refreshes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No source with ``refresh_seconds`` (or locked): no timer at all. A reload that adds
    one (``on_change``) starts the ticks, and the source is synced a tick later, as before.
    Twin: unlocking with a refreshing source does the same."""
    synced: list[tuple[str, float]] = []

    async def sync(self: Syncer, state: Any, only: str | None = None,
                   trigger: str = "api") -> list[Any]:
        synced.append((str(only), time.monotonic()))
        state.registry.config.sources[0].refresh_seconds = 0  # (synced: none due any more)
        return []

    monkeypatch.setattr(Syncer, "sync", sync)
    monkeypatch.setattr(Syncer, "due", lambda self, state, now: [
        s.name for s in state.registry.config.sources if s.refresh_seconds > 0])

    async def scenario() -> tuple[list[Any], list[Any], float, float]:
        loop = asyncio.get_running_loop()
        st = _state(0)
        live = Live(st)  # type: ignore[arg-type]
        task = asyncio.create_task(Syncer().refresh_loop(live, tick=0.1))
        await asyncio.sleep(0.05)
        idle = _timers(loop)
        st.registry.config.sources[0].refresh_seconds = 60  # a reload adds the refresh
        t0 = time.monotonic()
        for cb in list(st.on_change):
            cb()
        await asyncio.sleep(0.3)
        locked = _state(60, locked=True)
        live.state = locked  # type: ignore[assignment]
        await asyncio.sleep(0.05)
        idle_locked = _timers(loop)
        locked.locked = False  # unlock
        t1 = time.monotonic()
        for cb in list(locked.on_change):
            cb()
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert st.on_change == [] and locked.on_change == []
        return idle, idle_locked, t0, t1

    idle, idle_locked, t0, t1 = asyncio.run(scenario())
    assert idle == [] and idle_locked == []
    assert [name for name, _ in synced] == ["s0", "s0"]
    assert 0.08 <= synced[0][1] - t0 < 0.3
    assert 0.08 <= synced[1][1] - t1 < 0.3
