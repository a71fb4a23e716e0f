"""A short route for a lean tunnel's per-request events (a speed patch of the seam).

Under a pooled CONNECT tunnel served by the lean layer (seam/lean.py) mitmproxy's stack is
``HttpProxy -> HttpLayer -> (Http1Server, HttpStream) -> ServerTLSLayer -> ClientTLSLayer ->
LeanLayer``, the CONNECT's ``Http1Server`` and ``HttpStream`` in passthrough. Each request
costs two events down that stack (the agent's bytes, the completion of the one blocking
``LeanHook``) and its commands back up (the hook, the response bytes): 14 ``handle_event``
calls (10 of them above the ``ClientTLSLayer``) and as many command hand-overs, whose only
effect, in that state, is to pass the event down and the commands up, and to file a
blocking command in ``HttpLayer.command_sources`` so its completion finds its way back.

Once the lean layer serves a connection, ``Route`` takes the handler's top layer's place
for exactly those events: a ``DataReceived`` from the agent, and a ``HookCompleted`` that
``HttpLayer`` would route to the tunnel's stream, go straight to the ``ClientTLSLayer``
while every layer above is in the state that only hands them on (none paused, the
``Http1Server`` and ``HttpStream`` in passthrough, the ``ServerTLSLayer`` not queueing). Of
what comes back, the commands those layers only hand up go straight out, as they would have
come out: ``SendData`` to the agent (``Http1Server`` drops an empty one and frames none:
the CONNECT's answer is not chunked), hooks (a blocking one filed in ``command_sources``,
popped again when its completion takes the short route) and log lines. Anything else
(``CloseConnection``, ``OpenConnection``, a wakeup ...) is spliced: the same event is sent
down the whole stack, whose ``ServerTLSLayer`` then gets from the ``ClientTLSLayer``'s
place that command and the rest of its output, so every layer above sees the event and the
commands it would have seen. Every other event (a close, a wakeup, anything of the
upstream side, anything while a layer above is paused) and every event after the lean
layer handed the connection to mitmproxy's HTTP layer or ended it takes the whole stack.

``VAULTPROXY_LEAN_BYPASS=0`` in the proxy's environment keeps the whole stack (A/B
measurements); a mitmproxy whose layers moved keeps it too, with one WARNING. ``stats``
counts the events this process routed short and those of them it spliced; an INFO line gives
both each time the first reaches a power of two (what tests read of a running proxy).

The handler's ``_locked_event`` (seam/connio.py) asks the route first (``Route.serve``,
when its top layer's ``handle_event`` is a route: ``attach`` puts the route itself there,
called as its ``handle_event``): for an event the route takes short it
reads the ClientTLSLayer's commands itself and handles each as it would handle
``handle_event``'s answer (``_short``'s generator and ``handle_event``'s call saved); the
agent's bytes through the decided TLS layer need no ``DataReceived`` then (made only if a
layer is handed the event), and after a hook the TLS layer writes the agent's records with
the handler's own ``SendData`` code (``connio.send_data``) instead of yielding them.
tests/unit/test_speed_routeserve.py compares ``serve`` with ``handle_event``, and the route
as the top layer's ``handle_event`` with its bound method as it was."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy.proxy import commands, events, layer, tunnel
from mitmproxy.proxy.layers import ClientTLSLayer, ServerTLSLayer, modes
from mitmproxy.proxy.layers import http as layers_http
from mitmproxy.proxy.layers.http import _http1

from vaultproxy.seam import connio, tlsio
from vaultproxy.seam.connio import (
    START_HOOKS,
    _command,
    _commands,
    _start_hook,
    environ_get,
    send_data,
)
from vaultproxy.seam.need import missing
from vaultproxy.seam.objects import data_received_of

logger = logging.getLogger(__name__)

lhttp: Any = layers_http  # mitmproxy's HTTP layer names are not re-exported (for mypy)

ENV = "VAULTPROXY_LEAN_BYPASS"
COUNT = "lean bypass: events routed past the layers above the ClientTLSLayer so far:"
stats = {"short": 0, "spliced": 0}  # what this process's routes did
_checked: bool | None = None  # None: mitmproxy's names not checked yet
_said: set[str] = set()

_SendData, _Log, _StartHook = commands.SendData, commands.Log, commands.StartHook
_DataReceived, _HookCompleted = events.DataReceived, events.HookCompleted
_OPEN = getattr(getattr(tunnel, "TunnelState", None), "OPEN", None)  # (read per event)
_NEVER = object()  # (``Route.tls_conn`` when not decided: no layer's ``tls``)
#: the counts of short events a line is logged at: 1, 2, 4, 8 ... (``n & (n - 1) == 0``)
_LOG_AT = frozenset(1 << i for i in range(64))


def enabled() -> bool:
    """Is the short route on (mitmproxy has what it reads, and ``VAULTPROXY_LEAN_BYPASS``
    is not ``0``)?"""
    global _checked
    if environ_get(ENV, "1").strip() in ("0", "false", "no", "off"):
        return False
    if _checked is None:
        symbol = (missing(modes, "HttpProxy") or missing(lhttp, "HttpLayer", "HttpStream")
                  or missing(lhttp.HttpStream, "passthrough")
                  or missing(_http1, "Http1Server")
                  or missing(_http1.Http1Server, "passthrough", "send")
                  or missing(tunnel, "TunnelState") or missing(layer, "NextLayer")
                  or missing(tunnel.TunnelLayer, "receive_data", "event_to_child",
                             "_handle_event")
                  or missing(ServerTLSLayer, "wait_for_clienthello", "event_to_child"))
        if symbol is not None:
            logger.warning("mitmproxy has no %s: no lean bypass (every event of a lean "
                           "tunnel crosses mitmproxy's layers)", symbol)
        _checked = symbol is None
    return _checked


def _say(why: str) -> None:
    if why not in _said:
        _said.add(why)
        logger.info("lean bypass: %s", why)


def _below(parent: Any) -> Any:
    """The layer ``parent`` hands its events to (through a decided ``NextLayer``), or None."""
    if type(parent) is modes.HttpProxy:  # (its child is its ``_handle_event``'s NextLayer)
        child = getattr(parent._handle_event, "__self__", None)
    else:
        child = getattr(parent, "child_layer", None)
    if isinstance(child, layer.NextLayer):
        return child.layer
    return child


def attach(handler: Any, lean: Any) -> Route | None:
    """Put a ``Route`` in front of ``handler``'s stack, if the stack above ``lean`` is the
    one this module knows exactly; None (and the whole stack for good) otherwise."""
    try:
        return _attach(handler, lean)
    except AttributeError as e:  # a mitmproxy whose layers keep their state elsewhere
        _say(f"not taken ({e})")
        return None


def _attach(handler: Any, lean: Any) -> Route | None:
    top: Any = handler.layer
    ctx: Any = lean.context
    layers: list[Any] = ctx.layers
    if not (len(layers) == 6 and layers[-1] is lean and top is layers[0]):
        _say(f"not taken (a stack of {[type(x).__name__ for x in layers]} under {top!r})")
        return None
    proxy, http, stream, server_tls, client_tls = layers[:5]
    h1 = http.connections.get(ctx.client)
    want = (modes.HttpProxy, lhttp.HttpLayer, lhttp.HttpStream, ServerTLSLayer,
            ClientTLSLayer)
    if not all(type(x) is t for x, t in zip(layers, want, strict=False)) or (
            type(h1) is not _http1.Http1Server):
        _say(f"not taken (a stack of {[type(x).__name__ for x in layers]}, {type(h1)})")
        return None
    full: Any = top.handle_event
    state = stream.__dict__.get("_handle_event")
    unlinked = _unlinked(top, full, proxy, http, h1, stream, server_tls, client_tls, lean,
                         state)
    if unlinked is not None:
        _say(f"not taken ({unlinked})")
        return None
    # the object whose handle_event the ServerTLSLayer calls: ClientTLSLayer or its NextLayer
    target = server_tls.child_layer
    route = Route(top, full, lean, proxy, http, h1, stream, server_tls, client_tls, target,
                  state)
    # (an instance attribute, as NextLayer hands on once decided; only the handler calls it:
    # the route itself, called as its ``handle_event``, which ``_locked_event`` knows by its
    # type, without reading a bound method's ``__self__``)
    top.handle_event = route
    return route


def _unlinked(top: Any, full: Any, proxy: Any, http: Any, h1: Any, stream: Any,
              server_tls: Any, client_tls: Any, lean: Any, state: Any) -> str | None:
    """What is not linked as expected (each layer to the next, in the state that only
    hands events on); None if all is."""
    client = lean.context.client
    checks = {
        "the handler's top layer": top is proxy and "handle_event" not in vars(proxy),
        "HttpProxy's child": _below(proxy) is http,
        "HttpLayer's mode": http.mode is lhttp.HTTPMode.regular,
        "HttpLayer's streams": http.streams.get(stream.stream_id) is stream,
        "Http1Server's stream": h1.stream_id == stream.stream_id and h1.conn is client,
        "HttpStream's state": getattr(state, "__func__", None) is lhttp.HttpStream.passthrough,
        "Http1Server's state":
            getattr(h1.state, "__func__", None) is _http1.Http1Server.passthrough,
        "HttpStream's child": _below(stream) is server_tls,
        "ServerTLSLayer's child": _below(server_tls) is client_tls,
        "ClientTLSLayer's child": _below(client_tls) is lean,
        "ServerTLSLayer's event_to_child": "event_to_child" not in vars(server_tls),
        "the CONNECT's response": h1.response is not None and "chunked" not in
            h1.response.headers.get("transfer-encoding", "").lower(),
        "debug output": all(x.debug is None for x in (proxy, http, h1, stream, server_tls)),
    }
    return next((name for name, ok in checks.items() if not ok), None)


class Route:
    """The short route of one lean tunnel (see the module's docstring)."""

    def __init__(self, top: Any, full: Callable[[events.Event], Any], lean: Any, proxy: Any,
                 http: Any, h1: Any, stream: Any, server_tls: Any, client_tls: Any,
                 target: Any, stream_state: Any) -> None:
        self.top, self.full, self.lean = top, full, lean
        self.proxy, self.http, self.h1, self.stream = proxy, http, h1, stream
        self.server_tls, self.client_tls, self.target = server_tls, client_tls, target
        self.client = lean.context.client
        self.sources: dict[Any, Any] = http.command_sources
        self.sid = stream.stream_id
        self.h1_state, self.stream_state = h1.state, stream_state
        # The layers above change state only while an event crosses them, and every event
        # reaches them through this route's ``full``: what ``_steady`` found of them holds
        # until the next event takes the whole stack (which clears this).
        self.clean = False
        # Below the ServerTLSLayer: the ClientTLSLayer's own dispatch (``Layer.handle_event``
        # -> ``TunnelLayer._handle_event``) only calls ``receive_data`` (the agent's bytes)
        # or ``event_to_child`` (a hook's completion) while it is open, not paused and not
        # debugging; ``_below_tls`` enters there when that holds (mitmproxy's own methods).
        self.tls_direct = (
            (target is client_tls or getattr(target, "_handle", None) == client_tls.handle_event)
            and type(client_tls).handle_event is layer.Layer.handle_event
            and type(client_tls)._handle_event is tunnel.TunnelLayer._handle_event
            and client_tls.tunnel_connection is self.client and client_tls.debug is None)
        # ``tlsio.decided``, asked once: the ClientTLSLayer's ``receive_data`` and
        # ``event_to_child`` are told so (their checks of its class and of its ``tls``
        # skipped), while its ``tls`` is the one asked about
        self.tls_conn: Any = (client_tls.tls if self.tls_direct and tlsio.decided(client_tls)
                              else _NEVER)
        # While ``serve`` reads the ClientTLSLayer's commands after a hook, until the first
        # it splices: the connection handler that would write each record the TLS layer
        # makes for the agent (seam/tlsio.py's ``event_to_child`` writes it so itself,
        # ``connio.send_data``); else None (the records are yielded, as they come)
        self.sink: Any = None

    def detach(self) -> None:
        """The whole stack from now on (the lean layer no longer serves this connection)."""
        if vars(self.top).get("handle_event") is self:
            del self.top.handle_event

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        """The top layer's ``handle_event`` (``attach`` puts the route itself there: its
        call is this method, ``__call__``): the short route, or the whole stack."""
        kind = type(event)
        # (``_steady``'s answer while ``clean`` holds, without its call: the lean layer still
        # serving, ``lean.serving``: no fallback, not done; anything else asks ``_steady``,
        # which detaches the route when it is not)
        if kind is _DataReceived:
            if event.connection is self.client:  # type: ignore[attr-defined]
                lean = self.lean
                if (self.clean and lean.serving) or self._steady():
                    return self._short(event)
        elif kind is _HookCompleted:
            if self.sources.get(event.command) is self.stream:  # type: ignore[attr-defined]
                lean = self.lean
                if (self.clean and lean.serving) or self._steady():
                    return self._short(event)
        self.clean = False  # the layers above see this event: check them again next time
        return self.full(event)  # type: ignore[no-any-return]

    __call__ = handle_event  # (the top layer's ``handle_event`` is the route: ``attach``)

    def serve(self, handler: Any, event: Any, connection: Any, data: bytes) -> bool:
        """``handler``'s ``_locked_event`` (seam/connio.py) for ``event`` (None: the agent's
        bytes, ``DataReceived(connection, data)``, made only if a layer needs the object)
        on the short route, as ``_locked_event`` reads ``handle_event``'s answer: the same
        checks (``handle_event``), the same ClientTLSLayer's commands for the event, each
        passed on as ``_short`` passes it and handled as ``_locked_event`` handles it (a
        ``SendData`` to the agent written, a hook filed and started, a log line logged),
        each before the next is read; from the first command ``_short`` splices, the
        whole stack's commands go through ``_locked_event``'s loop (``connio._commands``),
        as they would. Without ``_short``'s generator and ``handle_event``'s call (and, for
        the agent's bytes through the decided TLS layer, without the event). False, with
        nothing done: the event is not routed short."""
        if event is None:
            if connection is not self.client:
                return False
            hook = False
        else:
            kind = type(event)
            if kind is _DataReceived:
                if event.connection is not self.client:
                    return False
                hook, data = False, event.data
            elif kind is _HookCompleted:
                if self.sources.get(event.command) is not self.stream:
                    return False
                hook = True
            else:
                return False
        if not (self.clean and self.lean.serving) and not self._steady():
            return False
        # ``_short``, to where it reads the ClientTLSLayer's commands
        short = stats["short"] + 1
        stats["short"] = short
        if short in _LOG_AT:  # at 1, 2, 4, 8 ...: a few lines a process
            logger.info("%s %d (%d spliced)", COUNT, short, stats["spliced"])
        if hook:
            del self.sources[event.command]  # (HttpLayer pops it)
        client = self.client
        tls = self.client_tls
        if self.tls_direct and tls._paused is None and tls.tunnel_state is _OPEN:
            if tls.tls is self.tls_conn:  # (``tlsio.decided``: the same methods, told so)
                if not hook:
                    out = tls.receive_data(data, True)
                elif tls.conn is client:  # (its records written as they come: ``sink``)
                    self.sink = handler
                    out = tls.event_to_child(event, True, self)
                else:
                    out = tls.event_to_child(event, True)
            else:
                out = tls.event_to_child(event) if hook else tls.receive_data(data)
        else:
            if event is None:
                event = data_received_of(connection, data)
            out = self.target.handle_event(event)  # what the ServerTLSLayer would call
        try:
            for command in out:
                kind = type(command)
                if kind is _SendData:
                    if command.connection is client:
                        if command.data:
                            # (``_locked_event``'s ``SendData``: ``_short`` passes it on; the
                            # TLS layer's records after a hook do this in place)
                            send_data(handler, client, command.data)
                        continue
                elif kind is _Log or isinstance(command, _StartHook):
                    blocking = command.blocking
                    if blocking is not True:
                        if blocking:
                            # (as HttpLayer.event_to_child files it)
                            self.sources[command] = self.stream
                        if kind is _Log:
                            handler.log(command.message, command.level)
                        elif kind in START_HOOKS:
                            _start_hook(handler, command)
                        else:
                            _command(handler, command)
                        continue
                # (the rest crosses the whole stack: the TLS layer's records too, from here)
                self.sink = None
                if event is None:
                    event = data_received_of(connection, data)
                _commands(handler, self._splice(event, command, out))
                return True
        finally:
            self.sink = None
        return True

    def _steady(self) -> bool:
        """Would every layer above the ClientTLSLayer only hand the event on? (Checked
        again after each event that crossed them: ``clean``.)"""
        lean = self.lean
        if lean.fallback is not None or lean.done:
            self.detach()
            return False
        if self.clean:
            return True
        server_tls = self.server_tls
        self.clean = (self.proxy._paused is None and self.http._paused is None
                and self.h1._paused is None and self.stream._paused is None
                and server_tls._paused is None
                and self.h1.state is self.h1_state
                and self.stream.__dict__.get("_handle_event") is self.stream_state
                and self.http.connections.get(self.client) is self.h1
                and self.http.streams.get(self.sid) is self.stream
                and self.h1.stream_id == self.sid
                and not server_tls.wait_for_clienthello
                and (server_tls.tunnel_state is not tunnel.TunnelState.ESTABLISHING
                     or server_tls.command_to_reply_to is not None))
        return self.clean

    def _short(self, event: events.Event) -> Iterator[commands.Command]:
        short = stats["short"] + 1
        stats["short"] = short
        if short in _LOG_AT:  # at 1, 2, 4, 8 ...: a few lines a process
            logger.info("%s %d (%d spliced)", COUNT, short, stats["spliced"])
        hook = type(event) is _HookCompleted  # (else a _DataReceived: ``handle_event``)
        if hook:
            del self.sources[event.command]  # type: ignore[attr-defined]  # (HttpLayer pops it)
        client, stream, sources = self.client, self.stream, self.sources
        tls = self.client_tls
        if self.tls_direct and tls._paused is None and tls.tunnel_state is _OPEN:
            if tls.tls is self.tls_conn:  # (``tlsio.decided``: the same methods, told so)
                out = (tls.event_to_child(event, True) if hook
                       else tls.receive_data(event.data, True))  # type: ignore[attr-defined]
            else:
                out = (tls.event_to_child(event) if hook
                       else tls.receive_data(event.data))  # type: ignore[attr-defined]
        else:
            out = self.target.handle_event(event)  # what the ServerTLSLayer would call
        for command in out:
            kind = type(command)
            if kind is _SendData:
                if command.connection is client:  # type: ignore[attr-defined]
                    if command.data:  # type: ignore[attr-defined]
                        yield command  # (as Http1Server.send(ResponseData) writes it)
                    continue
            elif kind is _Log or isinstance(command, _StartHook):
                blocking = command.blocking
                if blocking is not True:
                    if blocking:
                        sources[command] = stream  # as HttpLayer.event_to_child files it
                    yield command
                    continue
            yield from self._splice(event, command, out)
            return

    def _splice(self, event: events.Event, command: commands.Command,
                rest: Iterator[commands.Command]) -> Iterator[commands.Command]:
        """Send ``event`` down the whole stack, the ClientTLSLayer's part of it being
        ``command`` and the rest of what it already answered."""
        stats["spliced"] += 1
        self.clean = False
        _say(f"a {type(command).__name__} takes the whole stack")
        if type(event) is _HookCompleted:
            self.sources[event.command] = self.stream
        target = self.target
        own = target.__dict__.get("handle_event")

        def restore() -> None:
            if own is None:
                del target.handle_event
            else:
                target.handle_event = own

        def answered(_: events.Event) -> Iterator[commands.Command]:
            restore()
            yield command
            yield from rest

        target.handle_event = answered
        try:
            yield from self.full(event)
        finally:
            if target.__dict__.get("handle_event") is answered:  # never reached: a bug
                restore()
                logger.error("lean bypass: an event's commands were lost on the whole stack")


#: ``_locked_event`` asks a route's ``serve`` first (seam/connio.py): a top layer's
#: ``handle_event`` of this type is a route
connio.SHORT[0] = Route
