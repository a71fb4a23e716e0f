"""Threat: the audit blames the wrong party. A client (agent) that cuts its own request
mid-body, or goes away before the answer, must not be recorded as the upstream's failure
(``502 upstream_unreachable``): an operator reading the audit would chase a healthy upstream,
and a hostile agent could fill the log with fake upstream outages. Such a request is
recorded ``client_disconnected`` (status 499, nginx's "client closed request": the proxy
answered nobody). Twin: an upstream that dies mid-response is still ``upstream_*``.

A real proxy (``vaultproxy run``), a raw TLS upstream that can die mid-reply
(tests/harness/hostile.py) and a raw-socket agent, byte for byte."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import pytest

from tests import canary
from tests.harness.hostile import HostileUpstream, Request
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.raw import recv_response
from tests.integration.conftest import service_block

pytestmark = [pytest.mark.security, pytest.mark.integration]


def _dies(conn: ssl.SSLSocket, req: Request) -> None:
    """Half a reply, then the connection drops."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
    conn.close()


@pytest.fixture(scope="module", params=["streamed", "held"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ProxyProcess, HostileUpstream, str]]:
    """``streamed``: request bodies stream upstream as they arrive; ``held``: a honeytoken
    is configured, so every body is held whole for the scan first."""
    up = HostileUpstream(tmp_path_factory.mktemp("cut-up"), {"/dies": _dies}).start()
    base = tmp_path_factory.mktemp("cut")
    canary.watch(base)
    extra = '[[honeytoken]]\nname = "decoy"\n\n' if request.param == "held" else ""
    home = ProxyHome.create(base, extra + service_block("cut", "host_inject", "bearer",
                                                        up.port),
                            {"cut": canary.make_canary()},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    token = cli(home.path, "agent", "add", "bot", "--services", "cut",
                "--password-file", str(home.password_file)).stdout.strip()
    cli(home.path, "reload")
    yield proxy, up, token
    proxy.stop()
    up.stop()


def _tunnel(proxy: ProxyProcess, token: str) -> ssl.SSLSocket:
    auth = base64.b64encode(f"bot:{token}".encode()).decode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(f"CONNECT cut.api.test:443 HTTP/1.1\r\nHost: cut.api.test:443\r\n"
                 f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert recv_response(sock)[0] == 200
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    return ctx.wrap_socket(sock, server_hostname="cut.api.test")


def _record(proxy: ProxyProcess, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [r for r in proxy.audit() if r.get("event") == "request"
                 and r.get("path") == path]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no request record for {path}: {proxy.audit()[-5:]}")


def test_a_request_the_client_cuts_mid_body_is_client_disconnected(
    proxy: tuple[ProxyProcess, HostileUpstream, str],
) -> None:
    """The agent announces 100 000 bytes, sends 1 000 and closes: the record says
    ``client_disconnected`` (499), not an upstream failure."""
    p, _, token = proxy
    tls = _tunnel(p, token)
    tls.sendall(b"POST /cut HTTP/1.1\r\nHost: cut.api.test\r\nContent-Length: 100000\r\n\r\n"
                + b"a" * 1000)
    time.sleep(0.3)  # the head is in; the body is under way
    tls.close()
    rec = _record(p, "/cut")
    assert (rec["status"], rec["reason"]) == (499, "client_disconnected"), rec
    assert rec["outcome"] == "error"


def test_a_client_gone_before_the_answer_is_client_disconnected(
    proxy: tuple[ProxyProcess, HostileUpstream, str],
) -> None:
    """A whole request, and the agent closes before the upstream's answer came."""
    p, up, token = proxy
    up.scripts["/slow"] = lambda conn, req: (time.sleep(1.5), conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    tls = _tunnel(p, token)
    tls.sendall(b"GET /slow HTTP/1.1\r\nHost: cut.api.test\r\n\r\n")
    time.sleep(0.5)
    tls.close()
    rec = _record(p, "/slow")
    assert (rec["status"], rec["reason"]) == (499, "client_disconnected"), rec


def test_twin_an_upstream_that_dies_mid_response_is_still_upstream(
    proxy: tuple[ProxyProcess, HostileUpstream, str],
) -> None:
    """The twin: the agent waits, the upstream sends half its answer and drops the
    connection -- the record blames the upstream (``upstream_*``), as before."""
    p, _, token = proxy
    tls = _tunnel(p, token)
    tls.sendall(b"GET /dies HTTP/1.1\r\nHost: cut.api.test\r\n\r\n")
    try:
        while tls.recv(65536):
            pass
    except OSError:
        pass
    tls.close()
    rec = _record(p, "/dies")
    assert str(rec["reason"]).startswith("upstream_"), rec
    assert rec["status"] != 499


def test_an_http2_stream_the_client_resets_mid_body_is_client_disconnected(
    proxy: tuple[ProxyProcess, HostileUpstream, str],
) -> None:
    """HTTP/2: the agent cancels one stream (``RST_STREAM CANCEL``, what an SDK does when a
    call is cancelled) with half its body sent, and keeps the connection open: the record
    says ``client_disconnected``, not an upstream failure."""
    p, _, token = proxy
    auth = base64.b64encode(f"bot:{token}".encode()).decode()
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    sock.sendall(f"CONNECT cut.api.test:443 HTTP/1.1\r\nHost: cut.api.test:443\r\n"
                 f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert recv_response(sock)[0] == 200
    ctx = ssl.create_default_context(cafile=str(p.home.ca_cert))
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname="cut.api.test")
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration())
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"https"),
                          (b":authority", b"cut.api.test"), (b":path", b"/h2cut"),
                          (b"content-length", b"100000")])
    conn.send_data(1, b"a" * 1000)
    tls.sendall(conn.data_to_send())
    time.sleep(0.3)
    conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    tls.sendall(conn.data_to_send())
    try:
        rec = _record(p, "/h2cut")
    finally:
        tls.close()
    assert (rec["status"], rec["reason"]) == (499, "client_disconnected"), rec
