"""HTTP/2 and WebSocket through an intercepted host, with the credential injected."""

from __future__ import annotations

import ssl

import pytest
from websockets.sync.client import connect

from tests.conftest import Shared
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client


# Read-only: the session's shared proxy (service "proto", host_inject bearer) serves.
@pytest.fixture(scope="module")
def proxy(shared: Shared) -> tuple[ProxyProcess, str]:
    return shared.proxy, shared.secrets["proto"]


@pytest.fixture(scope="module")
def upstream(shared: Shared) -> Upstream:
    return shared.upstream


def test_http2_end_to_end(proxy, upstream):  # type: ignore[no-untyped-def]
    p, secret = proxy
    with agent_client(p, http2=True) as c:
        r = c.get("https://proto.api.test/h2", headers={"Authorization": "Bearer agent"})
    assert r.status_code == 200
    assert r.http_version == "HTTP/2"
    rec = upstream.received[-1]
    assert rec.http_version == "2"
    assert rec.header("authorization") == f"Bearer {secret}"


def test_websocket_echo_with_injected_upgrade(proxy, upstream):  # type: ignore[no-untyped-def]
    p, secret = proxy
    ctx = ssl.create_default_context(cafile=str(p.home.ca_cert))
    with connect("wss://proto.api.test/ws", ssl=ctx, proxy=p.url, open_timeout=20) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo:hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"\x00\x01"
    upgrade = [r for r in upstream.received if r.method == "WEBSOCKET"][-1]
    assert upgrade.header("authorization") == f"Bearer {secret}"
    assert upstream.ws_received[-2:] == ["hello", b"\x00\x01"]
