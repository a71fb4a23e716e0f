"""The seam's defences: what mitmproxy would answer itself, below the addon hooks, that could
carry upstream bytes (a secret among them) to the agent or hang it. ``install()`` replaces
exactly these, and refuses to start (``EngineMismatch``) if a symbol it needs is gone (the
pyOpenSSL calls of seam/openssl.py included), so an upgrade of mitmproxy can never silently
switch a defence off:

* **Error pages.** mitmproxy's HTML error pages quote the exception text, which quotes the
  upstream's malformed bytes. Every error page becomes our JSON (``X-Vaultproxy-Error``),
  classified by the protocol error's kind, never quoting anything (HTTP/1 and HTTP/2).
* **Informational responses.** mitmproxy's HTTP/1 client takes a ``1xx`` (other than 101)
  for the final response and leaves the agent hanging. They are dropped before parsing.
* **Trailers.** mitmproxy's HTTP/1 reader raises on chunked trailers (the connection
  hangs). HTTP/1 trailers are dropped (both directions).
* **WebSocket control frames.** Ping/pong payloads and close reasons from the server go
  through ``Hooks.ws_control`` (the response gate's redactor) before they are relayed.
* **A client that is done before its handler is registered.** mitmproxy runs tasks with an
  eager task factory: ``handle_client`` creates the client's ``handle_connection`` task and
  only then records it in ``transports[client].handler``. If the client's bytes and its FIN
  are already buffered (it pipelined requests and closed while our ``client_connected``
  held it, waiting for the run to serve), the task runs to its end inside ``create_task``:
  ``close_connection`` asserts on the missing handler ("mitmproxy has crashed!") and the
  finished task has already removed the client, so ``handle_client`` raises
  ``KeyError: Client(...)``. The client's handler now yields once before it reads anything,
  so it is always registered first.

What of vaultproxy the patches call (``Hooks``) is handed in by the one ``install()`` call
at start (engine/master.py, engine/mitmdump.py), never registered by importing a module:
until it ran, ``installed()`` is False and the Ready stage refuses traffic.
* **TLS key logging.** ``SSLKEYLOGFILE``/``MITMPROXY_SSLKEYLOGFILE`` are cleared when the
  ``vaultproxy`` package is imported; if mitmproxy was imported earlier and already opened
  a key log (mitmdump started with them set), ``keylog_active()`` says so and the proxy
  refuses traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from vaultproxy.seam import connio, deadlines, lean, openssl, pool, refusals, signals, tlsstart
from vaultproxy.seam.engine_errors import classify_engine_error
from vaultproxy.seam.need import EngineMismatch, need

logger = logging.getLogger(__name__)


__all__ = ["EngineMismatch", "Hooks", "install", "installed", "keylog_active"]

# (connection id, event) -> event: the response gate's filter of WebSocket control frames.
WsFilter = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Hooks:
    """What the patched engine calls back into vaultproxy (stages/__init__.py builds it)."""

    ws_control: WsFilter
    refused_head: refusals.Refused  # a request head mitmproxy refused before any flow


ws_control_filter: WsFilter | None = None
_installed = False
originals: dict[str, Any] = {}  # what a patch replaced, by name (for the tests' twins)
#: what the client handler's ``handle_connection`` runs after its first step (seam/connio.py
#: keeps it: "handle_connection", mitmproxy's own or connio's copy with the stream reads
#: inline, a speed patch set by ``connio.install`` only while "stock" is mitmproxy's)
connection_loop = connio.connection_loop


def error_parts(status: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Our reply for an error mitmproxy generates: status, JSON body, header fields."""
    from vaultproxy.errors import error_body

    status, code, public = classify_engine_error(status, message)
    body = error_body(code, public)
    headers = [
        (b"content-type", b"application/json"),
        (b"x-vaultproxy-error", code.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return status, body, headers


def keylog_active() -> bool:
    """True if mitmproxy opened a TLS key log (it reads the variables at import)."""
    from mitmproxy.net import tls as net_tls

    return need(net_tls, "log_master_secret") is not None


def installed() -> bool:
    """Are all patches in place? The Ready stage refuses traffic until they are."""
    return _installed


def install(hooks: Hooks) -> None:
    """The one call at start: hand in ``hooks`` (again after a mitmdump script reload: the
    new chain's), and apply every patch once; raise EngineMismatch if mitmproxy moved."""
    global _installed, ws_control_filter
    ws_control_filter = hooks.ws_control
    refusals.set_handler(hooks.refused_head)
    if _installed:
        return
    _patch_error_pages()
    _patch_http1_reader()
    _patch_websocket()
    _patch_client_handler()
    refusals.install()  # requests the HTTP/1 reader refuses are audited as answered
    deadlines.install()  # every wait on an upstream bounded ([proxy] timeouts)
    tlsstart.install()  # a speed patch: the agent's leaf converted once (before pool wraps it)
    pool.install()  # a speed patch: the warm upstream pool (stock path if mitmproxy moved)
    if pool.installed():
        lean.install()  # a speed patch: pooled HTTP/1.1 without mitmproxy's HTTP layer
    openssl.check()
    signals.check_if_loaded()  # and on first use of signals.Server
    keylog_active()  # the symbol must exist even when no key log is open
    _installed = True


# --- error pages -------------------------------------------------------------------------


def _patch_error_pages() -> None:
    from mitmproxy import http
    from mitmproxy.net.http import http1 as net_http1
    from mitmproxy.proxy.commands import SendData
    from mitmproxy.proxy.layers.http import _http1, _http2
    from mitmproxy.proxy.layers.http._events import ResponseProtocolError

    need(_http1, "make_error_response")

    def make_error_response(status_code: int, message: str = "") -> bytes:
        status, body, fields = error_parts(status_code, message)
        resp = http.Response.make(status, body, fields + [(b"connection", b"close")])
        return bytes(net_http1.assemble_response(resp))

    _http1.make_error_response = make_error_response

    conn_cls = _http2.Http2Connection
    original = need(conn_cls, "_handle_event")
    for name in ("is_closed", "is_open_for_us"):
        need(conn_cls, name)

    def _handle_event(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, ResponseProtocolError) and not self.is_closed(event.stream_id):
            stream = self.h2_conn.streams[event.stream_id]
            status = event.code.http_status_code()
            if (
                self.is_open_for_us(event.stream_id)
                and not stream.state_machine.headers_sent
                and status is not None
            ):
                status, body, fields = error_parts(status, event.message)
                self.h2_conn.send_headers(event.stream_id, [(b":status", b"%d" % status), *fields])
                self.h2_conn.send_data(event.stream_id, body, end_stream=True)
                yield SendData(self.conn, self.h2_conn.data_to_send())
                return
        yield from original(self, event)

    conn_cls._handle_event = _handle_event  # type: ignore[method-assign]


# --- HTTP/1: informational responses and trailers ------------------------------------------


def skip_informational(buf: Any) -> None:
    """Drop complete ``1xx`` response heads (not 101) from the front of ``buf``."""
    while True:
        data = bytes(buf)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return
        status_line = data[: data.find(b"\r\n")]
        parts = status_line.split(b" ", 2)
        if not (
            len(parts) >= 2
            and parts[0].startswith(b"HTTP/1.")
            and len(parts[1]) == 3
            and parts[1].startswith(b"1")
            and parts[1] != b"101"
        ):
            return
        buf.maybe_extract_at_most(end + 4)


class _NoTrailers:
    """A chunked-body reader that ends the message without its trailer fields."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, buf: Any) -> Any:
        import h11

        event = self._inner(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event

    def read_eof(self) -> Any:
        return self._inner.read_eof()


def _patch_http1_reader() -> None:
    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http import _http1

    make_reader = need(_http1, "make_body_reader")

    def make_body_reader(expected_size: int | None) -> Any:
        reader = make_reader(expected_size)
        return _NoTrailers(reader) if expected_size is None else reader

    _http1.make_body_reader = make_body_reader

    client = _http1.Http1Client
    read_headers = need(client, "read_headers")

    def read_headers_skipping_1xx(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, events.DataReceived) and self.request:
            skip_informational(self.buf)
        yield from read_headers(self, event)

    client.read_headers = read_headers_skipping_1xx  # type: ignore[method-assign]


# --- the client connection's handler task -----------------------------------------------------


def _patch_client_handler() -> None:
    import asyncio

    from mitmproxy.proxy import server

    handler_cls = server.ConnectionHandler
    original = need(handler_cls, "handle_connection")
    need(handler_cls, "handle_client")

    originals["handle_connection"] = original
    loop = connection_loop
    loop["stock"] = loop["handle_connection"] = original

    async def handle_connection(self: Any, connection: Any) -> None:
        io = self.transports.get(connection)
        if connection is self.client and io is not None and io.handler is None:
            await asyncio.sleep(0)  # let handle_client record this task before it runs
        await loop["handle_connection"](self, connection)

    handler_cls.handle_connection = handle_connection  # type: ignore[method-assign]


# --- WebSocket control frames ----------------------------------------------------------------


def _patch_websocket() -> None:
    from mitmproxy.proxy.layers import websocket

    conn_cls = websocket.WebsocketConnection
    original = need(conn_cls, "events")

    def events(self: Any) -> Generator[Any, None, None]:
        for event in original(self):
            f = ws_control_filter
            yield f(self.conn.id, event) if f is not None else event

    conn_cls.events = events
