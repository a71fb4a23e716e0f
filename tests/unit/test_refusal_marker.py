"""One recorded refusal: ``guard.deny`` sets ``FlowRecord.refusal`` (Identify enforces a
decision's refusal by raising into it) and every later stage reads that fact, never
``flow.response`` -- which an upstream fills too.

The stages run through the production addon manager (seam/speed.py) on mitmproxy test
flows, over a real loaded home and keystore (no proxy process: the hooks are what is under
test). The negative twins are upstream answers, 4xx and 5xx: passed on as the upstream's,
injected and audited as such, never mistaken for a refusal; and what the proxy serves
itself (the reserved MCP host) is answered, not refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from mitmproxy import hooks, http, master, options
from mitmproxy.proxy.layers.http import (
    HttpConnectHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import tflow

from tests.canary import make_canary
from tests.harness.proxy import cheap_kdf_floor
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.mcp.reserved import RESERVED_HOST
from vaultproxy.seam import speed
from vaultproxy.secret import Secret
from vaultproxy.stages import (
    Deadline,
    Identify,
    Inject,
    Mint,
    Record,
    RequestGate,
    Reserved,
    ResponseGate,
    Route,
    Runtime,
)
from vaultproxy.stages.connections import Tunnel
from vaultproxy.stages.flowrecord import record_of

HOST = "svc.example.com"
SERVICES = f"""
[[service]]
name = "svc"
hosts = ["{HOST}"]
mode = "host_inject"
auth = "bearer"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, Home, str]]:
    home = Home(tmp_path_factory.mktemp("refusal") / "home")
    home.create()
    home.services.write_text(SERVICES)
    secret = make_canary()
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(secret))
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield Runtime(Live(st)), home, secret


def _flow(rt: Runtime, host_header: str) -> http.HTTPFlow:
    """A request inside a CONNECT tunnel to HOST (decided and pinned, as Route leaves it)."""
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "https", HOST, 443
    f.request.headers["host"] = host_header
    f.request.headers["authorization"] = "Bearer agent-own-token"
    service = rt.state().registry.by_name("svc")
    connect = Decision(service, None, (HOST, 443), target=(HOST, 443))
    rt.connections.open(f.client_conn.id, Tunnel(connect, pinned=("203.0.113.9", 443)))
    return f


def _chain(rt: Runtime) -> list[object]:
    return [Identify(rt), RequestGate(rt), Mint(rt), Inject(rt), ResponseGate(rt), Record(rt),
            Deadline(rt)]


def fire(chain: list[object], *events: hooks.Hook) -> None:
    """Run ``events`` through the production addon manager holding ``chain``."""

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(*chain)
            for event in events:
                await m.addons.handle_lifecycle(event)
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())


def _last_audit(rt: Runtime, home: Home) -> dict[str, object]:
    rt.state().audit.flush()
    lines = [json.loads(x) for x in home.audit.read_text().splitlines() if x.strip()]
    return next(x for x in reversed(lines) if x.get("event") == "request")


REFUSALS = {
    # Identify enforces the decision's refusal (the decision carries no plan)
    "decision": ("evil.example.com", (), 421, "host_mismatch"),
    # RequestGate refuses a request whose decision does carry a plan
    "request": (HOST, ((b"x-folded", b"a\r\n b"),), 400, "invalid_request"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refusal_holds_in_every_later_stage(world, case: str) -> None:  # type: ignore[no-untyped-def]
    rt, home, secret = world
    host_header, extra, status, code = REFUSALS[case]
    chain = _chain(rt)
    f = _flow(rt, host_header)
    f.request.headers.fields += extra
    fire(chain[:2], HttpRequestHeadersHook(f))  # Identify, RequestGate
    rec = record_of(f)
    assert rec.refusal is not None and rec.refusal.code == code
    assert f.response is not None and f.response.status_code == status
    # The refusal is the recorded fact, not the response object: with the response gone
    # (an engine or another addon may replace it), no later stage mints or injects.
    f.response = None
    fire(chain[2:], HttpRequestHeadersHook(f), HttpRequestHook(f))
    assert f.request.headers["authorization"] == "Bearer agent-own-token"
    assert all(secret.encode() not in v for _k, v in f.request.headers.fields)
    assert not rec.injected and rec.minted is None and rec.redactor is None
    f.response = http.Response.make(200, b"{}")  # whatever answer follows
    fire(chain[2:], HttpResponseHeadersHook(f), HttpResponseHook(f))
    assert rec.outcome == "denied"
    line = _last_audit(rt, home)
    assert (line["outcome"], line["reason"]) == ("denied", code)


def test_a_decided_flow_without_the_marker_is_injected(world) -> None:  # type: ignore[no-untyped-def]
    """The twin of the above: the same stages, no response, a request nothing refuses."""
    rt, _home, secret = world
    f = _flow(rt, HOST)
    fire(_chain(rt), HttpRequestHeadersHook(f), HttpRequestHook(f))
    assert f.response is None
    assert record_of(f).refusal is None
    assert f.request.headers["authorization"] == f"Bearer {secret}"
    assert record_of(f).injected


@pytest.mark.parametrize("status", [403, 429, 500, 503])
def test_an_upstream_error_is_not_a_refusal(world, status: int) -> None:  # type: ignore[no-untyped-def]
    rt, home, secret = world
    chain = _chain(rt)
    f = _flow(rt, HOST)
    fire(chain, HttpRequestHeadersHook(f), HttpRequestHook(f))
    assert f.request.headers["authorization"] == f"Bearer {secret}"
    # The upstream answers with an error (as a pooled upstream connection sets it from a
    # hook after ``request``); it echoes the credential, which the gate must still redact.
    body = json.dumps({"error": "upstream says no", "echo": secret}).encode()
    f.response = http.Response.make(status, body, {"content-type": "application/json"})
    fire(chain, HttpResponseHeadersHook(f), HttpResponseHook(f))
    rec = record_of(f)
    assert rec.refusal is None and not rec.answered
    assert f.response.status_code == status
    assert "x-vaultproxy-error" not in f.response.headers
    assert secret.encode() not in (f.response.content or b"")
    assert b"upstream says no" in (f.response.content or b"")
    assert rec.outcome == "injected"
    line = _last_audit(rt, home)
    assert (line["outcome"], line["status"]) == ("injected", status)


def test_what_the_proxy_serves_is_answered_not_refused(world) -> None:  # type: ignore[no-untyped-def]
    """The reserved host's CONNECT and a 404 on it are the proxy's own answers: no later
    stage decides, dials or injects for them, and neither is audited as a refusal."""
    rt, home, _secret = world
    chain: list[object] = [Reserved(rt), *_chain(rt)]
    chain.insert(3, Route(rt))  # after Identify, as in stages.chain
    connect = tflow.tflow()
    connect.request.method, connect.request.host, connect.request.port = (
        "CONNECT", RESERVED_HOST, 443)
    connect.request.path = f"{RESERVED_HOST}:443"
    before = home.audit.read_text() if home.audit.exists() else ""
    fire(chain, HttpConnectHook(connect))
    rec = record_of(connect)
    assert connect.response is not None and connect.response.status_code == 200
    assert rec.served and rec.answered and rec.refusal is None
    assert rec.decision is None  # Identify did not decide it
    assert rt.connections.tunnel(connect.client_conn.id) is None  # Route neither resolved
    f = tflow.tflow(client_conn=connect.client_conn)
    f.request.scheme, f.request.host, f.request.port = "https", RESERVED_HOST, 443
    f.request.method, f.request.path = "POST", "/not-mcp"
    fire(chain, HttpRequestHeadersHook(f), HttpRequestHook(f), HttpResponseHook(f))
    rec = record_of(f)
    assert f.response is not None and f.response.status_code == 404
    assert rec.served and rec.refusal is None and rec.decision is None and rec.outcome is None
    rt.state().audit.flush()
    after = home.audit.read_text() if home.audit.exists() else ""
    assert '"denied"' not in after[len(before):]
