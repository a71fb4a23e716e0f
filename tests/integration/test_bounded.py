"""Every wait on an upstream is bounded (SPEC §4 ``[proxy]`` timeouts, §5 ``upstream_timeout``),
against raw-socket upstreams that misbehave on purpose, each with its twin:

- a *blackhole* accepts TCP and never speaks TLS: the agent gets ``504 upstream_timeout``
  after ``connect_timeout``, the record says so, and the proxy closes the upstream socket
  (the blackhole sees EOF; the proxy's descriptor count returns to its baseline after the
  agent leaves);
- a *full backlog* never completes the TCP handshake: the CONNECT is answered ``504`` and
  audited as a refused tunnel; a port nobody listens on is ``502 upstream_unreachable``,
  audited and logged (CONNECT-time refusals leave a record);
- a *silent* upstream completes TLS and reads the request, never answers: ``504`` after
  ``response_timeout``; twin: the same upstream answering in time is a 200;
- a *stalling* upstream sends the head and part of the body, then nothing: after
  ``idle_timeout`` the agent's connection is closed, and the record has a code, not null;
  one that closes mid-body is audited ``502`` with a code too.

The timeouts are small in the test config (seconds); nothing asserts a duration beyond
generous bounds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.integration.conftest import agent_client
from tests.integration.test_admin import Quiet

pytestmark = pytest.mark.integration

# upstream_pool_idle = 0: these probe mitmproxy's own dial (a CONNECT refused when the dial
# fails); the warm pool's bounds have their own tests (test_upstream_pool.py).
TIMEOUTS = ("[proxy]\nconnect_timeout = 1\nresponse_timeout = 1.5\nidle_timeout = 1\n"
            "upstream_pool_idle = 0\n\n")


@dataclass
class RawUpstream:
    """A TCP listener on loopback whose behaviour per connection is ``mode``:
    ``blackhole`` (accept, never speak), ``silent`` (TLS, read the request, never answer),
    ``stall`` (TLS, send a head and half a body, then nothing), ``answer`` (TLS, a 200)."""

    mode: str
    ca: trustme.CA
    sock: socket.socket = field(default_factory=socket.socket)
    accepted: int = 0
    closed_by_proxy: int = 0
    requests: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> RawUpstream:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            if self.mode != "blackhole":
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                self.ca.issue_cert("*.api.test").configure_cert(ctx)
                conn = ctx.wrap_socket(conn, server_side=True)
                conn.recv(65536)  # the request head
                self.requests += 1
                if self.mode == "answer":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                elif self.mode in ("stall", "cut"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n"
                                 + b"x" * 200_000)
                    if self.mode == "cut":  # the upstream goes away mid-body
                        conn.close()
                        return
            while conn.recv(65536):  # until the proxy closes its side
                pass
            self.closed_by_proxy += 1
        except OSError:
            self.closed_by_proxy += 1
        finally:
            conn.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def raw(ca: trustme.CA) -> Iterator[dict[str, RawUpstream]]:
    ups = {m: RawUpstream(m, ca).start() for m in ("blackhole", "silent", "stall", "cut", "answer")}
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full and never drained: SYNs to it are dropped."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(4):  # listen(0) queues one or two; the rest stay in SYN_SENT
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.2)
    yield port
    for c in fillers:
        c.close()
    s.close()


def _service(name: str, port: int) -> str:
    return (
        f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\nmode = "host_inject"\n'
        f'auth = "bearer"\nconnect_to = "127.0.0.1:{port}"\nallow_loopback = true\n'
        'ca_cert = "raw-ca.pem"\n\n'
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, raw: dict[str, RawUpstream],
          ca: trustme.CA, full_backlog: int) -> Iterator[ProxyProcess]:
    base = tmp_path_factory.mktemp("bounded")
    canary.watch(base)
    ports = {m: u.port for m, u in raw.items()}
    ports.update(synless=full_backlog, nobody=_free_port())
    toml = TIMEOUTS + "".join(_service(m, p) for m, p in ports.items())
    secrets: dict[str, str | dict[str, str]] = Quiet({m: make_canary() for m in ports})  # type: ignore[assignment]
    home = ProxyHome.create(base, toml, secrets, files={"raw-ca.pem": ca.cert_pem.bytes()})
    p = ProxyProcess.start(home)
    yield p
    p.stop()


def _records(proxy: ProxyProcess, host: str) -> list[dict[str, object]]:
    return [r for r in proxy.audit() if r.get("host") == host and r["event"] != "forward"]


def _impatient(proxy: ProxyProcess) -> httpx.Client:
    """An agent that gives up after 0.3 s (before any of the proxy's deadlines)."""
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    return httpx.Client(proxy=proxy.url, verify=ctx, timeout=0.3)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_blackhole_upstream_is_answered_504_and_its_socket_freed(proxy, raw) -> None:  # type: ignore[no-untyped-def]
    hole = raw["blackhole"]
    before = hole.accepted
    with agent_client(proxy) as c:
        r = c.get("https://blackhole.api.test/x")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert hole.accepted == before + 1  # the probe reached the blackhole (it held the dial)
    deadline = time.monotonic() + 10
    while hole.closed_by_proxy < hole.accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hole.closed_by_proxy == hole.accepted  # the proxy closed the upstream socket
    (rec,) = _records(proxy, "blackhole.api.test")
    assert (rec["status"], rec["reason"], rec["outcome"]) == (504, "upstream_timeout", "error")


def test_agents_that_leave_a_blackhole_leave_no_descriptor_behind(proxy, raw) -> None:  # type: ignore[no-untyped-def]
    pid = proxy.proc.pid
    with agent_client(proxy) as c:  # warm: the first connection opens lasting descriptors
        assert c.get("https://answer.api.test/warm").status_code == 200
    time.sleep(0.5)
    baseline = _fds(pid)
    hole = raw["blackhole"]
    before = hole.accepted
    for i in range(5):  # each agent gives up before connect_timeout
        with _impatient(proxy) as c, pytest.raises(httpx.TimeoutException):
            c.get(f"https://blackhole.api.test/gone/{i}")
    deadline = time.monotonic() + 10
    while hole.accepted < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hole.accepted == before + 5  # twin: each one did hold an upstream socket open
    while (_fds(pid) > baseline or hole.closed_by_proxy < hole.accepted) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fds(pid) <= baseline
    assert hole.closed_by_proxy == hole.accepted


def test_a_dial_that_never_completes_is_a_504_connect_refusal_audited(proxy) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c, pytest.raises(httpx.ProxyError, match="504"):
        c.get("https://synless.api.test/x")
    (rec,) = _records(proxy, "synless.api.test")
    assert rec["event"] == "tunnel_refused"
    assert (rec["status"], rec["reason"]) == (504, "upstream_timeout")
    assert "CONNECT synless.api.test:443 refused: 504 upstream_timeout" in proxy.output()


def test_a_refusing_upstream_is_a_502_connect_refusal_audited_and_logged(proxy) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c, pytest.raises(httpx.ProxyError, match="502"):
        c.get("https://nobody.api.test/x")
    (rec,) = _records(proxy, "nobody.api.test")
    assert rec["event"] == "tunnel_refused"
    assert (rec["status"], rec["reason"]) == (502, "upstream_unreachable")
    assert "CONNECT nobody.api.test:443 refused: 502 upstream_unreachable" in proxy.output()


def test_a_silent_upstream_is_answered_504_after_response_timeout(proxy, raw) -> None:  # type: ignore[no-untyped-def]
    silent = raw["silent"]
    before = silent.requests
    with agent_client(proxy) as c:
        r = c.get("https://silent.api.test/x")
        twin = c.get("https://answer.api.test/x")  # the same path, an upstream that answers
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert silent.requests == before + 1  # the request reached it
    assert twin.status_code == 200 and twin.text == "ok"
    (rec,) = _records(proxy, "silent.api.test")
    assert (rec["status"], rec["reason"]) == (504, "upstream_timeout")


def test_a_stalled_stream_is_closed_after_idle_timeout_and_audited(proxy, raw) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c, pytest.raises(httpx.TransportError):
        with c.stream("GET", "https://stall.api.test/x") as r:
            assert r.status_code == 200  # the head and part of the body did arrive
            for _ in r.iter_raw():
                pass
    deadline = time.monotonic() + 10
    while not _records(proxy, "stall.api.test") and time.monotonic() < deadline:
        time.sleep(0.05)
    (rec,) = _records(proxy, "stall.api.test")
    assert rec["status"] is not None
    assert (rec["status"], rec["reason"]) == (504, "upstream_timeout")


def test_timeouts_are_validated(tmp_path: Path) -> None:
    from vaultproxy.config.load import parse_config
    from vaultproxy.errors import ConfigError

    parse_config("[proxy]\nconnect_timeout = 0.5\nidle_timeout = 30\n", tmp_path)  # twin
    for bad in ("0", "-1", '"10"', "true", "100000"):
        with pytest.raises(ConfigError, match=r"connect_timeout.*seconds from") as e:
            parse_config(f"[proxy]\nconnect_timeout = {bad}\n", tmp_path)
        assert "100000" not in str(e.value)


def test_a_tunnel_losing_its_upstream_is_audited_with_a_code(proxy) -> None:  # type: ignore[no-untyped-def]
    with agent_client(proxy) as c, pytest.raises(httpx.TransportError):
        with c.stream("GET", "https://cut.api.test/x") as r:
            assert r.status_code == 200  # the head did arrive: only a close can follow
            for _ in r.iter_raw():
                pass
    deadline = time.monotonic() + 10
    while not _records(proxy, "cut.api.test") and time.monotonic() < deadline:
        time.sleep(0.05)
    (rec,) = _records(proxy, "cut.api.test")
    assert rec["outcome"] == "error"
    assert rec["status"] == 502 and rec["reason"] in {"upstream_protocol", "upstream_unreachable"}
