"""The request stages' fast paths answer exactly as the general ones.

* Identify reuses a tunnel's last decision (``identify._in_tunnel``): compared with a fresh
  ``decide()`` over seeded sequences of requests that change the Host, scheme, SNI, the
  registry (a reload), the agents (rotation, removal, expiry) and the lock; with negative
  twins: the memo is really used (the same object comes back), and a reload, a rotated or
  expired token and a refusal are never answered from it.
* ``guarded_sometimes_async``: a hook that returns an awaitable is still fail-closed while
  that awaitable runs (a fault in a mint denies the flow, as it did inside ``guarded``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Iterator

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from tests.canary import make_canary
from tests.harness.proxy import cheap_kdf_floor
from vaultproxy.access import agents as agents_mod
from vaultproxy.core.decide import Decision, Facts, decide
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret
from vaultproxy.stages import Mint, Runtime
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import record_of
from vaultproxy.stages.identify import _in_tunnel

SERVICES_A = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"

[[service]]
name = "other"
hosts = ["other.example.com:8443"]
mode = "placeholder"
auth = "bearer"
"""
# The reload: svc changes mode and routing, other goes, a wildcard comes
SERVICES_B = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "placeholder"
auth = "bearer"
connect_to = "127.0.0.1:9"
allow_loopback = true
allow_range = true

[[service]]
name = "wild"
hosts = ["*.example.com:8443"]
mode = "host_inject"
auth = "bearer"
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyState]:
    home = Home(tmp_path_factory.mktemp("speed-stages") / "home")
    home.create()
    home.services.write_text(SERVICES_A)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    for name in ("svc", "other", "wild"):
        ks.set_value(name, Secret(make_canary()))
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield st


def _request(host_header: str, scheme: str) -> http.Request:
    req = http.Request.make("GET", f"{scheme}://svc.example.com/x")
    req.headers["Host"] = host_header  # (``make`` writes the URL's host over a given one)
    req.scheme = scheme
    assert req.host_header == host_header
    return req


def _fresh(st: ProxyState, tunnel: Tunnel, req: http.Request) -> Decision:
    """What Identify decided before the memo: a Facts and ``decide`` per request."""
    connect = tunnel.decision
    facts = Facts(
        "connect", tunnel.host, tunnel.port, host_header=req.host_header or "",
        sni=tunnel.sni, scheme=req.scheme, agent=connect.agent,
        agent_digest=connect.agent_digest, now=time.time(), cert_agent=tunnel.cert_agent,
    )
    return decide(facts, st.registry, None if st.locked else st.session.agents)


def _view(d: Decision) -> tuple[object, ...]:
    refusal = d.refusal
    return (
        d.service.name if d.service else None, d.service.mode if d.service else None, d.agent,
        d.dial, d.plan, d.agent_digest, d.target,
        None if refusal is None else (type(refusal), refusal.code, str(refusal)),
    )


def test_tunnel_memo_is_decide(state: ProxyState) -> None:
    st = state
    rng = random.Random(29)
    tokens = {n: agents_mod.new_token() for n in ("bot", "eve")}
    now = time.time()
    records = {
        "bot": agents_mod.make_record("bot", tokens["bot"], ["svc", "other", "wild"], now, None),
        "eve": agents_mod.make_record("eve", tokens["eve"], ["svc"], now, 3600.0),
    }
    table = dict(records)
    st.session.agents = table
    texts = [SERVICES_A, SERVICES_B]
    targets = [("svc.example.com", 443), ("other.example.com", 8443), ("x.example.com", 8443)]
    hosts = ["svc.example.com", "SVC.example.com.", "svc.example.com:443", "evil.test",
             "other.example.com:8443", "x.example.com:8443", "svc.example.com:444"]
    reused = refused = changed = 0
    try:
        for _ in range(150):
            host, port = rng.choice(targets)
            agent = rng.choice([None, "bot", "eve"])
            digest = records[agent].digest if agent else None
            connect = Decision(None, agent, (host, port), agent_digest=digest,
                               target=(host, port))
            tunnel = Tunnel(connect, sni=rng.choice([None, host, "evil.test"]))
            for _ in range(rng.randint(1, 25)):
                roll = rng.random()
                if roll < 0.05:
                    st.reload_text(rng.choice(texts))
                    changed += 1
                elif roll < 0.08 and agent:  # rotated, then back
                    table[agent] = agents_mod.rotated(records[agent], agents_mod.new_token(),
                                                      now)
                elif roll < 0.10 and agent:
                    table.pop(agent, None)  # agent rm
                elif roll < 0.12 and agent:  # expired (a lifetime already over)
                    table[agent] = dataclasses.replace(records[agent], expires=now - 1)
                elif roll < 0.20:
                    table.clear()
                    table.update(records)
                elif roll < 0.23:
                    tunnel.sni = rng.choice([None, host, "evil.test"])
                req = _request(rng.choice(hosts) if rng.random() < 0.3 else hosts[0],
                               "https" if rng.random() < 0.9 else "http")
                want = _fresh(st, tunnel, req)
                before = tunnel.memo
                got = _in_tunnel(st, tunnel, req)
                assert _view(got) == _view(want), (req.host_header, req.scheme, tunnel)
                reused += before is not None and got is before[5]
                refused += want.refusal is not None
    finally:
        st.reload_text(SERVICES_A)
        st.session.agents = dict(records)
    # twins: the memo is exercised, and so are refusals and reloads
    assert reused > 200 and refused > 200 and changed > 20, (reused, refused, changed)


def test_reload_is_never_answered_from_the_memo(state: ProxyState) -> None:
    st = state
    st.reload_text(SERVICES_A)
    tunnel = Tunnel(Decision(None, None, ("svc.example.com", 443),
                             target=("svc.example.com", 443)))
    req = _request("svc.example.com", "https")
    first = _in_tunnel(st, tunnel, req)
    assert _in_tunnel(st, tunnel, req) is first  # twin: without a change, the memo answers
    assert first.service is not None and first.service.mode == "host_inject"
    try:
        st.reload_text(SERVICES_B)
        after = _in_tunnel(st, tunnel, req)
        assert after is not first
        assert after.service is not None and after.service.mode == "placeholder"
        assert after.dial == ("127.0.0.1", 9)
    finally:
        st.reload_text(SERVICES_A)


def test_rotated_or_expired_token_is_refused_after_a_memo(state: ProxyState) -> None:
    st = state
    token = agents_mod.new_token()
    rec = agents_mod.make_record("bot", token, ["svc"], time.time(), None)
    st.session.agents = {"bot": rec}
    tunnel = Tunnel(Decision(None, "bot", ("svc.example.com", 443), agent_digest=rec.digest,
                             target=("svc.example.com", 443)))
    req = _request("svc.example.com", "https")
    ok = _in_tunnel(st, tunnel, req)
    assert ok.refusal is None and _in_tunnel(st, tunnel, req) is ok  # memo in use
    st.session.agents = {"bot": agents_mod.rotated(rec, agents_mod.new_token(), time.time())}
    rotated = _in_tunnel(st, tunnel, req)
    assert rotated.refusal is not None and rotated.refusal.code == "agent_auth_required"
    st.session.agents = {"bot": dataclasses.replace(rec, expires=time.time() - 1)}
    expired = _in_tunnel(st, tunnel, req)
    assert expired.refusal is not None and expired.refusal.code == "agent_token_expired"
    st.session.agents = {"bot": rec}
    assert _in_tunnel(st, tunnel, req).refusal is None  # the same token again: served


def test_a_refusal_is_never_reused(state: ProxyState) -> None:
    st = state
    tunnel = Tunnel(Decision(None, None, ("svc.example.com", 443),
                             target=("svc.example.com", 443)))
    bad = _request("evil.test", "https")
    one, two = _in_tunnel(st, tunnel, bad), _in_tunnel(st, tunnel, bad)
    assert one.refusal is not None and two.refusal is not None
    assert one.refusal is not two.refusal and tunnel.memo is None


async def _finish(pending: Awaitable[None]) -> None:
    await pending


class _Failing:
    async def get(self, service: object) -> object:
        await asyncio.sleep(0)
        raise RuntimeError("the token endpoint broke")


def test_a_fault_while_the_awaitable_runs_denies(state: ProxyState) -> None:
    """Mint returns an awaitable only for a minted service; a fault inside it must answer
    the flow (fail closed), as ``guarded`` did for the async hook."""
    from vaultproxy.core.decide import Plan

    st = state
    rt = Runtime(Live(st))
    svc = st.registry.by_name("svc")
    assert svc is not None
    flow = tflow.tflow()
    rec = record_of(flow)
    st.tokens = _Failing()  # type: ignore[assignment]
    try:
        rec.decision = Decision(svc, None, plan=Plan(svc, "stream", 1024, mint=False))
        assert Mint(rt).requestheaders(flow) is None  # nothing to mint: no awaitable
        assert flow.response is None
        rec.decision = Decision(svc, None, plan=Plan(svc, "stream", 1024, mint=True))
        pending = Mint(rt).requestheaders(flow)
        assert pending is not None
        asyncio.run(_finish(pending))
        assert flow.response is not None and flow.response.status_code == 500
        assert rec.refusal is not None and rec.minted is None
        # twin: the fault is raised inside the awaitable (unguarded, it escapes)
        with pytest.raises(RuntimeError, match="token endpoint"):
            asyncio.run(Mint(rt)._fetch(st, svc, record_of(tflow.tflow())))
    finally:
        st.tokens = None
