"""audit10: the Record stage counts a flow in ``ProxyState.inflight`` by a flag on its
record (``FlowRecord.inflight``) instead of a set of flow ids, and takes mitmproxy's
refusal mark (``refusals._marked``) only when some connection is marked. Both compared,
on seeded sequences of hooks, with the code they replace (kept here as the reference)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from tests.harness.proxy import ProxyHome, cheap_kdf_floor
from vaultproxy.audit.canonical import decision_record
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import InvalidRequest
from vaultproxy.files.home import Home
from vaultproxy.net.hostnames import normal_host
from vaultproxy.seam import refusals
from vaultproxy.stages import record as record_module
from vaultproxy.stages.ahead import METHOD_TEXT
from vaultproxy.stages.flowrecord import KEY, FlowRecord, record_of
from vaultproxy.stages.record import Record
from vaultproxy.stages.runtime import Runtime

SERVICES = ('[[service]]\nname = "hi"\nhosts = ["hi.test"]\nmode = "host_inject"\n'
            'auth = "bearer"\n')


def _old_record(
    rt: Runtime, flow: http.HTTPFlow, event: str, outcome: Any, reason: str | None,
    status: int | None = None, rec: FlowRecord | None = None, later: Any = None,
) -> None:
    """stages/record.py ``_record`` as it was (main 36b6d1b): the mark popped on every
    request."""
    if rec is None:
        rec = record_of(flow)
    if rec.outcome is not None:
        return
    st = rt.live.state
    if st is None:
        return
    if event == "request":
        refused = refusals._marked.pop(flow.client_conn.id, None)
        if refused is not None:
            outcome, reason, status = "denied", InvalidRequest.code, refused
    rec.outcome = outcome
    request, response = flow.request, flow.response
    decision = rec.decision
    if decision is None and event == "request":
        tunnel = rt.connections.tunnel(flow.client_conn.id)
        decision = tunnel.decision if tunnel is not None else None
    service = decision.service if decision is not None else None
    agent = decision.agent if decision is not None else None
    if decision is not None and decision.target is not None:
        host = decision.target[0]
    elif event == "tunnel_refused":
        host = request.host
        service = st.registry.lookup(normal_host(host), request.port)
    else:
        host = request.pretty_host
    if status is None and response is not None:
        status = response.data.status_code
    raw = request.data.method
    method = METHOD_TEXT.get(raw) if type(raw) is bytes else None
    decision_record(
        st.audit, event, agent,
        service.name if service is not None else None,
        service.mode if service is not None else None,
        request.method if method is None else method, host,
        rec.path if event != "tunnel_refused" else None, status, rec.t0, outcome, reason,
        None, later,
    )


class _OldInflight:
    """Record's in-flight count as it was: a set of flow ids (the reference)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._inflight: set[str] = set()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        st = self.rt.live.state
        rec = flow.metadata.get(KEY) or record_of(flow)
        decision = rec.decision
        if st is not None and decision is not None and decision.service is not None:
            st.inflight += 1
            self._inflight.add(flow.id)

    def finish(self, flow: http.HTTPFlow) -> None:
        if flow.id in self._inflight:
            self._inflight.discard(flow.id)
            st = self.rt.live.state
            if st is not None:
                st.inflight -= 1


def _state(tmp_path: Path, name: str) -> tuple[ProxyState, Runtime]:
    with cheap_kdf_floor():
        (tmp_path / name).mkdir()
        home = ProxyHome.create(tmp_path / name, SERVICES, {"hi": "vpcanary_" + "a1" * 16})
    st = ProxyState.load(Home(home.path))
    return st, Runtime(Live(st))


def _flow(st: ProxyState, shape: tuple[Any, ...]) -> http.HTTPFlow:
    with_service, agent, status, path, injected = shape
    flow = tflow.tflow(resp=True)
    flow.response = http.Response(b"HTTP/1.1", status, b"", http.Headers(), b"", None,
                                  timestamp_start=time.time(), timestamp_end=None)
    rec = record_of(flow)
    rec.decision = Decision(st.registry.services[0] if with_service else None, agent,
                            ("127.0.0.1", 9), target=("hi.test", 443))
    rec.path, rec.t0, rec.injected = path, time.monotonic(), injected
    return flow


def _fields(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        del record["ts"], record["duration_ms"]  # (the clocks of two runs)
        out.append(record)
    return out


def test_inflight_flag_counts_as_the_set_did(tmp_path: Path) -> None:
    """Seeded hook sequences (a flow's head seen 0-2 times, then any of response, error,
    websocket_end, in any order and number; flows with and without a service; the state
    gone for a while): ``inflight`` after every step is the reference's, and the request
    lines are the same. Twin: a flow that was never counted leaves it alone."""
    st, rt = _state(tmp_path, "new")
    stage = Record(rt)
    ref_st, ref_rt = _state(tmp_path, "ref")
    ref_stage = Record(ref_rt)
    ref = _OldInflight(ref_rt)
    rng = random.Random(1010)
    counted = uncounted = 0
    for _ in range(400):
        shape = (rng.random() < 0.8, rng.choice([None, "bot"]), rng.choice([200, 404, 502]),
                 rng.choice(["/a", "/b/c", "/\u00e9"]), rng.random() < 0.5)
        new_flow, ref_flow = _flow(st, shape), _flow(ref_st, shape)
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            stage.requestheaders(new_flow)
            ref.requestheaders(ref_flow)
            assert st.inflight == ref_st.inflight
        if new_flow.metadata[KEY].inflight:
            counted += 1
        else:
            uncounted += 1
        gone = rng.random() < 0.1
        if gone:  # no state while the ending hooks run (rt.current() is None)
            rt.live.state, ref_rt.live.state = None, None
        for hook in rng.sample(["response", "error", "websocket_end", "response"],
                               rng.randint(1, 4)):
            if hook == "response":
                ref.finish(ref_flow)  # (the old response's _finish inline, first)
                stage.response(new_flow)
                ref_stage.response(ref_flow)
            elif hook == "error":
                ref.finish(ref_flow)
                stage.error(new_flow)
                ref_stage.error(ref_flow)
            else:
                ref.finish(ref_flow)
                stage.websocket_end(new_flow)
                ref_stage.websocket_end(ref_flow)
            assert st.inflight == ref_st.inflight, hook
        if gone:
            rt.live.state, ref_rt.live.state = st, ref_st
    assert counted > 100 and uncounted > 50  # twin: both kinds of flow
    assert st.inflight == ref_st.inflight
    st.audit.close()
    ref_st.audit.close()
    assert _fields(st.audit.path) == _fields(ref_st.audit.path)
    assert len(_fields(st.audit.path)) > 200


def test_a_flow_without_a_record_is_not_given_one(tmp_path: Path) -> None:
    """``_finish`` (error, websocket_end) reads the record without making one, as the set
    did not need one."""
    st, rt = _state(tmp_path, "s")
    stage = Record(rt)
    flow = tflow.tflow(resp=True)
    flow.metadata.pop(KEY, None)
    stage.websocket_end(flow)
    assert KEY not in flow.metadata and st.inflight == 0


def test_the_refusal_mark_is_taken_as_before(tmp_path: Path) -> None:
    """Seeded marks (none, this connection's, others' only, both) before ``_record``: the
    line and the marks left are the reference's (``refusals._marked.pop`` on every
    request)."""
    st, rt = _state(tmp_path, "new")
    ref_st, ref_rt = _state(tmp_path, "ref")
    rng = random.Random(1011)
    saved = dict(refusals._marked)
    try:
        for n in range(300):
            shape = (True, rng.choice([None, "bot"]), rng.choice([200, 404]), f"/p{n}",
                     rng.random() < 0.5)
            new_flow, ref_flow = _flow(st, shape), _flow(ref_st, shape)
            ref_flow.client_conn = new_flow.client_conn  # (one connection, one id)
            marks: dict[str, int] = {}
            kind = rng.choice(["none", "this", "others", "both"])
            if kind in ("this", "both"):
                marks[new_flow.client_conn.id] = rng.choice([400, 431, 501])
            if kind in ("others", "both"):
                marks[f"other-{n}"] = 400
            event = rng.choice(["request", "request", "tunnel_refused"])
            refusals._marked.clear()
            refusals._marked.update(marks)
            _old_record(ref_rt, ref_flow, event, "injected", None)
            ref_left = dict(refusals._marked)
            refusals._marked.clear()
            refusals._marked.update(marks)
            record_module._record(rt, new_flow, event, "injected", None)
            assert refusals._marked == ref_left, (kind, event)
        st.audit.close()
        ref_st.audit.close()
        got, want = _fields(st.audit.path), _fields(ref_st.audit.path)
        assert got == want and len(got) == 300
        assert any(r["reason"] == InvalidRequest.code for r in got)  # twin: marked ones
        assert any(r["reason"] is None for r in got)
    finally:
        refusals._marked.clear()
        refusals._marked.update(saved)


# -- metrics.counted: the thread's last (service, outcome) objects give their row --------------


def _old_counted(
    m: Any, event: object, service: Any, outcome: Any, reason: object, duration_ms: Any,
) -> None:
    """audit/metrics.py ``counted`` as it was (main 36b6d1b), on module ``m``'s tables (its
    rows in ``m._LOCAL.old``): the label made and the row looked up on every count."""
    from bisect import bisect_left
    from threading import get_ident

    try:
        if event == "request":
            service = service or "-"
            label = outcome
            if type(service) is not str or type(label) is not str:
                hash((service, label))
                service, label = str(service), str(label)
            try:
                mine = m._LOCAL.old
            except AttributeError:
                mine = m._LOCAL.old = m._THREADS.setdefault(-get_ident(), ({}, {}))
            key = (service, label)
            row = mine[0].get(key)
            if row is None:
                m._SEEN_FLOWS.setdefault(key, time.time())
                row = mine[0][key] = [0.0, None]
            row[0] += 1.0
            if duration_ms is not None and outcome in ("injected", "forwarded"):
                hist = row[1]
                if hist is None:
                    hist = mine[1].get(service)
                    if hist is None:
                        m._SEEN_LATENCY.setdefault(service, time.time())
                        hist = mine[1][service] = [0.0] * (m._NBUCKETS + 1)
                    row[1] = hist
                amount = duration_ms / 1000.0
                hist[0] += amount
                i = bisect_left(m._BOUNDS, amount) if amount == amount else m._NBUCKETS
                if i < m._NBUCKETS:
                    hist[i + 1] += 1.0
    except Exception:  # noqa: BLE001, S110
        pass


class _Sub(str):
    pass


def _tables(m: Any, sign: int) -> tuple[dict[Any, float], dict[str, list[float]], list[Any]]:
    """The flows and histogram rows summed over the threads of one kind (ident's sign:
    the reference counts under -ident), and the series first seen."""
    flows: dict[Any, float] = {}
    hists: dict[str, list[float]] = {}
    for ident, (rows, hrows) in m._THREADS.items():
        if (ident < 0) != (sign < 0):
            continue
        for key, row in rows.items():
            flows[key] = flows.get(key, 0.0) + row[0]
        for service, h in hrows.items():
            have = hists.get(service)
            hists[service] = (list(h) if have is None
                              else [a + b for a, b in zip(have, h, strict=True)])
    return flows, hists, list(m._SEEN_FLOWS)


def test_counted_is_the_old_count(monkeypatch: Any) -> None:
    """Seeded counts (the same service and outcome objects again and again, runs of one,
    equal strings that are other objects, str subclasses, None and "" services, unhashable
    ones, other events, upstream codes, no duration), on two threads: the rows the new
    ``counted`` keeps are the reference's, value for value. Twin: the kept row is used
    (most counts hit it) and a different object of the same text gets the same row."""
    import threading

    from vaultproxy.audit import metrics as m

    monkeypatch.setattr(m, "_THREADS", {})
    monkeypatch.setattr(m, "_LOCAL", threading.local())
    monkeypatch.setattr(m, "_SEEN_FLOWS", {})
    monkeypatch.setattr(m, "_SEEN_LATENCY", {})

    class _Errors:
        def labels(self, *a: Any) -> Any:
            return self

        def inc(self) -> None:
            pass

    monkeypatch.setattr(m, "UPSTREAM_ERRORS", _Errors())
    hits = [0]

    services: list[Any] = ["hi", "hi", "gh", None, "", _Sub("hi"), "".join(["h", "i"]),
                           ["unhashable"], 7]
    outcomes: list[Any] = ["injected", "forwarded", "denied", "error", _Sub("injected"),
                           "".join(["inj", "ected"])]

    def run(seed: int) -> None:
        rng = random.Random(seed)
        service, outcome = "hi", "injected"
        for _ in range(3000):
            if rng.random() < 0.3:  # a run of the same objects, or new ones
                service, outcome = rng.choice(services), rng.choice(outcomes)
            event = "request" if rng.random() < 0.95 else rng.choice(["forward", "sync"])
            reason = rng.choice([None, None, None, "upstream_tls", "minted"])
            duration = rng.choice([None, 0.5, 4.9, 5.0, 12.0, 99.0, 2500.0, 40000.0,
                                   rng.random() * 50])
            row_before = getattr(m._LOCAL, "rows", None)
            if row_before is not None and row_before[2][0] is not None and (
                    row_before[2][0][0] is service and row_before[2][0][1] is outcome):
                hits[0] += 1
            m.counted(event, service, outcome, reason, duration)
            _old_counted(m, event, service, outcome, reason, duration)

    threads = [threading.Thread(target=run, args=(s,)) for s in (1012, 1013)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    new, old = _tables(m, 1), _tables(m, -1)
    assert new[0] == old[0] and new[0]
    assert new[1] == old[1] and new[1]
    assert hits[0] > 2000  # twin: the kept row counted most of them
    assert ("hi", "injected") in new[0] and ("-", "denied") in new[0]
