"""The seam's record of requests mitmproxy's HTTP/1 reader refuses itself (issue 15).

A request head that cannot be parsed, or that cannot be framed (``Content-Length`` together
with ``Transfer-Encoding``, a bad length), is answered by mitmproxy's ``Http1Server`` with a
400 (our JSON, defences.py) before any stage decides anything. The audit must say what the
client got:

* the head did not parse at all (a malformed request line): no flow exists, so ``on_refused``
  (set by the Record stage) writes a record of its own for that client connection;
* the head parsed but could not be framed: mitmproxy still runs the flow's hooks (whose
  stages may refuse it for their own reason, which the client never sees); the connection is
  marked here and the Record stage's ``error`` hook takes the mark (``take``), so the record
  says 400 ``invalid_request``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from vaultproxy.seam.need import need

# (client connection, status) -> None: a refused head with no flow (set by stages/record.py).
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
    from mitmproxy.proxy.layers.http import _http1

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

    _http1.Http1Server.read_headers = read_headers


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
