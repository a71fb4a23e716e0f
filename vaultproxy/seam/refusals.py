"""The seam's record of requests mitmproxy's HTTP/1 reader refuses itself.

A request head that cannot be parsed, or that cannot be framed (``Content-Length`` together
with ``Transfer-Encoding``, a bad length), is answered by mitmproxy's ``Http1Server`` with a
400 (our JSON, defences.py) before any stage decides anything. The audit must say what the
client got:

* the head did not parse at all (a malformed request line): no flow exists, so ``on_refused``
  (the Record stage's ``refused_head``, handed in by ``defences.install``) writes a record
  of its own for that client connection;
* the head parsed but mitmproxy's header validation refuses it (``Content-Length`` with
  ``Transfer-Encoding``: request smuggling), or it cannot be framed: mitmproxy still runs
  the flow's hooks (whose stages may refuse it for a reason of their own, which the client
  never sees) before it answers 400; the connection is marked here and the Record stage
  takes the mark (``take``), so the record says 400 ``invalid_request``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from vaultproxy.seam.need import need

# (client connection, status) -> None: a refused head with no flow (handed in by install).
Refused = Callable[[Any, int], None]
on_refused: Refused | None = None

_marked: dict[str, int] = {}  # client connection id -> the status it was answered with


def set_handler(fn: Refused | None) -> None:
    global on_refused
    on_refused = fn


def take(client_id: str) -> int | None:
    """The status mitmproxy answered this connection's request with, if it refused it."""
    return _marked.pop(client_id, None)


def install() -> None:
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers.http import _http1

    stream = http_layers.HttpStream
    check = need(stream, "check_invalid")
    hook = need(http_layers, "HttpRequestHeadersHook")
    status = need(http_layers, "ErrorCode").REQUEST_VALIDATION_FAILED.http_status_code() or 400

    def check_invalid(self: Any, request: bool) -> Generator[Any, Any, bool]:
        gen = check(self, request)
        try:
            cmd = next(gen)
            while True:
                # Only an invalid request runs its requestheaders hook from here.
                if request and isinstance(cmd, hook):
                    _marked[self.context.client.id] = status
                cmd = gen.send((yield cmd))
        except StopIteration as stop:
            return bool(stop.value)

    stream.check_invalid = check_invalid  # type: ignore[method-assign]

    original = need(_http1.Http1Server, "read_headers")

    def read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        gen = original(self, event)
        try:
            cmd = next(gen)
            while True:
                # read_headers sends data only when it refuses the head (make_error_response).
                if isinstance(cmd, commands.SendData):
                    _refused(self, bytes(cmd.data))
                cmd = gen.send((yield cmd))
        except StopIteration:
            return

    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


def _refused(server: Any, data: bytes) -> None:
    try:
        status = int(data[9:12])
    except ValueError:
        status = 400
    conn = server.conn
    if getattr(server, "request", None) is not None:
        _marked[conn.id] = status  # its flow's hooks follow; Record takes the mark
        return
    handler = on_refused
    if handler is not None:
        handler(conn, status)
