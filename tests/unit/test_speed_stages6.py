"""Session 14's stage shortcuts (``stages6``) answer exactly as the code they replace, on
seeded input; the code before each shortcut is kept here as the reference where it is gone.

* ``Deadline.request`` queues the flow itself (``_wait``, inline) against the hook that
  called ``_wait``: the same queues, entries, timers cleared and sweeper, on a fake clock;
* ``identify._in_tunnel`` given the fields' names the caller read (``seen``) decides as
  without them, and a ``seen`` of another tuple (the fields changed since) is not used;
* ``check_headers`` returns ``header_names(fields)`` (or raises as before), and
  ``canonical_names(fields, names)`` is ``canonical_names(fields)``;
* the lean layer's request method read as bytes (``_PLAIN_METHODS``: no decode, no
  ``upper``) against the decoded, upper-cased text it replaces (the same set emptied), in
  ``_take`` over seeded heads and in the job's ``HEAD`` test over seeded stage behaviours;
* Identify makes the flow's record itself: one record per flow, the one ``record_of`` gives.
Twins: each side of each comparison is reached."""

from __future__ import annotations

import asyncio
import linecache
import random
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import ctx, hooks, http, master, options
from mitmproxy.test import tflow

from tests.unit import test_lean_job as lean_job
from tests.unit import test_speed_lean as speed_lean
from tests.unit.test_refusal_marker import world  # noqa: F401 - the fixture
from tests.unit.test_speed_stagework import (
    _request,
    _view,
    state,  # noqa: F401 - the fixture
)
from vaultproxy.core import pipeline
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import InvalidRequest
from vaultproxy.inject.names import canonical_names, header_names
from vaultproxy.seam import dispatch, lean, speed
from vaultproxy.stages import Runtime
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.deadline import Deadline
from vaultproxy.stages.flowrecord import KEY, Refusal, record_of
from vaultproxy.stages.identify import Identify, _in_tunnel

# -- Deadline.request ----------------------------------------------------------------------


class _Reference(Deadline):
    """``Deadline.request`` as it was: its settings, then ``self._wait``."""

    def request(self, flow: http.HTTPFlow) -> None:  # type: ignore[override]
        cfg = self._settings()
        if cfg is None or record_of(flow).answered:
            return
        self._wait(flow, float(cfg.response_timeout), float(cfg.idle_timeout))


def _deadline_state(stage: Deadline) -> tuple[Any, ...]:
    return (
        [(s, q.seconds, [(k, w[0], w[1].id, w[2], w[3], w[4], w[5]) for k, w in q.flows.items()])
         for s, q in stage._queues.items()],
        sorted(stage._timers), stage._sweeper is not None, stage._sweep_at,
    )


def _settings_state(response: float, idle: float) -> Any:
    proxy = SimpleNamespace(connect_timeout=10, response_timeout=response, idle_timeout=idle,
                            max_body_mb=1)
    return SimpleNamespace(snapshot=SimpleNamespace(registry=SimpleNamespace(
        config=SimpleNamespace(proxy=proxy))))


def test_deadline_request_queues_as_wait_did() -> None:
    """3 000 seeded hook calls (requests, a flow again, answered ones, responses, timers of
    a later check, timeouts changed, no state) on the stage and the reference, on one fake
    clock: the same queues, timers and sweeper after each."""
    rt = Runtime(Live())
    ours, ref = Deadline(rt), _Reference(rt)
    rng = random.Random(61)
    seen = {"queued": 0, "answered": 0, "again": 0, "timer": 0, "idle first": 0}

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        ctx.master, ctx.options = m, m.options
        loop = asyncio.get_running_loop()
        clock = [1000.0]
        loop.time = lambda: clock[0]  # type: ignore[method-assign]
        flows: list[http.HTTPFlow] = []
        timings = [(30.0, 300.0), (300.0, 30.0), (5, 5), (0.5, 2.0)]
        rt.live.state = _settings_state(*timings[0])
        try:
            for _ in range(3000):
                clock[0] += rng.choice([0.0, 0.001, 0.5, 3.0])
                roll = rng.random()
                if roll < 0.05:
                    response, idle = rng.choice(timings)
                    rt.live.state = _settings_state(response, idle)
                    seen["idle first"] += idle < response
                elif roll < 0.07:
                    rt.live.state = None
                elif roll < 0.1 and rt.live.state is None:
                    rt.live.state = _settings_state(*rng.choice(timings))
                if roll < 0.15 and flows:
                    f = rng.choice(flows)
                    for stage in (ours, ref):
                        stage._arm(f.id, 100.0, lambda: None)
                    seen["timer"] += 1
                if roll < 0.6 or not flows:
                    if flows and rng.random() < 0.2:
                        f = rng.choice(flows)
                        seen["again"] += 1
                    else:
                        f = tflow.tflow()
                        flows.append(f)
                        if rng.random() < 0.1:
                            record_of(f).refuse(Refusal("denied", "no"))
                            seen["answered"] += 1
                        elif rng.random() < 0.3:
                            f.metadata.pop(KEY, None)  # no record yet: made on the way
                    ours.request(f)
                    ref.request(f)
                    seen["queued"] += any(f.id in q.flows for q in ours._queues.values())
                else:
                    f = flows.pop(rng.randrange(len(flows)))
                    ours.response(f)
                    ref.response(f)
                assert _deadline_state(ours) == _deadline_state(ref)
        finally:
            for stage in (ours, ref):
                for timer in stage._timers.values():
                    timer.cancel()
                if stage._sweeper is not None:
                    stage._sweeper.cancel()
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    assert min(seen.values()) > 20, seen


# -- Identify: the names read once ----------------------------------------------------------


def test_in_tunnel_with_the_callers_names_is_without_them(state: ProxyState) -> None:  # noqa: F811
    """The names the caller read are used only for the very fields tuple they came from: a
    stale pair (another request's fields, equal or not) decides as none at all."""
    rng = random.Random(62)
    used = stale = 0
    for _ in range(40):
        connect = Decision(None, None, ("svc.example.com", 443),
                           target=("svc.example.com", 443))
        plain, given = (Tunnel(connect, sni=s) for s in [rng.choice([None, "svc.example.com"])] * 2)
        for _ in range(rng.randint(1, 30)):
            req = _request(rng)
            fields = req.data.headers.fields
            if rng.random() < 0.7:
                seen = (fields, header_names(fields))
                used += 1
            else:  # another section's view: of an equal copy, or of another request's
                # fields (with the Host elsewhere), named in a tuple of its own
                other = tuple(list(fields)) if rng.random() < 0.3 else tuple(
                    [(b"x-pad", b"1")] + list(_request(rng).data.headers.fields))
                seen = (other, header_names(other))
                stale += 1
            want = _in_tunnel(state, plain, req)
            got = _in_tunnel(state, given, req, seen)
            assert _view(got) == _view(want), fields
            assert (plain.memo is None) == (given.memo is None)
    assert used > 200 and stale > 100, (used, stale)


def test_identify_makes_the_one_record(state: ProxyState) -> None:  # noqa: F811
    """Identify makes the record of a flow without one, keeps a record made before it (a
    refusal's), and that record is what ``record_of`` answers from then on."""
    rt = Runtime(Live(state))
    stage = Identify(rt)
    f = tflow.tflow()
    f.metadata.pop(KEY, None)
    stage.requestheaders(f)
    rec = f.metadata[KEY]
    assert record_of(f) is rec and rec.decision is not None
    g = tflow.tflow()
    earlier = record_of(g)
    earlier.refuse(Refusal("denied", "no"))
    stage.requestheaders(g)
    assert g.metadata[KEY] is earlier and earlier.decision is None  # answered: left alone


# -- check_headers' names, canonical_names given them ------------------------------------

NAMES = [b"Host", b"accept", b"X_Key", b"x-key", b"Range", b"bad name", b"b:c", b"\xc4\xb0",
         b"TE", b"if_range", b""]
VALUES = [b"v", b"", b"a\r\n b", b"x\x00", b"y" * 50]


def _outcome(fields: tuple[tuple[bytes, bytes], ...]) -> Any:
    try:
        return pipeline.check_headers(fields)
    except InvalidRequest as e:
        return ("raise", str(e))


def test_check_headers_returns_the_names() -> None:
    rng = random.Random(63)
    seen = {"passed": 0, "refused": 0, "underscore": 0}
    for _ in range(5000):
        fields = tuple((rng.choice(NAMES), rng.choice(VALUES) if rng.random() < 0.3 else b"v")
                       for _ in range(rng.randint(0, 8)))
        got = _outcome(fields)
        if isinstance(got, tuple) and got[:1] == ("raise",):
            seen["refused"] += 1
            continue
        seen["passed"] += 1
        assert got == header_names(fields)
        want = canonical_names(fields)
        again = tuple(list(fields))  # a new tuple: no memo of ``fields`` answers
        assert canonical_names(again, header_names(again)) == want
        seen["underscore"] += b"_" in b"".join(got)
    assert min(seen.values()) > 300, seen


# -- the lean layer: the method as bytes ----------------------------------------------------

METHODS = [b"GET", b"HEAD", b"head", b"Head", b"POST", b"DELETE", b"delete", b"OPTIONS",
           b"options", b"PUT", b"PATCH", b"get", b"G\xc3\xa9T", b"HE\xc3\x81D", b"\xff",
           b"TRACE", b"CONNECT", b"M" * 20, b"gEt"]


def _with_method(buf: bytes, method: bytes) -> bytes:
    line, sep, rest = buf.partition(b" ")
    return method + sep + rest if sep else buf


def test_take_reads_the_method_as_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 000 seeded heads with every method spelling, the fast path on and off (``fast_head``
    and mitmproxy's reader): ``_take`` answers the same with the bytes compared as with
    every method decoded and upper-cased."""
    rng = random.Random(64)
    heads = [_with_method(speed_lean._random_head(rng), rng.choice(METHODS)) for _ in range(3000)]
    got = [speed_lean._take_outcome(b, v) for b in heads for v in (True, False)]
    monkeypatch.setattr(lean, "_PLAIN_METHODS", frozenset())
    want = [speed_lean._take_outcome(b, v) for b in heads for v in (True, False)]
    refused = 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, heads[i // 2]
        refused += g[0] == "no content-length"
    assert refused > 200, refused


def _run_job(seed: int) -> tuple[Any, ...]:
    rng = random.Random(seed)
    flow = tflow.tflow()
    flow.live = True
    flow.request.data.method = rng.choice(METHODS)
    lean_ = lean_job._Lean(flow.client_conn, rng.random() < 0.8)
    job = lean._Job(flow, lean_)  # type: ignore[arg-type]
    addons = lean_job._Addons(seed, lean_)
    asyncio.run(job.run(addons))
    return lean_job._state(job, addons)


def test_the_jobs_head_test_reads_the_method_as_its_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """300 seeded jobs (stage behaviours of tests/unit/test_lean_job.py) with every method
    spelling: the same calls and outcome with the bytes compared as with the text."""
    got = [_run_job(seed) for seed in range(300)]
    monkeypatch.setattr(lean, "_PLAIN_METHODS", frozenset())
    want = [_run_job(seed) for seed in range(300)]
    assert got == want


def test_plain_methods_are_their_own_text() -> None:
    for raw in lean._PLAIN_METHODS:
        assert raw.decode("utf-8", "surrogateescape").upper() == raw.decode()
    assert {m.encode() for m in lean._NO_BODY_METHODS} == lean._NO_BODY_RAW



# -- the record handed on by the unrolled step ---------------------------------------------


def _chain_outcomes(the_world: Any, seed: int, n: int) -> list[Any]:
    """``n`` seeded flows through the production manager over the stages (a good request, a
    Host of another target, a folded field, a Proxy-Authorization, a routing header to drop,
    a record an earlier refusal made, a response echoing the secret, 401, 500 and no
    response) and what each left: request and response, the record, the tunnel's state."""
    from tests.unit.test_refusal_marker import HOST, _chain, _flow

    rt, _home, secret = the_world
    rng = random.Random(seed)
    out: list[Any] = []

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(*_chain(rt))
            for _ in range(n):
                f = _flow(rt, rng.choice([HOST] * 6 + ["evil.example.com"]))
                extra = rng.choice([(), (), ((b"x-folded", b"a\r\n b"),),
                                    ((b"Proxy-Authorization", b"Basic eDp5"),),
                                    ((b"X-Forwarded-Host", b"evil"),)])
                f.request.headers.fields += extra
                if rng.random() < 0.1:
                    record_of(f).refuse(Refusal("denied", "earlier"))
                    f.response = http.Response.make(403, b"no")
                for name in ("requestheaders", "request"):
                    await m.addons.handle_lifecycle(hooks.all_hooks[name](f))
                if f.response is None and rng.random() < 0.9:
                    f.response = http.Response.make(
                        rng.choice([200, 200, 401, 500]),
                        rng.choice([b"{}", b'{"echo": "' + secret.encode() + b'"}']),
                        {"content-type": "application/json"})
                for name in ("responseheaders", "response"):
                    await m.addons.handle_lifecycle(hooks.all_hooks[name](f))
                rec = f.metadata[KEY]
                resp = f.response
                out.append((
                    f.request.method, f.request.data.path, f.request.headers.fields,
                    resp and (resp.status_code, resp.headers.fields, resp.raw_content),
                    rec.decision is not None and _view(rec.decision),
                    rec.refusal and (rec.refusal.code, rec.refusal.message),
                    rec.served, rec.path, rec.hold_body, rec.minted, rec.retried,
                    rec.injected, rec.body, rec.redactor is not None, rec.plain_fields,
                    rec.outcome, rec.answered, f.error and f.error.msg,
                ))
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    return out


def test_the_handed_record_is_the_one_the_stages_read(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """300 seeded flows through the stages: the unrolled steps handing the record on leave
    every flow as the steps that hand nothing (``RECORD`` renamed: each stage reads the
    record itself, the code before)."""
    got = _chain_outcomes(world, 65, 300)
    monkeypatch.setattr(dispatch, "RECORD", "__vp_no_record__")
    want = _chain_outcomes(world, 65, 300)
    # (indices only: the flows carry the canary secret, which no failure report may show)
    differ = [i for i, (g, w) in enumerate(zip(got, want, strict=True))
              if _no_time(g) != _no_time(w)]
    assert not differ, differ[:10]
    outcomes = {g[15] for g in got}
    assert {"denied", "injected"} <= outcomes, outcomes


def _no_time(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """(the date header of the proxy's own answers is the only field that moves)"""
    resp = outcome[3]
    if resp:
        resp = (resp[0], tuple(f for f in resp[1] if f[0].lower() != b"date"), resp[2])
    return (*outcome[:3], resp, *outcome[4:])


def test_the_unrolled_steps_hand_the_record_on(world: Any) -> None:  # noqa: F811
    """The twin: the production steps do hand it on (their source reads ``_rk``), to the
    stages whose bodies are ``handed``, and those alone."""
    from tests.unit.test_refusal_marker import _chain

    rt, _home, _secret = world

    async def go() -> Any:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(*_chain(rt))
            await m.addons.handle_lifecycle(hooks.all_hooks["request"](tflow.tflow()))
            return m.addons.flow_steps["request"]
        finally:
            m._legacy_log_events.uninstall()

    step = asyncio.run(go())
    source = "".join(linecache.getlines(step.__code__.co_filename))
    assert "rec = arg.metadata.get(_rk)" in source
    assert step.__globals__["_rk"] == KEY
    handed_calls = source.count(", arg, rec)") // 2  # (the step, and its ``_of`` twin)
    assert handed_calls == sum(
        getattr(getattr(type(a), "request", None), "__vp_record__", None) == KEY
        for a in _chain(rt))
    assert handed_calls >= 4


# -- one-line accessors read inline ----------------------------------------------------------


def test_the_accessors_read_inline_are_what_they_read() -> None:
    """Pool, Deadline and Record read ``Connections.tunnels``, ``deadlines._timed_out`` and
    ``refusals._marked`` where they called ``tunnel()``, ``forget()`` and ``take()``: those
    are still exactly that read (seeded ids, present and not)."""
    from vaultproxy.seam import deadlines, refusals
    from vaultproxy.stages.connections import Connections

    rng = random.Random(66)
    conns = Connections()
    connect = Decision(None, None, ("a.test", 443), target=("a.test", 443))
    for _ in range(500):
        cid = rng.choice(["a", "b", "c", "d"])
        roll = rng.random()
        if roll < 0.3:
            conns.open(cid, Tunnel(connect))
        elif roll < 0.5:
            conns.close(cid)
        assert conns.tunnel(cid) is conns.tunnels.get(cid)
        if rng.random() < 0.5:
            deadlines._timed_out[cid] = "idle"
        deadlines.forget(cid)
        assert cid not in deadlines._timed_out
        status = rng.choice([None, 400, 431])
        if status is not None:
            refusals._marked[cid] = status
        assert refusals.take(cid) == status and cid not in refusals._marked


def test_a_refusal_mark_is_taken_once(world: Any) -> None:  # noqa: F811
    """The mark mitmproxy's HTTP/1 reader leaves (seam/refusals.py) makes the request it
    answered a denial and is taken with it: the connection's next request is not one."""
    from tests.unit.test_refusal_marker import HOST, _chain, _flow, fire
    from vaultproxy.seam import refusals

    rt, _home, _secret = world
    chain = _chain(rt)
    first = _flow(rt, HOST)
    refusals._marked[first.client_conn.id] = 400
    fire(chain, hooks.all_hooks["requestheaders"](first), hooks.all_hooks["request"](first))
    first.response = http.Response.make(400, b"bad")
    fire(chain, hooks.all_hooks["response"](first))
    assert first.metadata[KEY].outcome == "denied"
    assert first.client_conn.id not in refusals._marked
    second = tflow.tflow(client_conn=first.client_conn)
    second.request.scheme, second.request.host, second.request.port = "https", HOST, 443
    second.request.headers["host"] = HOST
    fire(chain, hooks.all_hooks["requestheaders"](second), hooks.all_hooks["request"](second))
    second.response = http.Response.make(200, b"{}")
    fire(chain, hooks.all_hooks["response"](second))
    assert second.metadata[KEY].outcome == "injected"
