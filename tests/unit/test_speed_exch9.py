"""Session 16 (``exch9``): the pooled exchange's common path answers exactly as the code it
replaces, on seeded input; the code before each change is kept here as the reference.

* ``Pool.vaultproxy_pool_exchange`` reads a response the HTTP/1.1 client's fast path read
  (an ``H1Response`` with ``length`` set: HTTP/1.1, one Content-Length, never HEAD, 1xx,
  204 or 304) in a branch of its own, and sets ``head_seen`` to None only when it is not
  None: the same calls, responses, bodies, prefetches, errors, ``_h2_seen`` and
  ``head_seen`` as the function before it, over seeded heads (read by the real
  ``parse_head``), bodies that came whole or in chunks or were cut, h11-read responses,
  httpcore's, failures and resends.
* ``parse_known`` pairs the names and values without ``zip``'s strict check (as many groups
  as names, checked when the pattern is made) and reads a ``keep-alive`` Connection value
  without lower-casing it: the same heads as ``parse_head`` over seeded Connection values.
* ``H1Pool._take_now`` with ``reusable()`` inline: the same connection taken, the same
  ones closed, over seeded idle stacks.
* ``H1Pool.release`` looks its stack up (a deque made only for a new one): the same
  stacks and closes as with ``setdefault``, over seeded releases.
* ``Pool.response`` is ``error``'s and ``_end``'s function.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import httpcore
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from vaultproxy.errors import NotReady
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import (
    UPSTREAM_HEAD,
    H1Response,
    ResponseHead,
    WantsHTTP2,
    parse_head,
    parse_known,
)
from vaultproxy.net.outbound import Head, head_seen, pool_error_text
from vaultproxy.seam import objects
from vaultproxy.seam import pool as seam_pool
from vaultproxy.stages import pool as pool_stage
from vaultproxy.stages.pool import (
    _IDEMPOTENT,
    PREFETCH_BODY,
    Exchange,
    _bodiless,
    outgoing_fields,
)

# -- Pool.vaultproxy_pool_exchange ------------------------------------------------------------

async def _reference_pool_exchange(self: Any, flow: http.HTTPFlow) -> None:
    """``Pool.vaultproxy_pool_exchange`` before ``exch9`` (with ``names9``'s hand-over of a
    known head to the response gate, ``UPSTREAM_HEAD``)."""
    ex: Exchange = flow.metadata[seam_pool.POOLED]
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
    # http.Headers(resp.headers), cheaper; a head ``parse_head`` read (``length`` set)
    # holds (bytes, bytes) tuples by construction: no per-field type check
    headers = (objects.headers_made(resp.headers)
               if type(resp) is H1Response and resp.length is not None
               else objects.headers_of(resp.headers))
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
    if isinstance(resp, H1Response) and resp.length is not None:
        head = resp.head
        if head is not None and head.known is not None:  # (``parse_known``'s)
            flow.metadata[UPSTREAM_HEAD] = head  # for the response gate (its names)
        # a head ``parse_head`` read: its one Content-Length, never for HEAD, 1xx, 204
        # or 304 (the test below without reading the headers again)
        if resp.length <= PREFETCH_BODY and (whole := resp.body_now()) is not None:
            ex.body = whole  # (every byte already read: what the loop below would join)
            return
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) <= PREFETCH_BODY and not _bodiless(flow, resp.status):
        body = bytearray()
        while True:
            await self.vaultproxy_pool_chunk(flow)
            if ex.error is not None:
                return  # the seam answers it as a failed exchange
            if ex.chunk is None:
                break
            body += ex.chunk
        ex.body = bytes(body)


_NAMES = [b"Server", b"Date", b"Content-Type", b"ETag", b"Connection", b"Set-Cookie"]
_STATUS = [b"200 OK", b"200 OK", b"201 Created", b"404 Not Found", b"500 Oops", b"299"]


def _fast_head(rng: random.Random) -> tuple[Any, bytes]:
    """A head the fast path reads (``parse_head``, the real one) and its body."""
    length = rng.choice([0, 2, 1024, PREFETCH_BODY, PREFETCH_BODY + 1])
    fields = [(name, rng.choice([b"a", b"keep-alive", b"x y"]))
              for name in rng.sample(_NAMES, rng.randrange(len(_NAMES)))]
    fields.insert(rng.randrange(len(fields) + 1), (b"Content-Length", b"%d" % length))
    data = b"HTTP/1.1 " + rng.choice(_STATUS) + b"\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    head = parse_head(data, b"GET")
    assert head is not None, data
    return head, bytes(rng.randrange(256) for _ in range(min(length, 64))) * (
        length // 64 + 1)


#: per scripted H1Response (by ``id``): it, and its ``body_now``, ``next_chunk``, ``aclose``
_SCRIPTED: dict[int, tuple[Any, ...]] = {}


def _script_h1_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``H1Response``'s methods answering from each response's script (``_SCRIPTED``)."""
    _SCRIPTED.clear()

    def body_now(self: H1Response) -> bytes | None:
        return _SCRIPTED[id(self)][1]()  # type: ignore[no-any-return]

    def next_chunk(self: H1Response, idle: float) -> Any:
        return _SCRIPTED[id(self)][2](idle)

    def aclose(self: H1Response) -> Any:
        return _SCRIPTED[id(self)][3]()

    monkeypatch.setattr(H1Response, "body_now", body_now)
    monkeypatch.setattr(H1Response, "next_chunk", next_chunk)
    monkeypatch.setattr(H1Response, "aclose", aclose)


def _exchange_world(rng: random.Random, calls: list[Any]) -> tuple[Any, Any]:
    """A Pool stage (no ``__init__``) whose HTTP/1.1 client and httpcore pool answer from
    seeded scripts, and a flow with its Exchange."""
    n = [0]

    def tagged(kind: str, version: bytes) -> httpcore.Response:
        n[0] += 1
        return httpcore.Response(200, headers=[(b"x-tag", f"{kind}{n[0]}".encode()),
                                               (b"content-length", b"3")],
                                 extensions={"http_version": version})

    def h1_response(length: int | None, status: int, headers: Any, reason: bytes,
                    body: bytes) -> H1Response:
        resp = H1Response.__new__(H1Response)
        resp.status, resp.headers = status, headers
        resp.version, resp.reason = b"HTTP/1.1", reason  # (its ``extensions``)
        resp._pool = None  # type: ignore[assignment]
        resp._conn = SimpleNamespace()  # type: ignore[assignment]
        resp._timeout = 5.0
        resp.length = length
        # the head it was made of: none, one ``parse_head`` read, or one of known names
        # (what the pool hands the response gate)
        resp.head = rng.choice([None, ResponseHead(status, reason, headers, length or 0, True,
                                                   0)])
        if resp.head is not None and rng.random() < 0.5:
            resp.head.known, resp.head.values = object(), ()  # type: ignore[assignment]
        whole = rng.random() < 0.6
        chunks = [body[i:i + 700] for i in range(0, len(body), 700)]
        cut = rng.random() < 0.2

        def body_now() -> bytes | None:
            calls.append(("body_now", whole))
            if whole:
                resp._conn = None
                return body[:length] if length is not None else body
            return None

        async def next_chunk(idle: float) -> bytes | None:
            calls.append(("next_chunk", idle))
            if chunks:
                return chunks.pop(0)
            if cut:
                raise httpcore.RemoteProtocolError("peer closed connection")
            resp._conn = None
            return None

        async def aclose() -> None:
            calls.append(("aclose",))
            resp._conn = None

        # (slotted: no attribute of its own; the class's, patched by ``_pool_exchange_run``,
        # call these)
        _SCRIPTED[id(resp)] = (resp, body_now, next_chunk, aclose)
        return resp

    async def h1_exchange(*args: Any) -> Any:
        calls.append(("h1", args))
        outcome = rng.choice(["fast", "fast", "fast", "h11", "core-shaped", "remote",
                              "h2", "folded", "head101"])
        if outcome == "fast":
            head, body = _fast_head(rng)
            # (``read_head`` leaves ``head_seen`` as it was for a head it read: pool11)
            return h1_response(head.length, head.status, head.headers, head.reason, body)
        if outcome == "h11":  # (h11 read it: ``length`` None, fields h11's list)
            length = rng.choice([None, 3, PREFETCH_BODY + 1])
            fields = [(b"x-tag", b"h11")] + (
                [] if length is None else [(b"content-length", b"%d" % length)])
            status = rng.choice([200, 204, 304, 404])
            return h1_response(None, status, fields, b"Whatever", b"abc")
        if outcome == "core-shaped":
            return tagged("h1-", b"HTTP/1.1")
        if outcome in ("head101", "folded"):
            head_seen.set(Head(101 if outcome == "head101" else 200, outcome == "folded"))
            if outcome == "folded":
                # (h11 read it: a head ``read_head`` read leaves a Head never folded,
                # tests/unit/test_speed_small9.py, so the pool stage asks only h11's)
                head, body = _fast_head(rng)
                return h1_response(None, head.status, head.headers, head.reason, body)
            raise httpcore.RemoteProtocolError("cut after the head")
        if outcome == "h2":
            raise WantsHTTP2(SimpleNamespace())  # type: ignore[arg-type]
        raise httpcore.RemoteProtocolError(outcome)

    async def core_request(request: httpcore.Request) -> Any:
        calls.append(("core", request.method, bytes(request.url)))
        if rng.random() < 0.2:
            raise httpcore.ReadError("read")
        return tagged("h2-", rng.choice([b"HTTP/2", b"HTTP/1.1"]))

    up = SimpleNamespace(h1=SimpleNamespace(exchange=h1_exchange),
                         core=SimpleNamespace(handle_async_request=core_request))
    proxy = SimpleNamespace(connect_timeout=rng.choice([1, 5]),
                            response_timeout=rng.choice([10, 30.5]))
    st = (None if rng.random() < 0.03 else SimpleNamespace(snapshot=SimpleNamespace(
        registry=SimpleNamespace(config=SimpleNamespace(proxy=proxy)))))
    stage = object.__new__(pool_stage.Pool)
    stage.rt = SimpleNamespace(live=SimpleNamespace(state=st))  # type: ignore[assignment]
    # (``Pool.__init__``'s memos: ``_make`` keeps what ``_pool_for`` left, pool10)
    stage._made, stage._http2_of = None, (object(), False)
    stage._h2_seen = rng.choice([{}, {("svc", "h.test"): False}, {("svc", "h.test"): True},
                                 {("other", "h.test"): True}])

    def pool_for(st: Any, service: Any, host: str) -> Any:
        calls.append(("pool_for", service.name, host))
        return up

    async def adopt(up_: Any, wants: Any, url: Any) -> str | None:
        calls.append(("adopt", bytes(url)))
        return rng.choice(["h2", None])

    stage._pool_for = pool_for  # type: ignore[method-assign]
    stage._adopt = adopt  # type: ignore[method-assign]
    service = None if rng.random() < 0.1 else SimpleNamespace(name="svc")
    decision = SimpleNamespace(service=SimpleNamespace(name="svc"), target=("h.test", 443))
    tunnel = SimpleNamespace(pinned=("10.0.0.1", 443), pool_made=None, host="h.test", port=443,
                             decision=decision)
    flow = tflow.tflow()
    req = flow.request
    req.data.method = rng.choice([b"GET", b"GET", b"POST", b"PUT"])
    req.data.http_version = rng.choice([b"HTTP/1.1", b"HTTP/2.0"])
    req.data.headers.fields = ((b"Host", b"h.test"), (b"Accept", b"*/*"))
    req.data.content = rng.choice([b"", b"abc"])
    req.data.timestamp_end = rng.choice([None, 1234.5])
    ex = Exchange(tunnel=tunnel, body_limit=1 << 20, idle=rng.choice([5.0, 7.5]))  # type: ignore[arg-type]
    flow.metadata[seam_pool.POOLED] = ex

    async def late_decision() -> None:  # (a decision without a service once the head came)
        decision.service = service

    flow.metadata["late"] = late_decision
    return stage, flow


def _pool_exchange_run(monkeypatch: pytest.MonkeyPatch, seed: int, exchange: Any) -> list[Any]:
    rng = random.Random(seed)
    calls: list[Any] = []

    async def drop_closed(pool: Any) -> None:
        calls.append(("drop_closed",))

    monkeypatch.setattr(pool_stage, "drop_closed", drop_closed)
    _script_h1_responses(monkeypatch)
    out: list[Any] = []

    async def one(stage: Any, flow: Any) -> Any:
        if rng.random() < 0.3:  # (a Head left from a resend's first try)
            head_seen.set(Head(200, False))
        await flow.metadata.pop("late")()
        await exchange(stage, flow)
        return head_seen.get()

    async def go() -> None:
        for _ in range(25):
            calls.clear()
            stage, flow = _exchange_world(rng, calls)
            ex = flow.metadata[seam_pool.POOLED]
            seen = await asyncio.get_running_loop().create_task(one(stage, flow))
            resp = flow.response
            out.append((list(calls), ex.error, ex.closed, ex.body, ex.chunks is None,
                        ex.response is not None and ex.response.headers,
                        resp and (resp.status_code, resp.reason, resp.http_version,
                                  resp.headers.fields,
                                  resp.status_code != 101 and resp.timestamp_start,
                                  resp.data.content),
                        dict(stage._h2_seen), seen,
                        flow.metadata.get(UPSTREAM_HEAD) is getattr(ex.response, "head", 0)))

    asyncio.run(go())
    return out


@pytest.mark.parametrize("seed", range(60))
def test_pool_exchange_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same calls (body_now, chunks, closes), errors, responses, bodies and
    ``_h2_seen`` / ``head_seen`` as before ``exch9``, over seeded scripts."""
    got = _pool_exchange_run(monkeypatch, seed, pool_stage.Pool.vaultproxy_pool_exchange)
    want = _pool_exchange_run(monkeypatch, seed, _reference_pool_exchange)
    assert got == want


def test_the_pool_exchange_seeds_reach_every_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: set[Any] = set()
    for seed in range(60):
        for calls, error, _closed, body, _chunks, _r, flow_resp, _h2, _seen, _up in (
                _pool_exchange_run(monkeypatch, seed, pool_stage.Pool.vaultproxy_pool_exchange)):
            names = [c[0] for c in calls]
            kinds.add(("whole body", ("body_now", True) in calls))
            kinds.add(("prefetched", "next_chunk" in names and body is not None))
            kinds.add(("cut", "next_chunk" in names and error is not None))
            kinds.add(("large", flow_resp is not None and body is None and error is None))
            kinds.add(("error", error is not None))
            kinds.add(("answered", flow_resp is not None))
    assert all((k, v) in kinds for k, _ in kinds for v in (True, False)), sorted(kinds)


# -- parse_known ----------------------------------------------------------------------------

_CONNECTION = [b"keep-alive", b"keep-alive", b"Keep-Alive", b"close", b"CLOSE", b"cLoSe",
               b"keep-alive, close", b"close, keep-alive", b"keep-alive,close", b"upgrade",
               b"keep-alive-close", b"closed", b"x, Close ,y", b"keep-alive ", b" close"]


@pytest.mark.parametrize("seed", range(20))
def test_parse_known_reads_connection_values_as_parse_head(seed: int) -> None:
    """``parse_known``'s keep-alive shortcut and its pairs: the head ``parse_head`` reads
    (fields, ``keep_alive``, length, end) or none, over seeded Connection fields."""
    rng = random.Random(seed)
    took = 0
    for _ in range(40):
        names = [b"Server", b"Content-Length"] + [b"Connection"] * rng.randrange(1, 3)
        rng.shuffle(names)
        shape = h1pool._head_shape(tuple(names))
        assert shape is not None
        known = h1pool._Known(tuple(names), shape)
        for _ in range(10):
            values = [b"2" if name == b"Content-Length" else
                      rng.choice(_CONNECTION) if name == b"Connection" else b"nginx"
                      for name in names]
            data = b"HTTP/1.1 200 OK\r\n" + b"".join(
                n + b": " + v + b"\r\n" for n, v in zip(names, values, strict=True)
            ) + b"\r\nok"
            got, want = parse_known(data, b"GET", known), parse_head(data, b"GET")
            if got is None:
                continue
            took += 1
            assert want is not None
            assert (tuple(got.headers), got.keep_alive, got.length, got.end, got.status,
                    got.reason) == (tuple(want.headers), want.keep_alive, want.length,
                                    want.end, want.status, want.reason), data
    assert took > 200


def test_a_known_pattern_has_one_group_per_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``parse_known`` pairs names and groups unchecked: a pattern with another count of
    groups is never made."""
    names = (b"Server", b"Content-Length")
    shape = h1pool._head_shape(names)
    assert shape is not None
    known = h1pool._Known(names, shape)
    assert known.match.__self__.groups == known.ok.__self__.groups == 2  # type: ignore[attr-defined]
    monkeypatch.setattr(h1pool, "_KNOWN_VALUE", rb":[ \t]*+(([\x01-\x09\x0e-\xff]*+))")
    with pytest.raises(ValueError):
        h1pool._Known(names, shape)


# -- H1Pool._take_now ----------------------------------------------------------------------

def _reference_take_now(self: Any, where: Any) -> Any:
    """``H1Pool._take_now`` before ``exch9``."""
    stack = self._idle.get(where)
    now = h1pool.time.monotonic()
    while stack:
        conn = stack[-1]  # the most recent: the likeliest still open upstream
        transport = conn.transport
        if type(transport) is not h1pool._TLSSocket:
            return False
        stack.pop()
        if conn.reusable() and conn.expire_at > now:
            if not (transport._reading and transport._poll.poll(0)):
                return conn
            transport._read()
            if conn.reusable():
                return conn
        conn.close()
    return None


def _take_run(monkeypatch: pytest.MonkeyPatch, seed: int, take: Any) -> list[Any]:
    rng = random.Random(seed)
    log: list[Any] = []
    by_transport: dict[int, Any] = {}

    def read(transport: Any) -> None:
        conn = by_transport[id(transport)]
        log.append(("read", conn.tag))
        what = rng.choice(["nothing", "eof", "bytes", "closing"])
        if what == "eof":
            conn.eof = True
        elif what == "bytes":
            conn.inbox.append(b"x")
        elif what == "closing":
            transport._closing = True

    monkeypatch.setattr(h1pool._TLSSocket, "_read", read)
    monkeypatch.setattr(h1pool.time, "monotonic", lambda: 100.0)
    out: list[Any] = []
    for _ in range(30):
        pool = object.__new__(h1pool.H1Pool)
        where = ("10.0.0.1", 443, "h.test")
        stack: Any = h1pool.deque()
        for i in range(rng.randrange(5)):
            conn = object.__new__(h1pool._Conn)
            conn.tag = i  # type: ignore[attr-defined]
            conn.closed = rng.random() < 0.15
            conn.eof = rng.random() < 0.15
            conn.unasked = rng.random() < 0.15
            conn.inbox = [b"x"] if rng.random() < 0.15 else []
            conn.expire_at = rng.choice([50.0, 150.0, 150.0])
            if rng.random() < 0.1:
                conn.transport = SimpleNamespace(is_closing=lambda: False)
            else:
                transport = object.__new__(h1pool._TLSSocket)
                transport._closing = rng.random() < 0.15
                transport._reading = rng.random() < 0.8
                ready = rng.random() < 0.3
                transport._poll = SimpleNamespace(  # type: ignore[assignment]
                    poll=lambda timeout, ready=ready: [(3, 1)] if ready else [])
                conn.transport = transport
                by_transport[id(transport)] = conn

            def close(conn: Any = conn) -> None:
                log.append(("close", conn.tag))

            conn.close = close  # type: ignore[method-assign]
            stack.append(conn)
        pool._idle = {where: stack} if rng.random() < 0.9 else {}
        log.clear()
        got = take(pool, where)
        out.append((got if got is None or got is False else got.tag, list(log),
                    [c.tag for c in stack]))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_take_now_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """``_take_now`` with ``reusable()`` inline: the same connection (or None, or False for
    another transport), the same reads and closes, the same stack left."""
    got = _take_run(monkeypatch, seed, h1pool.H1Pool._take_now)
    want = _take_run(monkeypatch, seed, _reference_take_now)
    assert got == want
    assert {type(g[0]) for g in got} <= {int, bool, type(None)}


def test_the_take_seeds_reach_every_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = set()
    for seed in range(30):
        for got, log, _left in _take_run(monkeypatch, seed, h1pool.H1Pool._take_now):
            answers.add("conn" if type(got) is int else repr(got))
            answers.update(entry[0] for entry in log)
    assert answers == {"conn", "None", "False", "read", "close"}, answers


# -- Pool.response ------------------------------------------------------------------------

def test_pool_response_is_error_and_end() -> None:
    """One function for the ``response`` and ``error`` hooks (and ``_end``): no frame in
    between (tests/unit/test_speed_h1leg.py compares it with its reference)."""
    assert pool_stage.Pool.error is pool_stage.Pool.response is pool_stage.Pool._end


# -- H1Pool.release ------------------------------------------------------------------------

def _reference_release(self: Any, conn: Any) -> None:
    """``H1Pool.release`` before ``exch9`` (its stack by ``setdefault``)."""
    h = conn.h11
    if h is None:
        done = conn.keep and not conn.left and not conn.trailing
    else:
        done = (h.our_state is h1pool.h11.DONE and h.their_state is h1pool.h11.DONE
                and not h.trailing_data[0])
    if self.closed or not done or not conn.reusable():
        conn.close()
        return
    conn.h11 = None
    conn.busy = False
    conn.expire_at = h1pool.time.monotonic() + self._idle_for
    stack = self._idle.setdefault(conn.where, h1pool.deque())
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
    wheres = [("10.0.0.1", 443, "a"), ("10.0.0.2", 443, "a"), ("10.0.0.1", 443, "b")]
    for i in range(200):
        pool.closed = rng.random() < 0.05
        if rng.random() < 0.05:
            pool._idle.clear()  # (``drop_expired`` emptied it)
        conn = object.__new__(h1pool._Conn)
        conn.tag = i  # type: ignore[attr-defined]
        conn.where = rng.choice(wheres)
        conn.h11 = None
        conn.keep, conn.left, conn.trailing = rng.random() < 0.9, rng.choice([0, 0, 3]), False
        conn.closed = conn.eof = conn.unasked = False
        conn.inbox = []
        conn.transport = SimpleNamespace(is_closing=lambda: False)

        def close(conn: Any = conn) -> None:
            log.append(("close", conn.tag))

        conn.close = close  # type: ignore[method-assign]
        release(pool, conn)
        log.append(sorted((w, [c.tag for c in s]) for w, s in pool._idle.items()))
    return log


@pytest.mark.parametrize("seed", range(10))
def test_release_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same stacks (more than ``MAX_IDLE``: the oldest closed) and closes."""
    got = _release_run(monkeypatch, seed, h1pool.H1Pool.release)
    assert got == _release_run(monkeypatch, seed, _reference_release)
    assert any(entry[0] == "close" for entry in got if type(entry) is tuple)
