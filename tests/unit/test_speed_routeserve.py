"""seam/bypass.py's ``Route.serve`` (``_locked_event`` reads the ClientTLSLayer's commands
of an event it routes short itself, without ``Route._short``'s generator and
``Route.handle_event``'s call, and the agent's bytes through the decided TLS layer without
their ``DataReceived``) does what ``_locked_event`` does reading ``Route.handle_event``'s
answer (``connio.SHORT`` off: the reference): for seeded scripts of events (the agent's
bytes as ``_deliver`` hands them and as events, another connection's bytes, a close, a
wakeup, the completions of the hooks the layer below filed, which mitmproxy's
``hook_task`` sends back) and of the commands the layer below answers (``SendData`` to the
agent, empty or not, to another connection; log lines; hooks blocking, filed, not blocking,
started through ``START_HOOKS`` or the chain; a close, a wakeup, an open that splice into
the whole stack; a crash mid-answer), in each state of the route (clean or not, the lean
layer serving, handed over or done, a layer above paused, the ClientTLSLayer paused,
closing, on another ``tls``, or not direct): the same writes, logs, hooks and their tasks,
crash lines, events seen by the whole stack and by the layer below (with their bytes), the
same filed hooks, counters, detach and watchdog activity (the whole stack here marks the
agent's bytes that cross it). The twins see a ``serve`` that writes an empty answer, and one
that leaves the TLS layer writing records past the stack after a splice. The layers are
stand-ins holding what the route reads (a real stack: tests/integration/test_lean_bypass.py,
on and off)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events, server, tunnel
from mitmproxy.proxy.context import Context

from vaultproxy.seam import bypass, connio


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert connio.install()
    assert server.ConnectionHandler.server_event is connio.server_event
    assert connio.SHORT[0] is bypass.Route


@dataclass
class _Hook(commands.StartHook):
    name = "vaultproxy_test_routeserve"


@dataclass
class _Chain(commands.StartHook):
    name = "vaultproxy_test_routeserve_chain"


class _Writer:
    def __init__(self, log: list[Any], name: str) -> None:
        self.log, self.name, self.closing = log, name, False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append(("write", self.name, data))

    def close(self) -> None:
        self.log.append(("close", self.name))


class _Stream:
    """An asyncio ``StreamWriter``'s transport."""

    def __init__(self, log: list[Any], name: str) -> None:
        self.log, self.name, self.closing, self.live = log, name, False, True

    def is_closing(self) -> bool:
        if not self.live:
            return True
        self.log.append(("is_closing", self.name))
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append(("write", self.name, data))

    def close(self) -> None:
        self.log.append(("close", self.name))


class _Task:
    def __init__(self, log: list[Any], name: str) -> None:
        self.log, self.name = log, name

    def cancel(self, msg: str | None = None) -> None:
        self.log.append(("cancel", self.name))


class _Handler(server.ConnectionHandler):
    def __init__(self, log: list[Any], client: connection.Client) -> None:
        super().__init__(Context(client, options.Options()))
        self.record = log

    async def handle_hook(self, hook: commands.StartHook) -> None:
        task: Any = asyncio.current_task()
        name = task.get_name()  # (an eager task runs this before its name is set)
        self.record.append(("hook", type(hook).__name__, getattr(hook, "n", None),
                            "Task-n" if name.startswith("Task-") else name,
                            getattr(task, "client", None)))
        await asyncio.sleep(0)

    def log(self, message: str, level: int = logging.INFO, exc_info: Any = None) -> None:
        self.record.append(("log", message, level, bool(exc_info)))


class _Below:
    """The ClientTLSLayer (and the ServerTLSLayer's target): answers each event with a
    script seeded by the event's number, kind and bytes (both runs answer the same event
    the same way), and records what it was asked."""

    def __init__(self, log: list[Any], seed: int, client: Any, other: Any) -> None:
        self.log, self.seed, self.client, self.other, self.n = log, seed, client, other, 0
        self.tunnel_connection = self.conn = client
        self.debug = None
        self._paused: Any = None
        self.tunnel_state = tunnel.TunnelState.OPEN
        self.tls: Any = object()
        self.layer: Any = None  # (the blocking hooks' ``blocking``: a layer)

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        return self._answer("handle_event", event, getattr(event, "data", None))

    def receive_data(self, data: bytes, decided: bool = False) -> Iterator[commands.Command]:
        return self._answer(f"receive_data {decided}", None, data)

    def event_to_child(self, event: events.Event, decided: bool = False, agent: Any = None
                       ) -> Iterator[commands.Command]:
        answer = self._answer(f"event_to_child {decided}", event, None)
        if agent is None:
            return answer
        return self._written(answer, agent)

    def _written(self, answer: Iterator[commands.Command], agent: Any
                 ) -> Iterator[commands.Command]:
        """seam/tlsio.py's ``event_to_child`` told ``agent`` (the route): while its
        ``sink`` is a handler, its records (here: every ``SendData`` of its ``conn`` with
        bytes) written by ``connio.send_data``, not yielded (tests/unit/test_speed_tlsio.py
        compares that with the real layer)."""
        for command in answer:
            if type(command) is commands.SendData and command.connection is self.conn and (
                    command.data) and agent.sink is not None:
                connio.send_data(agent.sink, self.conn, command.data)
            else:
                yield command

    def _answer(self, how: str, event: Any, data: bytes | None) -> Iterator[commands.Command]:
        self.n += 1
        kind = type(event).__name__
        hook = getattr(getattr(event, "command", None), "n", None)
        self.log.append(("below", how, kind, hook, data))
        rnd = random.Random(f"{self.seed} {self.n} {how} {kind} {data!r}")
        for i in range(rnd.randrange(0, 5)):
            r = rnd.random()
            if r < 0.3:
                yield commands.SendData(self.client, rnd.choice([b"", rnd.randbytes(4)]))
            elif r < 0.38:
                yield commands.SendData(self.other, b"up")
            elif r < 0.5:
                yield commands.Log(f"line {self.n}.{i}", rnd.choice([10, 20]))
            elif r < 0.72:
                cls = rnd.choice([_Hook, _Chain])
                made: Any = cls()  # type: ignore[no-untyped-call]
                made.n = f"{self.n}.{i}"
                made.blocking = rnd.choice([self.layer, self.layer, False, True])
                yield made
            elif r < 0.78:
                yield commands.CloseConnection(self.client)
            elif r < 0.84:
                yield commands.RequestWakeup(5.0)
            elif r < 0.87:
                yield commands.Log("mitmproxy's", logging.DEBUG)
            elif r < 0.9:
                raise ValueError("a layer's bug")
            else:
                yield commands.SendData(self.client, b"r")


def _old_locked_event(self: Any, event: Any, take: bool = False, connection: Any = None,
                      data: bytes = b"") -> None:
    """seam/connio.py's ``_locked_event`` before its route was the top layer's
    ``handle_event`` itself (the reference: the route found as its bound method's
    ``__self__``)."""
    import time

    lock = self._server_event_lock
    if take:
        lock._locked = True
    try:
        watchdog = self.timeout_watchdog
        if type(watchdog) is connio.INLINE_WATCHDOG[0]:
            watchdog.last_activity = time.time()
        else:
            watchdog.register_activity()
        try:
            handle = self.layer.handle_event
            route: Any = getattr(handle, "__self__", None)
            if type(route) is connio.SHORT[0]:
                if not route.serve(self, event, connection, data):
                    route.clean = False
                    if event is None:
                        event = connio.data_received_of(connection, data)
                    connio._commands(self, route.full(event))
            else:
                if event is None:
                    event = connio.data_received_of(connection, data)
                connio._commands(self, handle(event))
        except Exception:
            self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
    finally:
        if lock._locked and not lock._waiters:
            lock._locked = False
        else:
            lock.release()


def _old_detach(self: Any) -> None:
    """seam/bypass.py's ``Route.detach`` before (the reference, with ``_old_locked_event``)."""
    if vars(self.top).get("handle_event") == self.handle_event:
        del self.top.handle_event


def _run(seed: int, fused: bool, stream: bool,
         serve: Callable[..., bool] | None = None, old: bool = False,
         locked: Callable[..., None] | None = None) -> list[Any]:
    """The seeded script's log (``old``: the route installed and asked as before,
    ``_old_locked_event``, ``_old_detach``; ``locked``: this ``_locked_event`` instead)."""
    import time

    rnd = random.Random(seed)
    log: list[Any] = []
    clock = iter(range(1000, 10**6))
    real_time = time.time

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                   timestamp_start=0.0, state=connection.ConnectionState.OPEN)
        other = connection.Server(address=("127.0.0.1", 9))
        other.state = connection.ConnectionState.OPEN
        h = _Handler(log, client)
        for conn, name in ((client, "client"), (other, "other")):
            writer: Any = (asyncio.StreamWriter(_Stream(log, name), None, None,  # type: ignore[arg-type]
                                                asyncio.get_running_loop())
                           if stream else _Writer(log, name))
            h.transports[conn] = server.ConnectionIO(handler=_Task(log, name),  # type: ignore[arg-type]
                                                     writer=writer)
        below = _Below(log, seed, client, other)
        proxy: Any = type("P", (), {"_paused": None})()
        below.layer = proxy  # (a filed hook's ``blocking``: the layer it paused)

        class _S:
            stream_id = 1
            _paused = None

            def passthrough(self) -> None: ...

        st: Any = _S()
        st._handle_event = st.passthrough

        class _H1:
            stream_id = 1
            _paused = None
            conn = client

            def passthrough(self) -> None: ...

        h1: Any = _H1()
        h1.state = h1.passthrough
        http: Any = type("H", (), {})()
        http._paused, http.command_sources = None, {}
        http.connections, http.streams = {client: h1}, {1: st}
        server_tls: Any = type("T", (), {})()
        server_tls._paused, server_tls.wait_for_clienthello = None, False
        server_tls.tunnel_state, server_tls.command_to_reply_to = tunnel.TunnelState.OPEN, None
        server_tls.child_layer = below
        lean: Any = type("L", (), {})()
        lean.context, lean.fallback, lean.done, lean.serving = None, None, False, True
        lean.context = type("C", (), {"client": client})()

        def full(event: events.Event) -> Iterator[commands.Command]:
            log.append(("full", type(event).__name__, getattr(event, "data", None)))
            if isinstance(event, events.ConnectionClosed):
                proxy._paused = object()  # the event left a layer above paused
            yield commands.SendData(client, b"full")
            # (what the ServerTLSLayer calls; the agent's bytes marked as crossing the stack)
            for command in below.handle_event(event):
                if type(command) is commands.SendData and command.connection is client:
                    yield commands.SendData(client, b"stack " + command.data)
                else:
                    yield command

        top: Any = type("Top", (), {})()
        route = bypass.Route(top, full, lean, proxy, http, h1, st, server_tls, below, below,
                             st._handle_event)
        route.tls_direct = rnd.random() < 0.8
        route.tls_conn = below.tls if rnd.random() < 0.8 else bypass._NEVER
        # (as ``attach`` puts it: the route itself; before: its bound ``handle_event``)
        top.handle_event = route.handle_event if old else route

        class _Plain:  # another top layer (a handler's ``layer`` replaced): the whole stack
            def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
                log.append(("plain",))
                return full(event)

        plain = _Plain()
        h.layer = top
        for _ in range(rnd.randrange(1, 12)):
            r = rnd.random()
            if r < 0.35:  # the agent's bytes, as ``_deliver`` hands them
                if not h._server_event_lock.locked():
                    connio._locked_event(h, None, True, client, rnd.randbytes(3))
            elif r < 0.55:
                await h.server_event(events.DataReceived(client, rnd.randbytes(2)))
            elif r < 0.6:
                await h.server_event(events.DataReceived(other, b"o"))
            elif r < 0.64:
                await h.server_event(events.ConnectionClosed(client))
            elif r < 0.67:
                await h.server_event(events.Wakeup(commands.RequestWakeup(1.0)))
            elif r < 0.72:
                route.clean = False
            elif r < 0.75:
                proxy._paused = rnd.choice([None, object()])
            elif r < 0.78:
                below._paused = rnd.choice([None, None, object()])
            elif r < 0.8:
                below.tunnel_state = rnd.choice(list(tunnel.TunnelState))
            elif r < 0.82:
                below.tls = rnd.choice([below.tls, object()])
            elif r < 0.84:
                lean.serving = rnd.random() < 0.5
            elif r < 0.85:
                lean.fallback = "handed over"
            elif r < 0.86:
                lean.done = True
            elif r < 0.88:
                h.layer = rnd.choice([plain, top, top])
            for _ in range(rnd.randrange(0, 4)):
                await asyncio.sleep(0)  # (hooks end; their completions come back)
            log.append(("state", route.clean, "handle_event" in vars(top), h.layer is top,
                        sorted(getattr(c, "n", "?") for c in http.command_sources),
                        dict(bypass.stats), h.timeout_watchdog.last_activity))
        for _ in range(4):
            await asyncio.sleep(0)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        await asyncio.sleep(0)
        for io in h.transports.values():
            if isinstance(io.writer, asyncio.StreamWriter):
                io.writer.transport.live = False  # type: ignore[attr-defined]

    was = connio.SHORT[0]
    connio.SHORT[0] = bypass.Route if fused else None
    real_serve, real_detach, real_locked = (bypass.Route.serve, bypass.Route.detach,
                                            connio._locked_event)
    if serve is not None:
        bypass.Route.serve = serve  # type: ignore[method-assign]
    if old:
        bypass.Route.detach = _old_detach  # type: ignore[method-assign]
        connio._locked_event = _old_locked_event
    if locked is not None:
        connio._locked_event = locked
    connio.START_HOOKS.add(_Hook)
    stats = dict(bypass.stats)
    bypass.stats.update(short=0, spliced=0)
    time.time = lambda: float(next(clock))
    try:
        asyncio.run(main())
    finally:
        time.time = real_time
        connio.SHORT[0] = was
        bypass.Route.serve = real_serve  # type: ignore[method-assign]
        bypass.Route.detach = real_detach  # type: ignore[method-assign]
        connio._locked_event = real_locked
        connio.START_HOOKS.discard(_Hook)
        bypass.stats.update(stats)
    return log


@pytest.mark.parametrize("stream", [False, True])
def test_serve_does_what_the_routes_handle_event_does(stream: bool) -> None:
    seen = {"below": 0, "full": 0, "hook": 0, "write": 0, "crash": 0}
    for seed in range(300):
        got = _run(seed, True, stream)
        assert got == _run(seed, False, stream), seed
        for entry in got:
            if isinstance(entry, tuple) and entry[0] in seen:
                seen[entry[0]] += 1
            if isinstance(entry, tuple) and entry[0] == "log" and "crashed" in entry[1]:
                seen["crash"] += 1
    # (every kind of thing happened, many times)
    assert min(seen.values()) > 30, seen


@pytest.mark.parametrize("stream", [False, True])
def test_the_route_as_handle_event_does_what_its_bound_method_did(stream: bool) -> None:
    """``attach`` puts the route itself as the top layer's ``handle_event`` and
    ``_locked_event`` knows it by its type: the same as the route's bound ``handle_event``
    found by its ``__self__`` (``_old_locked_event``), on each path (the route's, detached,
    the handler's ``layer`` replaced by another layer and put back)."""
    seen = {"below": 0, "full": 0, "plain": 0, "state": 0}
    for seed in range(300):
        got = _run(seed, True, stream)
        assert got == _run(seed, True, stream, old=True), seed
        for entry in got:
            if isinstance(entry, tuple) and entry[0] in seen:
                seen[entry[0]] += 1
    assert min(seen.values()) > 30, seen


def test_twin_the_comparison_sees_a_route_asked_under_another_layer() -> None:
    """A ``_locked_event`` that keeps asking the route it found first after the handler's
    ``layer`` was replaced (a route kept on the handler, not dropped with its layer)."""
    kept: dict[Any, Any] = {}
    real = connio._locked_event

    def careless(self: Any, *args: Any) -> None:
        route = getattr(self.layer, "handle_event", None)
        if type(route) is bypass.Route:
            kept.setdefault(self, route)
        if self in kept and self.layer is not kept[self].top:
            top = kept[self].top
            layer, self.layer = self.layer, top
            try:
                real(self, *args)
            finally:
                self.layer = layer
            return
        real(self, *args)

    assert any(_run(seed, True, False, locked=careless) != _run(seed, True, False, old=True)
               for seed in range(100))


def test_twin_the_comparison_sees_an_empty_write() -> None:
    """A ``serve`` that writes the layer's empty ``SendData`` too (``_short`` drops it)."""
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(bypass.Route.serve))
    careless = source.replace("if command.data:", "if True:")
    assert careless != source
    space: dict[str, Any] = {}
    exec(compile(careless, bypass.__file__, "exec"), vars(bypass) | space, space)  # noqa: S102
    assert any(_run(seed, True, False, space["serve"]) != _run(seed, False, False)
               for seed in range(60))


def test_twin_the_comparison_sees_records_written_past_the_stack_after_a_splice() -> None:
    """A ``serve`` that leaves the TLS layer writing the agent's records in place after it
    spliced (the rest of the answer crosses the whole stack, which may change them)."""
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(bypass.Route.serve))
    careless = source.replace("self.sink = None\n" + " " * 12 + "if event is None:",
                              "if event is None:")
    assert careless != source
    space: dict[str, Any] = {}
    exec(compile(careless, bypass.__file__, "exec"), vars(bypass) | space, space)  # noqa: S102
    assert any(_run(seed, True, False, space["serve"]) != _run(seed, False, False)
               for seed in range(100))
