"""The connection handler's ``server_event`` and ``drain_writers`` that seam/connio.py
installs do what mitmproxy's do: the same writes, logs, closes, tasks and crash lines for
seeded command streams; the same waits on the lock; and ``drain_writers`` returns at once
exactly when mitmproxy's would finish without waiting (real asyncio streams over a
socketpair, in each state ``drain`` tests)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events, server, server_hooks
from mitmproxy.proxy.context import Context

from vaultproxy.seam import connio, need


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert connio.install()
    assert server.ConnectionHandler.server_event is connio.server_event
    assert server.ConnectionHandler.drain_writers is not connio.STOCK["drain_writers"]


def _client() -> connection.Client:
    return connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2),
                             timestamp_start=0.0, state=connection.ConnectionState.OPEN)


class _Writer:
    def __init__(self, log: list[Any], name: str, closing: bool = False) -> None:
        self.log, self.name, self.closing = log, name, closing

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append(("write", self.name, data))

    def write_eof(self) -> None:
        self.log.append(("write_eof", self.name))

    def close(self) -> None:
        self.log.append(("close", self.name))


class _Task:
    def __init__(self, log: list[Any], name: str) -> None:
        self.log, self.name = log, name

    def cancel(self, msg: str | None = None) -> None:
        self.log.append(("cancel", self.name, msg))


@dataclass
class _Hook(commands.StartHook):
    name = "vaultproxy_test_connio"
    blocking = False


class _Layer:
    """Answers the first event with a script; later events (a hook's, a wakeup's) with
    nothing. ``boom``: raise after the script's first command."""

    def __init__(self, log: list[Any], script: list[Any], boom: bool) -> None:
        self.log, self.script, self.boom, self.first = log, script, boom, True

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        self.log.append(("event", type(event).__name__))
        if not self.first:
            return
        self.first = False
        for i, command in enumerate(self.script):
            yield command
            if self.boom and i == 0:
                raise ValueError("a layer's bug")


class _Handler(server.ConnectionHandler):
    def __init__(self, log: list[Any]) -> None:
        super().__init__(Context(_client(), options.Options()))
        self.record = log

    async def handle_hook(self, hook: commands.StartHook) -> None:
        from mitmproxy.utils import asyncio_utils

        task: Any = asyncio.current_task()
        name = task.get_name()  # (an eager task runs this before its name is set)
        self.record.append(("hook", type(hook).__name__,
                            "Task-n" if name.startswith("Task-") else name,
                            getattr(task, "created", None), getattr(task, "client", None),
                            task in asyncio_utils._KEEP_ALIVE))
        await asyncio.sleep(0)  # (alive after ``create_task``, eager or not)
        if isinstance(hook, server_hooks.ServerConnectHook):
            hook.args()[0].server.error = "not in a test"  # no real connection

    def log(self, message: str, level: int = logging.INFO, exc_info: Any = None) -> None:
        self.record.append(("log", message, level, bool(exc_info)))


def _script(rng: random.Random, conns: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for _ in range(rng.randint(1, 10)):
        target = conns[rng.choice(list(conns))]
        r = rng.random()
        if r < 0.35:
            out.append(commands.SendData(target, rng.randbytes(rng.randint(0, 8))))
        elif r < 0.5:
            out.append(commands.Log(f"line {rng.randint(0, 99)}", rng.choice([10, 20, 30])))
        elif r < 0.6:
            out.append(_Hook())  # type: ignore[no-untyped-call]
        elif r < 0.7:
            out.append(commands.CloseTcpConnection(target, half_close=rng.random() < 0.5))
        elif r < 0.75:
            out.append(commands.CloseConnection(target))
        elif r < 0.8:
            out.append(commands.RequestWakeup(rng.choice([0.0, 5.0])))
        elif r < 0.85:
            new = connection.Server(address=("127.0.0.1", 9))
            out.append(commands.OpenConnection(new))
        elif r < 0.9:
            out.append(commands.Command())  # not a command mitmproxy knows: its crash line
        else:
            out.append(commands.SendData(conns["server"], b"s"))
    return out


class _Stream:
    """An asyncio ``StreamWriter``'s transport: logs what the writer asks of it."""

    def __init__(self, log: list[Any], name: str, closing: bool = False) -> None:
        self.log, self.name, self.closing, self.live = log, name, closing, True

    def is_closing(self) -> bool:
        if not self.live:  # (the run is over: the writer's ``__del__`` asks)
            return True
        self.log.append(("is_closing", self.name))
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append(("write", self.name, data))

    def close(self) -> None:
        self.log.append(("close", self.name))


def _writer(log: list[Any], name: str, closing: bool, stream: bool) -> Any:
    if not stream:
        return _Writer(log, name, closing)
    return asyncio.StreamWriter(_Stream(log, name, closing), None,  # type: ignore[arg-type]
                                None, asyncio.get_running_loop())


def _run(seed: int, event_fn: Callable[..., Any], *, eager: bool = False,
         start_hooks: bool = False, stream: bool = False) -> list[Any]:
    """``event_fn`` (a ``server_event``) on one event whose layer answers a seeded script;
    ``start_hooks``: the script's hooks are in ``connio.START_HOOKS``; ``stream``: the
    writers are asyncio ``StreamWriter``s; every ``time.time()`` returns the next integer
    (so the same clock reads in the same places)."""
    import time

    rng = random.Random(seed)
    log: list[Any] = []
    clock = iter(range(1000, 10**6))
    real_time = time.time

    async def main() -> None:
        if eager:
            asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        h = _Handler(log)
        gone, srv = connection.Server(address=("127.0.0.1", 8)), connection.Server(
            address=("127.0.0.1", 7))
        srv.state = connection.ConnectionState.OPEN
        h.transports[h.client] = server.ConnectionIO(
            handler=_Task(log, "client"),  # type: ignore[arg-type]
            writer=_writer(log, "client", False, stream))
        h.transports[srv] = server.ConnectionIO(
            handler=_Task(log, "server"),  # type: ignore[arg-type]
            writer=_writer(log, "server", rng.random() < 0.3, stream))
        conns = {"client": h.client, "server": srv, "gone": gone}
        h.layer = _Layer(log, _script(rng, conns), boom=rng.random() < 0.2)  # type: ignore[assignment]
        await event_fn(h, events.DataReceived(h.client, b"x"))
        log.append(("activity", h.timeout_watchdog.last_activity))
        from mitmproxy.utils import asyncio_utils

        log.append(("tasks", sorted(
            (t.get_name(), getattr(t, "created", None), getattr(t, "client", None),
             t in asyncio_utils._KEEP_ALIVE)
            for t in asyncio.all_tasks() - {asyncio.current_task()})))
        for _ in range(3):
            await asyncio.sleep(0)  # the tasks it started take their first steps
        log.append(("locked", h._server_event_lock.locked(), len(h.wakeup_timer),
                    sorted(str(getattr(c, "address", None)) for c in h.transports
                           if c is not h.client)))
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        await asyncio.sleep(0)
        for io in h.transports.values():
            if isinstance(io.writer, asyncio.StreamWriter):
                io.writer.transport.live = False  # type: ignore[attr-defined]

    if start_hooks:
        connio.START_HOOKS.add(_Hook)
    time.time = lambda: float(next(clock))
    try:
        asyncio.run(main())
    finally:
        time.time = real_time
        connio.START_HOOKS.discard(_Hook)
    return log


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("start_hooks", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_server_event_matches_mitmproxys(eager: bool, start_hooks: bool, stream: bool) -> None:
    """Seeded command streams: the same writes (and ``is_closing`` asks), logs, closes,
    tasks (their names, creation times, client, keep-alive reference), crash lines and
    watchdog activity; hooks started through ``START_HOOKS`` or the chain, writers asyncio
    ``StreamWriter``s or not, with mitmproxy's eager task factory or without."""
    kw = {"eager": eager, "stream": stream}
    assert connio.INLINE.keys() >= {"write", "create_task"}
    assert connio.INLINE_WATCHDOG[0] is server.TimeoutWatchdog
    hooks = 0
    for seed in range(60):
        fast = _run(seed, connio.server_event, start_hooks=start_hooks, **kw)
        assert fast == _run(seed, connio.STOCK["server_event"], **kw), seed
        hooks += sum(1 for e in fast if e[0] == "hook")
    assert hooks > 20


def test_twin_the_comparison_sees_a_hook_task_started_without_its_client() -> None:
    inline_start = connio._start_hook

    def careless(self: Any, command: Any) -> None:
        peername = self.client.peername
        self.client.peername = None
        try:
            inline_start(self, command)
        finally:
            self.client.peername = peername

    connio._start_hook = careless  # type: ignore[assignment]
    try:
        for eager in (False, True):
            assert any(_run(seed, connio.server_event, start_hooks=True, eager=eager)
                       != _run(seed, connio.STOCK["server_event"], eager=eager)
                       for seed in range(60)), eager
    finally:
        connio._start_hook = inline_start


@pytest.mark.parametrize("eager", [False, True])
def test_a_held_lock_is_waited_for_in_the_same_order(eager: bool) -> None:
    def order(event_fn: Callable[..., Any]) -> list[Any]:
        log: list[Any] = []

        async def main() -> None:
            if eager:
                asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
            h = _Handler(log)
            h.transports[h.client] = server.ConnectionIO(
                handler=_Task(log, "client"), writer=_Writer(log, "client"))  # type: ignore[arg-type]
            h.layer = _Layer(log, [commands.SendData(h.client, b"a")], False)  # type: ignore[assignment]
            await h._server_event_lock.acquire()
            first = asyncio.ensure_future(event_fn(h, events.DataReceived(h.client, b"1")))
            second = asyncio.ensure_future(event_fn(h, events.DataReceived(h.client, b"2")))
            await asyncio.sleep(0)
            log.append(("still waiting", first.done(), second.done()))
            h._server_event_lock.release()
            # (each release wakes the next waiter: a release that did not would wait here)
            await asyncio.wait_for(asyncio.gather(first, second), 5)
            log.append(("free", h._server_event_lock.locked()))

        asyncio.run(main())
        return log

    got, want = order(connio.server_event), order(connio.STOCK["server_event"])
    assert got == want
    assert ("still waiting", False, False) in got


# --- drain_writers on real streams --------------------------------------------------------


def _outcome(coro: Any) -> str:
    """Step a coroutine once: finished, raised, or waiting (then closed)."""
    try:
        coro.send(None)
    except StopIteration:
        return "finished"
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return f"raised {type(e).__name__}"
    coro.close()
    return "waits"


STATES = ["open", "paused", "reader exception", "closing", "lost", "lock held", "not a stream",
          "no writer"]


async def _streams(state: str) -> tuple[Any, Any, socket.socket]:
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    if state == "paused":
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(64):
            writer.write(b"x" * 65536)
        await asyncio.sleep(0)
        assert writer.transport.get_write_buffer_size() > 0
    elif state == "reader exception":
        reader.set_exception(ValueError("a reader's error"))
    elif state == "closing":
        writer.close()
    elif state == "lost":
        writer.transport.abort()
        await asyncio.sleep(0)
    return reader, writer, b


@pytest.mark.parametrize("state", STATES)
def test_drain_writers_waits_or_returns_as_mitmproxys(state: str) -> None:
    outcomes = {}
    for name, fn in (("stock", connio.STOCK["drain_writers"]),
                     ("fast", server.ConnectionHandler.drain_writers)):

        async def main(fn: Any = fn) -> str:
            h = _Handler([])
            ok_r, ok_writer, ok_peer = await _streams("open")
            _r, writer, peer = await _streams(state)  # (last: "closing" is not yet "lost")
            h.transports[h.client] = server.ConnectionIO(reader=ok_r, writer=ok_writer)
            other: Any = writer
            if state == "not a stream":

                class _Other:
                    async def drain(self) -> None:
                        await asyncio.sleep(0)

                other = _Other()
            elif state == "no writer":
                other = None
            h.transports[connection.Server(address=("127.0.0.1", 7))] = server.ConnectionIO(
                handler=_Task([], "s"), writer=other)  # type: ignore[arg-type]
            if state == "lock held":
                await h._drain_lock.acquire()
            out = _outcome(fn(h))
            for w in (writer, ok_writer):
                w.transport.abort()
            peer.close()
            ok_peer.close()
            await asyncio.sleep(0)
            return out

        outcomes[name] = asyncio.run(main())
    assert outcomes["fast"] == outcomes["stock"], outcomes
    want = {"open": "finished", "no writer": "finished", "closing": "waits"}.get(state)
    if want is not None:  # (the cases that do not wait must not)
        assert outcomes["fast"] == want


def test_each_patch_is_on_the_source_it_was_written_against() -> None:
    for name, want in connio.FINGERPRINTS.items():
        assert connio.fingerprint(name) == want, name


def test_each_patch_is_on_the_code_it_was_written_against() -> None:
    """The start-up check (``need.unchanged``) reads no source on the CPython the code
    fingerprints were made on; elsewhere it reads the source (the test above)."""
    if not need.code_magic_matches():
        pytest.skip("another CPython's bytecode: the source fingerprints decide")
    assert set(connio.CODE_FINGERPRINTS) == set(connio.FINGERPRINTS)
    for name, want in connio.CODE_FINGERPRINTS.items():
        assert need.code_fingerprint(connio._target(name)) == want, (
            f"{name}: this CPython compiles it differently (start-up reads its source: "
            "slower, the same decision); make CODE_FINGERPRINTS here")


def test_a_changed_method_stays_as_it_is(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from mitmproxy.utils import asyncio_utils

    cls = server.ConnectionHandler
    for name, fn in connio.STOCK.items():  # as before install, restored after the test
        monkeypatch.setattr(asyncio_utils if name == "set_task_debug_info" else cls, name, fn)
    monkeypatch.delattr(cls, "_vaultproxy_fast_io")

    async def drain(self: Any) -> None:  # an asyncio whose StreamWriter.drain changed
        await asyncio.sleep(0)

    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain)
    with caplog.at_level("WARNING"):
        assert connio.install()
    assert cls.drain_writers is connio.STOCK["drain_writers"]
    assert cls.server_event is connio.server_event
    assert "StreamWriter.drain is not the one" in caplog.text


@pytest.mark.parametrize("env", [None, "", "tests/x.py::test_y (call)", "caf\udcff"])
@pytest.mark.parametrize("client", [None, (), ("127.0.0.1", 5)])
@pytest.mark.parametrize("plain_mapping", [False, True])
def test_task_debug_info_matches_mitmproxys(monkeypatch: pytest.MonkeyPatch, env: str | None,
                                            client: Any, plain_mapping: bool) -> None:
    import os
    import time

    from mitmproxy.utils import asyncio_utils

    assert asyncio_utils.set_task_debug_info is connio.set_task_debug_info
    if env is None:
        monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    else:
        monkeypatch.setenv("PYTEST_CURRENT_TEST", env)
    if plain_mapping:  # an os.environ that is not os._Environ: its own get
        monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(time, "time", lambda: 1234.5)

    async def main() -> list[Any]:
        out = []
        for fn in (connio.STOCK["set_task_debug_info"], connio.set_task_debug_info):
            task = asyncio.ensure_future(asyncio.sleep(0))
            fn(task, name="handle_hook(x)", client=client)
            out.append((task.get_name(), task.created, getattr(task, "client", "none")))  # type: ignore[attr-defined]
            await task
        return out

    stock, fast = asyncio.run(main())
    assert fast == stock
    assert ("[created in" in fast[0]) == bool(env)


def test_environ_get_is_os_environ_get(monkeypatch: pytest.MonkeyPatch) -> None:
    """``environ_get`` answers as ``os.environ.get`` for seeded sets and unsets of a few
    names (set, empty, non-ASCII, unset), and for a replacement mapping in place of
    ``os.environ`` (asked with ``.get`` itself)."""
    names = ["VP_TEST_ENVGET_A", "VP_TEST_ENVGET_B", "VP_TEST_ENVGET_\u00e9"]
    values = ["0", "", " off ", "caf\u00e9", "1"]
    rng = random.Random(29)
    found = 0
    for _ in range(400):
        name = rng.choice(names)
        if rng.random() < 0.5:
            monkeypatch.setenv(name, rng.choice(values))
        else:
            monkeypatch.delenv(name, raising=False)
        for ask in names:
            want = os.environ.get(ask, "dflt")
            assert connio.environ_get(ask, "dflt") == want, ask
            found += want != "dflt"
    assert 200 < found < 1000  # twin: both set and unset names are asked
    monkeypatch.setattr(os, "environ", {"VP_TEST_ENVGET_A": "x"})
    assert connio.environ_get("VP_TEST_ENVGET_A", "d") == "x"
    assert connio.environ_get("VP_TEST_ENVGET_B", "d") == "d"


def test_disarm_is_mitmproxys(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TimeoutWatchdog.disarm`` as installed (a class, not a generator) leaves the
    watchdog as mitmproxy's ``@contextmanager`` does after every step of seeded nested
    ``with`` blocks, some left by an exception (which goes on, as there): the count, the
    event, and each ``register_activity`` call."""
    assert server.TimeoutWatchdog.disarm is connio.disarm  # installed (module fixture)
    stock = connio.STOCK_DISARM[0]

    class Recorder(server.TimeoutWatchdog):
        def __init__(self) -> None:
            super().__init__(60, lambda: None)  # type: ignore[arg-type,return-value]
            self.activity = 0

        def register_activity(self) -> None:
            self.activity += 1

    def state(wd: Recorder) -> tuple[int, bool, int]:
        return (wd.blocker, wd.can_timeout.is_set(), wd.activity)

    def run(wd: Recorder, ops: list[int], use: Callable[[Any], Any],
            trail: list[tuple[int, bool, int]]) -> None:
        for op in ops:
            if op == 0:
                trail.append(state(wd))
                continue
            try:
                with use(wd):
                    trail.append(state(wd))
                    if op == 2:
                        raise ValueError("in the block")
                    run(wd, ops[op:op + 2] if len(ops) > 3 else [], use, trail)
                    trail.append(state(wd))
            except ValueError:
                trail.append((-1, *state(wd)[1:]))

    rng = random.Random(59)
    raised = 0
    for _ in range(300):
        ops = [rng.choice([0, 1, 1, 2]) for _ in range(rng.randint(1, 6))]
        want: list[tuple[int, bool, int]] = []
        got: list[tuple[int, bool, int]] = []
        run(Recorder(), ops, lambda wd: stock(wd), want)
        run(Recorder(), ops, lambda wd: wd.disarm(), got)
        assert got == want, ops
        raised += any(t[0] == -1 for t in want)
    assert raised > 100  # twin: blocks left by an exception are compared too
