"""Deadline: every wait on an upstream is bounded (SPEC §4 ``[proxy]`` timeouts).

* ``connect_timeout`` -- TCP (bounded in the seam's dial) plus the TLS handshake of an
  intercepted upstream, counted from ``server_connect``;
* ``response_timeout`` -- from the end of the request (``request`` hook) to the response
  head;
* ``idle_timeout`` -- once the response head is in, no byte either way on the connection.

When one runs out, the upstream connection is ended through the seam (seam/deadlines.py):
the agent gets ``504 upstream_timeout`` (or, with a response already streaming, its
connection closed), the upstream socket is closed, and Record audits the code. mitmproxy's
own per-connection idle timer (``tcp_timeout``) stays as the backstop for everything else
(an idle keep-alive client, a WebSocket) at the largest of the three.

A request's response and idle deadlines are not an event-loop timer each (a timer made and
cancelled twice per request was most of this stage's cost), and the response head needs no
hook here: ``request`` puts the flow in a queue of flows with the same first check, the
shorter of the two timeouts after the request (``_Waits``, kept in the order set, which is
the order they fall due); one loop timer per stage is armed for the earliest entry of any
queue, and ``response``/``error`` take the flow out (a dict operation each). At its first
check (``_check``) a flow without a response head is expired once ``response_timeout`` has
passed since the request, and one with a head once the connection has been quiet for
``idle_timeout`` (counted from its last byte, the head's arrival at the earliest); else it
is looked at again when it could be due (a timer of its own: only requests that last that
long; while no head is in, at least every ``idle_timeout``, so a head that arrives and
stalls is caught on time). Both therefore run out as if each had its own timer. The
timeouts are the ones in force when the request ended (after a reload that changes them, a
new queue is used).
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
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.record import EveryInterval
from vaultproxy.stages.runtime import Runtime, Stage

logger = logging.getLogger(__name__)


# A waiting flow: (loop time of its first check, the flow, its client's id, loop time of the
# end of the request, response_timeout, idle_timeout).
_Wait = tuple[float, http.HTTPFlow, str, float, float, float]

# A timer of the loop may run this much before its due time (asyncio's clock resolution).
_EARLY = 1e-6


class _Waits:
    """Flows whose first check is the same time after their request, by flow id, in the
    order queued: so also in order of due time."""

    __slots__ = ("seconds", "flows")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.flows: dict[str, _Wait] = {}


class Deadline(Stage):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self._timers: dict[str, asyncio.TimerHandle] = {}  # server id / flow id -> timer
        self._log = EveryInterval(5.0)  # the audit has every one
        # see _settings: (settings, options, connect timeout, response, idle, their minimum)
        self._applied: tuple[object, object, float, float, float, float] | None = None
        self._queues: dict[float, _Waits] = {}  # length in seconds -> its queue
        self._sweeper: asyncio.TimerHandle | None = None  # armed for the earliest entry
        self._sweep_at = 0.0  # when it runs (loop time)
        self._sweep_loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on

    def running(self) -> None:
        deadlines.set_master(ctx.master)  # installed with the seam's defences

    def _settings(self) -> ProxySettings | None:
        st = self.rt.live.state  # ``rt.current()``
        if st is None:
            return None
        cfg = st.snapshot.registry.config.proxy  # (``st.registry``)
        options = ctx.options
        applied = self._applied
        if (applied is not None and applied[0] is cfg and applied[1] is options
                and deadlines.connect_timeout == applied[2]):
            return cfg  # these settings are in place (this runs ~3 times per request)
        deadlines.connect_timeout = float(cfg.connect_timeout)
        backstop = int(max(cfg.connect_timeout, cfg.response_timeout, cfg.idle_timeout)) + 1
        if options.tcp_timeout != backstop:
            options.update(tcp_timeout=backstop)
        # (and what ``request`` waits with: ``_wait``'s arguments and their minimum)
        response, idle = float(cfg.response_timeout), float(cfg.idle_timeout)
        self._applied = (cfg, options, deadlines.connect_timeout, response, idle,
                         idle if idle < response else response)
        return cfg

    def _arm(self, key: str, seconds: float, fire: Callable[[], None]) -> None:
        self._disarm(key)
        self._timers[key] = asyncio.get_running_loop().call_later(seconds, fire)

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    # -- queued deadlines (response, idle) --------------------------------------------------
    def _wait(self, flow: http.HTTPFlow, response: float, idle: float) -> None:
        """Queue the flow's first check, ``min(response, idle)`` seconds from now."""
        key = flow.id
        for queued in self._queues.values():  # ``_unwait``, inline
            if queued.flows.pop(key, None) is not None:
                break
        if self._timers:
            self._disarm(key)
        first = idle if idle < response else response  # min(response, idle), no call
        queue = self._queues.get(first)
        if queue is None:
            queue = self._queues[first] = _Waits(first)
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now + first
        queue.flows[key] = (due, flow, flow.client_conn.id, now, response, idle)
        if self._sweeper is None or due < self._sweep_at or self._sweep_loop is not loop:
            self._arm_sweeper(loop, due)

    def _unwait(self, key: str) -> None:
        """Clear the flow's deadlines (queued, or a later check's timer)."""
        for queue in self._queues.values():
            if queue.flows.pop(key, None) is not None:
                break
        if self._timers:
            self._disarm(key)

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = loop.call_at(when, self._sweep)
        self._sweep_at, self._sweep_loop = when, loop

    def _sweep(self) -> None:
        """Check every queued flow that is due; re-arm for the earliest left."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time() + _EARLY
        for first, queue in list(self._queues.items()):
            flows = queue.flows
            while flows:
                key = next(iter(flows))
                wait = flows[key]
                if wait[0] > now:
                    break
                del flows[key]
                try:
                    self._check(key, wait)
                except Exception as e:  # noqa: BLE001 - one flow's failure must not stop the rest
                    logger.error("deadline of a flow failed: %s", type(e).__name__)
            if not flows and self._queues.get(first) is queue:
                del self._queues[first]
        earliest = min((next(iter(q.flows.values()))[0] for q in self._queues.values()
                        if q.flows), default=None)
        if earliest is not None and (self._sweeper is None or earliest < self._sweep_at):
            self._arm_sweeper(loop, earliest)

    def _check(self, key: str, wait: _Wait) -> None:
        """A flow's check fell due: expire its upstream if a deadline has run out, else look
        again when the nearer one could."""
        _due, flow, client_id, started, response, idle = wait
        head = flow.response
        if head is None:  # still waiting for the response head
            left = started + response - asyncio.get_running_loop().time()
            if left <= _EARLY:
                self._expire(key, client_id, flow.server_conn, "response")
                return
            left = min(left, idle)  # a head arriving from now on is idle at the earliest then
        else:  # the head is in: quiet since its last byte (the head's, at the earliest)
            last = deadlines.last_activity(client_id)
            since = max(last or 0.0, head.timestamp_start or 0.0)
            quiet = time.time() - since if since else idle
            if quiet >= idle:
                self._expire(key, client_id, flow.server_conn, "idle")
                return
            left = idle - quiet
        self._arm(key, left, lambda: self._recheck(key, wait))

    def _recheck(self, key: str, wait: _Wait) -> None:
        self._timers.pop(key, None)
        self._check(key, wait)

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
    @handed
    def request(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        # ``self._settings()``, its first test inline (the settings in place: every request
        # but the first under a policy or options object); ``_settings`` otherwise
        st = self.rt.live.state
        applied = self._applied
        cfg: ProxySettings | None
        if (st is not None and applied is not None
                and applied[0] is (cfg := st.snapshot.registry.config.proxy)
                and applied[1] is ctx.options and deadlines.connect_timeout == applied[2]):
            pass
        else:
            cfg = self._settings()
            applied = self._applied  # (``cfg``'s, when there is one)
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        if cfg is None or rec.answered or applied is None:
            return  # the proxy answered it: no upstream to wait on
        # ``self._wait(flow, float(cfg.response_timeout), float(cfg.idle_timeout))``, inline
        # (every request; tests/unit/test_speed_stages6.py compares the two); the two
        # numbers and their minimum as ``_settings`` made them for ``cfg``
        _, _, _, response, idle, first = applied
        key = flow.id
        queues = self._queues
        for queued in queues.values():  # ``_unwait``, inline
            if queued.flows.pop(key, None) is not None:
                break
        if self._timers:
            self._disarm(key)
        queue = queues.get(first)
        if queue is None:
            queue = queues[first] = _Waits(first)
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now + first
        queue.flows[key] = (due, flow, flow.client_conn.id, now, response, idle)
        if self._sweeper is None or due < self._sweep_at or self._sweep_loop is not loop:
            self._arm_sweeper(loop, due)

    def response(self, flow: http.HTTPFlow) -> None:
        key = flow.id  # ``_unwait``, inline: every request
        for queue in self._queues.values():
            if queue.flows.pop(key, None) is not None:
                break
        if self._timers:
            self._disarm(key)
        deadlines._timed_out.pop(flow.client_conn.id, None)  # (``deadlines.forget``)

    def error(self, flow: http.HTTPFlow) -> None:
        self._unwait(flow.id)


def _addr(server: connection.Server) -> str:
    address = server.address
    return f"{address[0]}:{address[1]}" if address else "?"
