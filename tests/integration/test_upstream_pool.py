"""The warm upstream pool: a new agent connection to an intercepted service reuses a
verified upstream connection instead of a new TCP + TLS handshake, per service, dropped on a
reload and on a protocol error; every gate (injection, redaction) still applies.

The upstream here counts the TCP connections it accepts, so each test reads how many
upstream handshakes the agents' requests cost. Agents are separate ``curl`` processes (a new
agent connection each)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trustme

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.tls_server import TLSServer, content_length, read_body, read_head
from tests.harness.upstream import Upstream, free_port
from tests.integration.conftest import agent_client

pytestmark = pytest.mark.integration


@dataclass
class CountingUpstream(TLSServer):
    """HTTP/1.1 over TLS with keep-alive; counts accepted connections. Paths:
    ``/echo`` answers the Authorization header it got, ``/garbage`` a malformed head (then
    closes), ``/sse`` two events 1 s apart, ``/hang`` nothing, ``/stall`` a head and part of
    the body then nothing, ``/cut`` the same then a close, ``/then-drop`` answers and closes
    its connection on the next request unanswered; else JSON naming the connection."""

    auth_seen: list[str] = field(default_factory=list)
    drop_next: set[int] = field(default_factory=set)  # connections to close on next request
    ended: dict[int, float] = field(default_factory=dict)  # connection -> when it ended

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        try:
            self._exchanges(conn, n)
        finally:
            self.ended[n] = time.monotonic()

    def _exchanges(self, conn: ssl.SSLSocket, n: int) -> None:
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            _, buf = read_body(conn, buf, content_length(head))
            if n in self.drop_next:  # as a keep-alive timeout racing the request
                self.drop_next.discard(n)
                return
            if path == "/then-drop":
                self.drop_next.add(n)
            if not self._reply(conn, path, headers, n):
                return

    def _reply(self, conn: ssl.SSLSocket, path: str, headers: dict[str, str], n: int) -> bool:
        if path == "/garbage":
            conn.sendall(b"HTTP/1.1 2x0 \x00bogus\r\nContent-Length: nope\r\n\r\n")
            return False
        if path == "/hang":
            time.sleep(5)
            return False
        if path in ("/stall", "/cut"):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 200_000)
            if path == "/stall":
                time.sleep(5)
            return False
        if path in ("/small-stall", "/small-cut"):  # a body the pool reads with its head
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 200)
            if path == "/small-stall":
                time.sleep(5)
            return False
        if path == "/sse":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for event in (b"data: one\n\n", b"data: two\n\n"):
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                time.sleep(1.0)
            conn.sendall(b"0\r\n\r\n")
            return True
        if path == "/echo":
            auth = headers.get("authorization", "")
            self.auth_seen.append(auth)
            body = json.dumps({"echo": auth}).encode()
        else:
            body = json.dumps({"conn": n, "path": path}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        return True


def _services(port: int, names: tuple[str, ...], **extra: str) -> str:
    out = ""
    for name in names:
        out += (f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\n'
                f'mode = "host_inject"\nauth = "bearer"\nconnect_to = "127.0.0.1:{port}"\n'
                'allow_loopback = true\nca_cert = "upstream-ca.pem"\n')
        out += "".join(f"{k} = {v}\n" for k, v in extra.items()) + "\n"
    return out


@dataclass
class Env:
    up: CountingUpstream
    pooled: ProxyProcess
    unpooled: ProxyProcess
    secrets: dict[str, str] = field(repr=False)


@pytest.fixture(scope="module")
def env(start_proxy, upstream: Upstream) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    up = CountingUpstream(upstream.ca, ("pa.api.test", "pb.api.test", "pd.api.test",
                                        "pf.api.test")).start()
    secrets = {name: canary.make_canary() for name in ("pa", "pb", "pc", "pf")}
    toml = _services(up.port, ("pa", "pb", "pf"))
    closed = free_port()  # nothing listens: the dial is refused
    broken = (_services(closed, ("pc",))
              + _services(up.port, ("pd",)).replace('ca_cert = "upstream-ca.pem"\n', ""))
    blackhole = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    broken += _services(blackhole.getsockname()[1], ("pe",))
    timeouts = "[proxy]\nconnect_timeout = 1\nresponse_timeout = 2\nidle_timeout = 1.5\n\n"
    pooled = start_proxy(timeouts + toml + broken,
                         {**secrets, "pd": canary.make_canary(), "pe": canary.make_canary()})
    unpooled = start_proxy("[proxy]\nupstream_pool_idle = 0\n\n" + toml, secrets)
    yield Env(up, pooled, unpooled, secrets)
    up.stop()
    blackhole.close()


def curl(proxy: ProxyProcess, url: str, *extra: str) -> tuple[int, bytes]:
    """One agent connection (a new curl process): status and body."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-x", proxy.url, "--cacert", str(proxy.home.ca_cert),
         "-w", "\n%{http_code}", *extra, url],
        capture_output=True, check=True, timeout=30,
    ).stdout
    canary.scan_text(f"curl {url}", out)
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def _grows(env: Env, proxy: ProxyProcess, url: str, times: int = 2) -> int:
    before = env.up.accepted
    for _ in range(times):
        status, _ = curl(proxy, url)
        assert status == 200
    return env.up.accepted - before


def test_new_agent_connections_share_one_upstream_connection(env: Env) -> None:
    assert _grows(env, env.pooled, "https://pa.api.test/a", times=1) <= 1  # warm it
    assert _grows(env, env.pooled, "https://pa.api.test/a", times=3) == 0


def test_without_the_pool_each_agent_connection_dials(env: Env) -> None:
    """The twin: ``upstream_pool_idle = 0`` is mitmproxy's path, one upstream per agent."""
    assert _grows(env, env.unpooled, "https://pa.api.test/a", times=3) == 3


def test_two_services_on_one_address_never_share(env: Env) -> None:
    curl(env.pooled, "https://pa.api.test/warm")
    before = env.up.accepted
    status, body = curl(env.pooled, "https://pb.api.test/b")
    assert status == 200 and json.loads(body)["path"] == "/b"
    assert env.up.accepted == before + 1  # pb's own connection, not pa's warm one
    assert _grows(env, env.pooled, "https://pb.api.test/b") == 0  # and pb's is warm now


def test_credential_injected_and_echo_redacted_through_the_pool(env: Env) -> None:
    env.up.auth_seen.clear()
    status, body = curl(env.pooled, "https://pa.api.test/echo")
    assert status == 200
    # The upstream got the real credential (so the echo carried the secret) ...
    assert env.up.auth_seen == [f"Bearer {env.secrets['pa']}"]
    # ... and the agent got it back scrubbed to the placeholder.
    assert env.secrets["pa"].encode() not in body
    assert json.loads(body)["echo"] == "Bearer __vault.pa__"


def test_protocol_error_drops_the_connection(env: Env) -> None:
    curl(env.pooled, "https://pa.api.test/warm")
    before = env.up.accepted
    status, body = curl(env.pooled, "https://pa.api.test/garbage")
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_protocol"
    assert b"bogus" not in body
    status, body = curl(env.pooled, "https://pa.api.test/after")
    assert status == 200 and json.loads(body)["path"] == "/after"
    # the warm connection took the garbage and was closed; /after needed a fresh one
    assert env.up.accepted == before + 1
    audit = [a for a in env.pooled.audit() if a.get("path") == "/garbage"]
    assert audit and audit[-1]["reason"] == "upstream_protocol" and audit[-1]["status"] == 502


@pytest.mark.parametrize(("host", "status", "code"), [
    ("pc", 502, "upstream_unreachable"),  # connection refused
    ("pe", 504, "upstream_timeout"),  # TCP accepted, no TLS: connect_timeout
    ("pd", 502, "upstream_tls"),  # the upstream's CA is not this service's trust
])
def test_dial_failures_answer_as_without_the_pool(env: Env, host: str, status: int,
                                                  code: str) -> None:
    got, body = curl(env.pooled, f"https://{host}.api.test/fail")
    assert got == status and json.loads(body)["error"]["code"] == code, body
    audit = [a for a in env.pooled.audit() if a.get("service") == host]
    assert audit and audit[-1]["reason"] == code and audit[-1]["status"] == status


def test_response_timeout_through_the_pool(env: Env) -> None:
    status, body = curl(env.pooled, "https://pa.api.test/hang")
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "unpooled"])
def test_sse_first_event_arrives_before_the_stream_ends(env: Env, pooled: bool) -> None:
    proxy = env.pooled if pooled else env.unpooled
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    # not agent_client: its canary hook reads each body whole before the test sees it
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as c:
        started = time.monotonic()
        with c.stream("GET", "https://pa.api.test/sse") as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            first_at = time.monotonic() - started
            rest = [line for line in lines if line]
    canary.scan_text("sse", "".join([first, *rest]).encode())
    assert first == "data: one" and rest == ["data: two"]
    assert first_at < 0.9  # the second event is sent 1 s after the first


def test_http2_agent_through_the_pool(env: Env) -> None:
    """While no pooled answer told the service's upstream protocol (pf: used only here), an
    agent that offers HTTP/2 gets it; once the upstream answered over HTTP/1.1, a new agent
    connection gets HTTP/1.1 (curl offers HTTP/2 first), as an eager dial mirrors."""
    with agent_client(env.pooled, http2=True) as c:
        rs = [c.get(f"https://pf.api.test/h2/{i}") for i in range(3)]
    assert [r.status_code for r in rs] == [200, 200, 200]
    assert rs[0].http_version == "HTTP/2"
    before = env.up.accepted
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-x", env.pooled.url, "--cacert",
         str(env.pooled.home.ca_cert), "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
         "https://pf.api.test/again"], capture_output=True, check=True, timeout=30).stdout
    assert out == b"200 1.1"
    assert env.up.accepted == before  # on the warm connection all the same


def test_reload_drops_the_pool(env: Env) -> None:
    curl(env.pooled, "https://pa.api.test/warm")
    assert _grows(env, env.pooled, "https://pa.api.test/x", times=1) == 0
    token = (env.pooled.home.path / "admin-token").read_text().strip()
    r = httpx.post(f"{env.pooled.extra['admin_url']}/v1/reload", trust_env=False,
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200
    assert _grows(env, env.pooled, "https://pa.api.test/x", times=2) == 1


def test_upload_over_a_mebibyte_streams_on_its_own_connection(env: Env) -> None:
    """Outside the pool (a streamed body): mitmproxy's own upstream connection."""
    curl(env.pooled, "https://pa.api.test/warm")
    before = env.up.accepted
    with agent_client(env.pooled) as c:
        r = c.post("https://pa.api.test/up", content=b"x" * (2 * 1024 * 1024 + 1))
    assert r.status_code == 200 and r.json()["path"] == "/up"
    assert env.up.accepted == before + 1


def test_a_stalled_or_cut_body_closes_the_agent_and_is_audited(env: Env) -> None:
    for path, code in (("/stall", "upstream_timeout"), ("/cut", "upstream_protocol")):
        with agent_client(env.pooled) as c, pytest.raises(httpx.TransportError):
            with c.stream("GET", f"https://pa.api.test{path}") as r:
                assert r.status_code == 200  # the head and part of the body did arrive
                for _ in r.iter_raw():
                    pass
        deadline = time.monotonic() + 10
        audit: list[dict[str, object]] = []
        while not audit and time.monotonic() < deadline:
            audit = [a for a in env.pooled.audit() if a.get("path") == path]
            time.sleep(0.05)
        assert audit and audit[-1]["reason"] == code, audit


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/small-stall", 504, "upstream_timeout"), ("/small-cut", 502, "upstream_protocol")])
def test_a_stalled_or_cut_small_body_is_answered_with_an_error(env: Env, path: str,
                                                              status: int, code: str) -> None:
    """A body of at most 64 KiB is read with its head: a stall or a cut is an error answer
    (the large-body twin above gets the head, then a cut connection)."""
    got, body = curl(env.pooled, f"https://pa.api.test{path}")
    assert got == status and json.loads(body)["error"]["code"] == code


def test_a_connection_closed_as_it_is_reused_is_retried_when_idempotent(env: Env) -> None:
    curl(env.pooled, "https://pa.api.test/then-drop")  # its connection drops the next one
    status, body = curl(env.pooled, "https://pa.api.test/again")
    assert status == 200 and json.loads(body)["path"] == "/again"


def test_twin_a_post_on_such_a_connection_is_not_resent(env: Env) -> None:
    curl(env.pooled, "https://pa.api.test/then-drop")
    before = env.up.accepted
    status, body = curl(env.pooled, "https://pa.api.test/again", "--data", "x=1")
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_protocol"
    assert env.up.accepted == before  # no second attempt on a fresh connection


def test_a_request_asking_for_trailers_keeps_its_own_connection(env: Env) -> None:
    """``TE: trailers`` (gRPC): the pool relays no response trailers, so mitmproxy's path."""
    curl(env.pooled, "https://pa.api.test/warm")
    before = env.up.accepted
    status, _ = curl(env.pooled, "https://pa.api.test/t", "-H", "TE: trailers")
    assert status == 200 and env.up.accepted == before + 1
    assert _grows(env, env.pooled, "https://pa.api.test/t", times=1) == 0  # twin: pooled


def test_an_idle_connection_is_not_reused_past_upstream_pool_idle(  # type: ignore[no-untyped-def]
    env: Env, start_proxy
) -> None:
    toml = "[proxy]\nupstream_pool_idle = 3\n\n" + _services(env.up.port, ("pa",))
    proxy = start_proxy(toml, {"pa": env.secrets["pa"]})
    curl(proxy, "https://pa.api.test/warm")
    assert _grows(env, proxy, "https://pa.api.test/soon", times=1) == 0  # twin: still warm
    time.sleep(4)
    assert _grows(env, proxy, "https://pa.api.test/later", times=1) == 1


def test_an_idle_connection_closes_at_its_expiry_while_the_watcher_sleeps(  # type: ignore[no-untyped-def]
    env: Env, start_proxy
) -> None:
    """The pool's watcher sleeps until the earliest idle expiry (no 1 s tick): the
    connection still closes once ``upstream_pool_idle`` has passed, and not before."""
    toml = "[proxy]\nupstream_pool_idle = 1.5\n\n" + _services(env.up.port, ("pa",))
    proxy = start_proxy(toml, {"pa": env.secrets["pa"]})
    status, body = curl(proxy, "https://pa.api.test/expiring")
    done = time.monotonic()
    assert status == 200
    n = json.loads(body)["conn"]
    deadline = done + 6
    while n not in env.up.ended and time.monotonic() < deadline:
        time.sleep(0.02)
    assert n in env.up.ended
    assert 1.3 <= env.up.ended[n] - done <= 2.6


# -- an HTTP/2 connection the upstream closed while idle ---------------------------------------

def _h2_pool_after_server_idle_close(tmp_path: Any, drop: bool) -> list[str]:
    """Two POSTs over one pooled HTTP/2 connection to a real hypercorn upstream whose
    keep-alive timeout (1 s) closes the connection between them; what each got."""
    import asyncio
    from pathlib import Path

    import httpcore
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from vaultproxy.net.outbound import UpstreamKey, drop_closed, pool_transport

    ca = trustme.CA()
    pem = tmp_path / "up.pem"
    ca.issue_cert("up.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> list[str]:
        cfg = Config()
        cfg.bind = [f"127.0.0.1:{port}"]
        cfg.keep_alive_timeout = 1
        cfg.certfile = cfg.keyfile = str(pem)
        cfg.alpn_protocols = ["h2"]
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        pool = pool_transport(UpstreamKey("s", "up.test", Path(ca_file), False),
                              http2=True, idle=30)
        got = []
        for _ in range(2):
            if drop:
                await drop_closed(pool)
            req = httpcore.Request(
                b"POST", httpcore.URL(scheme=b"https", host=b"127.0.0.1", port=port, target=b"/"),
                headers=[(b"Host", b"up.test"), (b"Content-Length", b"0")],
                extensions={"sni_hostname": "up.test"})
            try:
                r = await pool.handle_async_request(req)
                await r.aread()
                await r.aclose()
                got.append(f"{r.extensions.get('http_version', b'').decode()} {r.status}")
            except httpcore.RemoteProtocolError as e:
                got.append(f"error: {e}")
            await asyncio.sleep(2.0)  # past the upstream's keep-alive timeout
        await pool.aclose()
        stop.set()
        try:
            await asyncio.wait_for(server, 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - hypercorn's TLS shutdown noise
            pass
        return got

    return asyncio.run(run())


def test_an_http2_connection_the_upstream_closed_is_not_reused(tmp_path: Any) -> None:
    """A POST (never resent) after the upstream's keep-alive timeout closed the pooled HTTP/2
    connection goes out on a new connection; httpcore alone would reuse the dead one."""
    assert _h2_pool_after_server_idle_close(tmp_path, drop=True) == ["HTTP/2 200"] * 2


def test_twin_without_the_check_the_dead_http2_connection_is_reused(tmp_path: Any) -> None:
    got = _h2_pool_after_server_idle_close(tmp_path, drop=False)
    assert got[0] == "HTTP/2 200" and got[1].startswith("error: "), got


H1_FIRST = "upstream HTTP/1.1: first exchange on the pool's own client"


def test_an_http11_upstream_goes_through_the_pools_own_client(env: Env) -> None:
    """Its requests leave through net/h1pool.py, not httpcore's pool (the worker logs the
    first such exchange)."""
    assert curl(env.pooled, "https://pa.api.test/h1")[0] == 200
    assert H1_FIRST in env.pooled.output()


def test_twin_without_the_pool_no_request_goes_through_it(env: Env) -> None:
    assert curl(env.unpooled, "https://pa.api.test/h1")[0] == 200
    assert H1_FIRST not in env.unpooled.output()
