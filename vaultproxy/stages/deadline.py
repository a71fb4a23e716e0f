"""Deadline: every wait on an upstream is bounded (SPEC §4 ``[proxy]`` timeouts).

* ``connect_timeout`` -- TCP (bounded in the seam's dial) plus the TLS handshake of an
  intercepted upstream, counted from ``server_connect``;
* ``response_timeout`` -- from the end of the request (``request`` hook) to the response
  head (``responseheaders``);
* ``idle_timeout`` -- once the response head is in, no byte either way on the connection.

When one runs out, the upstream connection is ended through the seam (seam/deadlines.py):
the agent gets ``504 upstream_timeout`` (or, with a response already streaming, its
connection closed), the upstream socket is closed, and Record audits the code. mitmproxy's
own per-connection idle timer (``tcp_timeout``) stays as the backstop for everything else
(an idle keep-alive client, a WebSocket) at the largest of the three.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mitmproxy import connection, ctx, http, tls
from mitmproxy.proxy import server_hooks

from vaultproxy.config.models import ProxySettings
from vaultproxy.seam import deadlines
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.record import EveryInterval
from vaultproxy.stages.runtime import Runtime, Stage

logger = logging.getLogger(__name__)


class Deadline(Stage):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._timers: dict[str, asyncio.TimerHandle] = {}  # server id / flow id -> timer
        self._log = EveryInterval(5.0)  # the audit has every one
        self._applied: tuple[object, object, float] | None = None  # see _settings

    def running(self) -> None:
        deadlines.set_master(ctx.master)  # installed with the seam's defences

    def _settings(self) -> ProxySettings | None:
        st = self.rt.current()
        if st is None:
            return None
        cfg = st.registry.config.proxy
        options = ctx.options
        applied = self._applied
        if (applied is not None and applied[0] is cfg and applied[1] is options
                and deadlines.connect_timeout == applied[2]):
            return cfg  # these settings are in place (this runs ~3 times per request)
        deadlines.connect_timeout = float(cfg.connect_timeout)
        backstop = int(max(cfg.connect_timeout, cfg.response_timeout, cfg.idle_timeout)) + 1
        if options.tcp_timeout != backstop:
            options.update(tcp_timeout=backstop)
        self._applied = (cfg, options, deadlines.connect_timeout)
        return cfg

    def _arm(self, key: str, seconds: float, fire: Callable[[], None]) -> None:
        self._disarm(key)
        self._timers[key] = asyncio.get_running_loop().call_later(seconds, fire)

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, key: str, client_id: str, server: connection.Server, why: str) -> None:
        self._timers.pop(key, None)
        if deadlines.expire(client_id, server, why) and self._log.allow((_addr(server), why)):
            logger.warning("upstream %s: %s timeout; connection closed%s",
                           _addr(server), why, self._log.since((_addr(server), why)))

    # -- connect: TCP (seam) + TLS -------------------------------------------------------
    @guarded
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._settings()

    @guarded
    def tls_start_server(self, data: tls.TlsData) -> None:
        cfg = self._settings()
        server = data.conn
        if cfg is None or not isinstance(server, connection.Server):
            return
        started = server.timestamp_start or time.time()  # the dial's start: TCP + TLS
        left = max(0.0, float(cfg.connect_timeout) - (time.time() - started))
        client_id = data.context.client.id
        key = f"tls:{server.id}"
        self._arm(key, left, lambda: self._expire(key, client_id, server, "connect"))

    def tls_established_server(self, data: tls.TlsData) -> None:
        self._disarm(f"tls:{data.conn.id}")

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self._disarm(f"tls:{data.conn.id}")

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._disarm(f"tls:{data.server.id}")

    def client_disconnected(self, client: connection.Client) -> None:
        deadlines.forget(client.id)

    # -- response head, then idle ----------------------------------------------------------
    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        cfg = self._settings()
        if cfg is None or record_of(flow).answered:
            return  # the proxy answered it: no upstream to wait on
        key = f"flow:{flow.id}"
        client_id = flow.client_conn.id
        self._arm(key, float(cfg.response_timeout),
                  lambda: self._expire(key, client_id, flow.server_conn, "response"))

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        cfg = self._settings()
        key = f"flow:{flow.id}"
        self._disarm(key)
        if cfg is None:
            return
        self._idle(key, flow, float(cfg.idle_timeout))

    def _idle(self, key: str, flow: http.HTTPFlow, idle: float) -> None:
        client_id = flow.client_conn.id

        def check() -> None:
            self._timers.pop(key, None)
            last = deadlines.last_activity(client_id)
            quiet = time.time() - last if last is not None else idle
            if quiet >= idle:
                self._expire(key, client_id, flow.server_conn, "idle")
            else:
                self._arm(key, idle - quiet, check)

        self._arm(key, idle, check)

    def response(self, flow: http.HTTPFlow) -> None:
        self._disarm(f"flow:{flow.id}")
        deadlines.forget(flow.client_conn.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm(f"flow:{flow.id}")


def _addr(server: connection.Server) -> str:
    address = server.address
    return f"{address[0]}:{address[1]}" if address else "?"
