"""Threat: a hostile agent shapes a request inside an intercepted tunnel so the credential
the proxy adds lands somewhere else: another virtual host (absolute-form target, HTTP/2
``:path``), a header the upstream reads differently (obs-fold, NUL, an ``_`` spelling), or
an upstream parser pushed past its limits (huge or countless headers).

The upstream is a raw one that logs exactly the request heads it receives. For every such
request it receives nothing with a credential: the request gate answers ``400
invalid_request`` or ``421 host_mismatch`` itself, and the refusal is audited. The negative
twins: the same upstream does receive (and log) the credential for a well-formed request,
and does accept each malformed shape when sent to it directly.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness import agent
from tests.harness.hostile import HostileUpstream
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.security.test_response_gate import SERVICES as HOSTILE_SERVICE

pytestmark = [pytest.mark.security, pytest.mark.integration]

HOST = "h.api.test"

SERVICES = HOSTILE_SERVICE + """
[[service]]
name = "h2"
hosts = ["h2.api.test"]
mode = "host_inject"
auth = "bearer"
connect_to = "127.0.0.1:{h2port}"
allow_loopback = true
ca_cert = "h2-ca.pem"

[[service]]
name = "p"
hosts = ["p.api.test"]
mode = "placeholder"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "hostile-ca.pem"

[[service]]
name = "pall"
hosts = ["pall.api.test"]
mode = "placeholder"
auth = "bearer"
substitute_in = ["auth", "header", "query"]
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "hostile-ca.pem"

[[service]]
name = "r"
hosts = ["r.api.test"]
mode = "host_inject"
auth = "bearer"
allow_range = true
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "hostile-ca.pem"
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileUpstream]:
    up = HostileUpstream(tmp_path_factory.mktemp("logging-upstream")).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def h2_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """HTTP/2-capable (hypercorn); it records every request it serves."""
    up = Upstream(tmp_path_factory.mktemp("h2-upstream")).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def secret() -> bytes:
    return make_canary().encode()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: HostileUpstream,
    h2_upstream: Upstream,
    secret: bytes,
) -> Iterator[ProxyProcess]:
    base = tmp_path_factory.mktemp("request-gate")
    canary.watch(base)
    home = ProxyHome.create(
        base,
        SERVICES.format(port=upstream.port, h2port=h2_upstream.port),
        {
            "h": secret.decode(), "r": make_canary(), "h2": secret.decode(),
            "p": secret.decode(), "pall": secret.decode(),
        },
        files={
            "hostile-ca.pem": upstream.ca_file.read_bytes(),
            "h2-ca.pem": h2_upstream.ca_file.read_bytes(),
        },
    )
    p = ProxyProcess.start(home, args=("--workers", "1"))
    yield p
    p.stop()


def _send(proxy: ProxyProcess, head: bytes, host: str = HOST) -> bytes:
    conn = agent.tunnel(proxy.port, proxy.home.ca_cert, host)
    return agent.exchange(conn, head, "hostile agent")


def _credentials_seen(upstream: HostileUpstream, since: int) -> list[bytes]:
    return [r.head for r in upstream.received[since:] if r.credential]


FOLD_UNDER = ["Authorization", "X-Api-Key", "User-Agent", "Accept", "X-Custom", "Cookie"]

# name -> (request head, expected status, expected code)
HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "absolute-form-other-host": (
        b"GET https://other.test/x HTTP/1.1\r\nHost: h.api.test\r\n", 421, "host_mismatch"),
    "absolute-form-other-port": (
        b"GET https://h.api.test:8443/x HTTP/1.1\r\nHost: h.api.test\r\n", 421, "host_mismatch"),
    "absolute-form-ip": (
        b"GET https://127.0.0.1/x HTTP/1.1\r\nHost: h.api.test\r\n", 421, "host_mismatch"),
    "absolute-form-http-port-80": (
        b"GET http://h.api.test:80/x HTTP/1.1\r\nHost: h.api.test\r\n", 421, "host_mismatch"),
    "absolute-form-userinfo": (  # mitmproxy's parser refuses it: our 400 all the same
        b"GET https://h.api.test@other.test/x HTTP/1.1\r\nHost: h.api.test\r\n",
        400, "invalid_request"),
    # Refused by mitmproxy's HTTP/1 reader before any stage runs (issue 15: audited as 400).
    "content-length-and-chunked": (
        b"POST /x HTTP/1.1\r\nHost: h.api.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n", 400, "invalid_request"),
    "malformed-request-line": (
        b"GET /x HTTP/1.1 trailing-junk\r\nHost: h.api.test\r\n", 400, "invalid_request"),
    "nul-in-value": (b"GET /x HTTP/1.1\r\nHost: h.api.test\r\nX-A: a\x00b\r\n", 400,
                     "invalid_request"),
    "space-before-colon": (
        b"GET /x HTTP/1.1\r\nHost: h.api.test\r\nAuthorization : Bearer agent\r\n",
        400, "invalid_request"),
    "too-many-headers": (
        b"GET /x HTTP/1.1\r\nHost: h.api.test\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(10_000)),
        400, "invalid_request"),
    "one-megabyte-header": (
        b"GET /x HTTP/1.1\r\nHost: h.api.test\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n",
        400, "invalid_request"),
    **{
        f"obs-fold-under-{name}": (
            b"GET /x HTTP/1.1\r\nHost: h.api.test\r\n" + name.encode()
            + b": first\r\n Authorization: Bearer agent-own\r\n",
            400, "invalid_request",
        )
        for name in FOLD_UNDER
    },
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_request_never_carries_the_credential(
    proxy: ProxyProcess, upstream: HostileUpstream, case: str
) -> None:
    head, status, code = HOSTILE[case]
    since = len(upstream.received)
    before = _count(proxy, status, code)
    reply = _send(proxy, head + b"Connection: close\r\n\r\n")
    assert agent.status_of(reply) == status, reply[:200]
    assert agent.header_of(reply, "x-vaultproxy-error") == code
    assert _credentials_seen(upstream, since) == []
    # Audited with what the client got (also when mitmproxy's parser refused it, #15).
    assert _audited(proxy, status, code, before), f"{case}: no record of {status} {code}"


def _count(proxy: ProxyProcess, status: int, code: str) -> int:
    return sum(1 for r in proxy.audit()
               if r["event"] == "request" and r.get("status") == status
               and r.get("reason") == code)


def _audited(proxy: ProxyProcess, status: int, code: str, before: int = 0) -> bool:
    """Is there a new audit record of this refusal, with the status the client got?
    (Written by the process that served it when it happened: the wait is for the worker
    to get to the hook after the client already has its answer.)"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _count(proxy, status, code) > before:
            return True
        time.sleep(0.05)
    return False


def test_twin_a_well_formed_request_carries_it(
    proxy: ProxyProcess, upstream: HostileUpstream, secret: bytes
) -> None:
    since = len(upstream.received)
    reply = _send(proxy, b"GET /x HTTP/1.1\r\nHost: h.api.test\r\nConnection: close\r\n\r\n")
    assert agent.status_of(reply) == 200
    assert [r.credential for r in upstream.received[since:]] == [secret]


@pytest.mark.parametrize("case", ["absolute-form-other-host", "obs-fold-under-X-Custom"])
def test_twin_the_upstream_accepts_the_shape_directly(
    upstream: HostileUpstream, case: str
) -> None:
    """Sent straight to the upstream, these shapes are read as requests (so a proxy that
    forwarded them would have delivered the credential along)."""
    head = HOSTILE[case][0]
    reply = agent.exchange(
        agent.direct(upstream.port, upstream.ca_file, "localhost"),
        head + b"Authorization: Bearer x\r\nConnection: close\r\n\r\n",
        None,
    )
    assert agent.status_of(reply) == 200
    assert upstream.received[-1].head.startswith(head.split(b"\r\n", 1)[0])


@pytest.mark.parametrize("scheme", [b"https", b"http"])
def test_absolute_form_naming_the_tunnel_is_rewritten(
    proxy: ProxyProcess, upstream: HostileUpstream, secret: bytes, scheme: bytes
) -> None:
    """Naming the tunnel target (no port: the tunnel's own), it goes to the same upstream
    anyway; it leaves in origin-form, so the upstream cannot route it anywhere else."""
    since = len(upstream.received)
    reply = _send(
        proxy, b"GET " + scheme + b"://h.api.test/abs?q=1 HTTP/1.1\r\nHost: h.api.test\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert agent.status_of(reply) == 200
    [got] = upstream.received[since:]
    assert got.head.startswith(b"GET /abs?q=1 HTTP/1.1\r\n")
    assert got.credential == secret


@pytest.mark.parametrize("spelling", [b"X_Api_Key", b"x_api_key", b"AUTHORIZATION", b"Cookie"])
def test_agent_auth_headers_stripped_in_every_spelling(
    proxy: ProxyProcess, upstream: HostileUpstream, spelling: bytes
) -> None:
    since = len(upstream.received)
    reply = _send(
        proxy, b"GET /x HTTP/1.1\r\nHost: h.api.test\r\n" + spelling
        + b": agent-own-value\r\nConnection: close\r\n\r\n",
    )
    assert agent.status_of(reply) == 200
    [got] = upstream.received[since:]
    assert b"agent-own-value" not in got.head


def test_range_stripped_unless_the_service_allows_it(
    proxy: ProxyProcess, upstream: HostileUpstream
) -> None:
    """A Range request could have the upstream return a reflected secret in slices no
    redactor recognises: Range/If-Range never reach an injected service by default."""
    since = len(upstream.received)
    for host in (HOST, "r.api.test"):
        reply = _send(
            proxy, b"GET /x HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nRange: bytes=0-9\r\nIf-Range: \"e\"\r\nConnection: close\r\n\r\n",
            host=host,
        )
        assert agent.status_of(reply) == 200
    default, opted_in = upstream.received[since:]
    assert default.header("range") is None and default.header("if-range") is None
    assert opted_in.header("range") == b"bytes=0-9"  # the twin: allow_range = true keeps it


# --- HTTP/2 ----------------------------------------------------------------------------------


H2_HOST = "h2.api.test"


def _h2_request(proxy: ProxyProcess, headers: list[tuple[bytes, bytes]]) -> int:
    """Send one HTTP/2 request through the tunnel; the response status (0 on a reset)."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    sock.sendall(f"CONNECT {H2_HOST}:443 HTTP/1.1\r\nHost: {H2_HOST}:443\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname=H2_HOST)
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(validate_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    tls.sendall(conn.data_to_send())
    status, got = 0, b""
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            got += data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    canary.scan_text("h2 agent", got)
                    return status
            tls.sendall(conn.data_to_send())
    finally:
        tls.close()
    canary.scan_text("h2 agent", got)
    return status


H2_BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"h2.api.test")]


@pytest.mark.parametrize(
    "path",
    [b"https://other.test/x", b"//other.test/x", b"other.test/x", b"https://h2.api.test/x"],
)
def test_h2_path_must_be_origin_form(
    proxy: ProxyProcess, h2_upstream: Upstream, path: bytes
) -> None:
    since = len(h2_upstream.received)
    status = _h2_request(proxy, [*H2_BASE, (b":path", path)])
    assert status in (0, 400, 421)
    assert h2_upstream.received[since:] == []


@pytest.mark.parametrize(
    "extra",
    [
        [(b":authority", b"other.test")],
        [(b":authority", b"h2.api.test"), (b"host", b"other.test")],
        [(b":authority", b"h2.api.test:8443")],
    ],
)
def test_h2_authority_other_host_refused(
    proxy: ProxyProcess, h2_upstream: Upstream, extra: list[tuple[bytes, bytes]]
) -> None:
    since = len(h2_upstream.received)
    headers = [(b":method", b"GET"), (b":scheme", b"https"), *extra, (b":path", b"/x")]
    assert _h2_request(proxy, headers) in (0, 400, 421)
    assert h2_upstream.received[since:] == []


def test_h2_obs_fold_and_nul_refused(proxy: ProxyProcess, h2_upstream: Upstream) -> None:
    since = len(h2_upstream.received)
    for value in (b"a\r\n b", b"a\x00b"):
        assert _h2_request(proxy, [*H2_BASE, (b":path", b"/x"), (b"x-a", value)]) in (0, 400)
    assert h2_upstream.received[since:] == []


def test_twin_h2_origin_form_carries_it(
    proxy: ProxyProcess, h2_upstream: Upstream, secret: bytes
) -> None:
    since = len(h2_upstream.received)
    assert _h2_request(proxy, [*H2_BASE, (b":path", b"/x")]) == 200
    [got] = h2_upstream.received[since:]
    assert got.header("authorization") == "Bearer " + secret.decode()


@pytest.mark.parametrize("service", ["p", "pall"])
def test_placeholder_outside_the_auth_slot(
    proxy: ProxyProcess, upstream: HostileUpstream, secret: bytes, service: str
) -> None:
    """Default (``p``): the secret goes only into Authorization; a placeholder in a custom
    header or another parameter reaches the upstream as the placeholder text, so the agent
    cannot have the upstream store the secret where it reads it back. The opt-in (``pall``,
    ``substitute_in = ["auth", "header", "query"]``) substitutes there too: the twin."""
    ph = f"__vault.{service}__".encode()
    host = f"{service}.api.test".encode()
    since = len(upstream.received)
    reply = _send(
        proxy, b"GET /note?text=" + ph + b" HTTP/1.1\r\nHost: " + host
        + b"\r\nAuthorization: Bearer " + ph + b"\r\nX-Note: " + ph
        + b"\r\nConnection: close\r\n\r\n",
        host=host.decode(),
    )
    assert agent.status_of(reply) == 200
    [got] = upstream.received[since:]
    assert got.credential == secret
    if service == "p":
        assert got.header("x-note") == ph
        assert got.target == "/note?text=" + ph.decode()
    else:
        assert got.header("x-note") == secret
        assert got.target == "/note?text=" + secret.decode()


def test_opt_ins_are_announced_as_security_warnings(proxy: ProxyProcess) -> None:
    out = proxy.output()
    assert "SECURITY: service pall substitutes its secret in any request header" in out
    assert "SECURITY: service pall substitutes its secret in any query parameter" in out
    assert "SECURITY: service r keeps Range requests (allow_range)" in out
    assert "SECURITY: service p substitutes" not in out


@pytest.mark.parametrize(
    "name",
    [b"Forwarded", b"X-Forwarded-Host", b"X-Forwarded-Server", b"X-Host", b"X_Original_Host"],
)
def test_routing_override_headers_never_reach_the_upstream(
    proxy: ProxyProcess, upstream: HostileUpstream, name: bytes
) -> None:
    """A balancer in front of the upstream may route on these; the credential is bound to
    the CONNECT host. Twin: an ordinary custom header with the same value does arrive."""
    since = len(upstream.received)
    reply = _send(
        proxy, b"GET /x HTTP/1.1\r\nHost: h.api.test\r\n" + name + b": other.test\r\n"
        b"X-Note: other.test\r\nConnection: close\r\n\r\n",
    )
    assert agent.status_of(reply) == 200
    [got] = upstream.received[since:]
    assert got.header(name.decode()) is None
    assert got.header("x-note") == b"other.test"
