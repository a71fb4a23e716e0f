"""Fewer event-loop steps per request, same behaviour (bench/hops.py counts them):

* net/h1pool.py ``_Conn.wait``: one read timer per connection, set again only when needed,
  against the code it replaces (a ``call_later`` per wait, cancelled after it, kept here as
  the reference), on seeded scripts of waits, bytes, cancellations and the end, on a loop
  whose clock moves only when the loop would sleep (so every time is exact).
* seam/lean.py ``hook_task`` for a ``LeanHook``: ``handle_hook``, ``run_disarmed`` and
  ``_Job.run`` inline, against mitmproxy's ``hook_task`` running them, on seeded scripts of
  overlapping jobs (answered, failing, cancelled, finished inside ``create_task`` by the
  eager task factory, an agent whose writer must be drained first or is gone).

Each has a twin: the comparison sees a broken fast path."""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Callable
from typing import Any

import pytest
from mitmproxy.proxy import events, server
from mitmproxy.test import tflow

from vaultproxy.net import h1pool
from vaultproxy.seam import aftersend, connio, lean

# --- a loop whose clock jumps to the next timer -------------------------------------------


class _Selector(selectors.DefaultSelector):
    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> Any:
        if timeout is None:
            raise RuntimeError("nothing scheduled: the script would wait for ever")
        if timeout > 0:
            self.clock[0] += timeout
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = [1000.0]
        super().__init__(_Selector(self.clock))

    def time(self) -> float:
        return self.clock[0]


def _run(main: Callable[[], Any]) -> Any:
    loop = _VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# --- the read timer ---------------------------------------------------------------------


class _PerWaitTimer(h1pool._Conn):
    """``wait`` as it was: a coroutine awaiting ``_done``, a timer per wait (the
    reference; tests/unit/test_speed_raises.py compares ``_done`` with ``await fut``)."""

    async def wait(self, timeout: float | None) -> None:  # type: ignore[override]
        if not self.inbox and not self.eof:
            loop = asyncio.get_running_loop()
            waiter = self.waiter = loop.create_future()
            timer = (loop.call_later(timeout, h1pool._expire, waiter) if timeout is not None
                     else None)
            try:
                await h1pool._done(waiter)
            finally:
                if timer is not None:
                    timer.cancel()
                self.waiter = None


class _Forgetful(h1pool._Conn):
    """A broken fast path: a timer that fires expires the waiting read, whatever its
    deadline (one set by an earlier read cuts a later, longer one short)."""

    def _timer_fired(self) -> None:
        self.timer = None
        if self.waiter is not None and self.deadline is not None:
            h1pool._expire(self.waiter)


def _reads(seed: int, cls: type[h1pool._Conn]) -> list[tuple[str, float]]:
    """A seeded script of reads on one connection: per read its timeout (or none), when
    bytes come (or never), a cancellation, an idle gap before it, and maybe the end of
    the connection; what each read saw and how long it waited."""
    rng = random.Random(seed)
    steps = []
    for _ in range(rng.randint(1, 8)):
        timeout = rng.choice([None, 0.3, 1.0, 2.5, 7.0])
        arrive = rng.uniform(0, 9) if rng.random() < 0.7 else None
        cancel = rng.uniform(0, 9) if rng.random() < 0.15 else None
        lost = rng.uniform(0, 9) if rng.random() < 0.05 else None
        gap = rng.uniform(0, 10) if rng.random() < 0.5 else 0.0
        steps.append((timeout, arrive, cancel, lost, gap))

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        conn = cls(("h", 1, "s"))
        seen = []
        for timeout, arrive, cancel, lost, gap in steps:
            if gap:
                await asyncio.sleep(gap)
            start = loop.time()
            handles = []
            if arrive is not None:
                handles.append(loop.call_later(arrive, conn.data_received, b"x"))
            if lost is not None:
                handles.append(loop.call_later(lost, conn.connection_lost, None))
            task = asyncio.ensure_future(conn.wait(timeout))
            if cancel is not None:
                handles.append(loop.call_later(cancel, task.cancel))
            if timeout is None and arrive is None and lost is None and cancel is None:
                handles.append(loop.call_later(20.0, task.cancel))  # (else: for ever)
            try:
                await task
                outcome = "bytes" if conn.inbox else "end" if conn.eof else "?"
            except TimeoutError:
                outcome = "timeout"
            except asyncio.CancelledError:
                outcome = "cancelled"
            seen.append((outcome, round(loop.time() - start, 6)))
            for handle in handles:
                handle.cancel()
            conn.take()
        return seen

    return _run(main)  # type: ignore[no-any-return]


def test_one_read_timer_times_out_as_a_timer_per_wait() -> None:
    """500 seeded scripts: every read ends the same way (bytes, the end, a timeout, a
    cancellation) after the same time with the connection's one timer as with a timer set
    and cancelled per wait."""
    for seed in range(500):
        assert _reads(seed, h1pool._Conn) == _reads(seed, _PerWaitTimer), seed


def test_twin_the_read_timer_comparison_sees_a_timer_that_ignores_the_deadline() -> None:
    assert any(_reads(seed, _Forgetful) != _reads(seed, _PerWaitTimer) for seed in range(200))


def test_keep_alive_reads_set_the_read_timer_rarely() -> None:
    """The point: 200 reads answered in 5 ms each, a 30 s read timeout, set the timer
    once (not 200 times), and a read whose deadline is earlier sets it anew."""

    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        conn = h1pool._Conn(("h", 1, "s"))
        made = 0
        call_at = loop.call_at

        def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal made
            made += callback == conn._timer_fired
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting  # type: ignore[method-assign,assignment]
        for _ in range(200):
            loop.call_later(0.005, conn.data_received, b"x")
            await conn.wait(30.0)
            conn.take()
        try:
            await conn.wait(0.5)  # (nothing comes)
            short = "answered"
        except TimeoutError:
            short = "timed out"
        return made, short

    made, short = _run(main)
    assert made == 2
    assert short == "timed out"


# --- the lean hook task -------------------------------------------------------------------


class _Writer:
    """The agent's writer: ``drain`` waits (a gate) or raises as the script says."""

    def __init__(self, log: list[Any], name: int, gate: asyncio.Future[None] | None,
                 fail: bool) -> None:
        self.log, self.name, self.gate, self.fail = log, name, gate, fail

    async def drain(self) -> None:
        self.log.append(("drain", self.name))
        if self.gate is not None:
            await self.gate
        if self.fail:
            raise ConnectionResetError("the agent is gone")


class _Lean:
    def __init__(self) -> None:
        self.route: Any = False  # (the bypass is seam/bypass.py's: not attached here)
        self.later = aftersend.Later()  # (the layer's: nothing opened in it here)
        # (what the hook task keeps of the connection across its requests)
        self.agent_stream: Any = None
        self.watchdog: Any = None
        self.watch_can: Any = None

    def client_gone(self) -> bool:
        return False


def _handler_class() -> type:
    lean.install()
    # (the watchdog's event and activity inline in the hook task, as in the proxy)
    assert connio.install() and connio.INLINE_EVENT[0] is asyncio.Event
    assert connio.INLINE_WATCHDOG[0] is server.TimeoutWatchdog
    from mitmproxy.proxy import mode_servers

    class Handler:
        handle_hook = mode_servers.ProxyConnectionHandler.handle_hook

        def __init__(self, log: list[Any]) -> None:
            self.log = log
            self.client = object()
            self.transports: dict[Any, Any] = {}
            self.timeout_watchdog = server.TimeoutWatchdog(60, lambda: asyncio.sleep(0))
            self.master = type("M", (), {"addons": "the addons"})()

        async def server_event(self, event: Any) -> None:
            assert type(event) is events.HookCompleted and event.reply is None
            wd = self.timeout_watchdog  # (re-armed before the completion, as mitmproxy's)
            hook: Any = event.command
            self.log.append(("completed", hook.flow.id, wd.can_timeout.is_set(),
                             wd.blocker))

    return Handler


def _jobs(seed: int, task_of: Callable[[Any, Any], Any], eager: bool) -> list[Any]:
    """Seeded overlapping lean hooks on one handler, each job's ``_request`` a script
    (answers, raises, or waits on a gate that is later released or failed; some tasks are
    cancelled); the writer drained first for some. After each step: the watchdog's state,
    what the handler saw, each job's outcome."""
    rng = random.Random(seed)
    Handler = _handler_class()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)
        log: list[Any] = []
        h = Handler(log)
        h.timeout_watchdog.last_activity = 0.0
        shared = _Lean()
        live: list[tuple[asyncio.Task[None], asyncio.Future[None], Any]] = []
        hooks: list[Any] = []
        seen: list[Any] = []
        for _ in range(rng.randint(1, 7)):
            roll = rng.random()
            if live and roll < 0.45:
                task, gate, hook = live.pop(rng.randrange(len(live)))
                what = rng.random()
                if what < 0.15:
                    task.cancel()
                elif not gate.done():
                    if what < 0.35:
                        gate.set_exception(ValueError("a stage raised"))
                    else:
                        gate.set_result(None)
            else:
                flow = tflow.tflow()
                hook = lean.LeanHook(flow)
                # (one layer's requests share what the hook task keeps of the connection)
                pick = rng.random()
                hook.job.lean = (  # type: ignore[assignment]
                    shared if pick < 0.4 else _Lean() if pick < 0.7 else None)
                gate = loop.create_future()
                sync = rng.random() < 0.3  # done without waiting (inside create_task)
                fails = rng.random() < 0.2

                async def request(gate: asyncio.Future[None] = gate, sync: bool = sync,
                                  fails: bool = fails, flow: Any = flow) -> str:
                    log.append(("request", flow.id))
                    if not sync:
                        await gate
                    if fails:
                        raise RuntimeError("the hooks failed")
                    return lean.SEND

                hook.job._request = request  # type: ignore[method-assign]
                writer_kind = rng.random()
                if writer_kind < 0.2:
                    h.transports.pop(h.client, None)
                else:
                    wgate = loop.create_future() if writer_kind < 0.35 else None
                    writer = _Writer(log, len(hooks), wgate, rng.random() < 0.2)
                    h.transports[h.client] = type("IO", (), {"writer": writer})()
                    if wgate is not None:
                        loop.call_soon(wgate.set_result, None)
                hooks.append(hook)
                task = asyncio.ensure_future(task_of(h, hook))
                live.append((task, gate, hook))
            h.timeout_watchdog.last_activity = 0.0
            wd = h.timeout_watchdog
            if not wd.can_timeout.is_set() and rng.random() < 0.5:
                # the watchdog's own task waiting to be armed again: woken by the set
                waiter = asyncio.ensure_future(wd.can_timeout.wait())
                waiter.add_done_callback(lambda w: log.append(("armed", w.cancelled())))
            for _ in range(3):
                await asyncio.sleep(0)
            seen.append((wd.can_timeout.is_set(), wd.blocker, wd.last_activity > 0,
                         list(log)))
        for _task, gate, _ in live:
            if not gate.done():
                gate.set_result(None)
        await asyncio.gather(*(t for t, _, _ in live), return_exceptions=True)
        wd = h.timeout_watchdog
        seen.append((wd.can_timeout.is_set(), wd.blocker, wd.last_activity > 0, list(log)))
        seen.append([(hk.job.outcome, hk.job.code, hk.job.message, hk.flow.live,
                      hk.job.addons) for hk in hooks])
        return seen

    # (ids: the flows' own differ per run; the order of events is what is compared)
    out = asyncio.run(main())
    ids: dict[str, int] = {}

    def norm(x: Any) -> Any:
        if isinstance(x, list):
            return [norm(i) for i in x]
        if isinstance(x, tuple):
            return tuple(norm(i) for i in x)
        if isinstance(x, str) and len(x) == 36 and x.count("-") == 4:
            return ids.setdefault(x, len(ids))
        return x

    return norm(out)  # type: ignore[no-any-return]


def _fast(h: Any, hook: Any) -> Any:
    return server.ConnectionHandler.hook_task(h, hook)


def _stock(h: Any, hook: Any) -> Any:
    lean.install()
    return lean.STOCK["hook_task"](h, hook)


def test_lean_hook_task_is_installed() -> None:
    lean.install()
    assert lean.STOCK["hook_task"] is not None
    assert server.ConnectionHandler.hook_task is not lean.STOCK["hook_task"]


@pytest.mark.parametrize("eager", [True, False])
def test_lean_hook_task_runs_as_mitmproxys_hook_task(eager: bool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """400 seeded scripts, with mitmproxy's eager task factory and without: the same
    drains, jobs, outcomes, watchdog states and ``HookCompleted`` events in the same order,
    with the inline hook task as with mitmproxy's ``hook_task`` calling ``handle_hook``."""
    for seed in range(400):
        assert _jobs(seed, _fast, eager) == _jobs(seed, _stock, eager), seed


def test_twin_the_hook_task_comparison_sees_a_completion_sent_before_the_job_ends() -> None:
    async def hasty(h: Any, hook: Any) -> None:
        await h.server_event(events.HookCompleted(hook))
        await lean.run_disarmed(h.timeout_watchdog, hook.job.run(h.master.addons))

    assert any(_jobs(seed, hasty, True) != _jobs(seed, _stock, True) for seed in range(50))


def test_a_job_done_inside_create_task_completes_inside_it() -> None:
    """With the eager task factory a job that never waits runs to its end inside
    ``create_task``: its ``HookCompleted`` is sent and the watchdog armed again before
    ``create_task`` returns, as mitmproxy's ``hook_task`` does."""
    Handler = _handler_class()

    async def main() -> tuple[bool, list[Any], bool, int]:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        log: list[Any] = []
        h = Handler(log)
        hook = lean.LeanHook(tflow.tflow())

        async def request() -> str:
            return lean.SEND

        hook.job._request = request  # type: ignore[method-assign]
        task = asyncio.create_task(server.ConnectionHandler.hook_task(h, hook))
        return task.done(), log, h.timeout_watchdog.can_timeout.is_set(), (
            h.timeout_watchdog.blocker)

    done, log, armed, blockers = asyncio.run(main())
    assert done and armed and blockers == 0
    assert [k[0] for k in log] == ["completed"]


def test_a_cancelled_job_re_arms_the_watchdog_and_completes_nothing() -> None:
    """A hook task cancelled while its job waits (the connection closed under it): the
    watchdog is armed again, no ``HookCompleted`` is sent, the cancellation propagates."""
    Handler = _handler_class()

    async def main() -> tuple[bool, list[Any], bool, int]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        log: list[Any] = []
        h = Handler(log)
        hook = lean.LeanHook(tflow.tflow())
        gate = loop.create_future()

        async def request() -> str:
            await gate
            return lean.SEND

        hook.job._request = request  # type: ignore[method-assign]
        task = asyncio.create_task(server.ConnectionHandler.hook_task(h, hook))
        assert not task.done() and not h.timeout_watchdog.can_timeout.is_set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return cancelled, log, h.timeout_watchdog.can_timeout.is_set(), (
            h.timeout_watchdog.blocker)

    cancelled, log, armed, blockers = asyncio.run(main())
    assert cancelled and armed and blockers == 0 and log == []


def test_other_hooks_and_handlers_take_mitmproxys_hook_task() -> None:
    """Not a ``LeanHook``, or a handler whose ``handle_hook`` is not the lean one:
    mitmproxy's ``hook_task`` (its ``handle_hook``, then ``HookCompleted``)."""
    Handler = _handler_class()
    seen: list[str] = []

    class Other(Handler):  # type: ignore[misc,valid-type]
        async def handle_hook(self, hook: Any) -> None:
            seen.append("own handle_hook")

    async def main() -> None:
        h = Other([])
        await server.ConnectionHandler.hook_task(h, lean.LeanHook(tflow.tflow()))
        h2 = Handler([])
        calls: list[Any] = []

        async def handle_hook(hook: Any) -> None:
            calls.append(hook)

        h2.handle_hook = handle_hook  # (an instance's own: mitmproxy's hook_task calls it)
        hook = type("H", (), {"blocking": False})()
        await server.ConnectionHandler.hook_task(h2, hook)
        assert calls == [hook]

    asyncio.run(main())
    assert seen == ["own handle_hook"]


def test_a_finished_lean_hook_task_leaves_no_callback_behind() -> None:
    """A lean hook task started as mitmproxy starts it (``asyncio_utils.create_task``,
    ``keep_ref``): while it runs it is in mitmproxy's set of running tasks; when it ends
    it is out of it, and no done callback was queued for the next loop turn. A task that
    raises still leaves the set through that callback."""
    from mitmproxy.utils import asyncio_utils

    Handler = _handler_class()

    async def main() -> tuple[bool, list[Any], bool, bool]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        h = Handler([])
        hook = lean.LeanHook(tflow.tflow())
        gate = loop.create_future()

        async def request() -> str:
            await gate
            return lean.SEND

        hook.job._request = request  # type: ignore[method-assign]
        task = asyncio_utils.create_task(server.ConnectionHandler.hook_task(h, hook),
                                         name="handle_hook(x)", keep_ref=True)
        running = task in asyncio_utils._KEEP_ALIVE
        queued: list[Any] = []
        call_soon = loop.call_soon

        def recording(callback: Any, *args: Any, **kwargs: Any) -> Any:
            queued.append(callback)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = recording  # type: ignore[method-assign,assignment]
        gate.set_result(None)
        await task
        loop.call_soon = call_soon  # type: ignore[method-assign]
        ended = task in asyncio_utils._KEEP_ALIVE
        failing = asyncio_utils.create_task(
            server.ConnectionHandler.hook_task(h, None), name="x", keep_ref=True)
        try:
            await failing
        except Exception:  # noqa: BLE001 - (no handle_hook for None)
            pass
        await asyncio.sleep(0)
        return running, [c for c in queued if c == asyncio_utils._KEEP_ALIVE.discard], ended, (
            failing in asyncio_utils._KEEP_ALIVE)

    running, discards, ended, failed_kept = asyncio.run(main())
    assert running and discards == [] and not ended and not failed_kept
