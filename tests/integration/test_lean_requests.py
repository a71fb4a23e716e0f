"""A lean tunnel's requests over time (seam/lean.py with seam/bypass.py): keep-alive GETs
and POSTs, pipelining, streamed responses followed by a refused head, an agent gone while a
request's hooks run, a slow reader, many tunnels at once. Every probe sends its request after
at least one other on the same tunnel (the bypass attaches at a tunnel's first request)."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.tls_server import TLSServer, read_head
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block
from tests.integration.test_lean_http1 import FIRST, SseUpstream, Tunnel

pytestmark = pytest.mark.integration

@dataclass
class SlowUpstream(TLSServer):
    """HTTP/1.1 over TLS on raw sockets: ``/slow`` answers after ``delay`` seconds (the agent
    may be gone by then), any other path at once; keep-alive."""

    names: tuple[str, ...] = ("leanslow.api.test",)
    delay: float = 1.5
    answered: list[str] = field(default_factory=list)

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            path = head.split(b" ", 2)[1].decode()
            if path.startswith("/slow"):
                time.sleep(self.delay)
            body = json.dumps({"path": path}).encode()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                return
            self.answered.append(path)


def _handler(rec: Received) -> Reply:
    body = json.dumps({"method": rec.method, "path": rec.path, "len": len(rec.body),
                       "sha": hashlib.sha256(rec.body).hexdigest(),
                       "auth": rec.header("authorization") or ""}).encode()
    return 200, [(b"content-type", b"application/json")], [body]


@dataclass
class Env:
    up: Upstream
    slow: SlowUpstream
    sse: SseUpstream
    proxy: ProxyProcess
    secret: str = field(repr=False)  # (a failure report prints the fixture)


@pytest.fixture(scope="module")
def env(start_proxy, upstream: Upstream) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    upstream.handler = _handler
    slow = SlowUpstream(upstream.ca).start()
    sse = SseUpstream(upstream.ca).start()
    sse.seen_first.set()  # its events all at once
    secret = canary.make_canary()
    toml = (service_block("lean", "host_inject", "bearer", upstream.port)
            + service_block("leanslow", "host_inject", "bearer", slow.port)
            + service_block("leansse", "host_inject", "bearer", sse.port))
    secrets = {"lean": secret, "leanslow": canary.make_canary(),
               "leansse": canary.make_canary()}
    yield Env(upstream, slow, sse, start_proxy(toml, secrets), secret)
    slow.stop()
    sse.stop()


@pytest.fixture(scope="module")
def proxy(env: Env) -> ProxyProcess:
    return env.proxy


def _get(path: str, host: str = "lean.api.test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def _json(t: Tunnel) -> dict[str, Any]:
    r = t.response()
    assert r.status == 200, r.body  # type: ignore[attr-defined]
    return dict(json.loads(r.body))  # type: ignore[attr-defined]


def _record(p: ProxyProcess, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [r for r in p.audit() if r.get("event") == "request" and r.get("path") == path]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no request record for {path}: {p.audit()[-5:]}")


def test_keep_alive_requests_on_one_tunnel(env: Env, proxy: ProxyProcess) -> None:
    """Keep-alive GETs and POSTs on one tunnel: each answered by the lean layer, the
    credential injected, the body intact, each audited."""
    with Tunnel(proxy) as t:
        for i in range(6):
            t.send(_get(f"/k/{i}"))
            got = _json(t)
            assert got["path"] == f"/k/{i}"
            assert got["auth"] == "Bearer __vault.lean__"  # redacted on the way back ...
            sent = env.up.received[-1].header("authorization")
            assert sent == f"Bearer {env.secret}", "not injected"  # ... injected on the way up
        body = os.urandom(20_000)
        t.send(b"POST /p HTTP/1.1\r\nHost: lean.api.test\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
        got = _json(t)
        assert got["len"] == len(body) and got["sha"] == hashlib.sha256(body).hexdigest()
    assert _record(proxy, "/k/5")["status"] == 200
    out = proxy.output()
    assert FIRST in out
    assert "has crashed" not in out


def test_pipelined_requests_answer_in_order(proxy: ProxyProcess) -> None:
    """Five requests in one write after a first one: five answers, in order (the lean
    layer reads the rest of its buffer after each request's hooks)."""
    with Tunnel(proxy) as t:
        t.send(_get("/first"))
        assert _json(t)["path"] == "/first"
        t.send(b"".join(_get(f"/pipe/{i}") for i in range(5)))
        assert [_json(t)["path"] for _ in range(5)] == [f"/pipe/{i}" for i in range(5)]


def test_streamed_responses_then_a_refused_head(proxy: ProxyProcess) -> None:
    """Server-sent events as the second and third requests of a tunnel, then an upstream
    head mitmproxy's checks refuse: the streams whole, then 502 and the connection closed."""
    host = "leansse.api.test"
    with Tunnel(proxy, host) as t:
        for _ in range(3):
            t.send(_get("/sse", host))
            r = t.response()
            assert r.status == 200
            assert b"data: one" in r.body and b"data: two" in r.body  # type: ignore[attr-defined]
        t.send(_get("/garbage", host))
        r = t.response()
        assert r.status == 502, r.body  # type: ignore[attr-defined]
        t.sock.settimeout(10)
        assert t.file.read(1) == b""
    assert "has crashed" not in proxy.output()


def test_a_client_gone_during_the_hooks_is_client_disconnected(env: Env,
                                                             proxy: ProxyProcess) -> None:
    """The second request of a tunnel waits on a slow upstream and the agent closes
    meanwhile: the record says ``client_disconnected`` (499); a layer that missed the close
    would record a 200."""
    path = "/slow/gone"
    t = Tunnel(proxy, "leanslow.api.test")
    t.send(_get("/quick", "leanslow.api.test"))
    assert _json(t)["path"] == "/quick"
    t.send(_get(path, "leanslow.api.test"))
    time.sleep(0.4)
    t.close()
    rec = _record(proxy, path)
    got = (rec["status"], rec["reason"])
    assert got == (499, "client_disconnected"), got
    assert "has crashed" not in proxy.output()


def test_a_slow_reader_is_still_bounded(env: Env, proxy: ProxyProcess) -> None:
    """Backpressure: the agent sends many requests for a large body in one write
    (pipelined: one read of the proxy holds them all) and reads nothing. A request starts
    only once the agent's write buffer has room (seam/lean.py), so the upstream sees a
    bounded number of them, not all; once the agent reads, every answer arrives. (Before,
    the requests of one read were all answered into memory before the next drain.)"""
    big = "/big"
    env.up.handler = lambda rec: (200, [(b"content-type", b"application/octet-stream")],
                                  [b"x" * 1_000_000]) if rec.path == big else _handler(rec)
    try:
        before = len(env.up.received)
        n = 60
        with Tunnel(proxy) as t:
            t.send(_get("/warm"))
            _json(t)
            t.sock.sendall(_get(big) * n)
            time.sleep(1.5)
            seen = len([r for r in env.up.received[before:] if r.path == big])
            assert seen < n, f"all {seen} requests reached the upstream unread"
            t.sock.settimeout(30)
            for _ in range(n):
                r = t.response()
                assert r.status == 200 and len(r.body) == 1_000_000  # type: ignore[attr-defined]
    finally:
        env.up.handler = _handler


def test_many_tunnels_at_once(proxy: ProxyProcess) -> None:
    """Concurrent tunnels: every answer to its own tunnel."""
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            with Tunnel(proxy) as t:
                for i in range(8):
                    t.send(_get(f"/c/{k}/{i}"))
                    assert _json(t)["path"] == f"/c/{k}/{i}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
