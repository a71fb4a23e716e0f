"""seam/lean.py's lean hook task, its in-place step for an established lean tunnel:
``_to_drain`` once the tunnel's route is settled (``lean.route`` not None), its lookup of the
agent's writer and the ``StreamWriter`` test inline.

Seeded scripts of overlapping requests on one real ``ConnectionHandler`` (asyncio's loop and
uvloop, with mitmproxy's eager task factory and without): jobs that answer at once, wait,
raise or are cancelled, other tasks holding the ``server_event`` lock for a few turns, the
agent's writer an asyncio ``StreamWriter`` whose transport is open, closing, holding bytes or
paused (holding bytes: ``drain`` waits), or no writer at all. The layer logs each event it
gets with the task it runs in, the lock's state, the watchdog's and a context variable's;
the same log as with mitmproxy's ``hook_task`` -> ``handle_hook`` (``_to_drain``,
``run_disarmed``, ``await self.server_event``). And seam/tlsio.py's ``event_to_child``: a
child's ``SendData`` on a connection that is no memory-BIO ``SSL.Connection`` goes through
``send_data`` (its ``_memory_bio`` test, inline)."""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.context import Context
from mitmproxy.test import tflow

from vaultproxy.seam import aftersend, connio, lean

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("vp_test_hookdone", default="-")


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    lean.install()
    assert connio.install()
    assert server.ConnectionHandler.server_event is connio.server_event
    assert lean.STOCK["hook_task"] is not None
    from mitmproxy.proxy import mode_servers

    # (the handler's ``handle_hook`` as the proxy's: ``lean.install``'s)
    stock: Any = mode_servers.ProxyConnectionHandler.handle_hook
    _Handler.handle_hook = stock  # type: ignore[method-assign]


class _Transport:
    """The agent's transport, as the script sets it: open or closing, bytes held or not."""

    def __init__(self, log: list[Any]) -> None:
        self.log, self.closing, self.held, self.live = log, False, 0, True

    def is_closing(self) -> bool:
        return self.closing or not self.live

    def get_write_buffer_size(self) -> int:
        return self.held

    def write(self, data: bytes) -> None:
        self.log.append(("write", data))

    def close(self) -> None:
        self.closing = True


class _Layer:
    """Logs each event (with the task it runs in, the lock, the watchdog, the context
    variable); answers a hook's completion with a write and a log line, and on a script's
    word with a raise."""

    def __init__(self, h: Any, log: list[Any], tasks: dict[Any, int]) -> None:
        self.h, self.log, self.tasks = h, log, tasks
        self.boom: set[str] = set()

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        h = self.h
        wd = h.timeout_watchdog
        task = asyncio.current_task()
        hook: Any = getattr(event, "command", None)
        self.log.append(("event", type(event).__name__, hook and hook.flow.id,
                         self.tasks.get(task, "other"), h._server_event_lock._locked,
                         wd.can_timeout.is_set(), wd.blocker, _VAR.get()))
        if hook is not None:
            yield commands.SendData(h.client, b"answer " + hook.flow.id.encode())
            yield commands.Log(f"answered {hook.flow.id}")
            if hook.flow.id in self.boom:
                raise ValueError("a layer's bug")


class _Handler(server.ConnectionHandler):
    def __init__(self, log: list[Any]) -> None:
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                                   timestamp_start=0.0, state=connection.ConnectionState.OPEN)
        super().__init__(Context(client, options.Options()))
        self.record = log
        self.master = type("M", (), {"addons": "the addons"})()

    async def handle_hook(self, hook: commands.StartHook) -> None:
        raise AssertionError("replaced by lean.install()'s (the fixture)")

    def log(self, message: str, level: int = 20, exc_info: Any = None) -> None:
        self.record.append(("log", message, bool(exc_info)))


class _Lean:
    def __init__(self, route: Any) -> None:
        self.route = route
        self.later = aftersend.Later()
        # (what the hook task keeps of the connection across its requests)
        self.agent_stream: Any = None
        self.watchdog: Any = None
        self.watch_can: Any = None

    def client_gone(self) -> bool:
        return False


def _run(seed: int, handler_cls: type, task_of: Any, *, loop_name: str = "asyncio",
         eager: bool = True) -> list[Any]:
    rng = random.Random(seed)
    log: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)
        h = handler_cls(log)
        tasks: dict[Any, int] = {}
        layer = _Layer(h, log, tasks)
        h.layer = layer
        transport = _Transport(log)
        shared = _Lean("route")
        protocol = asyncio.streams.FlowControlMixin(loop)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)  # type: ignore[arg-type]
        io = h.transports[h.client] = server.ConnectionIO(writer=writer)
        live: list[tuple[asyncio.Task[None], asyncio.Future[None]]] = []
        for step in range(rng.randint(2, 9)):
            roll = rng.random()
            if live and roll < 0.35:
                task, gate = live.pop(rng.randrange(len(live)))
                what = rng.random()
                if what < 0.15:
                    task.cancel()
                elif not gate.done():
                    if what < 0.3:
                        gate.set_exception(ValueError("a stage raised"))
                    else:
                        gate.set_result(None)
            elif roll < 0.5:
                turns = rng.randint(0, 3)

                async def hold(turns: int = turns) -> None:
                    async with h._server_event_lock:
                        log.append(("held", turns))
                        for _ in range(turns):
                            await asyncio.sleep(0)

                asyncio.ensure_future(hold())
            else:
                # the agent's writer as this request finds it
                kind = rng.random()
                transport.closing = kind < 0.1
                transport.held = 5 if 0.1 <= kind < 0.35 else 0
                if 0.25 <= kind < 0.35 and not protocol._paused:  # type: ignore[attr-defined]  # (over its limit: held)
                    protocol.pause_writing()
                    loop.call_soon(protocol.resume_writing)
                if kind > 0.92:
                    h.transports.pop(h.client, None)
                else:
                    h.transports[h.client] = io
                flow = tflow.tflow()
                flow.id = f"f{step}"
                hook = lean.LeanHook(flow)
                route = rng.choice([False, None, "route"])
                # (one layer's requests share what the hook task keeps of the connection)
                hook.job.lean = (  # type: ignore[assignment]
                    shared if route == "route" and rng.random() < 0.7 else _Lean(route))
                if rng.random() < 0.2:
                    layer.boom.add(flow.id)
                gate = loop.create_future()
                sync = rng.random() < 0.3
                fails = rng.random() < 0.15

                async def request(gate: asyncio.Future[None] = gate, sync: bool = sync,
                                  fails: bool = fails, fid: str = flow.id) -> str:
                    log.append(("request", fid, _VAR.get()))
                    if not sync:
                        await gate
                    if fails:
                        raise RuntimeError("the hooks failed")
                    return lean.SEND

                hook.job._request = request  # type: ignore[method-assign]
                hook.blocking = layer  # type: ignore[assignment]  # (as the lean layer leaves it)
                _VAR.set(f"ctx{step}")
                task = asyncio.ensure_future(task_of(h, hook))
                tasks[task] = step
                live.append((task, gate))
            for _ in range(rng.randint(1, 3)):
                await asyncio.sleep(0)
            wd = h.timeout_watchdog
            log.append(("state", wd.can_timeout.is_set(), wd.blocker,
                        h._server_event_lock._locked, len(h._server_event_lock._waiters or ())))
        for _task, gate in live:
            if not gate.done():
                gate.set_result(None)
        for _ in range(8):
            await asyncio.sleep(0)
        done = [t for t in tasks if t.done()]
        log.append(("ends", sorted((tasks[t], t.cancelled()) for t in done)))
        for t in asyncio.all_tasks() - {asyncio.current_task()}:
            t.cancel()
        await asyncio.sleep(0)
        transport.live = False

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return log


def _fast(h: Any, hook: Any) -> Any:
    return server.ConnectionHandler.hook_task(h, hook)


def _stock(h: Any, hook: Any) -> Any:
    return lean.STOCK["hook_task"](h, hook)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("eager", [True, False])
def test_lean_hook_task_in_place_steps_do_what_the_stock_path_does(loop_name: str,
                                                                  eager: bool) -> None:
    kinds: set[str] = set()
    for seed in range(150):
        want = _run(seed, _Handler, _stock, loop_name=loop_name, eager=eager)
        assert _run(seed, _Handler, _fast, loop_name=loop_name, eager=eager) == want, seed
        kinds.update(e[0] for e in want)
    assert {"event", "write", "log", "held", "request"} <= kinds, kinds


def test_a_server_event_of_the_handlers_own_gets_the_completion() -> None:
    """An instance's own ``server_event`` (shadowing connio's on its class) gets the
    completion, as ``await self.server_event(...)`` gives it. (Telling that apart costs more
    than the ``server_event`` coroutine a call of connio's ``_locked_event`` in its place
    would save: reading ``self.__dict__`` makes the handler's attribute values a dict, and
    every attribute read of it slower: +5k instructions per request.)"""
    log: list[Any] = []
    seen: list[str] = []

    async def own(event: events.Event) -> None:
        seen.append(type(event).__name__)

    async def main() -> None:
        h = _Handler(log)
        h.layer = _Layer(h, log, {})  # type: ignore[assignment]
        h.server_event = own  # type: ignore[method-assign]
        hook = lean.LeanHook(tflow.tflow())
        hook.job.lean = _Lean("route")  # type: ignore[assignment]

        async def request() -> str:
            return lean.SEND

        hook.job._request = request  # type: ignore[method-assign]
        hook.blocking = h.layer  # type: ignore[assignment]
        await _fast(h, hook)

    asyncio.run(main())
    assert seen == ["HookCompleted"] and not any(e[0] == "event" for e in log)


def test_event_to_child_sends_through_send_data_without_a_memory_bio() -> None:
    """seam/tlsio.py's ``event_to_child`` encrypts a child's ``SendData`` in place only for a
    memory-BIO ``SSL.Connection`` (``_memory_bio``'s test, inline); any other connection
    object takes ``send_data`` (mitmproxy's ``sendall``, then ``tls_interact``'s reads)."""
    from mitmproxy.proxy import tunnel
    from mitmproxy.proxy.layers import tls
    from OpenSSL import SSL

    from vaultproxy.seam import tlsio

    assert tlsio.install() and tlsio.FAST_TO_CHILD
    log: list[Any] = []

    class _Conn:  # not an SSL.Connection: what pyOpenSSL's methods would be asked
        def sendall(self, data: bytes) -> None:
            log.append(("sendall", data))

        def bio_read(self, size: int) -> bytes:
            if not any(e[0] == "bio_read" for e in log):
                log.append(("bio_read", size))
                return b"record"
            raise SSL.WantReadError

    class _Child:
        def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
            yield commands.SendData(layer.conn, b"plain")

    layer: Any = tls.ClientTLSLayer.__new__(tls.ClientTLSLayer)
    layer.tls, layer.child_layer, layer.debug = _Conn(), _Child(), None
    layer.conn = layer.tunnel_connection = connection.Client(
        peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0.0)
    layer.tunnel_state, layer.command_to_reply_to = tunnel.TunnelState.OPEN, None
    out = list(tunnel.TunnelLayer.event_to_child(layer, events.Start()))
    assert [(type(c).__name__, getattr(c, "data", None)) for c in out] == [
        ("SendData", b"record")]
    assert log == [("sendall", b"plain"), ("bio_read", 65535)]
