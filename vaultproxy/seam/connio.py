"""mitmproxy's connection handler hands events to its layers and drains its writers with
fewer Python frames (a speed patch of the seam).

Every read of every connection, and every hook's completion, goes through
``ConnectionHandler.server_event`` (an ``asyncio.Lock`` entered with ``async with``, then
each command the layers answer tested against eight classes in turn), and every read is
followed by ``drain_writers`` (the same lock dance, then ``await writer.drain()`` per
connection, which returns at once unless the kernel's buffer is full). A keep-alive request
costs two ``server_event`` calls and one ``drain_writers``.

* ``server_event``: the lock is taken as ``Lock.acquire`` takes a free lock (``_locked``
  set, when nothing holds it and nothing waits for it; otherwise ``await lock.acquire()``
  itself), released as ``Lock.release`` releases a held lock nobody waits for (``_locked``
  cleared; ``_wake_up_first`` would return at once; otherwise ``lock.release()`` itself,
  as ``async with`` does), and the two commands a
  request produces most (``SendData``, ``Log``, by exact type) take the branch mitmproxy's
  ``isinstance`` chain gives them, with the same test that the connection is still open
  (for an ``asyncio.StreamWriter``, ``is_closing`` and ``write`` of its transport, what
  those two methods call). A ``StartHook`` of a class in ``START_HOOKS`` (seam/lean.py's
  ``LeanHook``: one per request) gets its task as the chain's ``StartHook`` branch makes it,
  with ``asyncio_utils.create_task``, ``asyncio.create_task`` and ``set_task_debug_info``
  inline (``loop.create_task(coro)``, then ``set_task_debug_info``'s body, the keep-alive
  reference; nothing of the loop but its public ``create_task``). Every other command goes
  through that chain, copied unchanged. The watchdog's ``register_activity``
  (``last_activity = time.time()``) is inline for mitmproxy's ``TimeoutWatchdog``.
* ``asyncio_utils.set_task_debug_info`` (every task mitmproxy starts: one per hook, one
  per request on the lean path) reads ``PYTEST_CURRENT_TEST`` with ``os.environ.get``,
  which raises and catches a ``KeyError`` when it is not set (always, outside tests): the
  patched one looks the same key up in ``os.environ``'s own mapping (``_data``, what
  ``__getitem__`` reads, with its ``encodekey``/``decodevalue``) and names the task the same.
* ``drain_writers``: when its lock is free and every writer is an ``asyncio.StreamWriter``
  whose ``drain()`` would return without waiting or raising (no reader exception, transport
  not closing, connection not lost, protocol not paused: what ``drain`` and
  ``_drain_helper`` test first), there is nothing to wait for and it returns; otherwise
  mitmproxy's method runs.

* ``handle_connection`` (the loop that reads a connection until its end: one per connection,
  one read per request): ``await reader.read(65535)`` of an ``asyncio.StreamReader`` (three
  coroutine levels, two more frames, on each wake-up: ``read``, ``_wait_for_data``, then
  ``_maybe_resume_transport``) is done inline, as those three do it: the same exception
  raised first, the same waiter future set on the reader (``feed_data`` and ``feed_eof``
  wake it), the same resume of a paused transport before the wait and after taking the
  bytes, the same ``RuntimeError`` for a second reader. A buffer of at most 65535 bytes
  (one request's record: always) is taken whole, ``bytes(buffer)`` and ``clear()``, for
  ``bytes(memoryview(buffer)[:65535])`` and ``del buffer[:65535]`` (the same bytes, the same
  empty buffer; ~2k instructions fewer per read). The rest of the loop is mitmproxy's,
  copied. It runs under seam/defences.py's ``handle_connection`` (``connection_loop``); any
  other reader (mitmproxy_rs's UDP stream) takes mitmproxy's own.
* Direct read (``_deliver``): while that loop waits for bytes, its protocol's
  ``data_received`` takes the loop's next steps itself instead of waking its task (a
  ``call_soon``, a task step, a new waiter future per read: ~10k instructions per keep-alive
  request): ``read(65535)``'s answer (the bytes, when the buffer is empty and they are
  ``bytes`` of at most 65535), ``server_event``'s body (its lock free: no ``await``) with
  the loop's task as the current task (``asyncio.tasks._swap_current_task``) and in its
  context (``Task.get_context``), as when the task runs it; then, when ``drain_writers``
  would return at once, nothing: the task still waits, on the same future. Otherwise
  (writers to drain, ``server_event`` raised) the task is woken to do that. Anything else
  (a held lock, a cancelled wait, another ``server_event``, a paused or failed reader) goes
  to the buffer and wakes the task, as before. Two reads in one turn of the loop reach the
  layers as two events (the woken loop would read them as one: the same bytes). The
  ``DataReceived`` is made only when a layer is handed it: a lean tunnel's route
  (seam/bypass.py ``Route.serve``) hands the bytes of a decided TLS layer on without it.

* The watchdog's ``can_timeout`` (an ``asyncio.Event``) cleared and set by seam/lean.py's
  hook task as ``Event.clear`` and ``Event.set`` do it (``INLINE_EVENT``), its
  ``register_activity`` there too (``INLINE_WATCHDOG``).
* ``StreamReaderProtocol.data_received`` (asyncio's, for every read of every stream: the
  agent's bytes reach the read loop through it): ``_stream_reader``, ``feed_data`` and
  ``_wakeup_waiter`` inline for an ``asyncio.StreamReader`` (the same assert, buffer, wake
  of the waiting read, pause of the transport over twice the limit); any other reader gets
  its own ``feed_data``.

mitmproxy's and asyncio's methods are fingerprinted (``need.unchanged``: their compiled
code, else their source text); if one differs, the patch that relies on it is not applied
(one WARNING), so an upgrade can make the proxy slower, never different.
tests/unit/test_speed_connio.py compares both."""

from __future__ import annotations

import asyncio
import collections.abc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events, server
from mitmproxy.utils import asyncio_utils

from vaultproxy.seam import need
from vaultproxy.seam.need import missing
from vaultproxy.seam.objects import data_received_of

logger = logging.getLogger(__name__)

#: sha256 (first 16 hex digits) of the source each patch was written against.
FINGERPRINTS = {
    "ConnectionHandler.server_event": "a2b42657ebe8bf6d",
    "ConnectionHandler.drain_writers": "6b57434604561e3e",
    "StreamWriter.drain": "31d717c85b1be487",
    "FlowControlMixin._drain_helper": "567c79b19c953058",
    "Lock.acquire": "54bbd184d16df3a1",
    "Lock.release": "d0dcc0c5684432c6",
    "Lock._wake_up_first": "424641528497e419",
    "StreamReader.exception": "24c376c899a9aa6a",
    "asyncio_utils.set_task_debug_info": "fb5346b5710bbc7f",
    # (frozen modules: no source; the fingerprint of their bytecode, names and constants)
    "_Environ.__getitem__": "8503af0bb5e29999",
    "Mapping.get": "be553584ca6aae1e",
    "TimeoutWatchdog.disarm": "99af75f94eed883a",
    "ConnectionHandler.handle_connection": "95c3f93e9824e527",
    "StreamReader.read": "b3e781f2317fe198",
    "StreamReader._wait_for_data": "3064c5757b9dd9af",
    "StreamReader._maybe_resume_transport": "9f458ca68d19a38e",
    "StreamWriter.is_closing": "d8ed46903212fb3d",
    "StreamReaderProtocol.data_received": "e57e2bc9772342e5",
    "Event.clear": "82c569b0eb6d7ad3",
    "Event.set": "850dc4b5d016ca6e",
    "StreamReaderProtocol._stream_reader": "44ba9d2418db009c",
    "StreamReader.feed_data": "f1dc194f7bceb07d",
    "StreamReader._wakeup_waiter": "6d54176c6257ad87",
    "StreamWriter.write": "3ff9658042f6722c",
    "TimeoutWatchdog.register_activity": "41e033f7debf79d3",
    "asyncio_utils.create_task": "1e4ddcc5df8a95ab",
    "tasks.create_task": "160d912c99aadb34",
    "tasks._set_task_name": "1d333b6b6f8bcb5a",
}
#: ``need.code_fingerprint`` of each, on ``need.CODE_MAGIC``'s bytecode: matched, start-up
#: reads no source file (``need.unchanged``).
CODE_FINGERPRINTS = {
    "ConnectionHandler.server_event": "ca78a3ac15261ed3",
    "ConnectionHandler.drain_writers": "5c08f9b59db180f4",
    "StreamWriter.drain": "5f81ed889e313a6c",
    "FlowControlMixin._drain_helper": "164df957b526935b",
    "Lock.acquire": "d4d60507da598630",
    "Lock.release": "1c878887455d42e8",
    "Lock._wake_up_first": "933f879f38b11315",
    "StreamReader.exception": "90f8fb4644e04ee5",
    "asyncio_utils.set_task_debug_info": "886c373ad9a36b10",
    "_Environ.__getitem__": "9c89bdb45cf484f4",
    "Mapping.get": "56b63ee310fd81db",
    "TimeoutWatchdog.disarm": "eb1ebc9137a4c8ba",
    "ConnectionHandler.handle_connection": "7f50f7a022f0e4c4",
    "StreamReader.read": "c500defb98ba975f",
    "StreamReader._wait_for_data": "6289a880f7fe8b5e",
    "StreamReader._maybe_resume_transport": "610826efc1261fe3",
    "StreamWriter.is_closing": "9aaeeffa0c95de9f",
    "StreamReaderProtocol.data_received": "3271945ed3dd9f78",
    "Event.clear": "6babd4f7362dd746",
    "Event.set": "dee1602d418ab219",
    "StreamReaderProtocol._stream_reader": "5b7d08d09a6377b3",
    "StreamReader.feed_data": "24fd030a34372086",
    "StreamReader._wakeup_waiter": "a828b88ffe0ec13a",
    "StreamWriter.write": "3059359e4d084f63",
    "TimeoutWatchdog.register_activity": "6fd58339299ef546",
    "asyncio_utils.create_task": "3b4f09756e98eb17",
    "tasks.create_task": "a95353f2c109a26c",
    "tasks._set_task_name": "8830d2d4eb4abf46",
}
#: mitmproxy's own methods, as the handler had them before ``install`` (for the tests).
STOCK: dict[str, Callable[..., Any]] = {}
#: mitmproxy's ``handle_connection`` the read loop stands in for (empty: it does not)
STOCK_LOOP: list[Callable[..., Any]] = []
#: asyncio's ``StreamReaderProtocol.data_received`` before ``install`` (empty: not replaced)
STOCK_PROTOCOL: list[Callable[..., Any]] = []
#: mitmproxy's ``TimeoutWatchdog.disarm`` before ``install`` (for the tests)
STOCK_DISARM: list[Callable[..., Any]] = []
#: what seam/defences.py's client ``handle_connection`` runs after its first step, by name:
#: "stock", mitmproxy's own (set by defences as it wraps it), and "handle_connection", what
#: runs: the stock one, or ``install_loop``'s copy with the stream reads inline
connection_loop: dict[str, Any] = {}


def _target(name: str) -> Any:
    owner, attr = name.split(".")
    if owner == "asyncio_utils":
        return STOCK.get(attr) or getattr(asyncio_utils, attr)
    if name == "ConnectionHandler.handle_connection":
        return connection_loop.get("stock") or server.ConnectionHandler.handle_connection
    if owner == "tasks":
        return getattr(asyncio.tasks, attr)
    if owner == "TimeoutWatchdog":
        if attr != "disarm":
            return getattr(server.TimeoutWatchdog, attr)
        return STOCK_DISARM[0] if STOCK_DISARM else getattr(server.TimeoutWatchdog, attr)
    if owner == "StreamReaderProtocol":
        protocol = asyncio.StreamReaderProtocol
        if attr == "_stream_reader":
            return protocol._stream_reader.fget  # type: ignore[attr-defined]
        return STOCK_PROTOCOL[0] if STOCK_PROTOCOL else protocol.data_received
    cls = {
        "ConnectionHandler": server.ConnectionHandler,
        "StreamWriter": asyncio.StreamWriter,
        "FlowControlMixin": asyncio.streams.FlowControlMixin,
        "Lock": asyncio.Lock,
        "Event": asyncio.Event,
        "StreamReader": asyncio.StreamReader,
        "_Environ": os._Environ,
        "Mapping": collections.abc.Mapping,
    }[owner]
    return STOCK.get(attr) if owner == "ConnectionHandler" and attr in STOCK else getattr(
        cls, attr)


def fingerprint(name: str) -> str | None:
    """The fingerprint (``need.fingerprint``) of ``name`` as installed (None: none)."""
    return need.fingerprint(_target(name))


def missing_symbol() -> str | None:
    lock = asyncio.Lock()
    return (missing(server, "ConnectionHandler")
            or missing(server.ConnectionHandler, "server_event", "drain_writers", "log",
                       "close_connection", "open_connection", "wakeup", "hook_task")
            or missing(asyncio_utils, "create_task", "set_task_debug_info", "_KEEP_ALIVE")
            or missing(asyncio.tasks, "create_task", "_set_task_name")
            or missing(os, "_Environ")
            or missing(os.environ, "_data", "encodekey", "decodevalue")
            or missing(lock, "_locked", "_waiters", "acquire", "release", "_wake_up_first")
            or missing(asyncio.streams, "FlowControlMixin", "StreamReaderProtocol")
            or missing(asyncio.StreamReaderProtocol, "data_received", "_stream_reader")
            or missing(asyncio.streams.FlowControlMixin, "_drain_helper")
            or missing(asyncio.StreamWriter, "drain")
            or missing(server, "TimeoutWatchdog")
            or missing(server.TimeoutWatchdog, "disarm", "register_activity"))


def _same(*names: str) -> bool:
    for name in names:
        if not need.unchanged(_target(name), FINGERPRINTS[name], CODE_FINGERPRINTS.get(name)):
            logger.warning("%s is not the one vaultproxy's fast connection handler was "
                           "written against: it stays as it is (slower)", name)
            return False
    return True


_SendData, _Log = commands.SendData, commands.Log
_StreamWriter: Any = asyncio.StreamWriter  # (Any: no narrowing to its public type)


def _command(self: Any, command: commands.Command) -> None:
    """One command of ``server_event``'s loop, as mitmproxy's chain handles it (copied)."""
    if isinstance(command, commands.OpenConnection):
        assert command.connection not in self.transports
        handler = asyncio_utils.create_task(
            self.open_connection(command),
            name=f"server connection handler {command.connection.address}",
            keep_ref=False,
            client=self.client.peername,
        )
        self.transports[command.connection] = server.ConnectionIO(handler=handler)
    elif isinstance(command, commands.RequestWakeup):
        task = asyncio_utils.create_task(
            self.wakeup(command),
            name=f"wakeup timer ({command.delay:.1f}s)",
            keep_ref=False,
            client=self.client.peername,
        )
        assert task is not None
        self.wakeup_timer.add(task)
    elif (
        isinstance(command, commands.ConnectionCommand)
        and command.connection not in self.transports
    ):
        pass  # The connection has already been closed.
    elif isinstance(command, commands.SendData):
        writer = self.transports[command.connection].writer
        assert writer
        if not writer.is_closing():
            writer.write(command.data)
    elif isinstance(command, commands.CloseTcpConnection):
        self.close_connection(command.connection, command.half_close)
    elif isinstance(command, commands.CloseConnection):
        self.close_connection(command.connection, False)
    elif isinstance(command, commands.StartHook):
        asyncio_utils.create_task(
            self.hook_task(command),
            name=f"handle_hook({command.name})",
            keep_ref=True,
            client=self.client.peername,
        )
    elif isinstance(command, commands.Log):
        self.log(command.message, command.level)
    else:
        raise RuntimeError(f"Unexpected command: {command}")


#: ``StartHook`` classes (exact types) whose task ``server_event`` starts itself
#: (``_start_hook``; seam/lean.py adds its ``LeanHook``)
START_HOOKS: set[type] = set()
#: what ``server_event`` may do inline, as ``install`` found it unchanged (empty: nothing)
INLINE: dict[str, Any] = {}
#: mitmproxy's ``TimeoutWatchdog`` if its ``register_activity`` may be done inline
#: (``last_activity = time.time()``; here and in seam/lean.py's hook task), else None
INLINE_WATCHDOG: list[Any] = [None]
#: ``asyncio.Event`` if its ``clear`` and ``set`` may be done inline (seam/lean.py's hook
#: task, on the watchdog's ``can_timeout``), else None
INLINE_EVENT: list[Any] = [None]


def _start_hook(self: Any, command: Any) -> None:
    """``_command``'s ``StartHook`` branch (``asyncio_utils.create_task(self.hook_task(
    command), name=f"handle_hook({command.name})", keep_ref=True, client=...)``) with
    ``create_task`` (``asyncio.create_task``: ``loop.create_task(coro)``, then
    ``_set_task_name`` of no name, nothing) and this module's ``set_task_debug_info`` (its
    body), if they are still the ones ``install`` checked; otherwise ``_command``."""
    inline = INLINE
    if (not inline or asyncio_utils.create_task is not inline["create_task"]
            or asyncio.create_task is not inline["asyncio.create_task"]
            or asyncio_utils.set_task_debug_info is not set_task_debug_info):
        _command(self, command)
        return
    coro = self.hook_task(command)
    name = f"handle_hook({command.name})"
    client = self.client.peername
    task = asyncio.get_running_loop().create_task(coro)
    # ``set_task_debug_info(task, name=name, client=client)``, its body inline
    task.created = time.time()  # type: ignore[attr-defined]
    if __debug__ is True:
        environ: Any = os.environ
        if environ is _ENVIRON and type(environ) is os._Environ:
            raw = environ._data.get(_TEST_KEY)  # type: ignore[attr-defined]
            if raw is not None:
                test = environ.decodevalue(raw)
                if test:
                    name = f"{name} [created in {test}]"
        else:
            test = environ.get(_TEST_VAR, None)
            if test:
                name = f"{name} [created in {test}]"
    task.set_name(name)
    if client:
        task.client = client  # type: ignore[attr-defined]
    if not task.done():
        keep_alive = asyncio_utils._KEEP_ALIVE
        keep_alive.add(task)
        task.add_done_callback(keep_alive.discard)


async def server_event(self: Any, event: Any) -> None:
    """mitmproxy's ``server_event`` (see the module's docstring)."""
    lock = self._server_event_lock
    if not lock._locked and not lock._waiters:
        lock._locked = True  # (``Lock.acquire`` of a free lock: no wait)
    else:
        await lock.acquire()
    _locked_event(self, event)


def _locked_event(self: Any, event: Any, take: bool = False, connection: Any = None,
                  data: bytes = b"") -> None:
    """``server_event``'s body once its lock is taken (``async with``'s block; ``take``:
    take the free lock first): the event through the layers, their commands, then the lock
    released. No ``await``: ``_deliver`` runs it from the protocol's callback, for the
    agent's bytes (``event`` None: ``DataReceived(connection, data)``, made here unless a
    lean tunnel's route takes the bytes without it).

    A top layer whose ``handle_event`` is a route (``SHORT``: seam/bypass.py's ``Route``,
    which ``attach`` puts there itself, called as its ``handle_event``) is asked first
    (``Route.serve``): it reads the ClientTLSLayer's commands for an event it routes short
    and hands each to this function's handling of it, as when this function reads them
    from the route's ``handle_event``; for any other event it does nothing, and the event
    takes the route's ``handle_event``'s other branch (the whole stack)."""
    lock = self._server_event_lock
    if take:
        lock._locked = True  # (``Lock.acquire`` of a free lock: no wait)
    try:
        # No `await` beyond this point.
        watchdog = self.timeout_watchdog
        if type(watchdog) is INLINE_WATCHDOG[0]:
            watchdog.last_activity = time.time()  # (``register_activity``)
        else:
            watchdog.register_activity()
        try:
            route = self.layer.handle_event
            if type(route) is SHORT[0]:  # (the route itself: seam/bypass.py's ``attach``)
                if not route.serve(self, event, connection, data):
                    # (``Route.handle_event`` for an event it does not route short)
                    route.clean = False
                    if event is None:
                        event = data_received_of(connection, data)
                    _commands(self, route.full(event))
            else:
                if event is None:
                    event = data_received_of(connection, data)
                _commands(self, route(event))
        except Exception:
            self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
    finally:
        if lock._locked and not lock._waiters:
            lock._locked = False  # (``Lock.release`` with no waiter to wake: no call)
        else:
            lock.release()


def _commands(self: Any, layer_commands: Any) -> None:
    """``server_event``'s loop over the layers' commands (``_locked_event``)."""
    transports = self.transports
    for command in layer_commands:
        kind = type(command)
        if kind is _SendData:
            io = transports.get(command.connection)
            if io is None:
                continue  # The connection has already been closed.
            writer = io.writer
            assert writer
            if type(writer) is _StreamWriter and "write" in INLINE:
                stream = writer._transport  # (what ``is_closing``, ``write`` use)
                if not stream.is_closing():
                    stream.write(command.data)
            elif not writer.is_closing():
                writer.write(command.data)
        elif kind is _Log:
            self.log(command.message, command.level)
        elif kind in START_HOOKS:
            _start_hook(self, command)
        else:
            _command(self, command)


def send_data(self: Any, connection: Any, data: bytes) -> None:
    """What ``_commands`` does with ``SendData(connection, data)`` (seam/tlsio.py's
    ``event_to_child`` writes the agent's TLS records so for seam/bypass.py's ``Route``,
    without the command: ``Route.serve``)."""
    io = self.transports.get(connection)
    if io is None:
        return  # The connection has already been closed.
    writer = io.writer
    assert writer
    if type(writer) is _StreamWriter and "write" in INLINE:
        stream = writer._transport  # (what ``is_closing``, ``write`` use)
        if not stream.is_closing():
            stream.write(data)
    elif not writer.is_closing():
        writer.write(data)


#: [the class whose instances, as a handler's top layer's ``handle_event``, ``_locked_event``
#: asks first (``serve``)]: seam/bypass.py's ``Route`` sets it (None: nothing asked)
SHORT: list[Any] = [None]


class _Disarmed:
    """mitmproxy's ``TimeoutWatchdog.disarm()`` (a ``@contextmanager``: clear, count up;
    on the way out count down and, at zero, register activity and set) as a class: the
    same steps, without the generator and the StopIteration its ``__exit__`` raises and
    clears (about twice per request: the lean hook and mitmproxy's ``handle_hook``)."""

    __slots__ = ("wd",)

    def __init__(self, wd: Any) -> None:
        self.wd = wd

    def __enter__(self) -> None:
        wd = self.wd
        wd.can_timeout.clear()
        wd.blocker += 1

    def __exit__(self, *exc: object) -> None:
        wd = self.wd
        wd.blocker -= 1
        if wd.blocker == 0:
            wd.register_activity()
            wd.can_timeout.set()


def disarm(self: Any) -> _Disarmed:
    """``TimeoutWatchdog.disarm`` (see ``_Disarmed``)."""
    return _Disarmed(self)


_TEST_VAR = "PYTEST_CURRENT_TEST"
_ENVIRON: Any = os.environ
# (``os.environ``'s key for it, made once)
_TEST_KEY = getattr(_ENVIRON, "encodekey", lambda _: None)(_TEST_VAR)


def environ_get(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, read as ``_Environ.__getitem__`` reads it (the
    encoded key in its ``_data``) but without the KeyError it raises and ``Mapping.get``
    clears for a name that is not set (a few thousand instructions, per hook that asks):
    for a per-request switch such as ``VAULTPROXY_LEAN_BYPASS``. Anything other than the
    ``os._Environ`` (a test's replacement mapping) is asked with ``.get`` itself."""
    environ: Any = os.environ
    if type(environ) is os._Environ:
        raw = environ._data.get(environ.encodekey(name))  # type: ignore[attr-defined]
        return default if raw is None else environ.decodevalue(raw)  # type: ignore[no-any-return]
    return environ.get(name, default)  # type: ignore[no-any-return]


def set_task_debug_info(task: asyncio.Task[Any], *, name: str,
                        client: tuple[Any, ...] | None = None) -> None:
    """mitmproxy's ``set_task_debug_info`` (see the module's docstring)."""
    task.created = time.time()  # type: ignore[attr-defined]
    if __debug__ is True:
        environ: Any = os.environ
        if type(environ) is os._Environ:  # (what ``os.environ.get`` reads, without a KeyError)
            key = _TEST_KEY if environ is _ENVIRON else environ.encodekey(_TEST_VAR)
            raw = environ._data.get(key)  # type: ignore[attr-defined]
            test = None if raw is None else environ.decodevalue(raw)
        else:
            test = environ.get(_TEST_VAR, None)
        if test:
            name = f"{name} [created in {test}]"
    task.set_name(name)
    if client:
        task.client = client  # type: ignore[attr-defined]


def _make_drain(stock: Callable[..., Any]) -> Callable[..., Any]:
    stream_writer = asyncio.StreamWriter

    async def drain_writers(self: Any) -> None:
        """mitmproxy's ``drain_writers``, without the awaits that would not wait."""
        lock = self._drain_lock
        if not lock._locked and not lock._waiters:
            for io in self.transports.values():
                writer = io.writer
                if writer is None:
                    continue
                if type(writer) is not stream_writer:
                    break
                w: Any = writer  # (asyncio's private fields, as ``drain`` reads them)
                reader, protocol = w._reader, w._protocol
                if ((reader is not None and reader._exception is not None)
                        or w._transport.is_closing() or protocol._connection_lost
                        or protocol._paused):
                    break
            else:
                return
        await stock(self)

    return drain_writers


class _Direct:
    """A read loop (``_make_handle_connection``) whose protocol may hand its bytes to
    ``server_event`` itself (``_deliver``): its handler, connection and task, the future
    it waits on (None: not waiting), and why ``_deliver`` woke it (``_DRAIN``, or the
    exception ``server_event`` raised; None: not by ``_deliver``)."""

    __slots__ = ("handler", "connection", "task", "waiter", "woke")

    def __init__(self, handler: Any, connection: Any, task: asyncio.Task[Any]) -> None:
        self.handler = handler
        self.connection = connection
        self.task = task
        self.waiter: Any = None  # (an asyncio.Future, or None)
        self.woke: Any = None


#: the ``StreamReader`` of each read loop that lets its protocol deliver (``_Direct``)
DIRECT: dict[Any, _Direct] = {}
#: [on]: read loops let their protocol deliver (``install`` turns it on; tests turn it off)
DIRECT_READ: list[bool] = [False]
_DRAIN = "drain"  # (``_Direct.woke``: the bytes went through; the writers need draining)
#: ``_make_drain``'s ``drain_writers`` as ``install`` put it on the handler class
FAST_DRAIN: list[Any] = [None]
_swap_current_task: Any = getattr(asyncio.tasks, "_swap_current_task", None)
current_task = asyncio.current_task


def _deliver(entry: _Direct, reader: Any, data: bytes) -> bool:
    """The read loop's next steps for ``data`` (the protocol's bytes, its reader's buffer
    empty), in the protocol's callback instead of after a wake-up of the loop's task: what
    ``read(65535)`` would return (``data``, when it is ``bytes`` of at most 65535), then
    ``server_event(DataReceived(connection, data))`` (its body: the lock free, so no
    ``await``) with the loop's task as the current task and in its context, as when the
    task runs it; then, if ``drain_writers`` would return without waiting (``_make_drain``'s
    test), the loop would wait for the next bytes again: it already does, on the same
    future. Otherwise (the writers need draining, or ``server_event`` raised) the task is
    woken to do it (``_Direct.woke``). False (nothing done: the bytes go to the buffer, the
    task is woken) unless the loop waits on this reader's waiter, not cancelled, and
    ``server_event`` is this module's with its lock free (no task waits for it)."""
    waiter = reader._waiter
    if (entry.waiter is not waiter or waiter.done() or type(data) is not bytes
            or len(data) > 65535 or reader._exception is not None or reader._paused):
        return False
    handler = entry.handler
    if type(handler).server_event is not server_event:
        return False
    lock = handler._server_event_lock
    if lock._locked or lock._waiters:
        return False
    task, loop = entry.task, reader._loop
    prev = _swap_current_task(loop, task)
    try:
        task.get_context().run(_locked_event, handler, None, True, entry.connection, data)
    except BaseException as e:  # noqa: BLE001 - raised in the task, as the loop would
        entry.woke = e
    finally:
        _swap_current_task(loop, prev)
    if waiter.done():
        return True  # (cancelled meanwhile: the loop ends as it would have)
    if entry.woke is None:
        if type(handler).drain_writers is FAST_DRAIN[0] and _writers_ready(handler):
            return True
        entry.woke = _DRAIN
    reader._waiter = None  # (``_wakeup_waiter``)
    waiter.set_result(None)
    return True


def _writers_ready(self: Any) -> bool:
    """Would ``_make_drain``'s ``drain_writers`` return at once (no ``await``)?"""
    lock = self._drain_lock
    if lock._locked or lock._waiters:
        return False
    for io in self.transports.values():
        writer = io.writer
        if writer is None:
            continue
        if type(writer) is not _StreamWriter:
            return False
        w: Any = writer
        reader, protocol = w._reader, w._protocol
        if ((reader is not None and reader._exception is not None)
                or w._transport.is_closing() or protocol._connection_lost
                or protocol._paused):
            return False
    return True


def _make_handle_connection(stock: Callable[..., Any]) -> Callable[..., Any]:
    stream_reader: Any = asyncio.StreamReader  # (Any: no narrowing to its public type)
    data_received, connection_closed = events.DataReceived, events.ConnectionClosed
    can_read, closed, can_write = (ConnectionState.CAN_READ, ConnectionState.CLOSED,
                                   ConnectionState.CAN_WRITE)

    async def handle_connection(self: Any, connection: Any) -> None:
        """mitmproxy's ``handle_connection`` with ``StreamReader.read(65535)`` inline, and
        the bytes its protocol hands to ``server_event`` itself while it waits (see the
        module's docstring)."""
        cancelled = None
        reader: Any = self.transports[connection].reader
        assert reader
        if type(reader) is not stream_reader:
            return await stock(self, connection)  # type: ignore[no-any-return]
        entry = None
        if DIRECT_READ[0]:
            task = current_task()
            if task is not None and reader not in DIRECT:
                entry = DIRECT[reader] = _Direct(self, connection, task)
        try:
            while True:
                woke = None
                try:
                    # ``data = await reader.read(65535)``
                    if reader._exception is not None:
                        raise reader._exception
                    if not reader._buffer and not reader._eof:
                        # ``await reader._wait_for_data("read")``
                        if reader._waiter is not None:
                            raise RuntimeError("read() called while another coroutine is "
                                               "already waiting for incoming data")
                        if reader._paused:
                            reader._paused = False
                            reader._transport.resume_reading()
                        waiter = reader._waiter = reader._loop.create_future()
                        if entry is not None:
                            entry.waiter = waiter
                        try:
                            await waiter
                        finally:
                            reader._waiter = None
                            if entry is not None:
                                entry.waiter = None
                                woke, entry.woke = entry.woke, None
                    if woke is None:
                        buffer = reader._buffer
                        if len(buffer) <= 65535:  # (all: ``bytes(memoryview(buffer)[:65535])``)
                            data = bytes(buffer)
                            buffer.clear()
                        else:
                            data = bytes(memoryview(buffer)[:65535])
                            del buffer[:65535]
                        if reader._paused and len(buffer) <= reader._limit:
                            reader._paused = False
                            reader._transport.resume_reading()
                        if not data:
                            raise OSError("Connection closed by peer.")
                except OSError:
                    break
                except asyncio.CancelledError as e:
                    cancelled = e
                    break

                if woke is None:
                    await self.server_event(data_received(connection, data))
                elif woke is not _DRAIN:  # (``server_event`` raised, in the protocol's callback)
                    raise woke

                try:
                    await self.drain_writers()
                except asyncio.CancelledError as e:
                    cancelled = e
                    break
        finally:
            if entry is not None:
                del DIRECT[reader]

        if cancelled is None and connection.transport_protocol == "tcp":
            # TCP connections can be half-closed.
            connection.state &= ~can_read
        else:
            connection.state = closed

        await self.server_event(connection_closed(connection))

        if connection.state is can_write:
            # we may still use this connection to *send* stuff,
            # even though the remote has closed their side of the connection.
            # to make this work we keep this task running and wait for cancellation.
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as e:
                cancelled = e

        try:
            writer = self.transports[connection].writer
            assert writer
            writer.close()
        except OSError:
            pass
        self.transports.pop(connection)

        if cancelled:
            raise cancelled

    return handle_connection


def _make_data_received() -> Callable[..., Any]:
    stream_reader: Any = asyncio.StreamReader  # (Any: no narrowing to its public type)
    direct = DIRECT

    def data_received(self: Any, data: bytes) -> None:
        """asyncio's ``StreamReaderProtocol.data_received`` (see the module's docstring)."""
        wr = self._stream_reader_wr  # (``_stream_reader``)
        reader = None if wr is None else wr()
        if reader is None:
            return
        if type(reader) is not stream_reader:
            reader.feed_data(data)
            return
        # ``reader.feed_data(data)``
        assert not reader._eof, "feed_data after feed_eof"
        if not data:
            return
        if reader._waiter is not None and not reader._buffer:
            entry = direct.get(reader)
            if entry is not None and _deliver(entry, reader, data):
                return
        reader._buffer.extend(data)
        waiter = reader._waiter  # (``_wakeup_waiter``)
        if waiter is not None:
            reader._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        if (reader._transport is not None and
                not reader._paused and
                len(reader._buffer) > 2 * reader._limit):
            try:
                reader._transport.pause_reading()
            except NotImplementedError:
                # The transport can't be paused.
                # We'll just have to buffer all data.
                # Forget the transport so we don't keep trying.
                reader._transport = None
            else:
                reader._paused = True

    return data_received


def install_loop() -> bool:
    """The read loop of seam/defences.py's ``handle_connection`` as ``_make_handle_connection``
    makes it, if that is mitmproxy's and what it copies is unchanged; True if in place."""
    loop = connection_loop
    stock_loop: Callable[..., Any] | None = loop.get("stock")
    if stock_loop is None:
        return False
    if loop.get("handle_connection") not in (stock_loop,):
        _direct_read()
        return bool(STOCK_LOOP)  # (already in place, or someone else's)
    if not _same("ConnectionHandler.handle_connection", "StreamReader.read",
                 "StreamReader._wait_for_data", "StreamReader._maybe_resume_transport"):
        return False
    STOCK_LOOP[:] = [stock_loop]
    loop["handle_connection"] = _make_handle_connection(stock_loop)
    _direct_read()
    return True


def _direct_read() -> None:
    """The protocol hands bytes to ``server_event`` itself (``_deliver``) only with this
    module's ``server_event``, read loop and ``data_received``, and asyncio's
    ``_swap_current_task`` and ``Task.get_context``."""
    DIRECT_READ[0] = (server.ConnectionHandler.server_event is server_event
                      and bool(STOCK_LOOP) and bool(STOCK_PROTOCOL)
                      and _swap_current_task is not None
                      and hasattr(asyncio.Task, "get_context"))


def install() -> bool:
    """Apply what still matches; False if a symbol is missing (nothing applied)."""
    cls = server.ConnectionHandler
    if getattr(cls, "_vaultproxy_fast_io", False):
        return True
    if missing_symbol() is not None:
        return False
    STOCK.update(server_event=cls.server_event, drain_writers=cls.drain_writers,
                 set_task_debug_info=asyncio_utils.set_task_debug_info)
    if _same("ConnectionHandler.server_event", "Lock.acquire", "Lock.release",
             "Lock._wake_up_first"):
        cls.server_event = server_event  # type: ignore[method-assign]
        if _same("StreamWriter.is_closing", "StreamWriter.write"):
            INLINE["write"] = True
        if _same("TimeoutWatchdog.register_activity"):
            INLINE_WATCHDOG[0] = server.TimeoutWatchdog
        if _same("Event.clear", "Event.set"):
            INLINE_EVENT[0] = asyncio.Event
        if _same("asyncio_utils.create_task", "tasks.create_task", "tasks._set_task_name"):
            INLINE.update({"create_task": asyncio_utils.create_task,
                           "asyncio.create_task": asyncio.create_task})
    if _same("ConnectionHandler.drain_writers", "StreamWriter.drain",
             "FlowControlMixin._drain_helper", "StreamReader.exception", "Lock.acquire"):
        cls.drain_writers = FAST_DRAIN[0] = _make_drain(  # type: ignore[method-assign]
            STOCK["drain_writers"])
    if _same("asyncio_utils.set_task_debug_info", "_Environ.__getitem__", "Mapping.get"):
        asyncio_utils.set_task_debug_info = set_task_debug_info
    install_loop()
    protocol = asyncio.StreamReaderProtocol
    if not STOCK_PROTOCOL and _same(
            "StreamReaderProtocol.data_received", "StreamReaderProtocol._stream_reader",
            "StreamReader.feed_data", "StreamReader._wakeup_waiter"):
        STOCK_PROTOCOL.append(protocol.data_received)
        protocol.data_received = _make_data_received()  # type: ignore[method-assign]
    _direct_read()
    if not STOCK_DISARM:
        STOCK_DISARM.append(server.TimeoutWatchdog.disarm)
    if _same("TimeoutWatchdog.disarm"):
        server.TimeoutWatchdog.disarm = disarm  # type: ignore[method-assign,assignment]
    cls._vaultproxy_fast_io = True  # type: ignore[attr-defined]
    return True
