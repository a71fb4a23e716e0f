"""Pool: a warm, verified upstream connection pool per service, shared by every agent
connection this worker serves, so a new agent connection costs a local handshake plus one
upstream round trip instead of a new upstream TCP + TLS handshake.

A request is pooled when its tunnel is an intercepted service's, its body is buffered (none,
or a ``Content-Length`` of at most 1 MiB), it is no upgrade and asks for no trailers (``TE:
trailers``, as gRPC); everything else (a streamed
upload, a WebSocket, a passthrough tunnel, plain HTTP) keeps mitmproxy's own connection.
Every stage still runs per request: the exchange starts after the ``request`` hook and its
response goes through ``responseheaders``/``response`` like any other (seam/pool.py).

One connection pool per (service, tunnel host, trust file, ``insecure_tls``, HTTP/2, config
snapshot): never shared across services, dropped on a reload (a new snapshot: ``ca_cert``,
``connect_to``); each dials the address the Route stage checked for the agent's tunnel (a
re-resolved address is another connection), and a connection idle ``[proxy]
upstream_pool_idle`` seconds is closed (0: no pool). A connection that saw a protocol error
is closed, never reused.

An upstream that speaks HTTP/1.1 is served by the pool's own client (net/h1pool.py: asyncio
and h11, a LIFO stack of idle connections per address; less CPU per request than httpcore's
pool, docs/BENCHMARKS.md); one that chooses HTTP/2 in the TLS handshake by httpcore's pool
(multiplexing), which takes over the connection that found it out. ``_h2_seen`` remembers
which per (service, host), until a reload (a new policy: new pools, maybe new upstreams).

A new upstream connection resumes the TLS session the pool's last one for that name left
(net/outbound.py ``TLSSessions``; the sessions live and die with the pool). A service's
``prewarm = N`` opens N connections per host (each name the service lists that is no
wildcard) at start and after each reload, with the same egress check and dial as a tunnel's,
so the first agent request finds one warm; unused, they close after ``upstream_pool_idle``
like any other, and a service without a pool (``upstream_pool_idle = 0``) is never
pre-warmed."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpcore
from mitmproxy import ctx, http
from mitmproxy.proxy.layer import NextLayer

from vaultproxy.config.models import Service
from vaultproxy.config.rules import parse_host
from vaultproxy.core.pipeline import HOP_BY_HOP, header_names
from vaultproxy.core.state import ProxyState
from vaultproxy.core.wakeup import StateWatch, Wakeup
from vaultproxy.errors import NotReady
from vaultproxy.loaded.snapshot import Snapshot
from vaultproxy.net.h1pool import UPSTREAM_HEAD, H1Pool, H1Response, WantsHTTP2
from vaultproxy.net.hostnames import split_authority
from vaultproxy.net.outbound import (
    UpstreamKey,
    adopt,
    drop_closed,
    drop_expired,
    head_seen,
    pool_context,
    pool_error_text,
    pool_transport,
    prewarm,
)
from vaultproxy.net.resolve import resolve_checked
from vaultproxy.seam import lean as seam_lean
from vaultproxy.seam import objects
from vaultproxy.seam import pool as seam_pool
from vaultproxy.stages.ahead import METHOD_TEXT
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import KEY, FlowRecord, handed, record_of
from vaultproxy.stages.guard import guarded
from vaultproxy.stages.runtime import Runtime, Stage
from vaultproxy.unshadow import unshadowed

logger = logging.getLogger(__name__)

MAX_POOLED_BODY = 1024 * 1024  # a larger request body streams on mitmproxy's own path
# A response body of at most this Content-Length is read with its head, in the exchange:
# two hook round trips less per request (the seam then needs no chunk hook).
PREFETCH_BODY = 64 * 1024
_Pool = httpcore.AsyncConnectionPool
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@unshadowed
@dataclass
class Exchange:
    """One pooled request's state between the seam's hooks (seam.pool.Exchange)."""

    tunnel: Tunnel
    body_limit: int
    error: str | None = None
    chunk: bytes | None = None
    body: bytes | None = None
    response: httpcore.Response | H1Response | None = None
    chunks: AsyncIterator[bytes] | None = None
    idle: float = 300.0
    closed: bool = field(default=False)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.response is not None:
                await self.response.aclose()


_new_exchange = object.__new__  # (``Exchange.__new__``: a dataclass defines none of its own)
_new_headers = object.__new__  # (``objects.headers_made``'s, for ``http.Headers``)


def outgoing_fields(fields: tuple[tuple[bytes, bytes], ...],
                    ) -> tuple[list[tuple[bytes, bytes]], bool]:
    """``hop_free(fields)`` and whether a ``Host`` is among them, from one pass over the
    names (``header_names``; Host is no hop-by-hop name): the whole list when none is
    hop-by-hop (tests/unit/test_speed_poolsend.py)."""
    names = header_names(fields)
    if HOP_BY_HOP.isdisjoint(names):
        return list(fields), b"host" in names
    kept = [f for f, k in zip(fields, names, strict=True) if k not in HOP_BY_HOP]
    return kept, b"host" in names


#: ``Pool.requestheaders``' last proxy settings (immutable: a reload makes new ones) and what
#: each Exchange takes of them: ``max_body_mb`` in bytes, ``float(idle_timeout)``.
_sizes: tuple[Any, int, float] = (None, 0, 0.0)


def _sizes_of(cfg: Any) -> tuple[Any, int, float]:
    global _sizes
    _sizes = (cfg, cfg.max_body_mb * 1024 * 1024, float(cfg.idle_timeout))
    return _sizes


#: The names ``_small_body`` reads: a head with none of them has a body only by its method.
_BODY_NAMES = frozenset({b"transfer-encoding", b"upgrade", b"te", b"content-length"})


def _small_body(req: http.Request, method: str | None = None) -> bool:
    # One pass over the names (as ``Headers`` compares them: bytes, ASCII case-folded)
    # instead of a scan of every field per lookup. ``method``: ``req.method``, if read.
    headers = req.data.headers  # (``req.headers``)
    names = header_names(headers.fields)
    if b"transfer-encoding" in names or b"upgrade" in names:
        return False
    if b"te" in names and "trailers" in headers.get("te", "").lower():
        return False  # gRPC and the like read response trailers the pool does not relay
    if b"content-length" not in names:
        return (req.method if method is None else method) in _NO_BODY_METHODS
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) <= MAX_POOLED_BODY


# How long after an idle connection's expiry the watcher looks (``_next_upkeep``): the
# loop's clock (uvloop's, cached per turn) can be a little behind ``time.monotonic``.
_LATE = 0.005


async def _close_when_idle(pool: _Pool) -> None:
    """Close a pool the policy left behind once no request is on it any more: an exchange
    under way (a long stream) finishes, as on a reload without the pool; no new one starts."""
    while any(not c.is_idle() and not c.is_closed() for c in pool.connections):
        await asyncio.sleep(1.0)
    await pool.aclose()


@dataclass
class _Upstream:
    """One pool: what its connections were verified under, HTTP/2 offered, the httpcore
    pool (HTTP/2 upstreams) and the HTTP/1.1 one (net/h1pool.py) on one TLS context."""

    key: UpstreamKey
    http2: bool
    core: _Pool
    h1: H1Pool


#: ``Pool._make``'s answer: (tunnel, snapshot, options object, pool, (service name, host),
#: host, ip, port, connect timeout, response timeout)
_Made = tuple[object, Snapshot, object, _Upstream, tuple[str, str], str, str, int, float,
              float]


def _bodiless(flow: http.HTTPFlow, status: int) -> bool:
    return flow.request.method == "HEAD" or status in (204, 304) or 100 <= status < 200


class Pool(Stage):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        # (service name, tunnel host) -> its pool; all built under ``_snapshot``
        self._pools: dict[tuple[str, str], _Upstream] = {}
        self._snapshot: Snapshot | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._warming: set[asyncio.Task[None]] = set()
        # (service name, tunnel host) -> whether its upstream answered over HTTP/2
        self._h2_seen: dict[tuple[str, str], bool] = {}
        self._wakeup = Wakeup()  # the watcher's sleep: a state change or a new connection
        # (the options object, its ``http2``): read once per options object and again
        # after each change of it (``configure``), not per request (``ctx.options.<x>``
        # deep-copies the value on every read)
        self._http2_of: tuple[object, bool] | None = None
        # what each tunnel's exchange made of it and the policy is kept on the tunnel
        # (``Tunnel.pool_made``, ``_make``) under this token: a new token drops them all
        self._made: object = object()

    def configure(self, updated: set[str]) -> None:
        if "http2" in updated:
            self._http2_of = None  # (read again by the next request)
            self._made = object()  # (their pools were chosen for the value before)

    def running(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policy())

    def done(self) -> None:
        for task in (self._watch, *self._warming):
            if task is not None:
                task.cancel()
        self._watch = None
        super().done()

    async def _watch_policy(self) -> None:
        """A new policy (start, reload) retires the old pools at once and pre-warms the new
        ones; idle connections past ``upstream_pool_idle`` close. Once a second while
        starting or while an httpcore pool holds a connection (its expiry check also finds
        an idle HTTP/1.1 connection the upstream closed: only a look finds that); otherwise
        it sleeps until the earliest HTTP/1.1 expiry (``H1Pool.next_due``), a state change
        (reload, lock, unlock, another state) or a new connection: nothing is due before."""
        watch = StateWatch(self.rt.live, self._wakeup)
        try:
            while True:
                delay: float | None = 1.0
                try:
                    st = self.rt.current()
                    if self.rt.serving is not None and not self.rt.serving.is_set():
                        st = None  # starting: the listeners' addresses join the policy yet
                    if (st is not None and st.snapshot is not self._snapshot
                            and self._idle() > 0):
                        self._new_policy(st.snapshot)
                        for service in st.registry.services:
                            if service.prewarm > 0:
                                self._spawn(self._prewarm(st, service))
                    for up in list(self._pools.values()):
                        up.h1.drop_expired()
                        await drop_expired(up.core)
                    delay = self._next_upkeep()
                except Exception:  # noqa: BLE001 - a speed feature never stops the proxy
                    logger.exception("upstream pool upkeep failed")
                await self._wakeup.sleep(delay)
        finally:
            watch.close()

    def _next_upkeep(self) -> float | None:
        """Seconds until the watcher has something to do (None: not before a wake)."""
        if self.rt.serving is not None and not self.rt.serving.is_set():
            return 1.0
        now = time.monotonic()
        due: float | None = None
        for up in self._pools.values():
            if up.core.connections:
                return 1.0
            d = up.h1.next_due(now)
            if d is not None and (due is None or d < due):
                due = d
        if due is None:
            return None
        return max(due - now, 0.0) + _LATE  # (the loop's clock may run a little behind)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _prewarm(self, st: ProxyState, service: Service) -> None:
        cfg = st.registry.config.proxy
        for value in service.hosts:
            spec = parse_host(value)
            if spec.wildcard:
                continue
            dial_host, dial_port = spec.host, spec.port
            if service.connect_to:
                h, p = split_authority(service.connect_to)
                dial_host, dial_port = h, (p if p and p > 0 else spec.port)
            try:
                ip, port = await resolve_checked(
                    dial_host, dial_port, st.snapshot.address_context(service))
                if st.snapshot is not self._snapshot:
                    return  # reloaded meanwhile: the new policy warms its own
                up = self._pool_for(st, service, spec.host)
                known = (service.name, spec.host)
                url = httpcore.URL(scheme=b"https", host=str(ip).encode(),
                                   port=int(port), target=b"/")
                h1 = self._h2_seen.get(known) is not True  # HTTP/1.1, or not known yet
                connect = float(cfg.connect_timeout)
                # the pool's own client (WantsHTTP2 when the upstream chooses HTTP/2), or
                # httpcore's pool for an upstream known to speak HTTP/2
                done: list[Any] = await asyncio.gather(*(
                    up.h1.prewarm(str(ip), int(port), spec.host, connect) if h1
                    else prewarm(up.core, url, spec.host, connect, float(cfg.upstream_pool_idle))
                    for _ in range(service.prewarm)), return_exceptions=True)
                for i, d in enumerate(done):
                    if isinstance(d, WantsHTTP2):  # httpcore's HTTP/2 takes it over
                        self._h2_seen[known] = True
                        done[i] = await self._adopt(up, d, url)
            except Exception as e:  # noqa: BLE001 - the first request reports it properly
                logger.warning("prewarm of %s (%s): %s", service.name, spec.host,
                               pool_error_text(e) if isinstance(e, httpcore.ConnectError)
                               else e)
                continue
            failed = [d for d in done if isinstance(d, BaseException)]
            if failed:
                logger.warning("prewarm of %s (%s): %d of %d connections failed: %s",
                               service.name, spec.host, len(failed), len(done),
                               pool_error_text(failed[0]))
            else:
                logger.info("prewarm of %s (%s): %d connections", service.name, spec.host,
                            sum(1 for d in done if d is not None))
            opened = [d for d in done if isinstance(d, str)]
            if opened:
                self._h2_seen[(service.name, spec.host)] = opened[0] == "h2"

    def _idle(self) -> float:
        st = self.rt.current()
        if st is None or not seam_pool.installed():
            return 0.0
        return float(st.registry.config.proxy.upstream_pool_idle)

    def _pooled_tunnel(self, client_id: str) -> bool:
        tunnel = self.rt.connections.tunnel(client_id)
        return tunnel is not None and tunnel.decision.service is not None and self._idle() > 0

    def next_layer(self, nextlayer: NextLayer) -> None:
        client_id = nextlayer.context.client.id
        if nextlayer.layer is None and self.rt.connections.tunnel(client_id) is None:
            seam_pool.lazy_dial(nextlayer.context, lambda: self._pooled_tunnel(client_id),
                                lambda: self._upstream_h2(client_id))
        elif nextlayer.layer is None and self._lean(client_id):
            # a pooled tunnel's HTTP/1.1 without mitmproxy's HTTP layer: the same hooks
            # (``partial``: asked per request, one Python frame fewer than a lambda)
            seam_lean.choose(nextlayer, functools.partial(self._lean, client_id),
                             MAX_POOLED_BODY)

    def _upstream_h2(self, client_id: str) -> bool:
        """Whether the tunnel's pooled upstream speaks HTTP/2 (True while unknown)."""
        tunnel = self.rt.connections.tunnel(client_id)
        if tunnel is None or tunnel.decision.service is None:
            return True
        return self._h2_seen.get((tunnel.decision.service.name, tunnel.host), True)

    def _lean(self, client_id: str) -> bool:
        """A pooled tunnel (``_pooled_tunnel``) with its checked address: one look-up."""
        tunnel = self.rt.connections.tunnels.get(client_id)  # (``tunnel()``)
        if tunnel is None or tunnel.decision.service is None or tunnel.pinned is None:
            return False
        # (``self._idle() > 0``, inline: asked per request, four calls less)
        st = self.rt.live.state  # (``self.rt.current()``)
        return (st is not None and seam_pool._installed  # (``seam_pool.installed()``)
                and st.snapshot.registry.config.proxy.upstream_pool_idle > 0)

    @guarded
    @handed
    def requestheaders(self, flow: http.HTTPFlow, rec: FlowRecord | None = None) -> None:
        if rec is None:  # (handed on by the dispatch: seam/dispatch.py ``RECORD``)
            rec = flow.metadata.get(KEY) or record_of(flow)
        decision = rec.decision
        if rec.answered or decision is None or decision.plan is None:
            return
        tunnel = self.rt.connections.tunnels.get(flow.client_conn.id)  # (``tunnel()``)
        if tunnel is None or tunnel.decision.service is None or tunnel.pinned is None:
            return
        st = self.rt.live.state  # ``_idle()`` inline: the live state read once
        if st is None or not seam_pool._installed:  # (``seam_pool.installed()``)
            return
        cfg = st.snapshot.registry.config.proxy  # (``st.registry``)
        req = flow.request
        # (``req.method``: the property's text, from ``METHOD_TEXT`` for the usual methods)
        raw = req.data.method
        method = METHOD_TEXT.get(raw) if type(raw) is bytes else None
        if method is None:
            method = req.method
        if cfg.upstream_pool_idle <= 0 or method == "CONNECT":
            return
        # ``_small_body(req, method)``: a head without any field of ``_BODY_NAMES`` (the
        # common one) answers by its method alone, without the call
        if _BODY_NAMES.isdisjoint(header_names(req.data.headers.fields)):
            if method not in _NO_BODY_METHODS:
                return
        elif not _small_body(req, method):
            return
        req.stream = False  # buffered (at most 1 MiB): the exchange starts at its end
        # (``Exchange(tunnel=tunnel, body_limit=..., idle=...)``, its dataclass ``__init__``
        # inline: the same attributes in the same order, a call less per request;
        # tests/unit/test_speed_h1leg.py compares the two)
        sizes = _sizes
        if sizes[0] is not cfg:  # (``cfg``'s two numbers, made once per settings object)
            sizes = _sizes_of(cfg)
        ex = _new_exchange(Exchange)
        ex.tunnel = tunnel
        ex.body_limit = sizes[1]  # (``cfg.max_body_mb * 1024 * 1024``)
        ex.error = ex.chunk = ex.body = ex.response = ex.chunks = None
        ex.idle = sizes[2]  # (``float(cfg.idle_timeout)``)
        ex.closed = False
        flow.metadata[seam_pool.POOLED] = ex

    def _make(self, tunnel: Tunnel, st: ProxyState) -> _Made:
        """What an exchange on ``tunnel`` under ``st`` takes of them: its pool
        (``_pool_for``), ``(service name, host)`` (``_h2_seen``'s key), the host, the
        checked address (text, int) and the timeouts; with what it was made under (the
        stage's token ``_made``, the snapshot, the options object). Kept on the tunnel
        (``Tunnel.pool_made``: one per agent connection, so connections taking turns do
        not evict each other's); the same while those are the very same objects (a
        Tunnel's decision and address are set once, a Decision and a Snapshot are frozen;
        ``_pool_for`` reads ``http2`` again for another options object) and nothing
        replaced the token: ``configure`` when ``http2`` changed (``_pool_for`` reads it
        again), ``_retire`` (a reload's ``_new_policy`` too: its pool is gone)."""
        assert tunnel.pinned is not None
        ip, port = tunnel.pinned
        cfg = st.snapshot.registry.config.proxy  # (``st.registry``)
        connect = float(cfg.connect_timeout)
        service = tunnel.decision.service
        assert service is not None
        target = tunnel.decision.target  # (``tunnel.host``, a property: read once)
        assert target is not None
        host = target[0]
        up = self._pool_for(st, service, host)
        memo = self._http2_of  # (``_pool_for``'s: the options object it read ``http2`` of)
        assert memo is not None
        # (the token read after ``_pool_for``, which may have retired a pool)
        return (self._made, st.snapshot, memo[0], up, (service.name, host), host, str(ip),
                int(port), connect, float(cfg.response_timeout))

    def _new_policy(self, snapshot: Snapshot) -> None:
        """A reload: every pool of the old policy goes, and with them what their upstreams
        told us (``_h2_seen``): the reload may have given a service another address
        (``connect_to``, hosts) or trust (``ca_cert``), hence another upstream; the first
        connection under the new policy finds out again, as after a start."""
        self._snapshot = snapshot
        self._h2_seen = {}
        for old in list(self._pools):
            self._retire(old)

    def _pool_for(self, st: ProxyState, service: Service, host: str) -> _Upstream:
        # ``bool(ctx.options.http2)``, read once per options object and change
        opts = ctx.options
        memo = self._http2_of
        if memo is None or memo[0] is not opts:
            memo = self._http2_of = (opts, bool(opts.http2))
        http2 = memo[1]
        if self._snapshot is not st.snapshot:
            self._new_policy(st.snapshot)
        trust_file = st.snapshot.trust_file(service)
        found = self._pools.get((service.name, host))
        if found is not None:
            # ``found.key == UpstreamKey(...)`` field by field, without building the key
            # (its name and host are the dict's key)
            # (the trust file: the same object while the snapshot is, which a new one
            # retires the pool for; compared as paths otherwise)
            have = found.key
            if ((have.trust_file is trust_file or have.trust_file == trust_file)
                    and have.insecure == service.insecure_tls
                    and found.http2 == http2):
                return found
            self._retire((service.name, host))
        key = UpstreamKey(service.name, host, trust_file, service.insecure_tls)
        idle = float(st.registry.config.proxy.upstream_pool_idle)
        ssl_context = pool_context(key, http2=http2)
        up = _Upstream(key, http2,
                       pool_transport(key, http2=http2, idle=idle, ssl_context=ssl_context,
                                      on_dial=self._wakeup.wake),
                       H1Pool(ssl_context, idle))
        up.h1.on_dial = self._wakeup.wake
        self._pools[(service.name, host)] = up
        return up

    def _retire(self, name: tuple[str, str]) -> None:
        self._made = object()  # (they may name this pool)
        up = self._pools.pop(name)
        up.h1.close()
        task = asyncio.get_running_loop().create_task(_close_when_idle(up.core))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def vaultproxy_pool_exchange(self, flow: http.HTTPFlow) -> None:
        ex: Exchange = flow.metadata[seam_pool.POOLED]
        if head_seen.get() is not None:  # (the task's own context: None but on a resend)
            head_seen.set(None)
        try:
            # (``_send``, inline: one coroutine less per request; what it returned is
            # ``resp``: the HTTP/1.1 client's answer, else httpcore's)
            resp: httpcore.Response | H1Response | None = None
            tunnel = ex.tunnel
            assert tunnel.pinned is not None
            req = flow.request
            data = req.data  # (``req.headers``, ``req.raw_content``: properties reading it)
            fields, has_host = outgoing_fields(data.headers.fields)
            if not has_host:
                authority = req.authority or (
                    tunnel.host if tunnel.port == 443 else f"{tunnel.host}:{tunnel.port}")
                fields.insert(0, (b"Host", authority.encode("idna")))
            content = data.content or b""
            if content:  # (any Content-Length the agent sent is hop-by-hop here: gone)
                fields.append((b"Content-Length", str(len(content)).encode()))
            st = self.rt.live.state  # (``self.rt.state()``, inline; read once)
            if st is None:
                raise NotReady()
            # What this tunnel's exchange made of the tunnel, the policy and the options
            # the last time (``_Made``, kept on the tunnel): the same while the stage's
            # token, the snapshot and the options object are the very same objects
            # (``configure`` of ``http2`` and ``_retire`` replace the token;
            # tests/unit/test_speed_pool10.py compares it with the lines it skips)
            made: _Made | None = tunnel.pool_made
            if (made is None or made[0] is not self._made or made[1] is not st.snapshot
                    or made[2] is not ctx.options):
                made = tunnel.pool_made = self._make(tunnel, st)
            _, _, _, up, known, host, ip, port, connect, read_timeout = made
            if self._h2_seen.get(known) is not True:  # HTTP/1.1, or not known yet
                # (``_send_h1`` inline: one coroutine less per request)
                h1 = up.h1
                args = (ip, port, host, data.method, data.path, fields, content, connect,
                        read_timeout)
                try:
                    try:
                        resp = await h1.exchange(*args)
                    except (httpcore.RemoteProtocolError, httpcore.ReadError,
                            httpcore.WriteError):
                        # A kept-alive connection the upstream closed while idle (its FIN in
                        # flight as we sent): once more, on another, if idempotent and no
                        # response byte came.
                        if req.method not in _IDEMPOTENT or head_seen.get() is not None:
                            raise
                        resp = await h1.exchange(*args)
                except WantsHTTP2 as wants:  # its requests go through httpcore's pool now
                    self._h2_seen[known] = True
                    await self._adopt(up, wants, httpcore.URL(
                        scheme=b"https", host=ip.encode(), port=port, target=b"/"))
            if resp is None:  # (HTTP/2, known or just found out)
                outgoing = httpcore.Request(
                    req.method.encode(),
                    httpcore.URL(scheme=b"https", host=ip.encode(), port=port,
                                 target=req.data.path),
                    headers=fields, content=content or None,
                    extensions={
                        "sni_hostname": host,
                        "timeout": {"connect": connect, "pool": connect,
                                    "read": read_timeout, "write": read_timeout},
                    },
                )
                pool = up.core
                await drop_closed(pool)  # an HTTP/2 connection the upstream closed idle
                try:
                    resp = await pool.handle_async_request(outgoing)
                except (httpcore.RemoteProtocolError, httpcore.ReadError,
                        httpcore.WriteError) as e:
                    # A kept-alive connection the upstream closed while idle (an HTTP/1 FIN
                    # in flight as we sent; an HTTP/2 GOAWAY httpcore reads only now): that
                    # connection is gone. Once more, on another: an idempotent request that
                    # got no response byte, or any request the upstream's GOAWAY says it
                    # never processed.
                    goaway = "ConnectionTerminated" in str(e)
                    if not goaway and (req.method not in _IDEMPOTENT
                                       or head_seen.get() is not None):
                        raise
                    resp = await pool.handle_async_request(outgoing)
            ex.response = resp
        except Exception as e:  # noqa: BLE001 - every failure is an answer, never a hang
            seen = head_seen.get()
            if seen is not None and seen.status == 101:  # h11 refuses an unasked 101
                # the response gate refuses it as mitmproxy's path does (upgrade_refused)
                flow.response = http.Response.make(101, b"", [(b"connection", b"close")])
                return
            ex.error = pool_error_text(e)
            await ex.close()
            return
        if type(resp) is H1Response and resp.length is not None:
            # (no obs-fold check: ``read_head`` read this head, never folded (``parse_head``
            # and ``parse_known`` take no continuation line), and left ``head_seen`` as it
            # was, None: this exchange's, set above; tests/unit/test_speed_pool11.py)
            # A head ``parse_head`` read (``length`` set): HTTP/1.1, its one Content-Length,
            # never for HEAD, 1xx, 204 or 304. What the lines below do for it, without the
            # tests that cannot hold for it (tests/unit/test_speed_exch9.py compares them).
            # (``(service.name, host)`` of ``ex.tunnel``: ``known``; its service is not
            # None, checked above; a Decision is frozen)
            self._h2_seen[known] = False
            headers = _new_headers(http.Headers)  # (``objects.headers_made``, inline)
            headers.fields = tuple(resp.headers)
            flow.response = objects.response_of(  # http.Response(...), cheaper
                b"HTTP/1.1", resp.status, resp.reason, headers,
                flow.request.data.timestamp_end or 0.0)
            ex.chunks = None
            head = resp.head
            if head is not None and head.known is not None:  # (``parse_known``'s)
                flow.metadata[UPSTREAM_HEAD] = head  # for the response gate (its names)
            if resp.length <= PREFETCH_BODY:
                whole = resp.body_now()
                if whole is not None:
                    ex.body = whole  # (every byte already read: what the loop would join)
                    return
                await self._prefetch(flow, ex, resp.length)
            return
        seen = head_seen.get()
        if seen is not None and seen.folded:
            ex.error = "HTTP/1 protocol error: an obs-folded response header"
            await ex.close()
            return
        version = resp.extensions.get("http_version", b"HTTP/1.1")
        service = ex.tunnel.decision.service
        if service is not None:
            target = ex.tunnel.decision.target  # (``ex.tunnel.host``)
            assert target is not None
            self._h2_seen[(service.name, target[0])] = version == b"HTTP/2"
        headers = objects.headers_of(resp.headers)  # http.Headers(resp.headers), cheaper
        if version == b"HTTP/2":
            version = b"HTTP/2.0"
            if flow.request.http_version == "HTTP/1.1":
                # An HTTP/1 agent's connection stays open: frame a body of unknown length
                # with chunks (mitmproxy would send it close-delimited).
                version = b"HTTP/1.1"
                if "content-length" not in headers and not _bodiless(flow, resp.status):
                    headers["transfer-encoding"] = "chunked"
        reason = resp.extensions.get("reason_phrase", b"")
        flow.response = objects.response_of(  # http.Response(...), cheaper
            version, resp.status, reason, headers, flow.request.data.timestamp_end or 0.0)
        ex.chunks = None if isinstance(resp, H1Response) else resp.aiter_stream()
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) <= PREFETCH_BODY and not _bodiless(flow, resp.status):
            await self._prefetch(flow, ex, int(length))

    async def _prefetch(self, flow: http.HTTPFlow, ex: Exchange, length: int) -> None:
        """The body of a response with a Content-Length of at most ``PREFETCH_BODY``
        (``length``), read chunk by chunk into ``ex.body`` (``ex.error`` on a failure: the
        seam answers it as a failed exchange)."""
        body = bytearray()
        while True:
            await self.vaultproxy_pool_chunk(flow)
            if ex.error is not None:
                return  # the seam answers it as a failed exchange
            if ex.chunk is None:
                break
            body += ex.chunk
        ex.body = bytes(body)

    async def _adopt(self, up: _Upstream, wants: WantsHTTP2, url: httpcore.URL,
                     ) -> str | None:
        """The HTTP/1.1 client's dial to an upstream that chose HTTP/2, left idle in
        httpcore's pool (the next request there takes it): "h2", or None if it could not."""
        if adopt(up.core, wants.stream, url, self._idle(), h2=True):
            return "h2"
        await wants.stream.aclose()
        return None

    async def vaultproxy_pool_chunk(self, flow: http.HTTPFlow) -> None:
        ex: Exchange = flow.metadata[seam_pool.POOLED]
        if isinstance(ex.response, H1Response):
            try:
                ex.chunk = await ex.response.next_chunk(ex.idle)
            except Exception as e:  # noqa: BLE001 - a cut body closes the agent's side
                ex.error = pool_error_text(e)
                ex.chunk = None
                await ex.close()
            return
        if ex.chunks is None:
            ex.chunk = None
            return
        try:
            while True:
                chunk = await asyncio.wait_for(anext(ex.chunks), ex.idle)
                if chunk:
                    break
            ex.chunk = chunk
        except StopAsyncIteration:
            ex.chunk = None
            await ex.close()  # read to its end: the connection goes back to the pool
        except Exception as e:  # noqa: BLE001 - a cut body closes the agent's side
            ex.error = pool_error_text(e)
            ex.chunk = None
            await ex.close()

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The exchange's close, or None (no coroutine) when there is nothing to close: a
        flow that was not pooled, or an exchange already closed (``Exchange.close`` would
        do nothing). The ``error`` hook is the same function (no frame in between)."""
        ex = flow.metadata.get(seam_pool.POOLED)
        if isinstance(ex, Exchange) and not ex.closed:
            resp = ex.response
            if type(resp) is H1Response and resp._conn is None:
                # (what ``ex.close()`` does, without its two coroutines: the response's
                # connection went back to its pool or was closed already (``body_now``,
                # ``next_chunk`` at the end): its ``aclose`` does nothing)
                ex.closed = True
                return None
            return ex.close()
        return None

    error = response
    _end = response  # (the name tests and older callers use)
