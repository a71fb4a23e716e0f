"""Upstream deadlines (``[proxy] connect_timeout``, ``response_timeout``, ``idle_timeout``).

mitmproxy dials with no timeout of its own (the kernel's ~2 min SYN retries), waits for an
upstream TLS handshake or response head as long as the client connection is not idle for
``tcp_timeout`` (600 s), and leaves the upstream socket open when the agent gives up. Here:

* the TCP dial runs under ``connect_timeout`` (mitmproxy's module sees an ``asyncio`` whose
  ``open_connection`` is bounded; a timeout is an ``OSError`` like any failed dial);
* ``expire(client_id, server, why)`` ends one upstream connection the way a reset would
  (its transport task is cancelled, the socket closed) and marks the client connection, so
  the error mitmproxy then sends the agent is ``504 upstream_timeout`` (HTTP/1 and HTTP/2),
  and the Record stage audits that code. A response already streaming is closed instead.

The stage that decides *when* is stages/deadline.py.
"""

from __future__ import annotations

import asyncio
import errno
import types
from collections.abc import Generator
from typing import Any

from vaultproxy.seam.need import need

TIMEOUT_MESSAGE = "vaultproxy: upstream timeout"

connect_timeout = 10.0  # seconds; set from the config by the Deadline stage
_timed_out: dict[str, str] = {}  # client connection id -> which deadline ran out
_master: Any = None  # the running Master (for its proxyserver's connection handlers)


def timed_out(client_id: str) -> str | None:
    return _timed_out.get(client_id)


def forget(client_id: str) -> None:
    _timed_out.pop(client_id, None)


def set_master(master: Any) -> None:
    global _master
    _master = master


def expire(client_id: str, server: Any, why: str) -> bool:
    """End ``server`` (a mitmproxy Server connection of client ``client_id``) now."""
    if _master is None:
        return False
    proxyserver = _master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client_id) if proxyserver is not None else None
    if handler is None:
        return False
    io = handler.transports.get(server)
    if io is None or io.handler is None:
        return False
    _timed_out[client_id] = why
    io.handler.cancel(TIMEOUT_MESSAGE)
    return True


def last_activity(client_id: str) -> float | None:
    """When (``time.time()``) the client connection last saw a byte either way."""
    if _master is None:
        return None
    proxyserver = _master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client_id) if proxyserver is not None else None
    watchdog = getattr(handler, "timeout_watchdog", None)
    return float(watchdog.last_activity) if watchdog is not None else None


class _BoundedAsyncio(types.ModuleType):
    """``asyncio`` as mitmproxy's proxy server sees it: ``open_connection`` is bounded.

    asyncio's own names (all but ``open_connection`` and the module's dunders) are copied
    into this module's dict when it is made: a name found there is read without the
    AttributeError a module raises (twice) and clears before it falls back to
    ``__getattr__`` -- three exceptions for each ``asyncio.Event``/``asyncio.sleep``/...
    mitmproxy's server reads per connection. A name asyncio gains later is still reached
    through ``__getattr__``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        own = vars(type(self))
        self.__dict__.update({k: v for k, v in vars(asyncio).items()
                              if not (k.startswith("__") or k in own)})

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def open_connection(*args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.open_connection(*args, **kwargs),
                                          connect_timeout)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"{TIMEOUT_MESSAGE} (connect)") from None


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers.http import _http1, _http2
    from mitmproxy.proxy.layers.http._events import ResponseProtocolError

    need(server, "asyncio")
    need(server.ConnectionHandler, "open_connection")
    server.asyncio = _BoundedAsyncio("asyncio")  # type: ignore[attr-defined]

    def mark(self: Any, event: Any) -> None:
        if isinstance(event, ResponseProtocolError) and self.context.client.id in _timed_out:
            event.message = TIMEOUT_MESSAGE

    h1_send = need(_http1.Http1Server, "send")

    def send(self: Any, event: Any) -> Generator[Any, Any, None]:
        mark(self, event)
        yield from h1_send(self, event)

    _http1.Http1Server.send = send  # type: ignore[method-assign]

    need(_http2.Http2Server, "_handle_event")
    own = _http2.Http2Server.__dict__.get("_handle_event")  # else inherited (and patched)

    def _handle_event(self: Any, event: Any) -> Generator[Any, Any, None]:
        mark(self, event)
        if own is not None:
            yield from own(self, event)
        else:
            yield from super(_http2.Http2Server, self)._handle_event(event)

    _http2.Http2Server._handle_event = _handle_event  # type: ignore[method-assign]
    _installed = True
