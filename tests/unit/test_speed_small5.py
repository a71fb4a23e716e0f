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
(The record reads of the request and response gates: test_speed_flow4.py's
``test_the_inline_record_read_is_record_of``; the stages over the full chain:
test_refusal_marker.py and test_speed_flow4.py.)
"""

from __future__ import annotations

import asyncio
import inspect
import random
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from vaultproxy.config.models import Service
from vaultproxy.config.refs import is_ref
from vaultproxy.errors import LockedError, SecretMissing
from vaultproxy.loaded import session as session_mod
from vaultproxy.net import h1pool
from vaultproxy.seam import deadlines, defences
from vaultproxy.stages import deadline as deadline_mod
from vaultproxy.stages import pool as pool_stage
from vaultproxy.stages import ready as ready_mod
from vaultproxy.stages.flowrecord import KEY, FlowRecord, Refusal, record_of
from vaultproxy.stages.guard import deny, guarded

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
                         connections=SimpleNamespace(tunnel=lambda _id, t=tunnel: t))
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
