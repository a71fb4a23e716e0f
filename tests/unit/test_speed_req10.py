"""Session 17's request-stage shortcuts (``req10``) answer exactly as the code they replace,
on seeded input; that code is kept here as the reference.

* Identify answers a request in a tunnel from the tunnel's memo itself (``_in_tunnel``'s
  first test, inline) only for an HTTP/1 request with one Host field, its fields still the
  ones it read, in a tunnel whose CONNECT carried no agent: compared with a fresh
  ``decide()`` over seeded requests, reloads, agent rotations, removals and expiries, with a
  Proxy-Authorization field now and then (popped: the fields change);
* RequestGate's ``requestheaders`` is ``_shape`` then ``access.request_headers`` in one body
  (returning None without the call for an intercepted request with no honeytoken and no
  rules), the last target's text kept (``_last_path``) and the dialed address taken as it is
  when it is a (str, int) pair; ``check_request`` reads the names and canonical names memos
  inline: compared with the two functions as they were (and ``check_request`` as it was)
  over seeded requests, decisions, honeytokens and rules.

Twins: each side of each comparison is reached (the memo answers, and is refused for an
agent, a reload, a changed Host, scheme or SNI; the gate's call is skipped and made)."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from tests.canary import make_canary
from tests.unit.test_speed_stages import SERVICES_A, SERVICES_B, _fresh, _view
from vaultproxy.access import agents as agents_mod
from vaultproxy.core import pipeline
from vaultproxy.core.decide import Decision, Facts, Plan, decide
from vaultproxy.core.pipeline import canonical_name, canonical_names, check_headers
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.errors import HostMismatch, InvalidRequest, NotReady, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.inject import names as names_mod
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.net.hostnames import normal_host, same_target
from vaultproxy.secret import Secret
from vaultproxy.stages import Runtime, access, identify, request_gate
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import KEY, FlowRecord, Refusal, record_of
from vaultproxy.stages.identify import Identify
from vaultproxy.stages.request_gate import RequestGate

from tests.harness.proxy import cheap_kdf_floor  # isort: skip


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyState]:
    home = Home(tmp_path_factory.mktemp("speed-req10") / "home")
    home.create()
    home.services.write_text(SERVICES_A)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    for name in ("svc", "other", "wild", "ruled"):
        ks.set_value(name, Secret(make_canary()))
    with cheap_kdf_floor():
        ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield st


# -- Identify: the tunnel's memo, inline ---------------------------------------------------

HOSTS = [b"svc.example.com", b"SVC.example.com.", b"svc.example.com:443", b"evil.test",
         b"other.example.com:8443", b"x.example.com:8443"]


def _tunnel_request(rng: random.Random, host: str) -> http.Request:
    req = http.Request.make("GET", f"https://{host}/x")
    fields = [(k, v) for k, v in req.headers.fields if k.lower() != b"host"]
    for _ in range(rng.choice([1] * 14 + [0, 2])):
        fields.insert(rng.randint(0, len(fields)),
                      (rng.choice([b"Host", b"host"]),
                       HOSTS[0] if rng.random() < 0.92 else rng.choice(HOSTS)))
    if rng.random() < 0.05:
        fields.append((b"Proxy-Authorization", b"Basic eDp5"))
    req.headers.fields = tuple(fields)
    req.scheme = "https" if rng.random() < 0.95 else "http"
    if rng.random() < 0.05:
        req.http_version = "HTTP/2.0"
    return req


def test_identify_answers_from_the_memo_as_decide(state: ProxyState,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    st = state
    rt = Runtime(Live(st))
    stage = Identify(rt)
    calls = [0]
    real = identify._in_tunnel

    def counted(*args: Any) -> Decision:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(identify, "_in_tunnel", counted)
    rng = random.Random(1017)
    now = time.time()
    tokens = {n: agents_mod.new_token() for n in ("bot", "eve")}
    records = {
        "bot": agents_mod.make_record("bot", tokens["bot"], ["svc", "other", "wild"], now, None),
        "eve": agents_mod.make_record("eve", tokens["eve"], ["svc"], now, 3600.0),
    }
    table = dict(records)
    st.session.agents = table
    targets = [("svc.example.com", 443), ("other.example.com", 8443), ("x.example.com", 8443)]
    inline = agent_calls = refused = reloads = 0
    try:
        for _ in range(120):
            host, port = rng.choice(targets) if rng.random() < 0.3 else targets[0]
            agent = rng.choice([None, None, "bot", "eve"])
            digest = records[agent].digest if agent else None
            tunnel = Tunnel(Decision(None, agent, (host, port), agent_digest=digest,
                                     target=(host, port)),
                            sni=rng.choice([None, host, host, host, "evil.test"]))
            table.clear()  # (no agents at all: a tunnel without one is served)
            if agent is not None or rng.random() < 0.3:
                table.update(records)
            f = tflow.tflow()
            rt.connections.tunnels[f.client_conn.id] = tunnel
            try:
                for _ in range(rng.randint(1, 30)):
                    roll = rng.random()
                    if roll < 0.02:
                        st.reload_text(rng.choice([SERVICES_A, SERVICES_B]))
                        reloads += 1
                    elif roll < 0.07 and agent:
                        table[agent] = agents_mod.rotated(records[agent],
                                                          agents_mod.new_token(), now)
                    elif roll < 0.09 and agent:
                        table.pop(agent, None)
                    elif roll < 0.11 and agent:
                        table[agent] = dataclasses.replace(records[agent], expires=now - 1)
                    elif roll < 0.13:
                        table.clear()
                        table.update(records)
                    elif roll < 0.23:
                        tunnel.sni = rng.choice([None, host, "evil.test"])
                    flow = tflow.tflow()
                    flow.client_conn = f.client_conn
                    flow.request = _tunnel_request(rng, host)
                    flow.metadata.pop(KEY, None)
                    want = _fresh(st, tunnel, flow.request)  # (Proxy-Authorization: no matter)
                    before = calls[0]
                    stage.requestheaders(flow)
                    rec = flow.metadata[KEY]
                    assert rec.decision is not None
                    assert _view(rec.decision) == _view(want), (flow.request.headers.fields,)
                    if want.refusal is not None:
                        refused += 1
                        assert rec.answered
                    if calls[0] == before:
                        inline += 1
                        assert agent is None  # an agent's token is checked on every request
                    elif agent is not None:
                        agent_calls += 1
            finally:
                rt.connections.tunnels.pop(f.client_conn.id, None)
    finally:
        st.reload_text(SERVICES_A)
        st.session.agents = dict(records)
    assert inline > 200 and agent_calls > 300 and refused > 100 and reloads > 10, (
        inline, agent_calls, refused, reloads)


# -- RequestGate: _shape and access.request_headers in one body ----------------------------

RULED = """
[[service]]
name = "ruled"
hosts = ["ruled.example.com"]
mode = "host_inject"
auth = "bearer"
rules = [{ method = "GET", path = "/deny*", action = "deny" }]
default_action = "allow"
"""
DECOY = """
[[honeytoken]]
name = "decoy"
env = "DECOY_KEY"
"""
TEXTS = [SERVICES_A + RULED, SERVICES_A + RULED + DECOY, SERVICES_B + RULED]
PATHS = [b"/x", b"/x", b"/x?q=1", b"/a%2Fb?x", b"//evil", b"*", b"/\xc3\xa9?x", b"x",
         b"/deny/1", b"/__vault.decoy__", b"/y?__vault.decoy__", b"/x?a?b"]
FIELD_NAMES = [b"Host", b"Accept", b"Range", b"X_Forwarded_Host", b"x-forwarded-host",
               b"Content-Length", b"Accept-Encoding", b"bad name"]
FIELD_VALUES = [b"v", b"svc.example.com", b"0", b"7", b"a\r\n b", b"gzip"]


def _check_target_reference(req: http.Request, host: str, port: int,
                            dialed: tuple[str, int] | None) -> None:
    """``check_target`` before req10: the request's (host, port) pair compared whole."""
    data = req.data
    if (
        data.scheme != b"https"
        or ((data.host, data.port) != dialed and (normal_host(data.host), data.port)
            != (host, port))
        or (data.authority and not same_target(req.authority, host, port))
    ):
        raise HostMismatch("the request target names another host than the tunnel target")
    if data.http_version.startswith(b"HTTP/1"):
        data.authority = b""
    path = req.data.path
    if path == b"*" and req.method == "OPTIONS":
        return
    if not path.startswith(b"/") or path.startswith(b"//"):
        raise InvalidRequest("the request target must be an origin-form path (/...)")


def _check_request_reference(req: http.Request, plan: Plan, target: tuple[str, int],
                             dialed: tuple[str, int] | None = None) -> None:
    """``check_request`` before req10: ``check_headers`` and ``canonical_names`` called."""
    _check_target_reference(req, target[0], target[1], dialed)
    headers = req.data.headers
    fields = headers.fields
    names = check_headers(fields)
    drop = plan.drop
    if not drop.isdisjoint(canonical_names(fields, names)):
        headers.fields = tuple((k, v) for k, v in fields if canonical_name(k) not in drop)


def _gate_reference(rt: Runtime, flow: http.HTTPFlow, rec: FlowRecord) -> Any:
    """``RequestGate.requestheaders`` before req10: ``self._shape(flow, rec)``, then
    ``access.request_headers(self.rt, flow, rec)``."""
    req = flow.request
    data = req.data
    rec.t0 = time.monotonic()
    sent = data.path
    rec.path = sent.partition(b"?")[0].decode("utf-8", "surrogateescape")
    if not rec.answered:  # (``_shape``'s early return)
        if rt.live.state is None:
            raise NotReady()
        decision = rec.decision
        if not (decision is None or decision.plan is None or decision.target is None):
            dialed = flow.server_conn.address
            pinned = (str(dialed[0]), int(dialed[1])) if dialed else None
            _check_request_reference(req, decision.plan, decision.target, pinned)
            if data.path is not sent:
                rec.path = request_gate._path_of(data.path)
    return access.request_headers(rt, flow, rec)


def _gate_flow(seed: int, st: ProxyState) -> tuple[http.HTTPFlow, FlowRecord]:
    rng = random.Random(seed)
    flow = tflow.tflow()
    flow.metadata.pop(KEY, None)
    host = rng.choice(["svc.example.com", "svc.example.com", "ruled.example.com", "evil.test"])
    req = flow.request
    req.data.path = rng.choice(PATHS)
    req.data.host = host if rng.random() < 0.9 else "evil.test"
    req.data.port = 443
    req.data.scheme = b"https" if rng.random() < 0.95 else b"http"
    req.data.authority = rng.choice([b"", b"", b"", host.encode(), b"evil.test"])
    req.data.method = rng.choice([b"GET", b"GET", b"POST", b"OPTIONS"])
    if rng.random() < 0.05:
        req.http_version = "HTTP/2.0"
    fields = [(b"Host", host.encode())]
    for _ in range(rng.choice([0, 1, 2, 4])):
        fields.append((rng.choice(FIELD_NAMES),
                       b"v" if rng.random() < 0.8 else rng.choice(FIELD_VALUES)))
    req.headers.fields = tuple(fields)
    flow.server_conn.address = rng.choice([
        (host, 443), (host, 443), None, ("::1", 443, 0, 0), ("127.0.0.1", 443)])
    rec = record_of(flow)
    roll = rng.random()
    if roll < 0.05:
        rec.refuse(Refusal("denied", "no"))
    elif roll < 0.12:
        rec.decision = None
    elif roll < 0.18:
        rec.decision = Decision(None, None, (host, 443), target=(host, 443))  # no plan
    else:
        facts = Facts("connect", host, 443, host_header=host, scheme="https", now=time.time())
        rec.decision = decide(facts, st.registry, st.session.agents)
    return flow, rec


def _gate_outcome(fn: Any, flow: http.HTTPFlow, rec: FlowRecord) -> tuple[object, ...]:
    try:
        pending = fn(flow, rec)
    except VaultproxyError as e:
        result: object = ("raised", type(e).__name__, str(e))
    else:
        result = pending is None
        if pending is not None:
            pending.close()  # type: ignore[attr-defined]  # (a coroutine: the rules' wait)
    data = flow.request.data
    return (result, rec.path, rec.hold_body, rec.answered, data.path, data.authority,
            data.headers.fields, type(rec.t0))


def test_the_gate_is_shape_then_request_headers(state: ProxyState) -> None:
    st = state
    rt = Runtime(Live(st))
    gate = RequestGate(rt)
    body = RequestGate.requestheaders.__wrapped__  # type: ignore[attr-defined]
    rng = random.Random(1018)
    seen = {"skipped": 0, "called": 0, "raised": 0, "memo": 0}
    try:
        for i in range(3000):
            if rng.random() < 0.02:
                st.reload_text(rng.choice(TEXTS))
            seed = rng.randrange(1 << 30)
            flow, rec = _gate_flow(seed, st)
            want = _gate_outcome(lambda f, r: _gate_reference(rt, f, r), flow, rec)
            flow, rec = _gate_flow(seed, st)
            fields = flow.request.data.headers.fields
            if rng.random() < 0.3:  # a head the lean layer's pattern read (valid ones only)
                try:
                    names = check_headers(fields)
                except VaultproxyError:
                    pass
                else:
                    names_mod._checked_memo = (fields, names)
                    seen["memo"] += 1
            calls = [0]
            real = access.request_headers

            def counted(*args: Any, _real: Any = real, _calls: list[int] = calls) -> Any:
                _calls[0] += 1
                return _real(*args)

            access.request_headers = counted  # type: ignore[assignment]
            try:
                got = _gate_outcome(lambda f, r: body(gate, f, r), flow, rec)
            finally:
                access.request_headers = real  # type: ignore[assignment]
            assert got == want, (i, seed)
            if isinstance(got[0], tuple):
                seen["raised"] += 1
            elif calls[0]:
                seen["called"] += 1
            else:
                seen["skipped"] += 1
    finally:
        st.reload_text(SERVICES_A)
    assert min(seen.values()) > 200, seen


def test_the_gate_without_a_home_is_not_ready() -> None:
    rt = Runtime(Live())
    gate = RequestGate(rt)
    body = RequestGate.requestheaders.__wrapped__  # type: ignore[attr-defined]
    flow = tflow.tflow()
    rec = record_of(flow)
    with pytest.raises(NotReady):
        body(gate, flow, rec)
    rec.refuse(Refusal("denied", "no"))
    assert body(gate, flow, rec) is None  # answered first: nothing checked


def test_check_request_reads_the_memos_as_the_calls(state: ProxyState) -> None:
    rng = random.Random(1019)
    plan = Plan(state.registry.services[0], "stream", 1 << 20)  # type: ignore[arg-type]
    both = 0
    for _ in range(2000):
        fields = tuple((rng.choice(FIELD_NAMES), rng.choice(FIELD_VALUES))
                       for _ in range(rng.randint(0, 5)))
        out = []
        host = rng.choice(["svc.example.com", "SVC.example.com.", "evil.test", "10.0.0.1"])
        port = rng.choice([443, 443, 8443])
        dialed = rng.choice([None, ("svc.example.com", 443), (host, port), (host, 9443),
                             ("svc.example.com", 8443)])
        for fn in (_check_request_reference, pipeline.check_request):
            req = http.Request.make("GET", "https://svc.example.com/x")
            req.headers.fields = fields
            if fn is pipeline.check_request and rng.random() < 0.5:
                try:
                    names_mod._checked_memo = (fields, check_headers(fields))
                    both += 1
                except VaultproxyError:
                    pass
            req.data.host, req.data.port = host, port
            try:
                fn(req, plan, ("svc.example.com", 443), dialed)
                out.append(("ok", req.headers.fields))
            except VaultproxyError as e:
                out.append(("raised", str(e)))
        assert out[0] == out[1], fields
    assert both > 300, both
