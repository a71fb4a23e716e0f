"""Session 17 (``pool10``): the pooled exchange's per-request work, each change compared on
seeded input with the code it replaces (kept here, verbatim, as the reference).

* ``Pool.vaultproxy_pool_exchange`` takes its pool, ``_h2_seen``'s key, the address and the
  timeouts from ``Pool._make``'s memo while the tunnel, the snapshot and the options' memo
  are the very same objects and the pool is not retired: the same pools, the same
  arguments to the HTTP/1.1 client and httpcore, the same errors, responses and
  ``_h2_seen`` as the function that asked ``_pool_for`` every time, over seeded runs of
  new tunnels, reloads (a new snapshot, or the watcher's new policy), ``http2`` changes,
  retired pools and HTTP/2 upstreams.
* ``request_bytes`` takes the names and values by ``zip(*fields)``: the same answer as the
  two list comprehensions before, over seeded fields (good and bad names and values).
* ``H1Pool.release`` reads ``reusable()`` inline: the same stacks and closes over seeded
  connections (closed, at their end, bytes unasked or waiting, a transport closing, on
  ``_TLSSocket`` or another transport).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h11
import httpcore
import pytest
from mitmproxy import ctx, http
from mitmproxy.test import taddons, tflow

from vaultproxy.errors import NotReady
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import (
    _REQUEST_LINE,
    _SHAPE_NAMES_MAX,
    _SHAPES,
    _SHAPES_MAX,
    _VALUE_BYTES,
    _VISIBLE,
    UPSTREAM_HEAD,
    H1Response,
    WantsHTTP2,
    _names_shape,
    request_bytes,
)
from vaultproxy.net.outbound import head_seen, pool_error_text
from vaultproxy.seam import objects
from vaultproxy.seam import pool as seam_pool
from vaultproxy.stages import pool as pool_stage
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.pool import (
    _IDEMPOTENT,
    PREFETCH_BODY,
    Exchange,
    _bodiless,
    _new_headers,
    outgoing_fields,
)

_CONTEXT = ssl.create_default_context()

# -- Pool.vaultproxy_pool_exchange ------------------------------------------------------------

async def _reference_exchange(self: Any, flow: http.HTTPFlow) -> None:
    """``Pool.vaultproxy_pool_exchange`` before pool10 (main 36b6d1b), verbatim."""
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
        ip, port = tunnel.pinned
        st = self.rt.live.state  # (``self.rt.state()``, inline; read once)
        if st is None:
            raise NotReady()
        cfg = st.snapshot.registry.config.proxy  # (``st.registry``)
        connect = float(cfg.connect_timeout)
        service = tunnel.decision.service
        assert service is not None
        target = tunnel.decision.target  # (``tunnel.host``, a property: read once)
        assert target is not None
        host = target[0]
        up = self._pool_for(st, service, host)
        known = (service.name, host)
        if self._h2_seen.get(known) is not True:  # HTTP/1.1, or not known yet
            # (``_send_h1`` inline: one coroutine less per request)
            h1 = up.h1
            args = (str(ip), int(port), host, req.data.method, req.data.path, fields,
                    content, connect, float(cfg.response_timeout))
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
                    scheme=b"https", host=str(ip).encode(), port=int(port), target=b"/"))
        if resp is None:  # (HTTP/2, known or just found out)
            outgoing = httpcore.Request(
                req.method.encode(),
                httpcore.URL(scheme=b"https", host=str(ip).encode(), port=int(port),
                             target=req.data.path),
                headers=fields, content=content or None,
                extensions={
                    "sni_hostname": host,
                    "timeout": {"connect": connect, "pool": connect,
                                "read": float(cfg.response_timeout),
                                "write": float(cfg.response_timeout)},
                },
            )
            pool = up.core
            await pool_stage.drop_closed(pool)  # an HTTP/2 connection the upstream closed idle
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
        # (no obs-fold check: ``read_head`` read this head and left ``head_seen`` its
        # ``_SEEN`` Head, never folded; tests/unit/test_speed_small9.py proves it)
        # A head ``parse_head`` read (``length`` set): HTTP/1.1, its one Content-Length,
        # never for HEAD, 1xx, 204 or 304. What the lines below do for it, without the
        # tests that cannot hold for it (tests/unit/test_speed_exch9.py compares them).
        decision = ex.tunnel.decision  # (read once)
        service = decision.service
        if service is not None:
            target = decision.target  # (``ex.tunnel.host``)
            assert target is not None
            self._h2_seen[(service.name, target[0])] = False
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



class _Rt:
    def __init__(self) -> None:
        self.live = SimpleNamespace(state=None)

    def stage_loaded(self, name: str) -> None:
        pass

    def stage_unloaded(self, name: str) -> None:
        pass


def _state(rng: random.Random) -> Any:
    """A proxy state on a new snapshot (frozen in the proxy: never changed in place here)."""
    proxy = SimpleNamespace(connect_timeout=rng.choice([1, 5, 7.5]),
                            response_timeout=rng.choice([10, 30.5]), upstream_pool_idle=30)
    trust = {"a": Path(rng.choice(["/t/a.pem", "/t/c.pem"])), "b": Path("/t/b.pem")}
    snapshot = SimpleNamespace(trust_file=lambda service: trust[service.name],
                               registry=SimpleNamespace(config=SimpleNamespace(proxy=proxy)))
    return SimpleNamespace(snapshot=snapshot, registry=snapshot.registry)


def _run(monkeypatch: pytest.MonkeyPatch, seed: int, exchange: Any) -> list[Any]:
    rng = random.Random(seed)
    log: list[Any] = []
    ids: dict[int, int] = {}  # (a pool by the order it was made in: comparable across runs)

    alive: list[Any] = []  # (each one tagged: no id is reused)

    def tag(obj: Any) -> int:
        alive.append(obj)
        return ids.setdefault(id(obj), len(ids))

    async def h1_exchange(self: Any, *args: Any) -> Any:
        log.append(("h1", tag(self), args))
        outcome = rng.choice(["fast", "fast", "error", "remote", "h2"])
        if outcome == "fast":
            resp = H1Response.__new__(H1Response)
            resp.status, resp.headers = 200, [(b"content-length", b"0")]
            resp.version, resp.reason = b"HTTP/1.1", b"OK"
            resp._pool, resp._conn = self, None
            resp._timeout, resp.length, resp.head = 5.0, 0, None
            return resp
        if outcome == "h2":
            raise WantsHTTP2(SimpleNamespace())  # type: ignore[arg-type]
        raise (httpcore.ConnectError if outcome == "error" else httpcore.RemoteProtocolError)(
            outcome)

    async def core_request(request: httpcore.Request) -> Any:
        log.append(("core", request.method, bytes(request.url), request.headers,
                    request.extensions))
        return httpcore.Response(200, headers=[(b"content-length", b"0")],
                                 extensions={"http_version": b"HTTP/2"})

    async def drop_closed(pool: Any) -> None:
        log.append(("drop_closed",))

    async def adopt(self: Any, up: Any, wants: Any, url: Any) -> str | None:
        log.append(("adopt", tag(up), bytes(url)))
        return "h2"

    monkeypatch.setattr(pool_stage, "pool_context", lambda key, http2: _CONTEXT)
    async def aclose() -> None:
        pass

    monkeypatch.setattr(pool_stage, "pool_transport", lambda *a, **k: SimpleNamespace(
        handle_async_request=core_request, connections=[], aclose=aclose))
    monkeypatch.setattr(pool_stage, "drop_closed", drop_closed)
    monkeypatch.setattr(pool_stage.Pool, "_adopt", adopt)
    monkeypatch.setattr(h1pool.H1Pool, "exchange", h1_exchange)

    async def run() -> None:
        rt = _Rt()
        stage = pool_stage.Pool(rt)  # type: ignore[arg-type]
        with taddons.context(stage) as tctx:
            services = [SimpleNamespace(name=n, insecure_tls=False) for n in ("a", "b")]
            st = _state(rng)
            tunnel = None
            tunnels: list[Any] = []  # (agent connections taking turns: each keeps its memo)
            for _ in range(300):
                roll = rng.random()
                if roll < 0.06:
                    tctx.options.update(http2=not ctx.options.http2)
                elif roll < 0.12:
                    st = _state(rng)  # a reload
                elif roll < 0.16:
                    stage._new_policy(_state(rng).snapshot)  # (the watcher's, another one)
                elif roll < 0.2 and stage._pools:
                    stage._retire(rng.choice(sorted(stage._pools)))
                elif roll < 0.22:
                    stage._h2_seen.clear()
                if tunnel is None or rng.random() < 0.25:
                    service = rng.choice(services)
                    host = rng.choice(["h1.test", "h2.test"])
                    decision = SimpleNamespace(service=service, target=(host, 443))
                    tunnel = Tunnel(decision=decision,  # type: ignore[arg-type]
                                    pinned=(rng.choice(["10.0.0.1", "10.0.0.2"]),
                                            rng.choice([443, 8443])))
                    tunnels = [*tunnels[-2:], tunnel]
                elif rng.random() < 0.5:
                    tunnel = rng.choice(tunnels)  # (an earlier connection's turn again)
                rt.live.state = None if rng.random() < 0.02 else st
                flow = tflow.tflow()
                req = flow.request
                req.data.method = rng.choice([b"GET", b"GET", b"POST"])
                req.data.path = rng.choice([b"/", b"/x?y=1"])
                req.data.headers.fields = ((b"Host", b"h.test"), (b"Accept", b"*/*"))
                req.data.content = rng.choice([b"", b"abc"])
                ex = Exchange(tunnel=tunnel, body_limit=1 << 20)
                flow.metadata[seam_pool.POOLED] = ex
                await exchange(stage, flow)
                resp = flow.response
                log.append((ex.error, ex.body,
                            resp and (resp.status_code, resp.http_version, resp.headers.fields),
                            sorted(stage._h2_seen.items()),
                            sorted((k, tag(up)) for k, up in stage._pools.items())))

    asyncio.run(run())
    return log


@pytest.mark.parametrize("seed", range(12))
def test_pool_exchange_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same pools and client calls (address, timeouts, fields), errors, responses and
    ``_h2_seen`` as when every request asked ``_pool_for`` and read the policy."""
    got = _run(monkeypatch, seed, pool_stage.Pool.vaultproxy_pool_exchange)
    want = _run(monkeypatch, seed, _reference_exchange)
    assert got == want
    kinds = {entry[0] for entry in got if type(entry[0]) is str}
    assert {"h1", "core", "adopt"} <= kinds, kinds


def test_connections_taking_turns_keep_their_own_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo is kept per tunnel: two agent connections taking turns (``hey -c 10``'s
    shape) make it once each, not once per request; a reload (a new snapshot), an ``http2``
    change and a retired pool make it again for both."""
    made: list[Any] = []
    real_make = pool_stage.Pool._make

    def counting_make(self: Any, tunnel: Any, st: Any) -> Any:
        made.append(tunnel)
        return real_make(self, tunnel, st)

    async def h1_exchange(self: Any, *args: Any) -> Any:
        raise httpcore.ConnectError("down")

    monkeypatch.setattr(pool_stage.Pool, "_make", counting_make)
    monkeypatch.setattr(pool_stage, "pool_context", lambda key, http2: _CONTEXT)
    monkeypatch.setattr(pool_stage, "pool_transport", lambda *a, **k: SimpleNamespace(
        handle_async_request=None, connections=[], aclose=None))
    monkeypatch.setattr(h1pool.H1Pool, "exchange", h1_exchange)

    async def run() -> None:
        rt = _Rt()
        stage = pool_stage.Pool(rt)  # type: ignore[arg-type]
        with taddons.context(stage) as tctx:
            service = SimpleNamespace(name="a", insecure_tls=False)
            one, two = (Tunnel(decision=SimpleNamespace(  # type: ignore[arg-type]
                service=service, target=("h1.test", 443)), pinned=("10.0.0.1", 443))
                for _ in range(2))
            rt.live.state = _state(random.Random(1))

            async def turns(n: int) -> None:
                for i in range(n):
                    flow = tflow.tflow()
                    flow.request.data.headers.fields = ((b"Host", b"h1.test"),)
                    ex = Exchange(tunnel=one if i % 2 == 0 else two, body_limit=1 << 20)
                    flow.metadata[seam_pool.POOLED] = ex
                    await stage.vaultproxy_pool_exchange(flow)
                    assert ex.error == "could not connect to the upstream"

            await turns(20)
            assert made == [one, two]
            # (the memo names the snapshot, whose text may hold decoys: never in a repr)
            assert one.pool_made is not None and "pool_made" not in repr(one)
            assert repr(one.pool_made[1]) not in repr(one)
            rt.live.state = _state(random.Random(2))  # a reload
            await turns(4)
            assert made[2:] == [one, two]
            tctx.options.update(http2=not ctx.options.http2)
            await turns(4)
            assert made[4:] == [one, two]
            stage._retire(next(iter(stage._pools)))
            await turns(4)
            assert made[6:] == [one, two]

    asyncio.run(run())


# -- request_bytes -----------------------------------------------------------------------------


def _reference_request_bytes(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]],
                             body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """``request_bytes`` before pool10 (main 36b6d1b), verbatim."""
    n = len(fields)
    names = b":".join([k for k, _ in fields])
    shape = _SHAPES.get(names)
    if shape is None:
        shape = _names_shape(names)
        if len(names) <= _SHAPE_NAMES_MAX:
            if len(_SHAPES) >= _SHAPES_MAX:
                _SHAPES.clear()
            _SHAPES[names] = shape
    if shape[0] != n:
        return None
    _, head, length_at, order, hop = shape
    values = [v for _, v in fields]
    seen = b"\n".join(values).translate(_VALUE_BYTES)
    if (seen.count(b"\n") != n - 1 or seen.find(b" \n") >= 0 or seen.find(b"\n ") >= 0
            or seen[:1] == b" " or seen[-1:] == b" "
            or not ((method.isalpha() and target and not target.translate(None, _VISIBLE))
                    or _REQUEST_LINE.fullmatch(b"%s %s" % (method, target)))):
        return None
    if order is not None:
        values = order(values)
    if length_at >= 0:
        if values[length_at] != b"%d" % len(body):
            return None
    elif body:
        return None
    state = [(b"host", values[0])]
    if hop:
        state += [(name, values[i]) for name, i in hop]
    head %= (method, target, *values)
    return (head + body if body else head), state


_FIELD_NAMES = [b"Host", b"host", b"Accept", b"Content-Length", b"Connection", b"Expect",
                b"X-A", b"Transfer-Encoding", b"a b", b"x:y", b"", b"Authorization"]
_FIELD_VALUES = [b"", b"v", b"h.test", b"3", b"0", b"close", b"keep-alive, Close", b" v",
                 b"v ", b"a\nb", b"a\rb", b"a\x00b", b"a\tb", b"100-continue",
                 b"vpcanary_0123abcd"]


@pytest.mark.parametrize("seed", range(8))
def test_request_bytes_is_its_reference(seed: int) -> None:
    rng = random.Random(seed)
    answered = 0
    for _ in range(1500):
        bad = rng.random() < 0.3  # (else only names and values h11 may take)
        fields = [(rng.choice(_FIELD_NAMES if bad else _FIELD_NAMES[2:7]),
                   rng.choice(_FIELD_VALUES if bad else _FIELD_VALUES[1:7]))
                  for _ in range(rng.randrange(7))]
        if rng.random() < 0.6:
            fields.insert(rng.randrange(len(fields) + 1), (b"Host", b"h.test"))
        method = rng.choice([b"GET", b"POST", b"M-SEARCH", b"G T", b""])
        target = rng.choice([b"/", b"/a?b", b"/a b", b""])
        body = rng.choice([b"", b"abc"])
        want = _reference_request_bytes(method, target, list(fields), body)
        assert request_bytes(method, target, list(fields), body) == want, (method, fields)
        answered += want is not None
    assert answered > 40


# -- H1Pool.release ----------------------------------------------------------------------------

def _reference_release(self: Any, conn: Any) -> None:
    """``H1Pool.release`` before pool10 (main 36b6d1b), verbatim."""
    """A response read to its end: keep the connection for the next request, if it may
    carry one."""
    h = conn.h11
    if h is None:
        done = conn.keep and not conn.left and not conn.trailing
    else:
        done = (h.our_state is h11.DONE and h.their_state is h11.DONE
                and not h.trailing_data[0])
    if self.closed or not done or not conn.reusable():
        conn.close()
        return
    conn.h11 = None  # (the next exchange starts with a fresh reader)
    conn.busy = False
    conn.expire_at = h1pool.time.monotonic() + self._idle_for
    # (``setdefault(conn.where, h1pool.deque())`` without a deque made per release: its
    # stack is there but for the first release or after a ``drop_expired`` emptied it)
    stack = self._idle.get(conn.where)
    if stack is None:
        stack = self._idle[conn.where] = h1pool.deque()
    stack.append(conn)
    if len(stack) > h1pool.MAX_IDLE:
        stack.popleft().close()



def _release_run(monkeypatch: pytest.MonkeyPatch, seed: int, release: Any) -> list[Any]:
    rng = random.Random(seed)
    monkeypatch.setattr(h1pool.time, "monotonic", lambda: 100.0)
    log: list[Any] = []
    pool = object.__new__(h1pool.H1Pool)
    pool._idle = {}
    pool._idle_for = 30.0
    wheres = [("10.0.0.1", 443, "a"), ("10.0.0.2", 443, "a")]
    for i in range(300):
        pool.closed = rng.random() < 0.05
        conn = object.__new__(h1pool._Conn)
        conn.tag = i  # type: ignore[attr-defined]
        conn.where = rng.choice(wheres)
        conn.h11 = None
        conn.keep, conn.left, conn.trailing = (rng.random() < 0.9, rng.choice([0, 0, 0, 3]),
                                               rng.random() < 0.05)
        conn.closed, conn.eof, conn.unasked = (rng.random() < 0.05, rng.random() < 0.05,
                                               rng.random() < 0.05)
        conn.inbox = [b"x"] if rng.random() < 0.05 else []
        closing = rng.random() < 0.1
        if rng.random() < 0.7:
            transport: Any = object.__new__(h1pool._TLSSocket)
            transport._closing = closing
        else:
            transport = SimpleNamespace(is_closing=lambda closing=closing: closing)
        conn.transport = transport

        def close(conn: Any = conn) -> None:
            log.append(("close", conn.tag))

        conn.close = close  # type: ignore[method-assign]
        release(pool, conn)
        log.append(sorted((w, [c.tag for c in s]) for w, s in pool._idle.items()))
    return log


@pytest.mark.parametrize("seed", range(10))
def test_release_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    got = _release_run(monkeypatch, seed, h1pool.H1Pool.release)
    assert got == _release_run(monkeypatch, seed, _reference_release)
    assert sum(1 for entry in got if type(entry) is tuple) > 20
