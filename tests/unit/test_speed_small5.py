"""Session 13 round 2 (``small5``): small per-request shortcuts answer exactly as the code
they replace, on seeded input; the code before each shortcut is kept here as the reference.

* ``Pool.requestheaders`` reads ``Request.method``'s text from ``METHOD_TEXT`` (the
  property's decode and upper-case for any other bytes) and the record as
  ``flow.metadata.get(KEY) or record_of(flow)``: the same Exchange, or none, over seeded
  methods (upper, lower, mixed, unknown, non-ASCII), bodies, records and settings.
* ``Ready.requestheaders`` reads ``defences._installed`` (what ``defences.installed()``
  returns): the same refusal over every combination of home, chain and seam patches.
* ``Deadline.request`` with ``_settings``'s first test inline: the same settings applied
  (``deadlines.connect_timeout``, ``tcp_timeout``), the same waits, over seeded sequences of
  policies, options objects, outside changes of the connect timeout and answered flows.
* ``Session.entry_for`` with ``secret_name`` and ``is_ref`` inline: the same entry, source
  look-up or error over seeded secrets and names (the property and the function are checked
  to still be what was inlined).
* ``H1Pool.exchange`` tells ``_Conn.send`` a connection ``_take_now`` just found
  ``reusable()`` (nothing runs in between): the same sends, refusals and closes as the send
  that asks again, over seeded idle stacks and dials.
* ``Pool.vaultproxy_pool_exchange`` with ``_send`` inline: the same calls, retries,
  WantsHTTP2 adoption, errors and responses as the two functions, over seeded scripts.
* Each hook that now reads ``flow.metadata.get(KEY) or record_of(flow)`` leaves
  ``record_of``'s record (and keeps the one there).
(The idiom itself: test_speed_flow4.py's
``test_the_inline_record_read_is_record_of``; the stages over the full chain:
test_refusal_marker.py and test_speed_flow4.py.)
"""

from __future__ import annotations

import asyncio
import inspect
import random
from types import SimpleNamespace
from typing import Any

import httpcore
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from vaultproxy.config.models import Service
from vaultproxy.config.refs import is_ref
from vaultproxy.errors import LockedError, NotReady, SecretMissing
from vaultproxy.loaded import session as session_mod
from vaultproxy.net import h1pool
from vaultproxy.net.h1pool import H1Response, WantsHTTP2
from vaultproxy.net.outbound import Head, head_seen, pool_error_text
from vaultproxy.seam import deadlines, defences, objects
from vaultproxy.seam import pool as seam_pool
from vaultproxy.stages import deadline as deadline_mod
from vaultproxy.stages import pool as pool_stage
from vaultproxy.stages import ready as ready_mod
from vaultproxy.stages.flowrecord import KEY, FlowRecord, Refusal, record_of
from vaultproxy.stages.guard import deny, guarded
from vaultproxy.stages.pool import _IDEMPOTENT, PREFETCH_BODY, Exchange, _bodiless, outgoing_fields

# -- Pool.requestheaders ----------------------------------------------------------------------


def _reference_pool_requestheaders(self: pool_stage.Pool, flow: http.HTTPFlow) -> None:
    """``Pool.requestheaders`` before ``small5`` (unwrapped)."""
    seam_pool = pool_stage.seam_pool
    rec = record_of(flow)
    decision = rec.decision
    if rec.answered or decision is None or decision.plan is None:
        return
    tunnel = self.rt.connections.tunnel(flow.client_conn.id)
    if tunnel is None or tunnel.decision.service is None or tunnel.pinned is None:
        return
    st = self.rt.live.state
    if st is None or not seam_pool._installed:
        return
    cfg = st.snapshot.registry.config.proxy
    req = flow.request
    method = req.method
    if (cfg.upstream_pool_idle <= 0 or method == "CONNECT"
            or not pool_stage._small_body(req, method)):
        return
    req.stream = False
    flow.metadata[seam_pool.POOLED] = pool_stage.Exchange(
        tunnel=tunnel, body_limit=cfg.max_body_mb * 1024 * 1024,  # type: ignore[arg-type]
        idle=float(cfg.idle_timeout))


_METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT",
            b"TRACE", b"get", b"Head", b"connect", b"PROPFIND", b"M-SEARCH", b"\xc3\xa9t\xc3\xa9",
            b"\xff", b""]


def _pool_case(rng: random.Random) -> tuple[Any, http.HTTPFlow]:
    service = None if rng.random() < 0.05 else SimpleNamespace(name="svc")
    tunnel = (None if rng.random() < 0.05 else SimpleNamespace(
        decision=SimpleNamespace(service=service),
        pinned=None if rng.random() < 0.05 else ("127.0.0.1", 443)))
    proxy = SimpleNamespace(upstream_pool_idle=rng.choice([0, 30, 30, 30]),
                            max_body_mb=rng.choice([1, 10]),
                            idle_timeout=rng.choice([1, 30, 300.5]))
    st = (None if rng.random() < 0.05 else SimpleNamespace(snapshot=SimpleNamespace(
        registry=SimpleNamespace(config=SimpleNamespace(proxy=proxy)))))
    rt = SimpleNamespace(live=SimpleNamespace(state=st),
                         connections=SimpleNamespace(
                             tunnel=lambda _id, t=tunnel: t,  # (the reference's call)
                             tunnels=SimpleNamespace(get=lambda _id, t=tunnel: t)))
    stage = pool_stage.Pool.__new__(pool_stage.Pool)
    stage.rt = rt  # type: ignore[assignment]
    flow = tflow.tflow()
    req = flow.request
    req.data.method = rng.choice(_METHODS)
    fields: list[tuple[bytes, bytes]] = [(b"Host", b"example.com")]
    for name, values in ((b"Content-Length", [b"0", b"12", b"x", b"2000000"]),
                         (b"Transfer-Encoding", [b"chunked"]), (b"Upgrade", [b"h2c"]),
                         (b"TE", [b"trailers", b"gzip"])):
        if rng.random() < 0.2:
            fields.append((rng.choice([name, name.lower()]), rng.choice(values)))
    req.data.headers.fields = tuple(fields)
    req.stream = rng.random() < 0.5
    choice = rng.random()
    if choice < 0.8:  # a record there (a stage made it), with a plan or not, answered or not
        rec = FlowRecord()
        rec.decision = SimpleNamespace(plan=None if rng.random() < 0.1 else object())  # type: ignore[assignment]
        if rng.random() < 0.1:
            rec.refuse(Refusal("x", "y"))
        flow.metadata[KEY] = rec
    return stage, flow


def _pool_state(flow: http.HTTPFlow) -> Any:
    ex = flow.metadata.get(pool_stage.seam_pool.POOLED)
    return (flow.request.stream, ex and list(vars(ex).items()),
            type(flow.metadata.get(KEY)).__name__)


def test_pool_requestheaders_is_its_reference() -> None:
    installed = pool_stage.seam_pool._installed
    try:
        pooled = 0
        for seed in range(1500):
            pool_stage.seam_pool._installed = random.Random(seed).random() > 0.05
            got_stage, got_flow = _pool_case(random.Random(seed))
            want_stage, want_flow = _pool_case(random.Random(seed))
            pool_stage.Pool.requestheaders.__wrapped__(got_stage, got_flow)  # type: ignore[attr-defined]
            _reference_pool_requestheaders(want_stage, want_flow)
            assert _pool_state(got_flow) == _pool_state(want_flow), seed
            pooled += pool_stage.seam_pool.POOLED in got_flow.metadata
        assert 100 < pooled < 1400  # the seeds reach both answers
    finally:
        pool_stage.seam_pool._installed = installed


# -- Ready.requestheaders -------------------------------------------------------------------


@guarded
def _reference_ready(self: ready_mod.Ready, flow: http.HTTPFlow) -> None:
    """``Ready.requestheaders`` before ``small5``."""
    rt = self.rt
    if rt.live.state is None or not rt.complete or not defences.installed():
        deny(flow, ready_mod.ChainIncomplete())


@pytest.mark.parametrize("state", [None, object()])
@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("installed", [False, True])
def test_ready_refuses_as_its_reference(monkeypatch: pytest.MonkeyPatch, state: Any,
                                        complete: bool, installed: bool) -> None:
    monkeypatch.setattr(defences, "_installed", installed)
    stage = ready_mod.Ready.__new__(ready_mod.Ready)
    stage.rt = SimpleNamespace(live=SimpleNamespace(state=state),  # type: ignore[assignment]
                               complete=complete)
    got, want = tflow.tflow(), tflow.tflow()
    stage.requestheaders(got)
    _reference_ready(stage, want)
    refused = [(r.refusal and r.refusal.code, f.response and f.response.status_code)
               for r, f in ((record_of(got), got), (record_of(want), want))]
    assert refused[0] == refused[1]
    assert (refused[0][0] is None) == (state is not None and complete and installed)


# -- Deadline.request ---------------------------------------------------------------------


def _reference_deadline_request(self: deadline_mod.Deadline, flow: http.HTTPFlow) -> None:
    """``Deadline.request`` before ``small5`` (unwrapped)."""
    cfg = self._settings()
    if cfg is None or (flow.metadata.get(KEY) or record_of(flow)).answered:
        return
    self._wait(flow, float(cfg.response_timeout), float(cfg.idle_timeout))


class _Options:
    def __init__(self, tcp_timeout: int) -> None:
        self.tcp_timeout = tcp_timeout
        self.updates = 0

    def update(self, **kw: Any) -> None:
        self.updates += 1
        self.tcp_timeout = kw["tcp_timeout"]


def _deadline_run(monkeypatch: pytest.MonkeyPatch, seed: int, request: Any) -> list[Any]:
    rng = random.Random(seed)
    cfgs = [SimpleNamespace(connect_timeout=rng.choice([1, 5, 10.5]),
                            response_timeout=rng.choice([5, 30, 60]),
                            idle_timeout=rng.choice([10, 30, 90])) for _ in range(3)]
    states = [None, *(SimpleNamespace(snapshot=SimpleNamespace(registry=SimpleNamespace(
        config=SimpleNamespace(proxy=c)))) for c in cfgs)]
    options = [_Options(rng.choice([0, 31, 600])) for _ in range(2)]
    fake_ctx = SimpleNamespace(options=options[0])
    monkeypatch.setattr(deadline_mod, "ctx", fake_ctx)
    monkeypatch.setattr(deadlines, "connect_timeout", 7.0)
    rt = SimpleNamespace(live=SimpleNamespace(state=states[1]))
    stage = deadline_mod.Deadline(rt)  # type: ignore[arg-type]
    seen: list[Any] = []

    async def go() -> None:
        for _ in range(40):
            roll = rng.random()
            if roll < 0.1:
                rt.live.state = rng.choice(states)
            elif roll < 0.15:
                fake_ctx.options = rng.choice(options)
            elif roll < 0.2:
                deadlines.connect_timeout = rng.choice([1.0, 5.0, 7.0])
            flow = tflow.tflow()
            if rng.random() < 0.2:
                record_of(flow).refuse(Refusal("x", "y"))
            request(stage, flow)
            applied = stage._applied
            seen.append((
                applied and (cfgs.index(applied[0]),  # type: ignore[arg-type]
                             options.index(applied[1]), applied[2]),  # type: ignore[arg-type]
                deadlines.connect_timeout,
                [(o.tcp_timeout, o.updates) for o in options],
                sorted((length, flow.id in q.flows) for length, q in stage._queues.items()),
            ))
            stage.response(flow)
        if stage._sweeper is not None:
            stage._sweeper.cancel()

    asyncio.run(go())
    return seen


@pytest.mark.parametrize("seed", range(40))
def test_deadline_request_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    got = _deadline_run(monkeypatch, seed,
                        deadline_mod.Deadline.request.__wrapped__)  # type: ignore[attr-defined]
    want = _deadline_run(monkeypatch, seed, _reference_deadline_request)
    assert got == want


def test_the_deadline_seeds_reach_every_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin of the comparison: the seeds wait on flows, skip answered ones and apply new
    settings (a new policy, options object or outside connect timeout), and ask with no home."""
    waited = skipped = applied = homeless = 0
    for seed in range(40):
        run = _deadline_run(monkeypatch, seed,
                            deadline_mod.Deadline.request.__wrapped__)  # type: ignore[attr-defined]
        for before, after in zip([None, *run], run, strict=False):
            waited += any(w for _, w in after[3])
            skipped += after[0] is not None and not any(w for _, w in after[3])
            applied += after[0] is not None and (before is None or before[0] != after[0])
            homeless += after[0] is None
    assert min(waited, skipped, applied, homeless) > 10, (waited, skipped, applied, homeless)


# -- Session.entry_for --------------------------------------------------------------------


def _reference_entry_for(self: session_mod.Session, service: Service) -> Any:
    """``Session.entry_for`` before ``small5``."""
    ks = self.keystore
    if ks is None:
        raise LockedError()
    name = service.secret_name
    if is_ref(name):
        return session_mod.cached_entry(ks, session_mod.ref_of(name), service.name)
    entry = ks.get_shared(name)
    if entry is None:
        raise SecretMissing(f"keystore has no entry for service {service.name}")
    return entry


class _Keystore:
    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.asked: list[str] = []

    def get_shared(self, name: str) -> Any:
        self.asked.append(name)
        return ("entry", name) if name in self.names else None


def test_the_inlined_pieces_are_what_they_were() -> None:
    """What ``entry_for`` now reads inline: ``Service.secret_name`` is ``secret or name``
    and ``is_ref`` is ``":" in secret`` (a change to either fails here first)."""
    assert "return self.secret or self.name" in inspect.getsource(Service.secret_name.fget)  # type: ignore[attr-defined]
    assert 'return ":" in secret' in inspect.getsource(is_ref)
    rng = random.Random(5)
    for _ in range(300):
        secret = rng.choice([None, "", "k", "a:b", "vault:x#y", ":", "x:"])
        name = rng.choice(["svc", "a-b", "n1"])
        s = Service.model_construct(name=name, secret=secret)
        assert s.secret_name == (s.secret or s.name)
        assert is_ref(s.secret_name) == (":" in s.secret_name)


def _entry_run(monkeypatch: pytest.MonkeyPatch, seed: int, entry_for: Any) -> list[Any]:
    rng = random.Random(seed)
    cached: list[Any] = []

    def fake_cached(ks: Any, ref: Any, name: str) -> Any:
        cached.append((str(ref), name))
        if rng.random() < 0.2:
            raise SecretMissing("source item missing")
        return ("cached", str(ref))

    monkeypatch.setattr(session_mod, "cached_entry", fake_cached)
    ks = _Keystore({"svc", "k", "other"})
    sess = SimpleNamespace(keystore=ks)
    out: list[Any] = []
    for _ in range(60):
        sess.keystore = None if rng.random() < 0.1 else ks  # type: ignore[assignment]
        secret = rng.choice([None, "", "k", "other", "missing", "vault:path/x#f",
                             "op:vault/item", "env:NAME"])
        s = Service.model_construct(name=rng.choice(["svc", "nope"]), secret=secret)
        try:
            out.append(("ok", entry_for(sess, s)))
        except (LockedError, SecretMissing) as e:
            out.append((type(e).__name__, str(e)))
        except Exception as e:  # noqa: BLE001 - a ref the parser refuses: the same error
            out.append((type(e).__name__, str(e)))
    out.append((list(ks.asked), cached))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_entry_for_is_its_reference(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    got = _entry_run(monkeypatch, seed, session_mod.Session.entry_for)
    want = _entry_run(monkeypatch, seed, _reference_entry_for)
    assert got == want
    kinds = {o[0] for o in got[:-1]}
    assert {"ok", "LockedError", "SecretMissing"} <= kinds, kinds


# -- the record read of every hook that now reads it inline ------------------------------------


def _site_hooks() -> list[Any]:
    from vaultproxy.stages.request_gate import RequestGate
    from vaultproxy.stages.response_gate import ResponseGate

    return [RequestGate.requestheaders, RequestGate.request, ResponseGate.responseheaders,
            ResponseGate.response, pool_stage.Pool.requestheaders]


@pytest.mark.parametrize("hook", _site_hooks(), ids=lambda h: h.__qualname__)
def test_each_inline_record_read_is_record_of(hook: Any) -> None:
    """Each hook that reads ``flow.metadata.get(KEY) or record_of(flow)`` uses the record
    there (the same object, kept), and on a flow without one leaves the one ``record_of``
    made in ``flow.metadata`` (as ``record_of(flow)`` did), whatever the hook does next."""
    rt = SimpleNamespace(live=SimpleNamespace(state=None), complete=True,
                         connections=SimpleNamespace(tunnel=lambda _id: None,
                                                     tunnels={}))
    stage = object.__new__(getattr(inspect.getmodule(hook), hook.__qualname__.split(".")[0]))
    stage.rt = rt
    for had in (False, True):
        flow = tflow.tflow(resp=True)
        mine = record_of(flow) if had else None
        try:
            hook.__wrapped__(stage, flow)
        except Exception:  # noqa: BLE001, S110 - what the hook does after its read is not asked
            pass
        rec = flow.metadata.get(KEY)
        assert type(rec) is FlowRecord
        assert not had or rec is mine


# -- H1Pool.exchange: send does not ask reusable() again of a connection _take_now found ------

_WHERE = ("127.0.0.1", 443, "hi.test")
_SEND = h1pool._Conn.send  # (the send as it is: the tests below patch the class's)


def _reference_send(self: Any, method: bytes, target: bytes,
                    headers: list[tuple[bytes, bytes]], body: bytes,
                    checked: bool = False) -> None:
    """``_Conn.send`` before ``small5``: ``reusable()`` asked every time (``checked``
    ignored); the rest is the send as it is."""
    if not self.busy and not self.reusable():
        import httpcore

        raise httpcore.WriteError("the upstream closed the connection")
    _SEND(self, method, target, headers, body, True)


class _Stop(Exception):
    pass


class _Plain:
    """A transport that is not ``_TLSSocket`` (``_take_now`` hands over to ``_take``)."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


class _Poll:
    def __init__(self, ready: bool) -> None:
        self.ready = ready

    def poll(self, _timeout: int) -> list[tuple[int, int]]:
        return [(3, 1)] if self.ready else []


def _exchange_run(monkeypatch: pytest.MonkeyPatch, seed: int, send: Any) -> list[Any]:
    from vaultproxy.net.h1pool import H1Pool, _Conn, _TLSSocket

    rng = random.Random(seed)
    written: dict[int, list[bytes]] = {}
    read_effects: dict[int, str] = {}

    def tls_write(self: Any, data: bytes) -> None:
        written.setdefault(id(self), []).append(data)

    def tls_close(self: Any) -> None:
        self._closing = True

    def tls_read(self: Any) -> None:  # what a read may leave: the end, bytes, or nothing
        effect = read_effects.get(id(self), "")
        conn = conns_by_transport[id(self)]
        if effect == "eof":
            conn.eof = True
        elif effect == "bytes":
            conn.unasked = True
        elif effect == "closing":
            self._closing = True

    monkeypatch.setattr(_TLSSocket, "write", tls_write)
    monkeypatch.setattr(_TLSSocket, "close", tls_close)
    monkeypatch.setattr(_TLSSocket, "_read", tls_read)
    monkeypatch.setattr(h1pool, "readable", lambda _sock: rng.random() < 0.3)
    monkeypatch.setattr(_Conn, "send", send)

    async def read_head(self: Any, timeout: float) -> None:
        raise _Stop()

    monkeypatch.setattr(_Conn, "read_head", read_head)
    conns_by_transport: dict[int, Any] = {}

    def make_conn() -> Any:
        conn = _Conn(_WHERE)
        conn.closed, conn.eof, conn.unasked = (rng.random() < 0.1 for _ in range(3))
        conn.inbox = [b"x"] if rng.random() < 0.1 else []
        conn.busy = rng.random() < 0.05
        conn.expire_at = time_now() + rng.choice([-1.0, 30.0, 30.0, 30.0])
        if rng.random() < 0.8:
            t = _TLSSocket.__new__(_TLSSocket)
            t._closing = rng.random() < 0.1
            t._reading = rng.random() < 0.5
            t._poll = _Poll(rng.random() < 0.4)
            read_effects[id(t)] = rng.choice(["", "", "eof", "bytes", "closing"])
            conn.transport = t
        else:
            conn.transport = _Plain(rng.random() < 0.1)
        conns_by_transport[id(conn.transport)] = conn
        return conn

    import time

    time_now = time.monotonic
    out: list[Any] = []

    async def go() -> None:
        pool = H1Pool(_CONTEXT_NONE, 30.0)
        everyone: list[Any] = []

        async def dial(where: Any, timeout: float) -> Any:
            conn = make_conn()
            everyone.append(conn)
            return conn

        pool._dial = dial  # type: ignore[method-assign]
        for _ in range(30):
            stack = [make_conn() for _ in range(rng.randint(0, 3))]
            everyone.extend(stack)
            from collections import deque

            pool._idle[_WHERE] = deque(stack)
            try:
                await pool.exchange(*_WHERE, b"GET", b"/", [(b"Host", b"hi.test")], b"",
                                    5.0, 5.0)
                result = "returned"
            except _Stop:
                result = "sent"
            except Exception as e:  # noqa: BLE001 - the same refusal, compared
                result = type(e).__name__
            out.append((result, [(c.closed, c.busy, written.get(id(c.transport))
                                  or getattr(c.transport, "written", None))
                                 for c in everyone],
                        len(pool._idle.get(_WHERE, ()))))
            for c in everyone:
                c.busy = False

    asyncio.run(go())
    return out


_CONTEXT_NONE: Any = None


@pytest.mark.parametrize("seed", range(30))
def test_exchange_sends_as_when_send_asked_again(monkeypatch: pytest.MonkeyPatch,
                                                 seed: int) -> None:
    """``H1Pool.exchange`` passes ``checked`` for a connection ``_take_now`` returned (its
    ``reusable()`` true, nothing run since): the same sends, refusals, closes and idle
    stacks as with the send that asks ``reusable()`` every time, over seeded idle stacks
    (closed, at their end, with unasked bytes, closing, expired, busy, readable at once,
    another transport) and dials (one closed at once is refused as before)."""
    from vaultproxy.net.h1pool import _Conn

    got = _exchange_run(monkeypatch, seed, _Conn.send)
    monkeypatch.undo()
    want = _exchange_run(monkeypatch, seed, _reference_send)
    assert got == want


def test_the_exchange_seeds_reach_every_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultproxy.net.h1pool import _Conn

    results: set[str] = set()
    for seed in range(30):
        results.update(r[0] for r in _exchange_run(monkeypatch, seed, _Conn.send))
        monkeypatch.undo()
    assert {"sent", "WriteError", "LocalProtocolError"} <= results, results


# -- Pool.vaultproxy_pool_exchange with _send inline -----------------------------------------

async def _reference_pool_exchange(self: Any, flow: http.HTTPFlow) -> None:
    """``Pool.vaultproxy_pool_exchange`` before ``small5`` (its ``_send`` below)."""
    ex: Exchange = flow.metadata[seam_pool.POOLED]
    head_seen.set(None)
    try:
        ex.response = resp = await _reference_pool_send(self, flow, ex)
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

async def _reference_pool_send(self: Any, flow: http.HTTPFlow, ex: Exchange,
                               ) -> httpcore.Response | H1Response:
    """``Pool._send`` before ``small5`` (``drop_closed`` read from the module: patched)."""
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
                return await h1.exchange(*args)
            except (httpcore.RemoteProtocolError, httpcore.ReadError,
                    httpcore.WriteError):
                # A kept-alive connection the upstream closed while idle (its FIN in
                # flight as we sent): once more, on another, if idempotent and no
                # response byte came.
                if req.method not in _IDEMPOTENT or head_seen.get() is not None:
                    raise
                return await h1.exchange(*args)
        except WantsHTTP2 as wants:  # its requests go through httpcore's pool from now on
            self._h2_seen[known] = True
            await self._adopt(up, wants, httpcore.URL(
                scheme=b"https", host=str(ip).encode(), port=int(port), target=b"/"))
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
    await pool_stage.drop_closed(pool)  # an HTTP/2 connection the upstream closed while idle
    try:
        return await pool.handle_async_request(outgoing)
    except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError) as e:
        # A kept-alive connection the upstream closed while idle (an HTTP/1 FIN in flight
        # as we sent; an HTTP/2 GOAWAY httpcore reads only now): that connection is gone.
        # Once more, on another: an idempotent request that got no response byte, or any
        # request the upstream's GOAWAY says it never processed.
        goaway = "ConnectionTerminated" in str(e)
        if not goaway and (req.method not in _IDEMPOTENT or head_seen.get() is not None):
            raise
        return await pool.handle_async_request(outgoing)



_H1_OUTCOMES = ["ok", "ok", "ok", "remote", "read", "write", "h2", "other", "head101",
                "headseen", "folded"]
_CORE_OUTCOMES = ["ok", "ok", "remote", "goaway", "read", "write", "other"]


def _exchange_world(rng: random.Random, calls: list[Any]) -> tuple[Any, Any]:
    """A Pool stage (no ``__init__``) whose HTTP/1.1 client and httpcore pool answer from
    seeded scripts, and a flow with its Exchange."""
    n = [0]

    def tagged(kind: str, version: bytes) -> httpcore.Response:
        n[0] += 1
        return httpcore.Response(200, headers=[(b"x-tag", f"{kind}{n[0]}".encode())],
                                 extensions={"http_version": version})

    async def h1_exchange(*args: Any) -> Any:
        calls.append(("h1", args))
        outcome = rng.choice(_H1_OUTCOMES)
        if outcome == "ok":
            return tagged("h1-", b"HTTP/1.1")
        if outcome in ("head101", "headseen", "folded"):
            head_seen.set(Head(101 if outcome == "head101" else 200, outcome == "folded"))
            if outcome == "folded":
                return tagged("h1f-", b"HTTP/1.1")
            raise httpcore.RemoteProtocolError("cut after the head")
        if outcome == "h2":
            raise WantsHTTP2(SimpleNamespace())  # type: ignore[arg-type]
        raise {"remote": httpcore.RemoteProtocolError, "read": httpcore.ReadError,
               "write": httpcore.WriteError, "other": ValueError}[outcome](outcome)

    async def core_request(request: httpcore.Request) -> Any:
        calls.append(("core", request.method, bytes(request.url), request.headers,
                      request.extensions))
        outcome = rng.choice(_CORE_OUTCOMES)
        if outcome == "ok":
            return tagged("h2-", b"HTTP/2")
        if outcome == "goaway":
            raise httpcore.RemoteProtocolError("<ConnectionTerminated error_code:0>")
        raise {"remote": httpcore.RemoteProtocolError, "read": httpcore.ReadError,
               "write": httpcore.WriteError, "other": ValueError}[outcome](outcome)

    up = SimpleNamespace(h1=SimpleNamespace(exchange=h1_exchange),
                         core=SimpleNamespace(handle_async_request=core_request))
    proxy = SimpleNamespace(connect_timeout=rng.choice([1, 5]),
                            response_timeout=rng.choice([10, 30.5]))
    st = (None if rng.random() < 0.05 else SimpleNamespace(snapshot=SimpleNamespace(
        registry=SimpleNamespace(config=SimpleNamespace(proxy=proxy)))))
    stage = object.__new__(pool_stage.Pool)
    stage.rt = SimpleNamespace(live=SimpleNamespace(state=st))  # type: ignore[assignment]
    # (``Pool.__init__``'s memos: ``_make`` keeps what ``_pool_for`` left, pool10)
    stage._made, stage._http2_of = None, (object(), False)
    stage._h2_seen = rng.choice([{}, {("svc", "h.test"): False}, {("svc", "h.test"): True}])

    def pool_for(st: Any, service: Any, host: str) -> Any:
        calls.append(("pool_for", service.name, host))
        return up

    async def adopt(up_: Any, wants: Any, url: Any) -> str | None:
        calls.append(("adopt", bytes(url)))
        return rng.choice(["h2", None])

    stage._pool_for = pool_for  # type: ignore[method-assign]
    stage._adopt = adopt  # type: ignore[method-assign]
    tunnel = SimpleNamespace(pool_made=None, pinned=("10.0.0.1", rng.choice([443, 8443])),
                             host="h.test", port=443, decision=SimpleNamespace(
                                 service=SimpleNamespace(name="svc"), target=("h.test", 443)))
    flow = tflow.tflow()
    req = flow.request
    req.data.method = rng.choice([b"GET", b"POST", b"PUT", b"HEAD", b"PATCH"])
    fields = [(b"Accept", b"*/*")]
    if rng.random() < 0.7:
        fields.insert(0, (b"Host", b"h.test"))
    if rng.random() < 0.2:
        fields.append((b"Connection", b"keep-alive"))
    req.data.headers.fields = tuple(fields)
    req.data.content = rng.choice([b"", b"", b"abc"])
    ex = Exchange(tunnel=tunnel, body_limit=1 << 20, idle=5.0)  # type: ignore[arg-type]
    flow.metadata[seam_pool.POOLED] = ex
    return stage, flow


def _pool_exchange_run(monkeypatch: pytest.MonkeyPatch, seed: int, exchange: Any) -> list[Any]:
    rng = random.Random(seed)
    calls: list[Any] = []

    async def drop_closed(pool: Any) -> None:
        calls.append(("drop_closed",))

    monkeypatch.setattr(pool_stage, "drop_closed", drop_closed)
    out: list[Any] = []

    async def go() -> None:
        for _ in range(25):
            calls.clear()
            stage, flow = _exchange_world(rng, calls)
            ex = flow.metadata[seam_pool.POOLED]
            await exchange(stage, flow)
            resp = flow.response
            out.append((list(calls), ex.error, ex.closed, ex.body,
                        ex.response is not None and ex.response.headers,
                        resp and (resp.status_code, resp.http_version, resp.headers.fields),
                        dict(stage._h2_seen)))

    asyncio.run(go())
    return out


@pytest.mark.parametrize("seed", range(40))
def test_pool_exchange_is_exchange_through_send(monkeypatch: pytest.MonkeyPatch,
                                                seed: int) -> None:
    """``vaultproxy_pool_exchange`` with ``_send`` inline: the same calls (HTTP/1.1 client,
    retries, WantsHTTP2's adoption, httpcore's pool and its retries), errors, responses and
    what the upstreams told (``_h2_seen``), over seeded scripts of answers and failures."""
    got = _pool_exchange_run(monkeypatch, seed, pool_stage.Pool.vaultproxy_pool_exchange)
    want = _pool_exchange_run(monkeypatch, seed, _reference_pool_exchange)
    assert got == want


def test_the_pool_exchange_seeds_reach_every_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: set[Any] = set()
    for seed in range(40):
        for calls, error, _closed, _body, _resp, flow_resp, _seen in _pool_exchange_run(
                monkeypatch, seed, pool_stage.Pool.vaultproxy_pool_exchange):
            names = [c[0] for c in calls]
            kinds.add(("retried h1", names.count("h1") == 2))
            kinds.add(("adopted", "adopt" in names))
            kinds.add(("retried core", names.count("core") == 2))
            kinds.add(("error", error is not None))
            kinds.add(("101", flow_resp is not None and flow_resp[0] == 101))
            kinds.add(("answered", flow_resp is not None and flow_resp[0] == 200))
    assert all((k, v) in kinds for k, _ in kinds for v in (True, False)), sorted(kinds)
