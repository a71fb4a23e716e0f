"""Threat: domain fronting. The agent opens a tunnel to a registered host (so the proxy injects
that service's credential) but names another host in ``Host``/``:authority`` or the TLS SNI,
so a shared front end would route the credential to a different tenant.

The service is chosen from the CONNECT target only, and a request whose Host/:authority or
SNI disagrees with it is refused with 421 ``host_mismatch`` before any credential is added:
the upstream receives nothing. Twins: the matching Host and SNI go through, injected.
"""

from __future__ import annotations

import json
import ssl
import time

import pytest

from tests import canary
from tests.conftest import Shared
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client
from tests.security.test_egress_connect import raw_connect, recv_head

pytestmark = [pytest.mark.security, pytest.mark.integration]


# Read-only: the session's shared proxy (services a and b, host_inject bearer) serves.
@pytest.fixture(scope="module")
def secrets_(shared: Shared) -> dict[str, str]:
    return {"a": shared.secrets["a"], "b": shared.secrets["b"]}


@pytest.fixture(scope="module")
def proxy(shared: Shared) -> ProxyProcess:
    return shared.proxy


@pytest.fixture(scope="module")
def upstream(shared: Shared) -> Upstream:
    return shared.upstream


def _audited(proxy: ProxyProcess, code: str, at_least: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [e for e in proxy.audit() if e["reason"] == code and e["outcome"] == "denied"]
        if len(found) >= at_least:
            return True
        time.sleep(0.05)
    return False


def _no_secret_since(upstream: Upstream, secrets_: dict[str, str], since: int) -> bool:
    text = "".join(repr(r.headers) + r.path + r.query for r in upstream.received[since:])
    return not any(s in text for s in secrets_.values())


# --- Host / :authority ------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
@pytest.mark.parametrize("host", ["other.api.test", "b.api.test", "a.api.test:8443", "a.api.tes"])
def test_host_header_mismatch_refused_before_injection(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], host: str, http2: bool
) -> None:
    before = len(upstream.received)
    with agent_client(proxy, http2=http2) as c:
        r = c.get("https://a.api.test/fronted", headers={"Host": host})
    canary.scan_text("agent response host mismatch", r.content)
    assert r.status_code == 421
    assert r.headers["x-vaultproxy-error"] == "host_mismatch"
    assert r.json()["error"]["code"] == "host_mismatch"
    assert len(upstream.received) == before, "the upstream was contacted"
    clean = _no_secret_since(upstream, secrets_, before)
    assert clean
    assert _audited(proxy, "host_mismatch", 1)


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_twin_matching_host_is_injected(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], http2: bool
) -> None:
    with agent_client(proxy, http2=http2) as c:
        r = c.get("https://a.api.test/matching", headers={"Host": "A.API.TEST"})
    assert r.status_code == 200
    rec = upstream.received[-1]
    injected = rec.path == "/matching" and rec.header("authorization") == f"Bearer {secrets_['a']}"
    assert injected


# --- TLS SNI --------------------------------------------------------------------------------


def _tunnel_request(proxy: ProxyProcess, sni: str, host: str) -> tuple[int, dict[str, str]]:
    """CONNECT a.api.test:443, TLS with ``sni``, then one request with ``Host: host``."""
    sock, status, _, _ = raw_connect(proxy.port, "a.api.test:443")
    assert status == 200
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        tls = ctx.wrap_socket(sock, server_hostname=sni)
    except (ssl.SSLError, OSError):
        sock.close()
        return 0, {}  # the handshake itself was refused: also no request
    with tls:
        tls.sendall(f"GET /sni HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, body = recv_head(tls)
    if headers.get("x-vaultproxy-error"):
        assert json.loads(body)["error"]["code"] == headers["x-vaultproxy-error"]
    return status, headers


@pytest.mark.parametrize("host", ["a.api.test", "b.api.test"])
@pytest.mark.parametrize("sni", ["b.api.test", "other.api.test"])
def test_sni_mismatch_refused_before_injection(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], sni: str, host: str
) -> None:
    before = len(upstream.received)
    status, headers = _tunnel_request(proxy, sni, host)
    assert (status, headers.get("x-vaultproxy-error")) == (421, "host_mismatch")
    assert len(upstream.received) == before, "the upstream was contacted"
    clean = _no_secret_since(upstream, secrets_, before)
    assert clean
    assert _audited(proxy, "host_mismatch", 1)


def test_twin_matching_sni_is_injected(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str]
) -> None:
    status, _ = _tunnel_request(proxy, "a.api.test", "a.api.test")
    assert status == 200
    rec = upstream.received[-1]
    injected = rec.path == "/sni" and rec.header("authorization") == f"Bearer {secrets_['a']}"
    assert injected
