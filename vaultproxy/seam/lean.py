"""A lean HTTP/1.1 path for a pooled service's tunnel (a speed patch of the seam).

For each request mitmproxy's HTTP stack (``HttpLayer`` -> ``HttpStream`` -> ``Http1Server``)
re-enters ``layer.handle_event`` ~130 times, starts one asyncio task per hook (~7 per pooled
request: requestheaders, request, the pool exchange, two body chunks, responseheaders,
response) with a reply event travelling down the stack for each, and writes the response in
pieces. For the common case this layer replaces that stack below the ``ClientTLSLayer``:

* it reads the request head with mitmproxy's own HTTP/1 reader (``read_request_head``,
  ``expected_http_body_size``) and checks it with mitmproxy's ``validate_request``;
* it builds the same ``HTTPFlow`` ``HttpStream`` builds (transparent mode: the tunnel's
  address), and runs the same hooks, in the same order, with the same kill and error
  handling, through the Master's addon manager (``handle_lifecycle``, then
  ``wait_for_resume``, as mitmproxy's ``handle_hook`` does for each) — all from one blocking
  hook (``LeanHook``) per request, one asyncio task instead of ~7;
* it sends the response head and body as one write. A streamed response (``stream`` set by
  the response gate, e.g. server-sent events) goes out chunk by chunk as it arrives, through
  the pool's chunk hook and mitmproxy's ``response`` hook, as on mitmproxy's path.

It takes only what it handles exactly: an HTTP/1.1 request of a method other than CONNECT,
in origin form, with no ``Transfer-Encoding``, ``Upgrade``, ``Expect``, ``TE`` or
``Connection`` other than keep-alive, a body of at most the pool's limit
(``Content-Length``, or none for GET/HEAD/OPTIONS/DELETE), a head mitmproxy's reader and
validation accept, while the tunnel is still pooled. Anything else, at a request boundary,
hands the connection to mitmproxy's ``HttpLayer`` for good, replaying the bytes not yet
consumed: a malformed or smuggling head is refused by mitmproxy's own code (and audited by
seam/refusals.py) exactly as without this layer. Stages are never called twice or skipped:
the layer only replaces mitmproxy's HTTP plumbing.

Once it serves, the connection's per-request events skip the layers above the
``ClientTLSLayer`` (seam/bypass.py: the same events reach it, the same commands leave).

``VAULTPROXY_LEAN_HTTP1=0`` in the proxy's environment keeps mitmproxy's stack (for A/B
measurements). ``stats`` counts the requests this process's lean layers served and the
connections they handed to mitmproxy's HTTP layer; one INFO line says when a process first
served a request this way, and one the first time each reason sent a connection to
mitmproxy's HTTP layer (what tests read of a running proxy)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from h11._receivebuffer import blank_line_regex as _BLANK_LINE
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.net.http import http1, status_codes
from mitmproxy.net.http.validate import parse_content_length, validate_headers
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.layers import ClientTLSLayer
from mitmproxy.proxy.layers import http as layers_http
from mitmproxy.proxy.layers.http import _http1

from vaultproxy.inject import names as _names
from vaultproxy.net.grammar import TOKEN
from vaultproxy.net.h1pool import UPSTREAM_HEAD
from vaultproxy.net.namesets import NameSets
from vaultproxy.seam import aftersend, bypass, connio, deadlines, objects
from vaultproxy.seam.connio import environ_get
from vaultproxy.seam.need import missing, unchanged
from vaultproxy.seam.objects import send_data_of
from vaultproxy.seam.pool import POOLED, PoolChunkHook, PoolExchangeHook, through

logger = logging.getLogger(__name__)

lhttp: Any = layers_http  # mitmproxy's HTTP layer names are not re-exported (for mypy)

ENV = "VAULTPROXY_LEAN_HTTP1"
MAX_HEAD = 64 * 1024  # a longer incomplete head goes to mitmproxy's reader
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
#: Request methods as the head's bytes that ``Request.method`` (the bytes decoded as UTF-8
#: with surrogateescape, upper-cased) reads as themselves: upper-case ASCII. A method in this
#: set is compared as bytes; any other is decoded and upper-cased as ``Request.method`` does
#: (tests/unit/test_speed_stages6.py).
_PLAIN_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS",
                            b"CONNECT", b"TRACE"})
_NO_BODY_RAW = frozenset(m.encode() for m in _NO_BODY_METHODS)
_SKIP_HEADERS = ("transfer-encoding", "upgrade", "expect", "te")
_SKIP_KEYS = tuple((name, name.encode()) for name in _SKIP_HEADERS)
_SKIP_NAMES = frozenset(key for _, key in _SKIP_KEYS)  # (one test for all four, first)
_DataReceived, _HookCompleted = events.DataReceived, events.HookCompleted
_AFTER, _Later = aftersend.KEY, aftersend.Later
_HEAD_NOTE = objects.HEAD_NOTE
_LAYER_HANDLE_EVENT = layer.Layer.handle_event
#: mitmproxy's methods ``LeanLayer.handle_event`` does the work of (``need.fingerprint``):
#: if one differs, or is gone, every event takes mitmproxy's ``Layer.handle_event``.
EVENT_FINGERPRINTS = {
    "handle_event": "fd88b0fb09ceddbb",
    "_Layer__continue": "1b275367b37bed01",
    "_Layer__process": "37153ddd561f2019",
}
#: their ``need.code_fingerprint`` on ``need.CODE_MAGIC``'s bytecode
EVENT_CODE_FINGERPRINTS = {
    "handle_event": "10add2a2dcb6e488",
    "_Layer__continue": "c780464c27ca1f45",
    "_Layer__process": "075748b76fa9aa9c",
}
_fast_events: bool | None = None  # None: not checked yet (at the first LeanLayer)
_LAYER_PROCESS: Any = None  # mitmproxy's ``Layer.__process``, once checked


def _check_events() -> bool:
    """Is mitmproxy's ``Layer.handle_event`` (and what it calls) the one ``LeanLayer``'s
    was written against? If not: one WARNING, and mitmproxy's serves every event."""
    global _LAYER_PROCESS
    cls = layer.Layer
    if (missing(cls, *EVENT_FINGERPRINTS) is None and missing(layer, "Paused") is None
            and getattr(layer.Paused, "_fields", None) == ("command", "generator")
            and all(unchanged(getattr(cls, name), want, EVENT_CODE_FINGERPRINTS.get(name))
                    for name, want in EVENT_FINGERPRINTS.items())):
        _LAYER_PROCESS = cls._Layer__process  # type: ignore[attr-defined]
        return True
    logger.warning("mitmproxy's Layer.handle_event is not the one vaultproxy's lean layer "
                   "was written against: each event of a lean tunnel goes through it (slower)")
    return False

_installed = False
_Watchdog: Any = None  # mitmproxy's TimeoutWatchdog, if ``disarm()`` can be inlined
stats = {"requests": 0, "fallbacks": 0}  # what this process's lean layers did
_reasons_seen: set[str] = set()


def enabled() -> bool:
    """Is the lean path on (installed, and not switched off by ``VAULTPROXY_LEAN_HTTP1=0``)?"""
    return _installed and environ_get(ENV, "1").strip() not in ("0", "false", "no", "off")


def choose(nextlayer: Any, pooled: Callable[[], bool], max_body: int) -> bool:
    """Put the lean layer under a pooled tunnel's ``ClientTLSLayer`` if the agent's TLS chose
    HTTP/1.1 (or no ALPN) and mitmproxy's options leave nothing to its HTTP layer's body
    checks; True if it did. ``max_body``: the most a request body may hold on this path (the
    pool's buffered-body limit; a larger one goes to mitmproxy's HTTP layer)."""
    ctx = nextlayer.context
    if nextlayer.layer is not None or not enabled() or not ctx.layers:
        return False
    # (a NextLayer is not on its context's stack: the layer above it is the last)
    if not isinstance(ctx.layers[-1], ClientTLSLayer) or not ctx.client.tls_established:
        return False
    if ctx.client.alpn not in (None, b"", b"http/1.1"):
        return False
    if not isinstance(ctx.client.proxy_mode, mode_specs.RegularMode):
        return False  # a CONNECT tunnel's HTTP (mitmproxy's transparent mode) only
    opts = ctx.options
    if opts.body_size_limit or opts.stream_large_bodies or not pooled():
        return False
    nextlayer.layer = LeanLayer(ctx, pooled, max_body)
    return True


def install() -> None:
    """Let the connection handler run a ``LeanHook``; on a missing symbol: no lean path."""
    global _installed
    if _installed:
        return
    from mitmproxy.proxy import mode_servers

    handler = mode_servers.ProxyConnectionHandler
    symbol = missing(handler, "handle_hook") or missing(
        lhttp, "HttpLayer", "HTTPMode", "HttpRequestHeadersHook", "HttpRequestHook",
        "HttpResponseHeadersHook", "HttpResponseHook", "HttpErrorHook", "ErrorCode",
        "validate_request",
    ) or missing(_http1, "make_error_response") or missing(
        http1, "read_request_head", "expected_http_body_size", "assemble_response_head",
        "connection_close",
    )
    if symbol is not None:
        logger.warning("mitmproxy has no %s: no lean HTTP/1.1 path (mitmproxy's HTTP layer "
                       "serves every request)", symbol)
        return
    original = handler.handle_hook
    global _Watchdog
    from mitmproxy.proxy import server

    watchdog = getattr(server, "TimeoutWatchdog", None)
    if watchdog is not None and missing(watchdog, "disarm", "register_activity") is None and (
            {"can_timeout", "blocker"} <= set(getattr(watchdog, "__annotations__", {}))):
        _Watchdog = watchdog  # (else each request's watchdog goes through ``disarm()``)

    async def handle_hook(self: Any, hook: Any) -> None:
        if isinstance(hook, LeanHook):
            writer = _to_drain(self, hook.job.lean)
            if writer is not None:
                try:
                    await writer.drain()
                except OSError:
                    pass  # the agent is gone: the request's hooks see it (client_gone)
            await run_disarmed(self.timeout_watchdog, hook.job.run(self.master.addons))
            return
        await original(self, hook)

    handler.handle_hook = handle_hook  # type: ignore[method-assign]
    connio.START_HOOKS.add(LeanHook)  # (its task started with fewer calls: seam/connio.py)
    if not _FLOW_PLAIN:
        logger.warning("mitmproxy's HTTPFlow is not the one vaultproxy's lean layer was "
                       "written against: each request's flow is made by its constructor "
                       "(slower)")
    if not _PAUSED_PLAIN:
        logger.warning("mitmproxy's Paused is not the NamedTuple vaultproxy's lean layer was "
                       "written against: each pause is made by its constructor (slower)")
    stock_task = getattr(server.ConnectionHandler, "hook_task", None)
    STOCK["hook_task"] = stock_task
    if stock_task is not None and unchanged(stock_task, HOOK_TASK_FINGERPRINT,
                                            HOOK_TASK_CODE_FINGERPRINT):
        server.ConnectionHandler.hook_task = _lean_hook_task(  # type: ignore[method-assign]
            handle_hook)
    else:
        logger.warning("mitmproxy's ConnectionHandler.hook_task is not the one vaultproxy's "
                       "lean hook task was written against: it stays as it is (slower)")
    _installed = True


#: mitmproxy's ``ConnectionHandler.hook_task`` as ``install()`` found it (for the tests)
STOCK: dict[str, Any] = {}
#: mitmproxy's ``ConnectionHandler.hook_task`` as ``_lean_hook_task`` repeats it: its
#: ``need.fingerprint`` (source) and ``need.code_fingerprint`` (compiled, ``CODE_MAGIC``)
HOOK_TASK_FINGERPRINT = "9ac7970160526268"
HOOK_TASK_CODE_FINGERPRINT = "8c491fd37491489d"


def _completed_maker() -> Any:
    """``events.HookCompleted(hook)`` as one call making the same object (its ``command``,
    then its ``reply``, None) without ``CommandCompleted``'s class check (``__new__``) and
    the dataclass's ``__init__``, if the class is still that dataclass: exactly the fields
    ``command`` and ``reply`` (default None), no ``__post_init__``, and nothing in its line
    with its own ``__new__`` but ``CommandCompleted``, nor ``__setattr__`` or slots. Else
    ``events.HookCompleted`` itself. tests/unit/test_speed_flow4.py compares the two."""
    import dataclasses

    cls: Any = getattr(events, "HookCompleted", None)
    base: Any = getattr(events, "CommandCompleted", None)
    made_by_dataclass: bool = cls is not None and dataclasses.is_dataclass(cls)
    if base is None or not made_by_dataclass:
        return cls
    fields = dataclasses.fields(cls)
    if ([f.name for f in fields] != ["command", "reply"] or fields[1].default is not None
            or any(not f.init for f in fields) or hasattr(cls, "__post_init__")):
        return cls
    for klass in cls.__mro__[:-1]:
        own = set(vars(klass))
        if klass is base:
            own.discard("__new__")  # (the class check this skips)
        if {"__new__", "__setattr__", "__slots__"} & own:
            return cls
    new = object.__new__

    def hook_completed(hook: Any) -> Any:
        made = new(cls)
        made.command = hook
        made.reply = None
        return made

    return hook_completed


def _lean_hook_task(lean_handle_hook: Callable[..., Awaitable[None]]) -> Any:
    """mitmproxy's ``hook_task`` (``await self.handle_hook(hook)``, then, for a blocking
    hook, ``await self.server_event(HookCompleted(hook))``) with, for a ``LeanHook`` whose
    handler runs ``install()``'s ``handle_hook``, that ``handle_hook``'s lean branch,
    ``run_disarmed`` and ``_Job.run`` inline: the same steps in the same order, in one
    coroutine instead of four (a coroutine object, and one more frame to resume when the
    upstream answers, per level); at its end it leaves mitmproxy's set of running tasks
    itself (``asyncio_utils.create_task``'s ``keep_ref``) instead of through the done
    callback that would take one more loop turn. Any other hook, or a handler whose
    ``handle_hook`` is not that one: mitmproxy's ``hook_task``'s body.
    tests/unit/test_hops.py compares the two, step by step.

    For a request of a tunnel whose route is settled (``lean.route`` not None) ``_to_drain``'s
    lookup of the agent's writer is inline (tests/unit/test_speed_hookdone.py compares it
    with mitmproxy's path). What is the same for every request of a connection is asked
    once and kept on its layer: the agent's ``StreamWriter``'s transport (``agent_stream``:
    while it is open and holds nothing, no look-up), and a watchdog whose ``disarm()``,
    ``Event`` and ``register_activity`` may be inline (``watchdog``, ``watch_can``); both
    comparisons above share one layer between requests."""
    completed = events.HookCompleted
    lean_completed = _completed_maker()  # (the same object, one call)
    current_task = asyncio.current_task
    from mitmproxy.utils import asyncio_utils

    keep_alive = getattr(asyncio_utils, "_KEEP_ALIVE", None)
    if type(keep_alive) is not set:
        keep_alive = None
    # (its ``discard``, bound once: ``remove_done_callback`` finds a callback by ``==``, and
    # a bound method equals another of the same function and object)
    discard: Any = keep_alive.discard if keep_alive is not None else None

    inline_event, inline_watchdog = connio.INLINE_EVENT, connio.INLINE_WATCHDOG
    stream_writer = asyncio.StreamWriter

    async def hook_task(self: Any, hook: Any) -> None:
        if type(hook) is not LeanHook or type(self).handle_hook is not lean_handle_hook:
            # mitmproxy's ``hook_task`` (the fingerprint says it is this; no extra frame)
            await self.handle_hook(hook)
            if hook.blocking:
                await self.server_event(completed(hook))
            return
        # ``handle_hook``'s lean branch (see there)
        job = hook.job
        lean = job.lean
        if lean is None or lean.route is None:
            writer = _to_drain(self, lean)
        else:  # (``_to_drain`` once the tunnel's route is settled: the rest of it, inline)
            stream = lean.agent_stream
            if (stream is not None and not stream.is_closing()
                    and stream.get_write_buffer_size() == 0):
                # the transport of the agent's ``StreamWriter`` as an earlier request found
                # it (a connection's writer is made once, with its connection): open and
                # empty, so the look-up below would say None (or find no writer at all)
                writer = None
            else:
                io = self.transports.get(self.client)
                writer = io.writer if io is not None else None
                if type(writer) is stream_writer:
                    # (``transport``'s own read, without the property's call)
                    stream = lean.agent_stream = writer._transport  # type: ignore[attr-defined]
                    if not stream.is_closing() and stream.get_write_buffer_size() == 0:
                        writer = None
        if writer is not None:
            try:
                await writer.drain()
            except OSError:
                pass  # the agent is gone: the request's hooks see it (client_gone)
        # The job's ``response`` hook may leave the request record's write for after the
        # send (seam/aftersend.py): the layer runs it right after the response's write (or
        # at once, without a send); this task runs one left (the layer never resumed, a
        # cancellation) as it ends.
        if lean is not None:
            job.later = lean.later
        try:
            watchdog = self.timeout_watchdog
            addons = self.master.addons
            if lean is not None and watchdog is lean.watchdog:
                # the branch below for a watchdog an earlier request of this connection found
                # inline-able (mitmproxy's ``TimeoutWatchdog``, its ``can_timeout`` asyncio's
                # ``Event``, both as seam/connio.py found them): its ``can_timeout`` as then
                # (``TimeoutWatchdog.__init__`` alone sets it), without asking again
                can = lean.watch_can
                can._value = False  # (``Event.clear``)
                watchdog.blocker += 1
                try:
                    job.addons = addons
                    try:
                        job.outcome = await job._request()
                    except Exception:  # noqa: BLE001 - (``_Job.run``'s own handling)
                        job.failed()
                finally:
                    watchdog.blocker -= 1
                    if watchdog.blocker == 0:
                        watchdog.last_activity = time.time()  # (``register_activity``)
                        if not can._value:  # (``Event.set``)
                            can._value = True
                            for fut in can._waiters:
                                if not fut.done():
                                    fut.set_result(True)
            elif type(watchdog) is _Watchdog:
                # ``run_disarmed``'s inline ``disarm()`` around ``_Job.run``'s body (and, for
                # asyncio's ``Event`` and mitmproxy's ``register_activity`` as seam/connio.py
                # found them, their bodies inline too)
                event = inline_event[0]
                can = watchdog.can_timeout
                if (lean is not None and event is not None and type(can) is event
                        and inline_watchdog[0] is _Watchdog):
                    lean.watch_can = can  # (for the connection's next requests: above)
                    lean.watchdog = watchdog
                if type(can) is event:
                    can._value = False  # (``Event.clear``)
                else:
                    can.clear()
                watchdog.blocker += 1
                try:
                    job.addons = addons
                    try:
                        job.outcome = await job._request()
                    except Exception:  # noqa: BLE001 - (``_Job.run``'s own handling)
                        job.failed()
                finally:
                    watchdog.blocker -= 1
                    if watchdog.blocker == 0:
                        if inline_watchdog[0] is _Watchdog:
                            watchdog.last_activity = time.time()  # (``register_activity``)
                        else:
                            watchdog.register_activity()
                        can = watchdog.can_timeout
                        if type(can) is not event:
                            can.set()
                        elif not can._value:  # (``Event.set``)
                            can._value = True
                            for fut in can._waiters:
                                if not fut.done():
                                    fut.set_result(True)
            else:
                await run_disarmed(watchdog, job.run(addons))
            if hook.blocking:
                await self.server_event(lean_completed(hook))
        finally:
            later = job.later
            if later is not None and _AFTER in job.flow.metadata:
                later.run(job.flow)
        if keep_alive is not None:
            # The task ends here: out of mitmproxy's set of running tasks now, not by the
            # done callback its ``create_task`` added (a callback, and so one more turn of
            # the loop, per request). On an exception or a cancellation: the callback.
            task = current_task()
            if task is not None and task.remove_done_callback(discard):
                discard(task)

    return hook_task


def _to_drain(handler: Any, lean: LeanLayer | None) -> Any:
    """A ``LeanHook``'s first steps (``handle_hook``'s lean branch, and the hook task's):
    the first request of a lean tunnel attaches its route (its events may skip the layers
    above, seam/bypass.py); then the agent's writer if the request must first await its
    ``drain()``, else None.

    Backpressure for pipelined requests: mitmproxy drains its writers only after each read,
    and one read may hold many requests, each answered before the next read. A request
    starts only once the agent's write buffer is below its limit, so an agent that reads
    nothing holds at most about one response in the proxy's memory (and the watchdog still
    runs). None when ``drain()`` would return at once: an asyncio ``StreamWriter`` whose
    transport is open (so its reader has no exception) and holds nothing (so it is not
    paused); no writer at all (the agent's connection is gone) is None too."""
    if lean is not None and lean.route is None:
        lean.route = bypass.attach(handler, lean) if bypass.enabled() else False
    transport = handler.transports.get(handler.client)
    writer = transport.writer if transport is not None else None
    if writer is None:
        return None
    if type(writer) is asyncio.StreamWriter:
        stream = writer.transport
        if not stream.is_closing() and stream.get_write_buffer_size() == 0:
            return None
    return writer


async def run_disarmed(watchdog: Any, job: Awaitable[None]) -> None:
    """``with watchdog.disarm(): await job``: for mitmproxy's ``TimeoutWatchdog`` its
    ``disarm()``'s body inline, without a generator context manager per request
    (tests/unit/test_speed_lean.py compares the two)."""
    if type(watchdog) is not _Watchdog:
        with watchdog.disarm():
            await job
        return
    watchdog.can_timeout.clear()
    watchdog.blocker += 1
    try:
        await job
    finally:
        watchdog.blocker -= 1
        if watchdog.blocker == 0:
            watchdog.register_activity()
            watchdog.can_timeout.set()


# --- the one hook per request ----------------------------------------------------------


@dataclass
class LeanHook(commands.StartHook):
    """Run a request's hooks, in mitmproxy's order, inside one task (``_Job.run``)."""

    flow: http.HTTPFlow
    name = "vaultproxy_lean"

    def __post_init__(self) -> None:
        self.job: _Job = _Job(self.flow, None)


_new = object.__new__
_HTTPFlow: Any = http.HTTPFlow
_Response: Any = http.Response
_mflow: Any = mflow  # (its ``uuid`` and ``time``, as ``Flow.__init__`` reads them)
#: may ``_serve`` make a request's ``HTTPFlow`` attribute by attribute (seam/objects.py)?
_FLOW_PLAIN = objects.http_flow_plain()
_tuple_new = tuple.__new__
_Paused: Any = layer.Paused


def _paused_plain() -> bool:
    """Is ``layer.Paused(command, generator)`` the ``NamedTuple``'s generated ``__new__``
    (``_tuple_new(_cls, (command, generator))``), so that ``tuple.__new__(Paused, (command,
    generator))`` makes the same object without its Python frame?"""
    cls: Any = getattr(layer, "Paused", None)
    if not isinstance(cls, type) or not isinstance(vars(cls).get("__new__"), staticmethod):
        return False
    new = cls.__new__
    code = getattr(new, "__code__", None)
    return (code is not None and cls.__mro__ == (cls, tuple, object)
            and getattr(cls, "_fields", None) == ("command", "generator")
            and code.co_filename == "<string>" and code.co_names == ("_tuple_new",)
            and code.co_varnames == ("_cls", "command", "generator")
            and getattr(new, "__globals__", {}).get("_tuple_new") is tuple.__new__)


_PAUSED_PLAIN = _paused_plain()


def _no_body(raw: bytes, status: int) -> bool:
    """Has the response to a request of this method (its bytes) with this status no body:
    a HEAD (``Request.method == "HEAD"``: a method of ``_PLAIN_METHODS`` compared as its
    bytes, any other decoded and upper-cased as the property does), a 204 or a 304?"""
    return (raw == b"HEAD" or status in (204, 304)
            or (raw not in _PLAIN_METHODS
                and raw.decode("utf-8", "surrogateescape").upper() == "HEAD"))


# what the layer does once the job is done
SEND, STREAM, ERROR, KILL = "send", "stream", "error", "kill"

# the job's hooks by name (``flow_steps``' keys), and a manager without ``flow_steps``
_REQUESTHEADERS, _REQUEST = lhttp.HttpRequestHeadersHook.name, lhttp.HttpRequestHook.name
_RESPONSEHEADERS, _RESPONSE = lhttp.HttpResponseHeadersHook.name, lhttp.HttpResponseHook.name
_POOL_EXCHANGE = PoolExchangeHook.name
_NO_STEPS: dict[str, Any] = {}  # (never filled)


class _Job:
    """``HttpStream``'s pooled path from the request head to the response, as coroutines:
    each ``yield HookX(flow)`` of mitmproxy becomes ``await self._hook(HookX(flow))``.
    ``later``: the layer's one ``Later`` when the lean hook task runs the job (the layer
    sends what it answers): the ``response`` hook may leave the request record's write for
    after the send (seam/aftersend.py). (No class attributes as defaults: an instance
    attribute that shadows one is read and written by CPython 3.12 without its specialized
    fast paths.)"""

    def __init__(self, flow: http.HTTPFlow, lean: LeanLayer | None) -> None:
        self.flow = flow
        self.lean = lean
        self.addons: Any = None
        self.outcome = KILL
        self.code: Any = None
        self.message = ""
        self.later: aftersend.Later | None = None

    async def _hook(self, hook: Any) -> None:
        await self.addons.handle_lifecycle(hook)
        if self.flow.intercepted:  # (``wait_for_resume`` returns at once otherwise)
            await self.flow.wait_for_resume()

    async def run(self, addons: Any) -> None:
        self.addons = addons
        try:
            self.outcome = await self._request()
        except Exception:  # noqa: BLE001 - never a connection left without its answer
            self.failed()

    def failed(self) -> None:
        """The request's hooks raised (``run``'s ``except``): answered 502."""
        # (each addon's own exception is already caught and logged by the manager)
        logger.exception("lean HTTP/1.1: a request's hooks failed; answered 502")
        self.flow.live = False
        self.code, self.message = lhttp.ErrorCode.GENERIC_SERVER_ERROR, "proxy error"
        self.outcome = ERROR

    def _killed(self) -> bool:
        """``check_killed``'s test: killed by a stage, or the agent went away meanwhile."""
        flow = self.flow
        if flow.error is not None and flow.error.msg == mflow.Error.KILLED_MESSAGE:
            return True
        if self.lean is not None and self.lean.client_gone():
            if flow.error is None:
                flow.error = mflow.Error("Client disconnected.")
            return True
        return False

    async def _kill(self, emit_error_hook: bool) -> str:
        if emit_error_hook:
            await self._hook(lhttp.HttpErrorHook(self.flow))
        self.flow.live = False
        return KILL

    async def _fail(self, message: str) -> str:
        """``handle_protocol_error`` for a ``ResponseProtocolError`` before any byte went out."""
        flow = self.flow
        flow.error = mflow.Error(message)
        await self._hook(lhttp.HttpErrorHook(flow))
        if self._killed():
            return await self._kill(False)
        flow.live = False
        self.code, self.message = lhttp.ErrorCode.GENERIC_SERVER_ERROR, message
        return ERROR

    async def _request(self) -> str:
        # (``_hook``, ``_respond`` inline; ``_killed`` only asked when it may say yes: the
        # flow has an error, or an event came for the paused layer)
        flow, addons, lean = self.flow, self.addons, self.lean
        queued = lean._paused_event_queue if lean is not None else None
        # ``handle_lifecycle(Hook(flow))`` as the manager's step of that hook taking the flow
        # itself when it has one (seam/dispatch.py ``flow_steps``: no hook object, one call
        # fewer), else as written; looked up per hook (a chain changed meanwhile drops them)
        steps = getattr(addons, "flow_steps", _NO_STEPS)
        step = steps.get(_REQUESTHEADERS)
        await (step(flow) if step is not None
               else addons.handle_lifecycle(lhttp.HttpRequestHeadersHook(flow)))
        if flow.intercepted:
            await flow.wait_for_resume()
        if (flow.error is not None or queued) and self._killed():
            return await self._kill(True)
        # mitmproxy reads the body here; it is already read.
        step = steps.get(_REQUEST)
        await (step(flow) if step is not None
               else addons.handle_lifecycle(lhttp.HttpRequestHook(flow)))
        if flow.intercepted:
            await flow.wait_for_resume()
        if (flow.error is not None or queued) and self._killed():
            return await self._kill(True)
        if flow.response:
            # A response set by a stage: emulate the responseheaders hook (as mitmproxy does).
            flow.response.timestamp_start = time.time()
            step = steps.get(_RESPONSEHEADERS)  # (``_hook`` inline)
            await (step(flow) if step is not None
                   else addons.handle_lifecycle(lhttp.HttpResponseHeadersHook(flow)))
            if flow.intercepted:
                await flow.wait_for_resume()
            if self._killed():
                return await self._kill(True)
            return await self._respond()
        ex = flow.metadata.get(POOLED)
        if ex is None:
            # The pool stage did not take it (a reload between the head and the hooks): no
            # upstream connection exists on this path; the agent retries on a new one.
            return await self._fail("server closed connection")
        step = steps.get(_POOL_EXCHANGE)
        await (step(flow) if step is not None else addons.handle_lifecycle(PoolExchangeHook(flow)))
        if flow.intercepted:
            await flow.wait_for_resume()
        if ex.error is not None or flow.response is None:
            return await self._fail(ex.error or "server closed connection")
        resp = flow.response
        # (``Request.method`` as its bytes and ``Response.status_code`` without a call, read
        # now; ``_no_body`` of them only where it is asked)
        raw = flow.request.data.method
        status = resp.data.status_code
        # check_body_size: a no-op (choose() takes no connection with a body size option)
        if lean is not None and lean.validate:
            try:
                check_pooled(resp, flow.metadata.get(UPSTREAM_HEAD))
            except ValueError as e:
                err = (f"Received {e} from server, refusing to prevent request smuggling "
                       "attacks. Disable the validate_inbound_headers option to skip this "
                       "security check.")
                flow.error = mflow.Error(err)
                await self._hook(lhttp.HttpErrorHook(flow))
                flow.live = False
                self.code, self.message = lhttp.ErrorCode.RESPONSE_VALIDATION_FAILED, err
                return ERROR
        step = steps.get(_RESPONSEHEADERS)
        await (step(flow) if step is not None
               else addons.handle_lifecycle(lhttp.HttpResponseHeadersHook(flow)))
        if flow.intercepted:
            await flow.wait_for_resume()
        if (flow.error is not None or queued) and self._killed():
            return await self._kill(True)
        if flow.response is not resp:  # a stage answered in the upstream's stead
            return await self._respond()
        if resp.stream and not _no_body(raw, status):
            return STREAM  # the layer sends the head, then each chunk as it comes
        whole = ex.body  # a small body the exchange read with the head
        if type(whole) is bytes:
            # (the loop below would not run, and ``bytes(bytearray(whole))`` is an equal
            # ``bytes``: the body itself, without its two copies)
            resp.data.content = whole
        else:
            body = bytearray(whole or b"")
            no_body = _no_body(raw, status)
            while not no_body and ex.body is None:
                await addons.handle_lifecycle(PoolChunkHook(flow))
                if flow.intercepted:
                    await flow.wait_for_resume()
                if (flow.error is not None or queued) and self._killed():
                    return await self._kill(True)
                if ex.error is not None:
                    return await self._fail(ex.error)
                if ex.chunk is None:
                    break
                body += ex.chunk
                if len(body) > ex.body_limit:
                    return await self._fail("response body exceeds the body size limit")
            resp.data.content = bytes(body)
        # (``_respond``; the ``timestamp_end`` setter's body for mitmproxy's ``Response``)
        sent = flow.response
        assert sent is not None
        if type(sent) is _Response:
            sent.data.timestamp_end = time.time()
        else:
            sent.timestamp_end = time.time()
        later = self.later
        if later is not None:  # (open the layer's ``Later`` for this flow: seam/aftersend.py)
            flow.metadata[_AFTER] = later
        step = steps.get(_RESPONSE)
        await (step(flow) if step is not None
               else addons.handle_lifecycle(lhttp.HttpResponseHook(flow)))
        if flow.intercepted:
            await flow.wait_for_resume()
        if (flow.error is not None or queued) and self._killed():
            return await self._kill(False)
        return SEND

    async def _respond(self) -> str:
        """``send_response`` up to the bytes: the ``response`` hook, then the kill check."""
        flow, addons = self.flow, self.addons
        assert flow.response is not None
        flow.response.timestamp_end = time.time()
        later = self.later
        if later is not None:  # (``_request``'s)
            flow.metadata[_AFTER] = later
        step = getattr(addons, "flow_steps", _NO_STEPS).get(_RESPONSE)  # (``_request``'s)
        await (step(flow) if step is not None
               else addons.handle_lifecycle(lhttp.HttpResponseHook(flow)))  # (``_hook`` inline)
        if flow.intercepted:
            await flow.wait_for_resume()
        if self._killed():
            return await self._kill(False)
        return SEND


# --- the layer ---------------------------------------------------------------------------


# The common request head, as ``fast_head`` takes it: an upper-case method, an origin-form
# target of visible ASCII, HTTP/1.1, CRLF line ends, and fields whose names are tokens (what
# ``validate_headers`` asks) and whose values hold no control character but tab. Each line of
# the fields block is a token, ":" and such a value; ``fast_head`` splits it at its first
# colon and strips the spaces and tabs around the value (the ``_FAST_FIELD`` that matched
# each line before it: tests/unit/test_speed_lean.py).
_TOKEN = TOKEN  # (net/grammar.py: the pool's client reads names with the same class)
_FAST_HEAD = re.compile(
    rb"([A-Z]{1,32}) (/[!-~]*) HTTP/1\.1\r\n"
    rb"((?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n")


_TOKENS = re.compile(_TOKEN + rb"(?: " + _TOKEN + rb")*")  # (one name or more)

# What ``check_headers`` reads of a message's field names alone (``_names_check``), by the
# names joined by a space: a server sends the same few sets of names again and again. Names
# only: never a value (a cookie or a credential is a value), so nothing here holds one. At
# most this many sets, each at most this long (past that: read every time).
_CHECKED: dict[bytes, tuple[int, int]] = {}
_CHECKED_MAX = 256
_CHECKED_NAMES_MAX = 2048
_REFER = (-1, -1)  # (no count of names is -1: ``validate_headers`` reads it)


def _names_check(joined: bytes) -> tuple[int, int]:
    """Of the field names joined by a space: (how many names, the index of the one
    ``Content-Length`` or -1 for none); ``_REFER`` when ``validate_headers`` must read them
    (a name that is no token, a ``Transfer-Encoding``, two lengths)."""
    names = joined.lower().split(b" ")
    if b"transfer-encoding" in names or not _TOKENS.fullmatch(joined):
        return _REFER
    count = names.count(b"content-length")
    if count > 1:
        return _REFER
    return len(names), (names.index(b"content-length") if count else -1)


def check_headers(message: http.Message) -> None:
    """``validate_headers(message)`` (mitmproxy's smuggling check), for the common head in
    a few steps on all names at once: every name a token (one match on the names joined by
    a space, which no token holds: a name with one splits into more parts than there are
    fields, and goes to ``validate_headers``), no Transfer-Encoding and at most one
    Content-Length, which must parse. What the names tell is read once per set of names
    (``_CHECKED``); a length of ASCII digits without a leading zero (or "0" alone) is what
    ``parse_content_length`` takes without a word, anything else is handed to it. Anything
    else: ``validate_headers`` itself, which raises what it raises (tests/unit/
    test_speed_lean.py compares the two, and keeps the reading before ``_CHECKED``)."""
    fields = message.data.headers.fields
    if not fields:
        return  # (nothing to refuse)
    joined = b" ".join([k for k, _ in fields])
    shape = _CHECKED.get(joined)
    if shape is None:
        shape = _names_check(joined)
        if len(joined) <= _CHECKED_NAMES_MAX:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[joined] = shape
    count, at = shape
    if count == len(fields):
        if at < 0:
            return
        value = fields[at][1]
        if type(value) is bytes and value.isdigit() and (value[0] != 0x30 or len(value) == 1):
            return  # (``^(?:0|[1-9][0-9]*)$``: what ``parse_content_length`` passes)
        parse_content_length(value)
        return
    validate_headers(message)


def check_pooled(message: http.Response, head: Any) -> None:
    """``check_headers(message)`` for a response the pool stage made of ``head`` (net/
    h1pool.py ``UPSTREAM_HEAD``: a head ``parse_known`` read, or None) while its fields are
    that head's very tuple: each name a token (``_FIELD_NAME``, ``TOKEN``: what
    ``validate_headers`` matches), one Content-Length of 1 to 18 ASCII digits
    (``_KNOWN_LENGTH``, at ``known.length``), no Transfer-Encoding (``_head_shape``); so
    only the length's leading zero is left to ``parse_content_length``. Anything else:
    ``check_headers``. (tests/unit/test_speed_response_known.py compares the two.)"""
    if head is not None and head.headers is message.data.headers.fields:
        length = head.values[head.known.length]
        if length[0] != 0x30 or len(length) == 1:
            return
        parse_content_length(length)  # (raises: a leading zero)
        return
    check_headers(message)


def fast_head(buf: bytes | bytearray) -> tuple[http.Request, int] | None:
    """``general_head`` for the common head (``_FAST_HEAD``): the same ``Request`` (state and
    types; tests/unit/test_speed_lean.py compares ``get_state()``) and head length, built
    without the reader's line list, type conversions and ``Headers`` checks (names and
    values come out of the regular expression as bytes); its header names are valid tokens
    (``validate_headers``' name test). None: anything else (``general_head`` reads it)."""
    m = _FAST_HEAD.match(buf)
    if m is None:
        return None
    method, path, block = m.groups()  # (one call, not three)
    headers = object.__new__(http.Headers)
    # (``tuple(_FAST_FIELD.findall(block))``: each line of a block ``_FAST_HEAD`` matched is
    # a token, ":", then tabs and bytes from SP on; its name is what comes before its first
    # colon (a token holds none), its value the rest with the spaces and tabs around it
    # stripped, which is what ``_FAST_FIELD`` matched; a split and a partition per line
    # instead of the match, ~3k instructions less per head. tests/unit/test_speed_lean.py
    # compares them.)
    headers.fields = tuple([(name, value.strip(b" \t")) for name, _, value in [
        line.partition(b":") for line in block[:-2].split(b"\r\n")]]) if block else ()
    return _request_of(method, path, headers), m.end()


def _request_of(method: bytes, path: bytes, headers: http.Headers) -> http.Request:
    """The ``Request`` mitmproxy's reader makes of an HTTP/1.1 origin-form head without a
    body yet (``fast_head``'s, and the known names' pattern's in ``_take``)."""
    req = object.__new__(http.Request)
    if objects.DATA_PLAIN and _MessageData.__post_init__ is objects.no_field_type_check:
        # (``RequestData``'s dataclass ``__init__``, field by field, and its
        # ``__post_init__``, seam/speed.py's no-op: seam/objects.py ``DATA_PLAIN``)
        data = object.__new__(_RequestData)
        data.http_version = b"HTTP/1.1"
        data.headers = headers
        data.content = None
        data.trailers = None
        data.timestamp_start = time.time()
        data.timestamp_end = None
        data.host = ""
        data.port = 0
        data.method = method
        data.scheme = b""
        data.authority = b""
        data.path = path
        req.data = data
    else:
        req.data = http.RequestData(
            http_version=b"HTTP/1.1", headers=headers, content=None, trailers=None,
            timestamp_start=time.time(), timestamp_end=None,
            host="", port=0, method=method, scheme=b"", authority=b"", path=path)
    return req


# A head whose field names are those of the connection's last request (the same names, in
# the same order, as sent: an agent's client sends the same few sets again and again) is
# read by one pattern made for those names (``_Known``): the request line as ``_FAST_HEAD``
# reads it, then each field line the known name, ":", the value in ``_FAST_HEAD``'s class
# (its leading spaces and tabs dropped, as ``fast_head`` strips them), a CRLF, then the
# blank line; the values its groups. What the names alone tell ``_take`` (no
# Transfer-Encoding, Upgrade, Expect or TE, at most one Content-Length, where the
# Content-Length and the Connection fields are, the names as ``header_names`` and
# ``canonical_names`` read them) is read once per set. It takes a head only as ``fast_head``
# and ``_take`` read it: a value ending in a space or tab (``fast_head`` strips it) is not
# taken (``(?<![ \t])``); the Content-Length's value must be what ``parse_content_length``
# takes without a word, of at most 18 digits (``_KNOWN_LENGTH``), and at most the body
# limit; a Connection value must be ``keep-alive`` exactly; a method without a body needs
# no Content-Length; not CONNECT; anything else goes to ``fast_head`` and ``_take``'s reading
# (tests/unit/test_speed_reqknown.py compares the two).
# A pattern is made for a set of names the second time ``_take`` read it from a head
# ``fast_head`` took (one read alone compiles nothing); names only, never a value; at most
# ``_KNOWN_MAX`` sets, each within ``_KNOWN_NAMES_MAX`` names and ``_KNOWN_NAME_BYTES_MAX``
# bytes of names. Making one costs a few million instructions (``re``'s compiler, in
# Python): at most ``_KNOWN_BUDGET`` are made per ``_KNOWN_WINDOW`` seconds, so an agent
# that changes its names on every request costs a bounded share of a core (past it:
# ``fast_head``, as before). (net/h1pool.py ``_Known`` does the same for the upstream's heads.)
_KNOWN_LINE = rb"([A-Z]{1,32}) (/[!-~]*) HTTP/1\.1"
_KNOWN_VALUE = rb":[ \t]*+([\t\x20-\x7e\x80-\xff]*+)(?<![ \t])"
_KNOWN_LENGTH = rb":[ \t]*+(0|[1-9][0-9]{0,17})"
_KNOWN_MAX = 64
_KNOWN_BUDGET = 16
_KNOWN_WINDOW = 10.0
_KNOWN_NAMES_MAX = 64
_KNOWN_NAME_BYTES_MAX = 2048
# A head the pattern took within this many bytes passes ``check_headers`` (core/pipeline.py:
# its names and values are within the head, so within ``MAX_HEADER_BYTES``, the same bound)
_CHECKED_HEAD = 64 * 1024


class _Known:
    """The pattern of one set of request field names, and what those names tell."""

    __slots__ = ("canonical", "connection", "length", "lower", "match", "names")

    def __init__(self, names: tuple[bytes, ...], lower: tuple[bytes, ...]) -> None:
        self.names = names
        self.lower = lower  # (``header_names`` of the fields)
        # (``canonical_names``: ``_`` read as ``-``; the same tuple without one)
        self.canonical = (tuple([n.replace(b"_", b"-") for n in lower])
                          if b"".join(lower).find(b"_") != -1 else lower)
        # the groups' indexes: the method 0, the target 1, field i at i + 2
        self.connection = tuple([i + 2 for i, n in enumerate(lower) if n == b"connection"])
        self.length = lower.index(b"content-length") + 2 if b"content-length" in lower else -1
        self.match = re.compile(_KNOWN_LINE + b"".join([
            rb"\r\n" + re.escape(name) + (_KNOWN_LENGTH if i + 2 == self.length
                                          else _KNOWN_VALUE)
            for i, name in enumerate(names)]) + rb"\r\n\r\n").match


# names -> their ``_Known``, bounded (net/namesets.py)
_SETS: NameSets[_Known] = NameSets(max_sets=_KNOWN_MAX, max_names=_KNOWN_NAMES_MAX,
                                   max_name_bytes=_KNOWN_NAME_BYTES_MAX, budget=_KNOWN_BUDGET,
                                   window=_KNOWN_WINDOW)
_KNOWN, _known_made = _SETS.table, _SETS.made


def known_of(fields: tuple[tuple[bytes, bytes], ...]) -> _Known | None:
    """The pattern for the names of a head ``fast_head`` read and ``_take`` took (None: none
    yet, or none to be made: a set seen once, too many names, a name ``_take`` refuses...)."""
    return _SETS.of(tuple([k for k, _ in fields]), known_for)


def known_for(names: tuple[bytes, ...]) -> _Known | None:
    """The pattern of these names; None for names ``_take`` refuses by themselves (a
    Transfer-Encoding, Upgrade, Expect or TE, two Content-Length fields) or past the bounds."""
    lower = tuple([k.lower() for k in names])
    if (len(names) > _KNOWN_NAMES_MAX or sum(map(len, names)) > _KNOWN_NAME_BYTES_MAX
            or not _SKIP_NAMES.isdisjoint(lower) or lower.count(b"content-length") > 1):
        return None
    return _Known(names, lower)


_MessageData: Any = http.MessageData
_RequestData: Any = http.RequestData


def general_head(buf: bytes | bytearray) -> tuple[http.Request, int] | None | str:
    """mitmproxy's reader on ``buf``: the request head and its length; None: not all of it
    arrived yet; a string: why mitmproxy's HTTP layer must read it."""
    found = head_lines(buf)
    if found is None:
        # mitmproxy's reader searches its buffer incrementally; this one is searched
        # again on each read: a head this long (never a real one) goes to mitmproxy's
        return "long head" if len(buf) > MAX_HEAD else None
    lines, head_len = found
    if not lines:
        return "blank line"  # mitmproxy's reader skips it
    try:
        return http1.read_request_head(lines), head_len
    except ValueError:
        return "head refused"  # by mitmproxy's reader (seam/refusals.py audits it)


def head_lines(buf: bytes | bytearray) -> tuple[list[bytes], int] | None:
    """h11's ``ReceiveBuffer.maybe_extract_lines`` on a fresh buffer holding ``buf`` (what
    mitmproxy's HTTP/1 reader splits a head with), without the buffer: the head's lines
    and its length in ``buf`` (no lines: a leading blank line of that length); None: no
    complete head yet. tests/unit/test_speed_lean.py compares the two."""
    if buf[:1] == b"\n":
        return [], 1
    if buf[:2] == b"\r\n":
        return [], 2
    match = _BLANK_LINE.search(buf)
    if match is None:
        return None
    end = match.end()
    lines = [line[:-1] if line.endswith(b"\r") else line
             for line in bytes(buf[:end]).split(b"\n")]
    del lines[-2:]
    return lines, end


def closes_general(req: http.Request, resp: http.Response) -> bool:
    """``mark_done``'s test (mitmproxy's functions): does the connection end after this
    exchange (a body read to the end of the stream, a 101, or ``Connection: close`` on
    either side / an HTTP version without keep-alive)?"""
    try:
        until_eof = http1.expected_http_body_size(req, resp) == -1
    except ValueError:
        until_eof = False
    return (until_eof or resp.status_code == 101
            or http1.connection_close(req.http_version, req.headers)
            or http1.connection_close(resp.http_version, resp.headers))


_KEEP_ALIVE_VERSIONS = frozenset({"HTTP/1.1", "HTTP/2.0"})


def _says_close(fields: tuple[tuple[bytes, bytes], ...]) -> bool:
    """``connection_close``'s token test: is ``close`` one of the Connection fields' tokens
    (the values decoded and joined as ``Headers`` does, split on ",", each stripped as str)?"""
    values = [v for k, v in fields if len(k) == 10 and k.lower() == b"connection"]
    if len(values) == 1 and values[0] == b"keep-alive":
        return False  # (the common one: its one token is not "close")
    joined = ", ".join(v.decode("utf-8", "surrogateescape") for v in values)
    return "close" in [token.strip() for token in joined.split(",")]


_KEEP_ALIVE_RAW = frozenset({b"HTTP/1.1", b"HTTP/2.0"})  # (``_KEEP_ALIVE_VERSIONS`` as bytes)


def closes(req: http.Request, resp: http.Response,
           rnames: set[bytes] | None = None) -> bool:
    """``closes_general`` for the common exchange, from one pass over each head's names: an
    HTTP/1.1 (or 2.0) request and response and a response not 101 with ``Content-Length``
    and no ``Transfer-Encoding`` (its size is that length, or invalid: never "until the
    end"). For these versions ``connection_close`` is True exactly when a ``close`` token is
    in a Connection field (``keep-alive`` or none: persistent). Anything else:
    ``closes_general`` (tests/unit/test_speed_lean.py compares the two). ``rnames``: the
    response's lower-cased header names, if the caller has them."""
    rdata = resp.data
    rfields = rdata.headers.fields
    if rnames is None:
        rnames = {k.lower() for k, _ in rfields}
    if (rdata.status_code != 101 and b"content-length" in rnames
            and b"transfer-encoding" not in rnames
            and rdata.http_version in _KEEP_ALIVE_RAW
            and req.data.http_version in _KEEP_ALIVE_RAW):
        if b"connection" in rnames and _says_close(rfields):
            return True
        qfields = req.data.headers.fields
        for k, _ in qfields:
            if len(k) == 10 and k.lower() == b"connection":  # (a length test first: cheaper)
                return _says_close(qfields)
        return False
    return closes_general(req, resp)


def closes_noted(req: http.Request, resp: http.Response,
                 note: tuple[tuple[tuple[bytes, bytes], ...], bytes, bool]) -> bool:
    """``closes`` for an HTTP/1.1 response whose head the response gate noted (seam/
    objects.py ``HEAD_NOTE``; its ``headers.fields`` the note's): its names hold one
    ``Content-Length`` and no ``Transfer-Encoding``, and the note tells whether a
    Connection field might say close. The request's Connection test reads the stages'
    names memo when it holds the request's very fields (inject/names.py). tests/unit/
    test_speed_response_out.py compares it with ``closes``, with and without that memo."""
    rdata = resp.data
    if (rdata.headers.fields is not note[0] or rdata.http_version != b"HTTP/1.1"
            or rdata.status_code == 101 or req.data.http_version not in _KEEP_ALIVE_RAW):
        return closes(req, resp)
    if not note[2] and _says_close(rdata.headers.fields):
        return True
    qfields = req.data.headers.fields
    memo = _names._names_memo
    if memo[0] is qfields:
        # the stages' memo of these very fields' names (inject/names.py ``header_names``:
        # each ``k.lower()``, in order): the loop below's test, on its names at once
        return b"connection" in memo[1] and _says_close(qfields)
    for k, _ in qfields:  # (``closes``' own loop)
        if len(k) == 10 and k.lower() == b"connection":
            return _says_close(qfields)
    return False


def _chunked(resp: http.Response) -> bool:
    return "chunked" in resp.headers.get("transfer-encoding", "").lower()


def _head(resp: http.Response) -> bytes:
    """``Http1Server.send(ResponseHeaders)``: an HTTP/2 response becomes an HTTP/1.1 one.
    (``assemble_response_head``'s bytes, formatted here in one step: tests/unit/
    test_speed_lean.py compares the two.)"""
    data = resp.data
    if data.http_version == b"HTTP/2.0" or data.http_version == b"HTTP/3":  # is_http2/3
        resp = resp.copy()
        resp.http_version = "HTTP/1.1"
        resp.reason = status_codes.RESPONSES.get(resp.status_code, "")
        return bytes(http1.assemble_response_head(resp))
    headers = data.headers
    fields = headers.fields
    if type(headers) is not http.Headers:
        block = bytes(headers)
    elif fields:  # (``Headers.__bytes__`` with a list, not a generator, to join)
        block = b"\r\n".join([b": ".join(field) for field in fields]) + b"\r\n"
    else:
        block = b""
    return b"%s %d %s\r\n%s\r\n" % (data.http_version, data.status_code, data.reason, block)


def _frame(resp: http.Response, data: bytes) -> bytes:
    if _chunked(resp):
        return b"%x\r\n%s\r\n" % (len(data), data)
    return data


class LeanLayer(layer.Layer):
    """The request/response loop of one agent connection (see the module's docstring)."""

    def __init__(self, context: Any, pooled: Callable[[], bool], max_body: int) -> None:
        super().__init__(context)
        self.pooled = pooled
        self.max_body = max_body
        self.buf = bytearray()
        self.fallback: layer.Layer | None = None
        self.done = False
        # ``fallback is None and not done``, kept where either changes (``_fall_back``,
        # ``_close``, the agent's close): read per request (``_serve``, seam/bypass.py)
        self.serving = True
        self.route: Any = None  # seam/bypass.py's Route (False: none for this connection)
        self.validate = bool(context.options.validate_inbound_headers)
        # a head read whose body is still arriving: (request, head length, body length)
        self.pending: tuple[http.Request, int, int] | None = None
        # the request record's write for after a response's send (seam/aftersend.py): one
        # per layer (one request at a time), opened for each flow by its job
        self.later = _Later()
        self.known: _Known | None = None  # the pattern of the last taken fast head's names
        # the connection's own, as the hook task found them (``_lean_hook_task``): the agent's
        # ``StreamWriter``'s transport, the handler's watchdog and its ``can_timeout``
        self.agent_stream: Any = None
        self.watchdog: Any = None
        self.watch_can: Any = None
        global _fast_events
        if _fast_events is None:
            _fast_events = _check_events()
        # ``handle_event``'s own path: ``debug is None and fallback is None and
        # _fast_events``, made once (``debug`` is set by ``Layer.__init__`` alone, the check
        # once per process) and cleared where ``fallback`` is set (``_fall_back``)
        self.lean_events = self.debug is None and bool(_fast_events)

    def client_gone(self) -> bool:
        """Did the agent close while a hook ran (an event queued for after the pause)?"""
        queued = self._paused_event_queue
        if not queued:
            return False
        client = self.context.client
        return any(isinstance(e, events.ConnectionClosed) and e.connection is client
                   for e in queued)

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        """mitmproxy's ``Layer.handle_event`` (a blocking command pauses the layer, the
        events meanwhile are queued and replayed after its completion), with the agent's
        bytes and the completion of the paused request's hook handed to ``_serve`` in
        place: two generators (this one and ``_serve``) between this layer's caller and a
        request's answer, instead of ``handle_event``, ``__continue``, ``__process``,
        ``_handle_event``, ``_serve``, ``_one``, ``_send`` and ``_after``. With ``debug``
        output, after a fallback, for any other event and for a queued one: mitmproxy's own
        (tests/unit/test_lean_events.py compares the two on seeded event streams)."""
        if not self.lean_events:  # (debug output, a fallback, a changed ``Layer``)
            yield from _LAYER_HANDLE_EVENT(self, event)
            return
        paused = self._paused
        if paused is not None:
            if (type(event) is not _HookCompleted or event.command is not paused.command
                    or event.reply is not None):  # (a hook's reply is None)
                if (isinstance(event, events.CommandCompleted)
                        and event.command is paused.command):
                    yield from _LAYER_HANDLE_EVENT(self, event)  # (never)
                    return
                self._paused_event_queue.append(event)
                return
            generator = paused.generator
            self._paused = None
        elif (type(event) is _DataReceived and event.connection is self.context.client
              and not self.done):
            self.buf += event.data  # type: ignore[attr-defined]
            generator = self._serve()
        else:
            yield from _LAYER_HANDLE_EVENT(self, event)
            return
        # ``__process`` (``Layer.handle_event``'s inlined copy, without debug output), its
        # ``send(None)`` and ``next`` as a ``for`` loop: a generator's end raises no
        # StopIteration there (a paused one is held in ``_paused``: leaving the loop early
        # does not close it)
        for command in generator:
            if command.blocking is True:
                command.blocking = self
                self._paused = (_tuple_new(_Paused, (command, generator)) if _PAUSED_PLAIN
                                else layer.Paused(command, generator))
                yield command
                return
            yield command
        if paused is None:
            return
        # ``__continue``: the events that came while paused, each as mitmproxy replays it
        queue = self._paused_event_queue
        while not self._paused and queue:
            yield from _LAYER_PROCESS(self, self._handle_event(queue.popleft()))

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.fallback is not None:
            yield from self.fallback.handle_event(event)
            return
        client = self.context.client
        if isinstance(event, events.DataReceived) and event.connection is client:
            if self.done:
                return
            self.buf += event.data
            yield from self._serve()
        elif isinstance(event, events.ConnectionClosed) and event.connection is client:
            if self.buf.strip() and not self.done:
                # A request cut before its end: mitmproxy's reader makes of it what it does
                # without this layer (a flow whose hooks see the disconnect, and its record).
                yield from self._fall_back("closed mid-request")
                assert self.fallback is not None
                yield from self.fallback.handle_event(event)
            elif not self.done:
                self.done = True
                self.serving = False
                yield commands.CloseConnection(client)

    def _fall_back(self, why: str) -> layer.CommandGenerator[None]:
        """Hand the connection to mitmproxy's HTTP layer, from the bytes not yet consumed."""
        stats["fallbacks"] += 1
        if why not in _reasons_seen:
            _reasons_seen.add(why)
            logger.info("lean HTTP/1.1: a connection goes to mitmproxy's HTTP layer (%s)", why)
        http_layer = lhttp.HttpLayer(self.context, lhttp.HTTPMode.transparent)
        self.fallback = http_layer
        self.serving = False
        self.lean_events = False
        self.pending = None
        data = bytes(self.buf)
        self.buf.clear()
        yield from http_layer.handle_event(events.Start())
        if data:
            yield from http_layer.handle_event(events.DataReceived(self.context.client, data))

    def _take(self) -> http.Request | None | str:
        """The next request if this layer serves it; None: not all of it arrived yet; a
        string: why mitmproxy's HTTP layer must take the connection. A head of the names of
        the connection's last fast head is read by their pattern (``_Known``), any other,
        or one the pattern leaves, by ``_read`` (tests/unit/test_speed_reqknown.py)."""
        if self.pending is not None:  # a head read earlier, its body still arriving
            waiting, at, body_len = self.pending
            if len(self.buf) < at + body_len:
                return None
            self.pending = None
            return self._body(waiting, at, body_len)
        buf = self.buf
        req: http.Request | None = None
        known = self.known
        if known is not None:
            m = known.match(buf)
            if m is not None:
                # a head of the known names (``_Known``), read as ``fast_head`` and ``_read``
                # read it; size -1: a head they must read (CONNECT, a Connection other than
                # ``keep-alive``, a length past the limit, no length for a method with a body)
                groups = m.groups()
                method = groups[0]
                at = known.length
                if at < 0:
                    # (``[A-Z]`` alone: the method is in ``_PLAIN_METHODS`` or reads as
                    # itself; CONNECT is not in ``_NO_BODY_RAW``)
                    size = 0 if method in _NO_BODY_RAW else -1
                else:
                    size = int(groups[at])
                    if size > self.max_body or method == b"CONNECT":
                        size = -1
                for i in known.connection:
                    if groups[i] != b"keep-alive":
                        size = -1
                if size >= 0:
                    # (``fast_head``'s ``Request``, its fields these names and values)
                    # (no ``strict``: the pattern has one group per name, by its making)
                    fields = tuple(zip(known.names, groups[2:]))  # noqa: B905 - as many
                    headers = object.__new__(http.Headers)
                    headers.fields = fields
                    req = _request_of(method, groups[1], headers)
                    # the stages' view of these names (inject/names.py), as they compute it
                    memo = _names._names_memo = (fields, known.lower)
                    # (names without a ``_``: their canonical tuple is ``lower`` itself, and
                    # the pair the same: one tuple)
                    _names._canonical_memo = (memo if known.canonical is known.lower
                                              else (fields, known.canonical))
                    head_len = m.end()
                    if head_len <= _CHECKED_HEAD:
                        # what ``check_headers`` reads of these fields, the pattern proved:
                        # token names, no CR, LF or NUL in a value, at most
                        # ``_KNOWN_NAMES_MAX`` fields, names and values shorter than the head
                        # (the same pair as the names memo's: one tuple)
                        _names._checked_memo = memo
        if req is None:
            read = self._read(buf, known)
            if type(read) is not tuple:
                return read  # type: ignore[return-value]
            req, head_len, size = read
        end = head_len + size
        if len(buf) < end:
            self.pending = (req, head_len, size)
            return None
        # (``_body``, inline; no body: ``b""``, what ``bytes`` of an empty slice is)
        if not self.pooled():
            return "not pooled"
        body = bytes(buf[head_len:end]) if size else b""
        del buf[:end]
        req.data.content = body
        return req

    def _read(self, buf: bytearray, known: _Known | None
              ) -> tuple[http.Request, int, int] | None | str:
        """The head at the start of ``buf`` by ``fast_head`` (or mitmproxy's reader), what
        ``_take`` reads of it: (the request, the head's length, the body's); None: not all
        of it arrived yet; a string: why mitmproxy's HTTP layer must take the connection.
        A head ``fast_head`` read and ``_take`` takes teaches ``known_of`` its names."""
        fast = fast_head(buf)
        req: http.Request
        head_len: int
        if fast:  # (HTTP/1.1 in origin form: no authority; the method as bytes, not decoded)
            req, head_len = fast
            if req.data.method == b"CONNECT":
                return "CONNECT or absolute form"
        else:
            head = general_head(buf)
            if head is None or isinstance(head, str):
                return head
            req, head_len = head
            if req.http_version != "HTTP/1.1":
                return req.http_version
            if req.method == "CONNECT" or req.authority:
                return "CONNECT or absolute form"
        headers = req.data.headers  # (``Message.headers``' body)
        fields = headers.fields
        names = {k.lower() for k, _ in fields}  # (one pass, not one per name)
        if not _SKIP_NAMES.isdisjoint(names):
            for name, key in _SKIP_KEYS:
                if key in names:
                    return name
        # (``headers.get_all(name)`` is the values of the fields so named (``k.lower()``),
        # each decoded as UTF-8 with surrogateescape: for a head ``fast_head`` read, one pass
        # over its fields' bytes instead, tests/unit/test_speed_intake.py compares the two)
        if b"connection" in names:
            if fast:
                for k, v in fields:  # (``b"keep-alive"`` decoded, stripped, lower: itself)
                    if (len(k) == 10 and k.lower() == b"connection" and v != b"keep-alive"
                            and v.decode("utf-8", "surrogateescape").strip().lower()
                            != "keep-alive"):
                        return "connection"
            elif any(v.strip().lower() != "keep-alive" for v in headers.get_all("connection")):
                return "connection"
        # ``expected_http_body_size`` of a request without Transfer-Encoding (refused above):
        # its one Content-Length as mitmproxy parses it, or 0 (``parse_content_length`` of a
        # value's bytes is that of its decoded text: the same pattern, ASCII digits only)
        length: list[Any]
        if b"content-length" not in names:
            length = []
        elif fast:
            length = [v for k, v in fields if len(k) == 14 and k.lower() == b"content-length"]
        else:
            length = headers.get_all("content-length")
        if not length:
            # (``Request.method not in _NO_BODY_METHODS``: a method of ``_PLAIN_METHODS``
            # compared as its bytes, any other decoded and upper-cased as the property does)
            raw = req.data.method
            if (raw not in _NO_BODY_RAW if raw in _PLAIN_METHODS else
                    raw.decode("utf-8", "surrogateescape").upper() not in _NO_BODY_METHODS):
                return "no content-length"
            size = 0
        else:
            if len(length) != 1:
                return "content-length"
            try:
                size = parse_content_length(length[0])
            except ValueError:
                return "content-length"
            if size > self.max_body:
                return "content-length"
        # (a head ``fast_head`` read passes: an origin-form target has no scheme, CONNECT and
        # Transfer-Encoding went above, its one Content-Length parsed, its names are tokens)
        if not fast:
            if lhttp.validate_request(lhttp.HTTPMode.transparent, req, self.validate):
                return "head refused"
        elif known is None or known.names != tuple([k for k, _ in fields]):
            self.known = known_of(fields)  # (the pattern for these names, from the second)
        return req, head_len, size

    def _body(self, req: http.Request, head_len: int, size: int) -> http.Request | str:
        if not self.pooled():
            return "not pooled"
        body = bytes(self.buf[head_len:head_len + size])
        del self.buf[:head_len + size]
        req.data.content = body
        return req

    def _serve(self) -> layer.CommandGenerator[None]:
        """The requests in the buffer, one after the other: each one's ``LeanHook`` (this
        layer pauses until it completes), then its answer (``_one``, ``_send`` and
        ``_after`` in one frame for the common answer)."""
        while self.serving and self.buf:  # (``serving``: no fallback, not done)
            taken = self._take()
            if taken is None:
                return
            if isinstance(taken, str):
                yield from self._fall_back(taken)
                return
            # (``_one``)
            ctx = self.context
            req_data = taken.data  # (what the Request's setters set)
            req_data.timestamp_end = time.time()
            server = ctx.server
            address = server.address
            assert address
            req_data.host = address[0]
            req_data.port = address[1]
            req_data.scheme = b"https" if server.tls else b"http"
            if _FLOW_PLAIN:
                # (``http.HTTPFlow(ctx.client, server)``, ``flow.request = taken``, ``flow.live
                # = True``: ``Flow.__init__``'s attributes in its order, ``live`` set at once,
                # without the type call and the ``__init__`` frame: seam/objects.py
                # ``http_flow_plain``; tests/unit/test_speed_intake.py compares the two)
                flow = _new(_HTTPFlow)
                flow.id = str(_mflow.uuid.uuid4())
                flow.client_conn = ctx.client
                flow.server_conn = server
                flow.live = True
                flow.timestamp_created = _mflow.time.time()
                flow.intercepted = False
                flow._resume_event = None
                flow._backup = None
                flow.marked = ""
                flow.is_replay = None
                flow.metadata = {}
                flow.comment = ""
                flow.request = taken
            else:
                flow = http.HTTPFlow(ctx.client, server)
                flow.request = taken
                flow.live = True
            stats["requests"] += 1
            if stats["requests"] == 1:
                logger.info("lean HTTP/1.1: first request served without mitmproxy's HTTP "
                            "layer")
            # (``LeanHook(flow)`` with its job's ``lean`` set, without the four Python calls
            # of their constructors: ``StartHook``'s class check, the dataclass's
            # ``__init__``, ``__post_init__``, ``_Job.__init__``; the same two objects,
            # attributes in their order: tests/unit/test_speed_intake.py compares them)
            hook = _new(LeanHook)
            hook.flow = flow
            job = hook.job = _new(_Job)
            job.flow = flow
            job.lean = self
            job.addons = None
            job.outcome = KILL
            job.code = None
            job.message = ""
            job.later = None
            yield hook
            outcome = job.outcome
            if outcome == SEND:
                # (``_send`` and ``_after``)
                resp = flow.response
                assert resp is not None
                req = flow.request
                rdata = resp.data
                note = flow.metadata.get(_HEAD_NOTE)
                if (note is not None and note[0] is rdata.headers.fields
                        and rdata.http_version == b"HTTP/1.1"
                        and type(rdata.headers) is http.Headers):
                    # the head as the response gate left it (seam/objects.py ``HEAD_NOTE``):
                    # ``_head`` with its block; no Transfer-Encoding, so not chunked. A body
                    # of ``bytes`` is formatted with the head (one object, one copy: what
                    # ``data += content`` makes); ``raw_content`` is ``data.content`` for
                    # mitmproxy's ``Response`` itself.
                    content = rdata.content if type(resp) is _Response else resp.raw_content
                    if content and type(content) is bytes:
                        data = b"HTTP/1.1 %d %s\r\n%s\r\n\r\n%s" % (
                            rdata.status_code, rdata.reason, note[1], content)
                    else:
                        data = b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (
                            rdata.status_code, rdata.reason, note[1])
                        if content:
                            data += content
                    rnames = None
                else:
                    content = resp.raw_content
                    note = None
                    data = _head(resp)
                    rnames = {k.lower() for k, _ in rdata.headers.fields}  # (for both tests)
                    chunked = b"transfer-encoding" in rnames and _chunked(resp)
                    if content:
                        data += (b"%x\r\n%s\r\n" % (len(content), content) if chunked
                                 else content)
                    if chunked and req.method != "HEAD":
                        data += b"0\r\n\r\n"
                later = job.later
                if later is None:
                    yield send_data_of(ctx.client, data)
                else:
                    try:
                        yield send_data_of(ctx.client, data)
                    finally:
                        # the bytes are in the agent's socket (connio writes inline): the
                        # request record's write (seam/aftersend.py), off the agent's clock
                        later.run(flow)
                if not flow.websocket:
                    flow.live = False
                if (closes_noted(req, resp, note) if note is not None
                        else closes(req, resp, rnames)):
                    yield from self._close()
                continue
            later = job.later
            if later is not None:
                later.run(flow)  # (no send: the record's write, at once)
            if outcome == STREAM:
                yield from self._stream(job)
            if job.outcome == ERROR:
                yield from self._error(job.code, job.message)
            elif job.outcome == KILL:
                yield from self._close()

    def _close(self) -> layer.CommandGenerator[None]:
        self.done = True
        self.serving = False
        self.buf.clear()
        yield commands.CloseConnection(self.context.client)

    def _error(self, code: Any, message: str) -> layer.CommandGenerator[None]:
        """``Http1Server.send(ResponseProtocolError)`` before any byte of a response: our
        error reply (seam/defences.py), then close."""
        client = self.context.client
        if deadlines.timed_out(client.id) is not None:
            message = deadlines.TIMEOUT_MESSAGE
        status = code.http_status_code() if code is not None else None
        if status is not None:
            yield commands.SendData(client, _http1.make_error_response(status, message))
        yield from self._close()

    def _after(self, flow: http.HTTPFlow,
               rnames: set[bytes] | None = None) -> layer.CommandGenerator[None]:
        """``mark_done``: close when the exchange says so, else read the next request."""
        req, resp = flow.request, flow.response
        assert resp is not None
        if closes(req, resp, rnames):
            yield from self._close()

    def _stream(self, job: _Job) -> layer.CommandGenerator[None]:
        """mitmproxy's streamed response: the head now, each chunk through the response's
        stream callable as it arrives, then the ``response`` hook and the end."""
        flow = job.flow
        resp = flow.response
        assert resp is not None
        ex = flow.metadata[POOLED]
        client = self.context.client
        yield send_data_of(client, _head(resp))
        if ex.body is not None:  # read with the head: no chunk hook round trip per chunk
            for data in (ex.body, b""):
                for chunk in through(resp.stream, data):
                    yield commands.SendData(client, _frame(resp, chunk))
        while ex.body is None:
            yield PoolChunkHook(flow)
            if job._killed():
                yield lhttp.HttpErrorHook(flow)
                flow.live = False
                job.outcome = KILL
                return
            if ex.error is not None:
                flow.error = mflow.Error(ex.error)
                yield lhttp.HttpErrorHook(flow)
                flow.live = False
                job.outcome = KILL  # a head went out: the connection is cut
                return
            for chunk in through(resp.stream, ex.chunk if ex.chunk is not None else b""):
                yield commands.SendData(client, _frame(resp, chunk))
            if ex.chunk is None:
                break
        resp.timestamp_end = time.time()
        yield lhttp.HttpResponseHook(flow)
        if job._killed():
            flow.live = False
            job.outcome = KILL
            return
        if flow.request.method != "HEAD" and _chunked(resp):
            yield commands.SendData(client, b"0\r\n\r\n")
        flow.live = False
        job.outcome = "streamed"
        yield from self._after(flow)
