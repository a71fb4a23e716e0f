"""The Deadline stage's queued deadlines: each request's response and idle deadline runs out at
its own time, though they share one loop timer and the response head is not a hook of the
stage (queues by first check, stages/deadline.py).

The stage runs on a real event loop with real mitmproxy flows; what it does once a deadline
runs out (end the upstream connection through the seam) is recorded here instead, because
these flows have no connection to end: tests/integration/test_bounded.py covers that part
end to end (a silent upstream answered 504, a stalled stream closed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mitmproxy import ctx, http, master, options
from mitmproxy.test import tflow

from vaultproxy.core.state import Live, ProxyState
from vaultproxy.files.home import Home
from vaultproxy.stages import Runtime
from vaultproxy.stages.deadline import Deadline


class Watched(Deadline):
    """The stage, with the end of an upstream connection recorded instead of done."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.expired: list[tuple[str, str, float]] = []
        self.t0 = time.monotonic()

    def _expire(self, key: str, client_id: str, server: object, why: str) -> None:  # type: ignore[override]
        self.expired.append((key, why, time.monotonic() - self.t0))


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    home = Home(Path(tmp_path_factory.mktemp("dl")) / "home")
    home.create()
    home.services.write_text("")
    return Runtime(Live(ProxyState.load(home)))


def _flows(n: int) -> list[http.HTTPFlow]:
    return [tflow.tflow() for _ in range(n)]


def test_each_deadline_runs_out_at_its_own_time_and_a_cleared_one_never(rt: Runtime) -> None:
    stage = Watched(rt)
    a, b, c = _flows(3)

    async def go() -> None:
        stage._wait(a, 0.15, 9.0)
        await asyncio.sleep(0.1)
        stage._wait(b, 0.15, 9.0)
        stage._wait(c, 0.15, 9.0)
        stage._unwait(c.id)  # its response came in
        await asyncio.sleep(0.4)

    asyncio.run(go())
    assert [(k, why) for k, why, _ in stage.expired] == [(a.id, "response"), (b.id, "response")]
    (_, _, ta), (_, _, tb) = stage.expired
    assert ta >= 0.15 and tb >= 0.25  # each at its own due time (b not along with a)
    assert not stage._queues  # nothing left behind


def test_a_shorter_deadline_set_later_is_not_held_behind_a_longer_one(rt: Runtime) -> None:
    """After a reload shortens a timeout, a new request's deadline runs out on time although
    an older, longer one is queued first (one queue for all would hold it until then)."""
    stage = Watched(rt)
    slow, quick = _flows(2)

    async def go() -> None:
        stage._wait(slow, 1.0, 9.0)
        stage._wait(quick, 0.1, 9.0)
        await asyncio.sleep(0.3)
        assert [k for k, _, _ in stage.expired] == [quick.id]  # the slow one is not due yet
        await asyncio.sleep(0.85)

    asyncio.run(go())
    assert [k for k, _, _ in stage.expired] == [quick.id, slow.id]
    assert stage.expired[0][2] >= 0.1 and stage.expired[1][2] >= 1.0


def _head(f: http.HTTPFlow) -> None:
    """The response head arrives now (mitmproxy stamps it with the wall clock)."""
    f.response = http.Response.make(200, b"")
    f.response.timestamp_start = time.time()


def test_a_head_in_time_turns_the_response_deadline_into_the_idle_one(rt: Runtime) -> None:
    stage = Watched(rt)
    f, g = _flows(2)
    f.response = g.response = None

    async def go() -> None:
        stage._wait(f, 0.1, 0.3)
        stage._wait(g, 0.1, 0.3)  # the twin: its head never comes
        await asyncio.sleep(0.05)
        _head(f)
        await asyncio.sleep(0.15)
        assert [(k, why) for k, why, _ in stage.expired] == [(g.id, "response")]
        await asyncio.sleep(0.35)

    asyncio.run(go())
    # No connection to watch (no master): quiet since the head arrived, ~0.05 s in.
    assert [(k, why) for k, why, _ in stage.expired] == [(g.id, "response"), (f.id, "idle")]
    assert stage.expired[1][2] >= 0.35


def test_a_response_deadline_longer_than_the_idle_one_is_still_kept(rt: Runtime) -> None:
    """The first check comes at the idle timeout; a flow still without a head then is only
    expired once the response timeout has passed, and one whose head came is idle-checked."""
    stage = Watched(rt)
    f, g = _flows(2)
    f.response = g.response = None

    async def go() -> None:
        stage._wait(f, 0.4, 0.1)
        stage._wait(g, 0.4, 0.1)
        await asyncio.sleep(0.2)
        assert stage.expired == []  # past the idle timeout, not yet the response timeout
        _head(g)
        await asyncio.sleep(0.5)

    asyncio.run(go())
    assert [(k, why) for k, why, _ in stage.expired] == [(g.id, "idle"), (f.id, "response")]
    assert stage.expired[0][2] >= 0.3 and stage.expired[1][2] >= 0.4


def test_the_hooks_queue_and_clear_a_flows_deadlines(rt: Runtime) -> None:
    """request -> queued (first check at the shorter timeout); response -> none (the stage's
    own hooks, with the config's timeouts)."""
    stage = Watched(rt)
    (f,) = _flows(1)
    f.response = None
    cfg = rt.state().registry.config.proxy

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        ctx.master, ctx.options = m, m.options  # the stage reads the engine's options
        try:
            await hooks()
        finally:
            m._legacy_log_events.uninstall()

    async def hooks() -> None:
        stage.request(f)
        assert [q.seconds for q in stage._queues.values() if f.id in q.flows] == [
            min(float(cfg.response_timeout), float(cfg.idle_timeout))]
        stage.response(f)
        assert not any(f.id in q.flows for q in stage._queues.values())

    asyncio.run(go())
    assert stage.expired == []
