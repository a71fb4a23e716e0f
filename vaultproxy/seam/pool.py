"""The engine side of the warm upstream pool (the stage is stages/pool.py).

mitmproxy ties an upstream connection to one agent connection: each new agent connection
pays a new upstream TCP + TLS handshake (with ``connection_strategy = "eager"`` even before
the CONNECT is answered). For a request a stage marked pooled (``flow.metadata[POOLED]``,
an ``Exchange``), this seam instead:

* answers the CONNECT without dialling and terminates the agent's TLS without an upstream
  handshake first (``lazy_dial``: the tunnel's connections see ``connection_strategy =
  "lazy"`` when ``lazy()`` says so; every other connection keeps the eager strategy);
* at the request's end, after the ``request`` hook (so every gate has run), runs the
  exchange through two blocking hooks of ours, ``PoolExchangeHook`` (send; the response
  head onto ``flow.response``) and ``PoolChunkHook`` (the next body chunk), and otherwise
  does what mitmproxy's ``HttpStream`` does with an upstream response: the
  ``responseheaders`` hook, the stream callable on each chunk (the response gate's
  redaction) or the whole body, then ``send_response``. A blocking hook pauses only this
  HTTP stream (an HTTP/2 agent's other streams go on).
* An error becomes the ``ResponseProtocolError`` mitmproxy raises for an upstream it could
  not use: the same JSON answer (seam/defences.py), the same ``error`` hook and audit.

Everything here is a speed patch: a missing symbol keeps mitmproxy's own path (no pool) with
one WARNING, and ``installed()`` tells the stage whether to mark flows at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as layers_http

from vaultproxy.seam.need import missing

logger = logging.getLogger(__name__)

# mitmproxy's HTTP layer: its event and hook names are not re-exported (for mypy)
lhttp: Any = layers_http

POOLED = "vaultproxy.pool"  # flow.metadata key: the flow's Exchange


class Exchange(Protocol):
    """What the stage's hook handlers leave for the seam to act on."""

    error: str | None  # mitmproxy-style error text (seam/engine_errors.py reads it)
    chunk: bytes | None  # the next body chunk; None: the body ended
    body_limit: int  # the most a buffered body may hold
    body: bytes | None  # the whole body, read with the head (small); None: ask by chunk


@dataclass
class PoolExchangeHook(commands.StartHook):
    """Send the flow's request through the pool; set ``flow.response`` to the head."""

    flow: http.HTTPFlow
    name = "vaultproxy_pool_exchange"


@dataclass
class PoolChunkHook(commands.StartHook):
    """Put the response's next body chunk on the flow's Exchange."""

    flow: http.HTTPFlow
    name = "vaultproxy_pool_chunk"


_installed = False


def installed() -> bool:
    return _installed


class _LazyDial:
    """A connection's options as its layers read them: ``connection_strategy`` is "lazy"
    while ``lazy()`` is true (the tunnel's service is pooled), the global value otherwise."""

    def __init__(self, options: Any, lazy: Callable[[], bool],
                 h2: Callable[[], bool] = lambda: True) -> None:
        self._options = options
        self._lazy = lazy
        self.prefer_h2 = h2  # offer the agent HTTP/2 (the upstream speaks it, or unknown)

    def __getattr__(self, name: str) -> Any:
        if name == "connection_strategy" and self._lazy():
            return "lazy"
        return getattr(self._options, name)


def lazy_dial(context: Any, lazy: Callable[[], bool],
              h2: Callable[[], bool] = lambda: True) -> None:
    """Give ``context`` (a NextLayer's, before its layer is chosen) and every context
    forked from it the per-connection strategy; ``h2``: whether a lazy tunnel offers the
    agent HTTP/2."""
    if _installed and not isinstance(context.options, _LazyDial):
        context.options = _LazyDial(context.options, lazy, h2)


def install() -> None:
    """Apply the patches once; on a missing symbol keep mitmproxy's path (no pool)."""
    global _installed
    if _installed:
        return
    from mitmproxy.addons import tlsconfig
    from mitmproxy.proxy import context as mcontext
    stream = lhttp.HttpStream
    symbol = missing(
        stream, "state_consume_request_body", "check_killed", "check_invalid",
        "check_body_size", "handle_protocol_error", "send_response", "make_server_connection",
        "state_done",
    ) or missing(tlsconfig.TlsConfig, "tls_clienthello", "tls_start_client") or missing(
        lhttp, "HttpRequestHook", "HttpResponseHeadersHook", "SendHttp", "ResponseHeaders",
        "ResponseData", "RequestHeaders", "RequestData", "RequestTrailers",
        "RequestEndOfMessage", "ResponseProtocolError", "ErrorCode",
    ) or missing(mcontext.Context, "fork")
    if symbol is not None:
        logger.warning("mitmproxy has no %s: no warm upstream pool (each agent connection "
                       "dials its own upstream)", symbol)
        return
    _patch_clienthello(tlsconfig.TlsConfig)
    stream.state_consume_request_body = _consume_request_body  # type: ignore[method-assign,assignment]
    _installed = True


def _patch_clienthello(cls: Any) -> None:
    original = cls.tls_clienthello

    def tls_clienthello(self: Any, data: Any) -> None:
        original(self, data)
        if data.establish_server_tls_first and isinstance(data.context.options, _LazyDial):
            data.establish_server_tls_first = (
                data.context.options.connection_strategy == "eager")

    cls.tls_clienthello = tls_clienthello
    start_client = cls.tls_start_client

    def tls_start_client(self: Any, tls_start: Any) -> None:
        """With no upstream handshake first there is no upstream ALPN to mirror, and
        mitmproxy would take the agent's first offer (httpx offers HTTP/1.1 first). Prefer
        HTTP/2 when the agent offers it, as an eager dial to an HTTP/2 upstream would,
        unless the service's pooled upstream is known to speak only HTTP/1.1: then
        HTTP/1.1, as an eager dial mirrors (HTTP/2 to the agent costs a few ms per request
        in mitmproxy's HTTP/2 layer, for nothing to multiplex upstream)."""
        start_client(self, tls_start)
        options = tls_start.context.options
        conn = tls_start.ssl_conn
        if conn is None or not isinstance(options, _LazyDial) or (
                options.connection_strategy != "lazy"):
            return
        app = conn.get_app_data()
        if isinstance(app, dict) and app.get("server_alpn") is None and app.get("http2"):
            # chosen only if the agent offers it (else the agent's first offer)
            app["server_alpn"] = b"h2" if options.prefer_h2() else b"http/1.1"

    cls.tls_start_client = tls_start_client


# --- the HTTP stream ---------------------------------------------------------------------


def _consume_request_body(self: Any, event: Any) -> Generator[Any, Any, None]:
    """mitmproxy's ``HttpStream.state_consume_request_body``, with the pooled exchange as
    the alternative to dialling at the request's end."""
    if isinstance(event, lhttp.RequestData):
        self.request_body_buf += event.data
        yield from self.check_body_size(True)
        return
    if isinstance(event, lhttp.RequestTrailers):
        self.flow.request.trailers = event.trailers
        return
    assert isinstance(event, lhttp.RequestEndOfMessage), event
    flow = self.flow
    flow.request.timestamp_end = time.time()
    flow.request.data.content = bytes(self.request_body_buf)
    self.request_body_buf.clear()
    self.client_state = self.state_done
    yield lhttp.HttpRequestHook(flow)
    if (yield from self.check_killed(True)):
        return
    if flow.response:
        # A response set by a stage: emulate the responseheaders hook (as mitmproxy does).
        flow.response.timestamp_start = time.time()
        yield lhttp.HttpResponseHeadersHook(flow)
        if (yield from self.check_killed(True)):
            return
        yield from self.send_response()
    elif flow.metadata.get(POOLED) is not None:
        yield from _exchange(self, flow)
    else:
        yield from _dial(self, flow)


def _dial(self: Any, flow: http.HTTPFlow) -> Generator[Any, Any, None]:
    """mitmproxy's own path: its connection for this agent connection."""
    ok = yield from self.make_server_connection()
    if not ok:
        return
    content = flow.request.raw_content
    done_after_headers = not (content or flow.request.trailers)
    server = self.context.server
    yield lhttp.SendHttp(lhttp.RequestHeaders(self.stream_id, flow.request, done_after_headers),
                         server)
    if content:
        yield lhttp.SendHttp(lhttp.RequestData(self.stream_id, content), server)
    if flow.request.trailers:
        yield lhttp.SendHttp(lhttp.RequestTrailers(self.stream_id, flow.request.trailers),
                             server)
    yield lhttp.SendHttp(lhttp.RequestEndOfMessage(self.stream_id), server)


def _fail(self: Any, message: str) -> Generator[Any, Any, None]:
    code = lhttp.ErrorCode.GENERIC_SERVER_ERROR
    yield from self.handle_protocol_error(
        lhttp.ResponseProtocolError(self.stream_id, message, code))


def _exchange(self: Any, flow: http.HTTPFlow) -> Generator[Any, Any, None]:
    ex: Exchange = flow.metadata[POOLED]
    yield PoolExchangeHook(flow)
    if ex.error is not None or flow.response is None:
        yield from _fail(self, ex.error or "server closed connection")
        return
    resp = flow.response
    no_body = flow.request.method == "HEAD" or resp.status_code in (204, 304)
    if not no_body and (yield from self.check_body_size(False)):
        return
    if (yield from self.check_invalid(False)):
        return
    yield lhttp.HttpResponseHeadersHook(flow)
    if (yield from self.check_killed(True)):
        return
    if flow.response is not resp:  # a stage answered in the upstream's stead
        yield from self.send_response()
        return
    client = self.context.client
    if resp.stream and not no_body:
        yield lhttp.SendHttp(lhttp.ResponseHeaders(self.stream_id, resp, end_stream=False),
                             client)
        if ex.body is not None:  # read with the head: no hook round trip per chunk
            for data in (ex.body, b""):
                for chunk in through(resp.stream, data):
                    yield lhttp.SendHttp(lhttp.ResponseData(self.stream_id, chunk), client)
            yield from self.send_response(already_streamed=True)
            return
        while True:
            yield PoolChunkHook(flow)
            if (yield from self.check_killed(True)):
                return
            if ex.error is not None:
                yield from _fail(self, ex.error)
                return
            for chunk in through(resp.stream, ex.chunk if ex.chunk is not None else b""):
                yield lhttp.SendHttp(lhttp.ResponseData(self.stream_id, chunk), client)
            if ex.chunk is None:
                break
        yield from self.send_response(already_streamed=True)
        return
    body = bytearray(ex.body or b"")
    while not no_body and ex.body is None:
        yield PoolChunkHook(flow)
        if (yield from self.check_killed(True)):
            return
        if ex.error is not None:
            yield from _fail(self, ex.error)
            return
        if ex.chunk is None:
            break
        body += ex.chunk
        if len(body) > ex.body_limit:
            yield from _fail(self, "response body exceeds the body size limit")
            return
    resp.data.content = bytes(body)
    yield from self.send_response()


def through(stream: Any, data: bytes) -> list[bytes]:
    """What mitmproxy sends for ``data`` (b"": the end) given the response's stream setting."""
    if not callable(stream):
        return [data] if data else []
    out = stream(data)
    if isinstance(out, bytes):
        return [out] if out else []
    return [c for c in out if c]
