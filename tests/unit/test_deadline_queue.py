"""The Deadline stage's queued deadlines: each request's response and idle deadline runs out at
its own time, though they share one loop timer (queues by length, stages/deadline.py).

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
        stage._wait(a, 0.15, "response")
        await asyncio.sleep(0.1)
        stage._wait(b, 0.15, "response")
        stage._wait(c, 0.15, "response")
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
        stage._wait(slow, 1.0, "response")
        stage._wait(quick, 0.1, "response")
        await asyncio.sleep(0.3)
        assert [k for k, _, _ in stage.expired] == [quick.id]  # the slow one is not due yet
        await asyncio.sleep(0.85)

    asyncio.run(go())
    assert [k for k, _, _ in stage.expired] == [quick.id, slow.id]
    assert stage.expired[0][2] >= 0.1 and stage.expired[1][2] >= 1.0


def test_the_response_head_replaces_the_response_deadline_with_the_idle_one(
    rt: Runtime,
) -> None:
    stage = Watched(rt)
    (f,) = _flows(1)

    async def go() -> None:
        stage._wait(f, 0.1, "response")
        await asyncio.sleep(0.05)
        stage._wait(f, 0.3, "idle")  # responseheaders
        await asyncio.sleep(0.15)
        assert stage.expired == []  # the response deadline was cleared by the head
        await asyncio.sleep(0.3)

    asyncio.run(go())
    # No connection to watch (no master): the idle check counts it quiet all along.
    assert [(k, why) for k, why, _ in stage.expired] == [(f.id, "idle")]
    assert stage.expired[0][2] >= 0.35


def test_the_hooks_queue_and_clear_a_flows_deadlines(rt: Runtime) -> None:
    """request -> response deadline; responseheaders -> idle; response -> none (the stage's
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
            float(cfg.response_timeout)]
        stage.responseheaders(f)
        assert [q.seconds for q in stage._queues.values() if f.id in q.flows] == [
            float(cfg.idle_timeout)]
        stage.response(f)
        assert not any(f.id in q.flows for q in stage._queues.values())

    asyncio.run(go())
    assert stage.expired == []
