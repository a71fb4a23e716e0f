"""The agent connection's own read loop for a lean tunnel (a speed patch of the seam).

On mitmproxy's loop (``ConnectionHandler.handle_connection``) a lean request (seam/lean.py)
costs two passes through ``server_event`` (its lock, the watchdog's clock, the command
dispatch), a task per request for the one blocking ``LeanHook`` (``hook_task``: a Task
object, its debug name and keep-alive set entry, a second ``server_event`` for the hook's
completion) and the hand-overs between them. This loop is mitmproxy's, line for line, for
everything but one case: once the lean layer serves the connection (a ``Drive`` is set on
its handler), the agent's bytes go down the stack and the commands that come back are run
here, in the reader's own task, the way ``server_event`` runs them; a ``LeanHook`` among
them is run in place (``handle_hook``, as ``hook_task`` would) and its completion sent down
the stack right after, as ``hook_task`` would send it. Every other command (a write, a
close, another hook, a dial, a wakeup ...) is run exactly as ``server_event`` runs it, so
every layer sees the events and commands it sees on mitmproxy's loop. An event or a
command met while another task is inside ``server_event`` waits for its lock, as there.

While a request's hooks run, this task does not read the agent's socket (mitmproxy's reads
on, queueing the bytes in the paused lean layer): the kernel and asyncio's reader buffer
them (asyncio's reader stops reading past its limit: backpressure as before), and the
request's "has the agent gone?" test (``LeanLayer.client_gone``) also asks the reader
whether the agent's end of the connection has closed (end of stream or reset), which is
what mitmproxy's loop would have queued as ``ConnectionClosed``.

``VAULTPROXY_LEAN_LOOP=0`` in the proxy's environment keeps mitmproxy's loop for every
connection (A/B measurements); a mitmproxy whose handler lost a name this loop uses keeps it
too, with one WARNING. ``stats["requests"]`` counts the hooks run in place; one INFO line
says when a process first ran one."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events

from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)

ENV = "VAULTPROXY_LEAN_LOOP"
FIRST = "lean loop: first request's hooks run in the agent connection's own loop"
ATTR = "_vaultproxy_drive"  # a handler's Drive, once its lean layer serves
stats = {"requests": 0}
_installed = False

_DataReceived, _HookCompleted = events.DataReceived, events.HookCompleted
_SendData, _StartHook = commands.SendData, commands.StartHook


def enabled() -> bool:
    """Is the loop on (installed, and not switched off by ``VAULTPROXY_LEAN_LOOP=0``)?"""
    return _installed and os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off")


# The code of the two mitmproxy functions this loop repeats (``handle_connection``'s loop,
# ``server_event``'s command dispatch), as mitmproxy 12.3.1 on CPython 3.12 has them: any
# other code (a new mitmproxy, another Python) keeps mitmproxy's loop, with one WARNING.
KNOWN = {
    "handle_connection": {"89a23d64808f7217"},
    "server_event": {"45cba44828627316"},
}


def fingerprint(fn: Any) -> str:
    """A function's code (bytecode, constants, names), for ``KNOWN``."""
    code = fn.__code__
    raw = code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def missing_symbol(stock_loop: Any = None) -> str | None:
    """What this loop needs of mitmproxy that it no longer has, or whose code changed
    (None: all there, as this loop repeats it). ``stock_loop``: mitmproxy's own
    ``handle_connection`` if a patch (seam/defences.py) already wrapped it."""
    from mitmproxy.proxy import server
    from mitmproxy.utils import asyncio_utils

    symbol = missing(server.ConnectionHandler, "handle_connection", "server_event",
                     "drain_writers", "hook_task", "handle_hook", "open_connection", "wakeup",
                     "close_connection", "log") or missing(
        asyncio_utils, "create_task") or missing(server, "ConnectionIO") or missing(
        commands, "OpenConnection", "RequestWakeup", "ConnectionCommand", "SendData",
        "CloseTcpConnection", "CloseConnection", "StartHook", "Log")
    if symbol is not None:
        return symbol
    stock = {
        "handle_connection": stock_loop or server.ConnectionHandler.handle_connection,
        "server_event": server.ConnectionHandler.server_event,
    }
    for name, fn in stock.items():
        if fingerprint(fn) not in KNOWN[name]:
            return f"ConnectionHandler.{name} as this loop knows it"
    return None


def install(lean_hook: type, stock_loop: Any = None) -> None:
    """Give every agent connection this loop (it behaves as mitmproxy's until a ``Drive``
    is attached); ``lean_hook``: the class of the lean layer's one hook per request;
    ``stock_loop``: as for ``missing_symbol``."""
    global _installed, _LeanHook
    if _installed:
        return
    symbol = missing_symbol(stock_loop)
    if symbol is not None:
        logger.warning("mitmproxy has no %s: no lean loop (mitmproxy's loop reads every "
                       "connection)", symbol)
        return
    from mitmproxy.proxy import server

    _LeanHook = lean_hook
    handler_cls = server.ConnectionHandler
    previous = handler_cls.handle_connection

    async def handle_connection(self: Any, connection: Any) -> None:
        if connection is not self.client or not enabled():
            await previous(self, connection)
            return
        io = self.transports.get(connection)
        if io is not None and io.handler is None:
            # (seam/defences.py's rule: let handle_client record this task before it runs)
            await asyncio.sleep(0)
        await _client_loop(self, connection)

    handler_cls.handle_connection = handle_connection  # type: ignore[method-assign]
    _installed = True


_LeanHook: type = type(None)


def attach(handler: Any, lean: Any) -> None:
    """From now on ``handler``'s loop runs ``lean``'s requests in place."""
    if enabled() and handler.__dict__.get(ATTR) is None:
        io = handler.transports.get(handler.client)
        reader = io.reader if io is not None else None
        if not isinstance(reader, asyncio.StreamReader):
            return  # (a connection read otherwise keeps mitmproxy's loop)
        drive = Drive(handler, lean, reader)
        setattr(handler, ATTR, drive)
        lean.gone = drive.gone


class Drive:
    """The per-connection state of the loop (see the module's docstring)."""

    def __init__(self, handler: Any, lean: Any, reader: Any) -> None:
        self.handler = handler
        self.lean = lean
        self.reader = reader
        self.client = handler.client
        self._watch_end()

    def _watch_end(self) -> None:
        """Clear the agent connection's ``CAN_READ`` as its end arrives (a FIN or a reset,
        as asyncio's protocol hands it to the reader), as mitmproxy's loop does on reading
        it: a stage that asks whether the agent left (seam/engine_errors.py
        ``client_gone``) sees it while a request's hooks run, though this loop is not
        reading then. (Once read, the loop clears it as mitmproxy's does.)"""
        reader, client = self.reader, self.client
        feed_eof, set_exception = reader.feed_eof, reader.set_exception

        def ended() -> None:
            client.state &= ~ConnectionState.CAN_READ

        def on_eof() -> None:
            feed_eof()
            ended()

        def on_exception(exc: BaseException) -> None:
            set_exception(exc)
            ended()

        reader.feed_eof = on_eof
        reader.set_exception = on_exception

    def live(self) -> bool:
        """Does the lean layer still serve this connection?"""
        lean = self.lean
        return lean.fallback is None and not lean.done

    def gone(self) -> bool:
        """Has the agent's end closed (what mitmproxy's loop would have read as the end)?"""
        reader = self.reader
        return bool(getattr(reader, "_eof", False)) or reader.exception() is not None

    async def feed(self, data: bytes) -> None:
        """``server_event(DataReceived)`` and, for a ``LeanHook`` it starts, ``hook_task``."""
        handler = self.handler
        hook = await self._event(_DataReceived(self.client, data))
        while hook is not None:
            await handler.handle_hook(hook)
            hook = await self._event(_HookCompleted(hook))

    async def _event(self, event: events.Event) -> Any:
        """``server_event``; a ``LeanHook`` is returned to run in place, not put in a task."""
        handler = self.handler
        found = None
        async with handler._server_event_lock:
            handler.timeout_watchdog.register_activity()
            try:
                for command in handler.layer.handle_event(event):
                    if type(command) is _LeanHook:
                        found = command  # (blocking: the last the layers give for now)
                        stats["requests"] += 1
                        if stats["requests"] == 1:
                            logger.info(FIRST)
                    else:
                        _run(handler, command)
            except Exception:
                handler.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)
        return found


def _run(handler: Any, command: commands.Command) -> None:
    """One command, as ``ConnectionHandler.server_event`` runs it (mitmproxy 12.x)."""
    from mitmproxy.proxy import server
    from mitmproxy.utils import asyncio_utils

    if type(command) is _SendData:
        io = handler.transports.get(command.connection)  # type: ignore[attr-defined]
        if io is None:
            return  # The connection has already been closed.
        writer = io.writer
        assert writer
        if not writer.is_closing():
            writer.write(command.data)  # type: ignore[attr-defined]
        return
    if isinstance(command, commands.OpenConnection):
        assert command.connection not in handler.transports
        task = asyncio_utils.create_task(
            handler.open_connection(command),
            name=f"server connection handler {command.connection.address}",
            keep_ref=False, client=handler.client.peername)
        handler.transports[command.connection] = server.ConnectionIO(handler=task)
    elif isinstance(command, commands.RequestWakeup):
        task = asyncio_utils.create_task(
            handler.wakeup(command), name=f"wakeup timer ({command.delay:.1f}s)",
            keep_ref=False, client=handler.client.peername)
        handler.wakeup_timer.add(task)
    elif (isinstance(command, commands.ConnectionCommand)
          and command.connection not in handler.transports):
        pass  # The connection has already been closed.
    elif isinstance(command, commands.SendData):
        writer = handler.transports[command.connection].writer
        assert writer
        if not writer.is_closing():
            writer.write(command.data)
    elif isinstance(command, commands.CloseTcpConnection):
        handler.close_connection(command.connection, command.half_close)
    elif isinstance(command, commands.CloseConnection):
        handler.close_connection(command.connection, False)
    elif isinstance(command, commands.StartHook):
        asyncio_utils.create_task(handler.hook_task(command), name=f"handle_hook({command.name})",
                                  keep_ref=True, client=handler.client.peername)
    elif isinstance(command, commands.Log):
        handler.log(command.message, command.level)
    else:
        raise RuntimeError(f"Unexpected command: {command}")


async def _client_loop(self: Any, connection: Any) -> None:
    """``ConnectionHandler.handle_connection`` of mitmproxy 12.x for the agent's connection,
    the bytes going to the handler's ``Drive`` once there is one."""
    cancelled = None
    reader = self.transports[connection].reader
    assert reader
    while True:
        try:
            data = await reader.read(65535)
            if not data:
                raise OSError("Connection closed by peer.")
        except OSError:
            break
        except asyncio.CancelledError as e:
            cancelled = e
            break

        drive = self.__dict__.get(ATTR)
        if drive is not None and drive.live():
            try:
                await drive.feed(data)
            except asyncio.CancelledError as e:
                cancelled = e
                break
        else:
            await self.server_event(events.DataReceived(connection, data))

        try:
            await self.drain_writers()
        except asyncio.CancelledError as e:
            cancelled = e
            break

    if cancelled is None and connection.transport_protocol == "tcp":
        # TCP connections can be half-closed.
        connection.state &= ~ConnectionState.CAN_READ
    else:
        connection.state = ConnectionState.CLOSED

    await self.server_event(events.ConnectionClosed(connection))

    if connection.state is ConnectionState.CAN_WRITE:
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
