"""TLS session resumption on the warm pool's new upstream connections: a second dial to a
service resumes the session of its first (no certificate exchange), never the session of
another service (another trust, another server name), never across a reload.

The upstream is a real TLS server (Python ``ssl``) that answers one request per connection
and closes it, so every request dials anew; it records, per accepted connection, the server
name asked for and whether the handshake resumed a session (``SSLSocket.session_reused`` on
the server's side)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.tls_server import TLSServer, read_head
from tests.harness.upstream import Upstream
from vaultproxy.net.outbound import UpstreamKey, pool_transport

pytestmark = pytest.mark.integration


@dataclass
class ResumeCounting(TLSServer):
    """One request per TLS connection; ``seen`` lists (server name, resumed) per handshake."""

    seen: list[tuple[str | None, bool]] = field(default_factory=list)

    def context(self) -> ssl.SSLContext:
        ctx = super().context()
        self._sni: dict[int, str | None] = {}

        def on_sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
            self._sni[id(obj)] = name

        ctx.sni_callback = on_sni  # type: ignore[assignment]
        return ctx

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        self.seen.append((self._sni.pop(id(conn), None), conn.session_reused))
        if read_head(conn, b"") is None:
            return
        body = b'{"ok": true}'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close"
                     b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


# -- the pool's transport, directly -----------------------------------------------------------


@pytest.fixture(scope="module")
def ca_file(upstream: Upstream) -> Path:
    return upstream.ca_file


@pytest.fixture(params=["TLS 1.3", "TLS 1.2"])
def server(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[ResumeCounting]:
    s = ResumeCounting(upstream.ca, ("ra.api.test", "rb.api.test"),
                       tls12=request.param == "TLS 1.2").start()
    yield s
    s.stop()


async def _get(pool: httpcore.AsyncConnectionPool, port: int, name: str) -> None:
    r = await pool.request("GET", f"https://127.0.0.1:{port}/", headers={"Host": name},
                           extensions={"sni_hostname": name, "timeout": {"pool": 10.0}})
    assert r.status == 200


def _dials(server: ResumeCounting, ca_file: Path, names: list[tuple[str, str]],
           resume: bool = True) -> list[tuple[str | None, bool]]:
    """One request per (service, server name), in order, each pool built once per service."""

    async def run() -> None:
        pools: dict[str, httpcore.AsyncConnectionPool] = {}
        for service, name in names:
            pool = pools.get(service)
            if pool is None:
                key = UpstreamKey(service, name, ca_file, False)
                pool = pools[service] = pool_transport(key, http2=False, idle=30, resume=resume)
            await _get(pool, server.port, name)
        for pool in pools.values():
            await pool.aclose()

    asyncio.run(run())
    return server.seen


def test_a_second_dial_resumes_the_first_session(server: ResumeCounting,
                                                 ca_file: Path) -> None:
    seen = _dials(server, ca_file, [("ra", "ra.api.test")] * 3)
    assert seen == [("ra.api.test", False), ("ra.api.test", True), ("ra.api.test", True)]


def test_twin_without_resumption_every_dial_is_a_full_handshake(server: ResumeCounting,
                                                                ca_file: Path) -> None:
    seen = _dials(server, ca_file, [("ra", "ra.api.test")] * 3, resume=False)
    assert seen == [("ra.api.test", False)] * 3


def test_another_service_on_the_same_server_never_resumes_its_session(
        server: ResumeCounting, ca_file: Path) -> None:
    """The same server would resume (the twin: each service's own second dial does), but
    a service's first dial offers no other service's session, even under the same name."""
    seen = _dials(server, ca_file, [("ra", "ra.api.test"), ("rb", "ra.api.test"),
                                    ("rb", "ra.api.test"), ("ra", "ra.api.test")])
    assert [r for _, r in seen] == [False, False, True, True]


def test_another_server_name_in_one_pool_never_resumes_its_session(
        server: ResumeCounting, ca_file: Path) -> None:
    seen = _dials(server, ca_file, [("ra", "ra.api.test"), ("ra", "rb.api.test"),
                                    ("ra", "rb.api.test")])
    assert seen == [("ra.api.test", False), ("rb.api.test", False), ("rb.api.test", True)]


# -- through the proxy ------------------------------------------------------------------------


def _service(name: str, port: int) -> str:
    return (f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\nmode = "host_inject"\n'
            f'auth = "bearer"\nconnect_to = "127.0.0.1:{port}"\nallow_loopback = true\n'
            'ca_cert = "upstream-ca.pem"\n\n')


def _curl(proxy: ProxyProcess, url: str) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-x", proxy.url, "--cacert",
         str(proxy.home.ca_cert), "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True, check=True, timeout=30).stdout
    canary.scan_text(f"curl {url}", out)
    assert out == b"200"


@pytest.fixture(scope="module")
def behind(upstream: Upstream) -> Iterator[ResumeCounting]:
    s = ResumeCounting(upstream.ca, ("ra.api.test", "rb.api.test")).start()
    yield s
    s.stop()


def test_through_the_proxy_each_service_resumes_its_own_session_only(  # type: ignore[no-untyped-def]
        start_proxy, behind: ResumeCounting) -> None:
    secrets = {"ra": canary.make_canary(), "rb": canary.make_canary()}
    proxy = start_proxy(_service("ra", behind.port) + _service("rb", behind.port), secrets)
    for name in ("ra", "ra", "rb", "rb"):
        _curl(proxy, f"https://{name}.api.test/")
    assert behind.seen[-4:] == [("ra.api.test", False), ("ra.api.test", True),
                                ("rb.api.test", False), ("rb.api.test", True)]
    token = (proxy.home.path / "admin-token").read_text().strip()
    r = httpx.post(f"{proxy.extra['admin_url']}/v1/reload", trust_env=False,
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200
    _curl(proxy, "https://ra.api.test/")  # a reload drops the pool with its sessions
    _curl(proxy, "https://ra.api.test/")
    assert behind.seen[-2:] == [("ra.api.test", False), ("ra.api.test", True)]
