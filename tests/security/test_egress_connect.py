"""Threat: the agent steers the proxy at something it must never reach (SSRF / egress).

Through a real `vaultproxy run`: CONNECT and absolute-form plain HTTP to loopback, cloud
metadata, the proxy's own listeners and (with `egress = "block"`) any unregistered host are
refused with 403 and an audit record, and nothing is dialled. Each refusal has a twin that
shows the same path works when policy allows it (passthrough_allow, a registered host).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Callable

import pytest

from tests.canary import make_canary
from tests.conftest import Shared
from tests.harness.proxy import ProxyProcess
from tests.harness.raw import recv_response
from tests.harness.upstream import Upstream
from tests.integration import conftest as integration
from tests.integration.conftest import agent_client, service_block

pytestmark = [pytest.mark.security, pytest.mark.integration]
start_proxy = integration.start_proxy  # the module-scoped fixture, shared


@pytest.fixture(scope="module")
def upstream(shared: Shared) -> Upstream:
    return shared.upstream


# --- a raw client: exactly the bytes we mean, no client-side URL normalisation --------------


recv_head = recv_response



def raw_connect(proxy_port: int, target: str) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Open a socket to the proxy and send ``CONNECT target``; the socket stays open."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, headers, body = recv_head(sock)
    return sock, status, headers, body


def connect_status(proxy_port: int, target: str) -> tuple[int, str | None]:
    sock, status, headers, body = raw_connect(proxy_port, target)
    sock.close()
    code = headers.get("x-vaultproxy-error")
    if code is not None:
        assert json.loads(body)["error"]["code"] == code
    return status, code


def plain_get(proxy_port: int, url: str, host: str) -> tuple[int, str | None]:
    """An absolute-form plain-HTTP request through the proxy."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=20) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, _ = recv_head(sock)
    return status, headers.get("x-vaultproxy-error")


def refusals(proxy: ProxyProcess, code: str, at_least: int = 1) -> list[dict[str, object]]:
    """Audit records denied with ``code`` (the log is flushed asynchronously: poll a little)."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in proxy.audit() if e["outcome"] == "denied" and e["reason"] == code]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --- proxies: default policy, permissive passthrough_allow, egress = "block" ---------------


def _registered(upstream: Upstream) -> str:
    return service_block("reg", "host_inject", "bearer", upstream.port)


@pytest.fixture(scope="module")
def strict(shared: Shared) -> ProxyProcess:
    """The default policy, read-only: the session's shared proxy (it serves "reg")."""
    return shared.proxy


@pytest.fixture(scope="module")
def permissive(start_proxy, upstream: Upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = '[proxy]\npassthrough_allow = ["0.0.0.0/0", "::/0"]\n\n' + _registered(upstream)
    return start_proxy(toml, {"reg": make_canary()})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def blocking(start_proxy, upstream: Upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = '[proxy]\negress = "block"\npassthrough_allow = ["127.0.0.0/8"]\n\n'
    return start_proxy(toml + _registered(upstream), {"reg": make_canary()})  # type: ignore[no-any-return]


def _upstream_hits(upstream: Upstream) -> int:
    return len(upstream.received)


# --- loopback and its spellings --------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "[::ffff:127.0.0.1]",
    "[::1]",
    "localhost",
    "LOCALHOST.",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_unregistered_connect_to_loopback_is_denied(
    strict: ProxyProcess, upstream: Upstream, host: str
) -> None:
    before = _upstream_hits(upstream)
    status, code = connect_status(strict.port, f"{host}:{upstream.port}")
    assert (status, code) == (403, "destination_denied")
    assert _upstream_hits(upstream) == before


def test_loopback_refusal_is_audited(strict: ProxyProcess, upstream: Upstream) -> None:
    connect_status(strict.port, f"127.0.0.1:{upstream.port}")
    events = [e for e in refusals(strict, "destination_denied") if e["event"] == "tunnel_refused"]
    assert events, strict.audit()
    assert events[-1]["status"] == 403 and events[-1]["host"] == "127.0.0.1"


def test_twin_passthrough_allow_opens_the_same_tunnel(
    permissive: ProxyProcess, upstream: Upstream
) -> None:
    """With passthrough_allow the same CONNECT succeeds and reaches the upstream untouched."""
    sock, status, _, _ = raw_connect(permissive.port, f"127.0.0.1:{upstream.port}")
    assert status == 200
    ctx = ssl.create_default_context(cafile=str(upstream.ca_file))
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:  # upstream's own cert
        tls.sendall(
            b"GET /via-passthrough HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert recv_head(tls)[0] == 200
    assert upstream.received[-1].path == "/via-passthrough"


# --- never reachable: metadata, link-local, the proxy's own listeners --------------------------

ALWAYS_DENIED = [
    "169.254.169.254:80",
    "169.254.169.254:443",
    "[::ffff:169.254.169.254]:80",
    "[fd00:ec2::254]:80",
    "100.100.100.200:80",
    "192.0.0.192:80",
    "169.254.1.1:80",
    "[fe80::1]:80",
    "0.0.0.0:80",
    "metadata.google.internal:80",
]


@pytest.mark.parametrize("target", ALWAYS_DENIED)
def test_metadata_and_link_local_denied_even_with_passthrough_allow_all(
    permissive: ProxyProcess, target: str
) -> None:
    assert connect_status(permissive.port, target) == (403, "destination_denied")


def _own_ports(proxy: ProxyProcess) -> list[int]:
    """The proxy port, plus the admin TCP port once run.json announces it."""
    ports = [proxy.port]
    admin = proxy.extra.get("admin")
    m = re.search(r":(\d+)/?$", admin) if isinstance(admin, str) else None
    if m is not None:
        ports.append(int(m.group(1)))
    return ports


@pytest.mark.parametrize("fixture", ["strict", "permissive"])
def test_proxy_own_listeners_unreachable_through_the_proxy(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    proxy: ProxyProcess = request.getfixturevalue(fixture)
    for port in _own_ports(proxy):
        for host in ("127.0.0.1", "2130706433", "localhost", "[::ffff:127.0.0.1]"):
            assert connect_status(proxy.port, f"{host}:{port}") == (403, "destination_denied")
        # Other loopback aliases: not the listener's socket, and never a tunnel to it.
        for host in ("127.0.0.2", "[::1]"):
            assert connect_status(proxy.port, f"{host}:{port}")[0] in (403, 502)


# --- egress = "block" ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["example.com:443", "unregistered.api.test:443"])
def test_egress_block_refuses_unregistered_hosts(blocking: ProxyProcess, target: str) -> None:
    assert connect_status(blocking.port, target) == (403, "egress_blocked")
    assert refusals(blocking, "egress_blocked")


def test_egress_block_refuses_passthrough_allowed_address(
    blocking: ProxyProcess, upstream: Upstream
) -> None:
    """block wins over passthrough_allow: unregistered traffic goes nowhere."""
    before = _upstream_hits(upstream)
    status, code = connect_status(blocking.port, f"127.0.0.1:{upstream.port}")
    assert (status, code) == (403, "egress_blocked")
    assert _upstream_hits(upstream) == before


def test_twin_egress_block_still_serves_registered_hosts(
    blocking: ProxyProcess, upstream: Upstream
) -> None:
    with agent_client(blocking) as c:
        r = c.get("https://reg.api.test/registered")
    assert r.status_code == 200
    assert upstream.received[-1].path == "/registered"


# --- plain HTTP (absolute-form) ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "[::1]"])
def test_plain_http_to_denied_address_refused(
    strict: ProxyProcess, upstream: Upstream, host: str
) -> None:
    before = _upstream_hits(upstream)
    status, code = plain_get(strict.port, f"http://{host}:{upstream.port}/plain", host)
    assert status in (403, 502), (status, code)
    if status == 403:
        assert code == "destination_denied"
    assert _upstream_hits(upstream) == before


def test_plain_http_to_own_listener_refused(strict: ProxyProcess) -> None:
    for port in _own_ports(strict):
        status, _ = plain_get(strict.port, f"http://127.0.0.1:{port}/v1/health", "127.0.0.1")
        assert status in (403, 502)


def test_plain_http_egress_block(blocking: ProxyProcess) -> None:
    assert plain_get(blocking.port, "http://example.com/", "example.com") == (
        403,
        "egress_blocked",
    )


# --- registered service whose connect_to is loopback without allow_loopback ----------------


def test_registered_loopback_connect_to_refused_at_start(
    start_proxy: Callable[..., ProxyProcess],
    upstream: Upstream,
) -> None:
    toml = _registered(upstream).replace("allow_loopback = true\n", "")
    with pytest.raises(AssertionError) as info:
        start_proxy(toml, {"reg": make_canary()})
    text = str(info.value)
    assert ('service "reg" (service[0]).connect_to: denied by the address policy: a loopback '
            "address") in text
    assert f"127.0.0.1:{upstream.port}" not in text
