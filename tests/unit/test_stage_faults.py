"""Fail closed: an exception inside any stage's hook becomes a deny, never a forwarded request.

mitmproxy's addon manager logs a hook's exception and continues down the chain (fail-open);
our guard must turn it into a response on the flow first. Each case forces a fault inside
a stage with monkeypatch, fires the hook through the addon manager production runs
(seam/speed.py) and checks the flow is answered by the proxy, not sent on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import hooks, http, master, options
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layer import NextLayerHook
from mitmproxy.proxy.layers.http import (
    HttpConnectHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import tflow, tutils

from tests.canary import make_canary
from tests.harness.proxy import cheap_kdf_floor
from vaultproxy.core import pipeline as pipeline_mod
from vaultproxy.core.decide import Decision
from vaultproxy.core.state import Live, ProxyState
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.seam import speed
from vaultproxy.secret import Secret
from vaultproxy.stages import Dial, Identify, Inject, Record, ResponseGate, Route, Runtime
from vaultproxy.stages import dial as dial_mod
from vaultproxy.stages import record as record_mod
from vaultproxy.stages import response_gate as scrub_mod
from vaultproxy.stages import route as route_mod
from vaultproxy.stages.connections import Tunnel

SERVICES = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"

[[service]]
name = "body"
hosts = ["body.example.com"]
mode = "placeholder"
auth = "bearer"
substitute_in = ["header", "body"]
"""


class Boom(RuntimeError):
    pass


def boom(*_a: object, **_k: object) -> None:
    raise Boom("forced")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Runtime]:
    """The runtime a chain's stages share, serving a loaded, unlocked home."""
    home = Home(tmp_path / "home")
    home.create()
    home.services.write_text(SERVICES)
    ks = Keystore.create(home.keystore, Secret("pw"), kdf=KdfParams(1, 1024, 1))
    ks.set_value("svc", Secret(make_canary()))
    ks.set_value("body", Secret(make_canary()))
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    st = ProxyState.load(home)
    st.install_keystore(ks)
    yield Runtime(Live(st))


def _flow(rt: Runtime, host: str, service_name: str | None) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "https", host, 443
    f.request.headers["host"] = host
    f.request.headers["authorization"] = "Bearer agent-own-token"
    service = rt.state().registry.by_name(service_name) if service_name else None
    connect = Decision(service, None, (host, 443), target=(host, 443))
    rt.connections.open(f.client_conn.id, Tunnel(connect, pinned=("203.0.113.9", 443)))
    return f


def fire(stage: object, event: hooks.Hook, *after: object) -> None:
    """Run one hook of ``stage`` (then of ``after``) through the production addon manager."""

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(stage, *after)
            await m.addons.handle_lifecycle(event)
        finally:
            m._legacy_log_events.uninstall()  # no-op once tune() did it

    asyncio.run(go())


def _assert_denied(f: http.HTTPFlow) -> None:
    assert f.response is not None, "the flow would have been forwarded"
    assert f.response.status_code >= 400
    assert f.response.headers.get("x-vaultproxy-error")


def test_route_http_connect_fault_refuses_tunnel(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(route_mod, "resolve_checked", boom)
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", "svc.example.com", 443
    fire(Identify(state), HttpConnectHook(f))
    assert f.response is None  # decided: an intercepted tunnel
    fire(Route(state), HttpConnectHook(f))
    _assert_denied(f)


def test_route_next_layer_fault_marks_connection_broken(state, monkeypatch):  # type: ignore[no-untyped-def]
    from mitmproxy.proxy.layer import NextLayer

    f = _flow(state, "elsewhere.example.com", None)
    ctx = tutils_context(f)
    monkeypatch.setattr(route_mod, "raw_tunnel", boom)
    fire(Route(state), NextLayerHook(NextLayer(ctx)))
    monkeypatch.undo()
    # Every later request on that connection is refused.
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    _assert_denied(f)


def test_connect_server_connect_fault_kills_connection(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(dial_mod, "resolve_checked", boom)
    client = tflow.tclient_conn()
    server = tflow.tserver_conn()
    server.address = ("plain.example.com", 80)
    data = server_hooks.ServerConnectionHookData(server=server, client=client)
    fire(Dial(state), server_hooks.ServerConnectHook(data))
    assert server.error


def test_inject_requestheaders_fault_denies(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline_mod, "prepare_request", boom)
    f = _flow(state, "svc.example.com", "svc")
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    _assert_denied(f)


def test_inject_requestheaders_without_fault_injects(state):  # type: ignore[no-untyped-def]
    """Negative twin: the same flow, no fault, is forwarded with the real credential."""
    f = _flow(state, "svc.example.com", "svc")
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    assert f.response is None
    assert f.request.headers["authorization"].startswith("Bearer vpcanary_")


def test_inject_request_body_fault_denies(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline_mod, "substitute_request_body", boom)
    f = _flow(state, "body.example.com", "body")
    f.request.headers["authorization"] = "Bearer __vault.body__"
    f.request.content = b'{"k": "__vault.body__"}'
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    assert f.response is None
    fire(Inject(state), HttpRequestHook(f))
    _assert_denied(f)


def test_scrub_responseheaders_fault_replaces_response(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(scrub_mod, "gate_head", boom)
    monkeypatch.setattr(scrub_mod, "gate_wire_head", boom)  # (the one-pass head's)
    f = _flow(state, "svc.example.com", "svc")
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    f.response = tutils.tresp(content=b"upstream body")
    fire(ResponseGate(state), HttpResponseHeadersHook(f))
    _assert_denied(f)
    assert f.response.content != b"upstream body"


def test_record_fault_denies(state, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(record_mod, "decision_record", boom)  # what _record calls
    f = _flow(state, "svc.example.com", "svc")
    fire(Identify(state), HttpRequestHeadersHook(f), Inject(state))
    f.response = tutils.tresp()
    fire(Record(state), HttpResponseHook(f))
    _assert_denied(f)


def test_fault_is_denied_through_the_whole_production_chain(state, monkeypatch):  # type: ignore[no-untyped-def]
    """The full chain in the production manager (which would log and continue): denied."""
    from vaultproxy.stages import Ready, chain

    monkeypatch.setattr(pipeline_mod, "prepare_request", boom)
    f = _flow(state, "svc.example.com", "svc")

    async def go() -> None:
        m = master.Master(options.Options(), with_termlog=False)
        try:
            speed.tune(m).add(Ready(state), *chain(state))
            await m.addons.handle_lifecycle(HttpRequestHeadersHook(f))
        finally:
            m._legacy_log_events.uninstall()

    asyncio.run(go())
    _assert_denied(f)
    assert f.request.headers["authorization"] == "Bearer agent-own-token"


def tutils_context(f: http.HTTPFlow) -> object:
    from mitmproxy import options
    from mitmproxy.proxy.context import Context

    ctx = Context(f.client_conn, options.Options())
    ctx.server = f.server_conn
    ctx.server.address = ("svc.example.com", 443)
    return ctx
