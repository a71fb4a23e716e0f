"""seam/connio.py's direct read (``_deliver``: the agent's bytes handed to ``server_event``
in the protocol's ``data_received``, the read loop's task left waiting on the same future)
does what the read loop does when woken for them (``DIRECT_READ`` off: the bytes buffered,
the task woken, ``read(65535)``, ``server_event``, ``drain_writers``), on asyncio's loop and
on uvloop: for seeded scripts of bytes (small, over one read's 65535, empty), the layer's
answers (writes, logs, a crash, a close of the connection, a task that calls
``server_event`` while the lock is held, the writer paused so that ``drain`` waits), EOF,
a lost connection, cancellations and turns of the loop, the same events with the same
bytes, seen by the same current task in the same context, the same writes, logs, drains,
transport pauses, cancel and end. The twins see a direct read run outside the task's
context, and one that leaves the writers undrained."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.context import Context

from vaultproxy.seam import connio, defences

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("vp_test_direct", default="-")


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    from vaultproxy.stages import Runtime, seam_hooks

    defences.install(seam_hooks(Runtime()))
    assert connio.install()
    assert connio.install_loop()  # (if ``install`` ran before defences: as at start)
    assert connio.STOCK_LOOP and connio.STOCK_PROTOCOL and connio.DIRECT_READ[0]


class _Transport:
    """The agent's transport: logs writes, pauses, resumes and closes."""

    def __init__(self, log: list[Any]) -> None:
        self.log, self.closing = log, False

    def write(self, data: bytes) -> None:
        self.log.append(("write", data))

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.log.append("pause")

    def resume_reading(self) -> None:
        self.log.append("resume")

    def close(self) -> None:
        self.log.append("close")
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Odd(BaseException):
    pass


class _Layer:
    """Answers each event as a seeded script says (seeded by the event's number and bytes,
    so both runs answer the same event the same way)."""

    def __init__(self, log: list[Any], seed: int, h: Any) -> None:
        self.log, self.seed, self.h, self.n = log, seed, h, 0

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        task = asyncio.current_task()
        data = getattr(event, "data", None)
        self.log.append(("event", type(event).__name__, data,
                         None if task is None else task.get_name() == "read loop", _VAR.get(),
                         self.h._server_event_lock.locked()))
        self.n += 1
        rng = random.Random(f"{self.seed}/{self.n}/{data!r}")
        client = self.h.client
        if not isinstance(event, events.DataReceived):
            return
        for _ in range(rng.randrange(0, 4)):
            r = rng.random()
            if r < 0.4:
                yield commands.SendData(client, b"re:" + bytes(data[:6]))
            elif r < 0.55:
                yield commands.Log(f"line {rng.randrange(99)}", logging.INFO)
            elif r < 0.61:
                raise ValueError("a layer's bug")
            elif r < 0.62:
                raise _Odd("not an Exception")  # (out of ``server_event``: the loop ends)
            elif r < 0.67:
                yield commands.CloseConnection(client)
            elif r < 0.8:
                # a task that takes the lock's turn after this event (an eager one waits)
                asyncio.ensure_future(self.h.server_event(events.Wakeup(
                    commands.RequestWakeup(0.0))))
            elif r < 0.9:
                self.h.protocol.pause_writing()  # the next drain waits for a resume
            else:
                _VAR.set("changed by the layer")


class _Handler(server.ConnectionHandler):
    def __init__(self, log: list[Any]) -> None:
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                   timestamp_start=0.0,
                                   state=connection.ConnectionState.OPEN)
        super().__init__(Context(client, options.Options()))
        self.record = log

    async def handle_hook(self, hook: commands.StartHook) -> None:
        pass

    def log(self, message: str, level: int = logging.INFO, exc_info: Any = None) -> None:
        self.record.append(("log", message, level, bool(exc_info)))


def _script(seed: int, two: float = 0.0) -> list[tuple[str, Any]]:
    """``two``: the weight of two reads in one turn of the loop (the woken loop takes both
    as one read, the direct path each as it comes: the same bytes, not the same events)."""
    rnd = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    for _ in range(rnd.randrange(1, 25)):
        kind = rnd.choices(["data", "big", "empty", "two", "turns", "resume", "cancel",
                            "closing"], [12, 1, 1, two, 4, 3, 0.4, 0.5])[0]
        if kind == "data":
            ops.append(("data", [rnd.randbytes(rnd.randrange(1, 300))]))
        elif kind == "big":
            ops.append(("data", [rnd.randbytes(rnd.choice([65535, 65536, 90000]))]))
        elif kind == "empty":
            ops.append(("data", [b""]))
        elif kind == "two":  # two reads in one turn of the loop
            ops.append(("data", [rnd.randbytes(5), rnd.randbytes(7)]))
        elif kind == "turns":
            ops.append(("turns", rnd.randrange(0, 3)))
        else:
            ops.append((kind, None))
    ops.append(("end", rnd.choice(["eof", "lost", "lost-exc", "cancel", "none"])))
    return ops


def _run(seed: int, loop_name: str, direct: bool,
         deliver: Callable[..., bool] | None = None, two: float = 0.0) -> list[Any]:
    log: list[Any] = []
    ops = _script(seed, two)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = _Handler(log)
        reader = asyncio.StreamReader(limit=40_000)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = _Transport(log)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        h.protocol = protocol  # type: ignore[attr-defined]
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
        h.transports[h.client] = server.ConnectionIO(reader=reader, writer=writer)
        h.layer = _Layer(log, seed, h)  # type: ignore[assignment]
        read_loop = connio._make_handle_connection(connio.STOCK_LOOP[0])

        async def handle_connection() -> None:
            _VAR.set("the read loop's")
            await read_loop(h, h.client)

        task = asyncio.ensure_future(handle_connection())
        task.set_name("read loop")
        h.transports[h.client].handler = task
        loop.set_task_factory(asyncio.eager_task_factory)  # (mitmproxy's)
        await asyncio.sleep(0)
        for kind, arg in ops:
            if kind == "data":
                for data in arg:
                    if not reader._eof:  # type: ignore[attr-defined]
                        loop.call_soon(protocol.data_received, data)
            elif kind == "turns":
                for _ in range(arg):
                    await asyncio.sleep(0)
                continue
            elif kind == "resume":
                if protocol._paused:  # type: ignore[attr-defined]
                    protocol.resume_writing()
            elif kind == "cancel" or arg == "cancel":
                task.cancel()
            elif kind == "closing":
                transport.closing = True
            elif arg == "eof":
                loop.call_soon(protocol.eof_received)
            elif arg in ("lost", "lost-exc"):
                loop.call_soon(protocol.connection_lost,
                               ConnectionResetError("reset") if arg == "lost-exc" else None)
            for _ in range(6):  # (settled: both ways have taken their steps)
                await asyncio.sleep(0)
        if protocol._paused:  # type: ignore[attr-defined]
            protocol.resume_writing()
        for _ in range(6):
            await asyncio.sleep(0)
        if not task.done():
            log.append("still running: cancel")
            task.cancel()
        try:
            await task
            log.append("returned")
        except asyncio.CancelledError:
            log.append("cancelled")
        except BaseException as e:  # noqa: BLE001
            log.append(("raised", type(e).__name__, str(e)))
        log.append(("state", h.client.state, h.client in h.transports,
                    bytes(reader._buffer), reader in connio.DIRECT))  # type: ignore[attr-defined]
        for other in asyncio.all_tasks() - {asyncio.current_task()}:
            other.cancel()
        transport.closing = True  # (the writer's ``__del__`` asks, after the loop's end)

    was, connio.DIRECT_READ[0] = connio.DIRECT_READ[0], direct
    real = connio._deliver
    if deliver is not None:
        connio._deliver = deliver  # type: ignore[assignment]
    try:
        if loop_name == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        connio.DIRECT_READ[0] = was
        connio._deliver = real  # type: ignore[assignment]
    return log


def _counting() -> tuple[dict[str, int], Callable[..., bool]]:
    seen = {"direct": 0, "woken": 0}
    real = connio._deliver

    def deliver(entry: Any, reader: Any, data: bytes) -> bool:
        done = real(entry, reader, data)
        if done:
            seen["woken" if reader._waiter is None else "direct"] += 1
        return done

    return seen, deliver


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_direct_read_does_what_the_woken_read_loop_does(loop_name: str) -> None:
    seen, deliver = _counting()
    kinds: set[Any] = set()
    for seed in range(200):
        want = _run(seed, loop_name, direct=False)
        assert _run(seed, loop_name, direct=True, deliver=deliver) == want, seed
        kinds.update(e if isinstance(e, str) else e[0] for e in want)
        kinds.update(e[1] for e in want if e[0] == "log")
    # the direct path taken, and woken for a drain or a raise; every end reached
    assert seen["direct"] > 500 and seen["woken"] > 20, seen
    assert {"write", "pause", "resume", "cancelled", "still running: cancel", "raised",
            "mitmproxy has crashed!"} <= kinds, kinds


def test_two_reads_in_one_turn_reach_the_layer_as_the_same_bytes() -> None:
    """Two reads before the loop's task would have run: the woken loop reads both as one,
    the direct path hands each to ``server_event`` as it comes (as two reads a turn apart
    reach the woken loop): the layer sees the same bytes in the same order."""

    def stream(log: list[Any]) -> bytes:
        return b"".join(e[2] for e in log if isinstance(e, tuple) and e[0] == "event"
                        and e[1] == "DataReceived")

    differ = compared = 0
    for seed in range(100):
        want = _run(seed, "asyncio", direct=False, two=3)
        got = _run(seed, "asyncio", direct=True, two=3)
        if got != want:
            differ += 1
        # (a run the layer ends, by a close or a raise, ends where its events were cut)
        if "still running: cancel" in want and "still running: cancel" in got:
            compared += 1
            assert stream(got) == stream(want), seed
    assert differ and compared > 20, (differ, compared)  # (the event boundaries differ)


def test_twin_the_comparison_sees_bytes_handled_outside_the_tasks_context() -> None:
    real = connio._deliver

    def outside(entry: Any, reader: Any, data: bytes) -> bool:
        task = entry.task
        entry.task = type("T", (), {"get_context": lambda self: contextvars.copy_context()})()
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(connio, "_swap_current_task", lambda loop, t: None)
                return real(entry, reader, data)
        finally:
            entry.task = task

    assert any(_run(seed, "asyncio", direct=True, deliver=outside)
               != _run(seed, "asyncio", direct=False) for seed in range(40))


def test_twin_the_comparison_sees_writers_left_undrained() -> None:
    real = connio._writers_ready
    try:
        connio._writers_ready = lambda h: True  # type: ignore[assignment]
        assert any(_run(seed, "asyncio", direct=True) != _run(seed, "asyncio", direct=False)
                   for seed in range(60))
    finally:
        connio._writers_ready = real  # type: ignore[assignment]


def test_off_without_what_it_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler whose ``server_event`` is not this module's: every read wakes the task."""
    seen, deliver = _counting()

    async def other(self: Any, event: Any) -> None:
        await connio.server_event(self, event)

    monkeypatch.setattr(_Handler, "server_event", other)
    for seed in range(20):
        _run(seed, "asyncio", direct=True, deliver=deliver)
    assert seen == {"direct": 0, "woken": 0}
