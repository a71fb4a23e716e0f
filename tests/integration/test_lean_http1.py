"""The lean HTTP/1.1 path (seam/lean.py): a pooled service's HTTP/1.1 tunnel is served
without mitmproxy's HTTP layer, through the same hooks; anything it does not handle exactly
goes to mitmproxy's HTTP layer for that connection.

Two proxies on the same upstream: ``lean`` (the default) and ``stock``
(``VAULTPROXY_LEAN_HTTP1=0``, mitmproxy's HTTP layer for every request): each behaviour is
checked on both, and which path served is read from the proxy's own log lines."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.tls_server import TLSServer, read_head
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration

FIRST = "lean HTTP/1.1: first request served without mitmproxy's HTTP layer"
HANDED = "lean HTTP/1.1: a connection goes to mitmproxy's HTTP layer"


@dataclass
class SseUpstream(TLSServer):
    """HTTP/1.1 over TLS. ``/sse``: server-sent events, the second produced only once the
    test saw the first (``seen_first``; ``released`` says whether it did, per stream);
    ``/garbage``: a malformed head; ``/clte``: a head with Content-Length and
    Transfer-Encoding (response smuggling); then the connection closes."""

    names: tuple[str, ...] = ("leansse.api.test",)
    seen_first: threading.Event = field(default_factory=threading.Event)
    released: list[bool] = field(default_factory=list)

    def serve(self, conn: ssl.SSLSocket, n: int) -> None:
        buf = b""
        while (got := read_head(conn, buf)) is not None:
            head, buf = got
            if head.startswith(b"GET /garbage "):
                conn.sendall(b"HTTP/1.1 2x0 \x00bogus\r\nContent-Length: nope\r\n\r\n")
                return
            if head.startswith(b"GET /clte "):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"
                             b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            one = b"data: one\n\n"
            conn.sendall(b"%x\r\n%s\r\n" % (len(one), one))
            self.released.append(self.seen_first.wait(15))
            two = b"data: two\n\n"
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(two), two))


def _handler(rec: Received) -> Reply:
    if rec.path == "/204":
        return 204, [], []
    if rec.path == "/304":
        return 304, [(b"etag", b'"x"')], []
    digest = hashlib.sha256(rec.body).hexdigest()
    body = json.dumps({"method": rec.method, "path": rec.path, "len": len(rec.body),
                       "sha": digest, "auth": rec.header("authorization") or ""}).encode()
    return 200, [(b"content-type", b"application/json")], [body]


@dataclass
class Env:
    up: Upstream
    lean: ProxyProcess
    stock: ProxyProcess
    secret: str
    sse: SseUpstream


@pytest.fixture(scope="module")
def env(start_proxy, upstream: Upstream) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    sse = SseUpstream(upstream.ca).start()
    upstream.handler = _handler
    secret = canary.make_canary()
    rules = '[{ method = "*", path = "/denied/*", action = "deny" }]'
    toml = (service_block("lean", "host_inject", "bearer", upstream.port, rules=rules)
            + service_block("leansse", "host_inject", "bearer", sse.port))
    secrets = {"lean": secret, "leansse": canary.make_canary()}
    lean = start_proxy(toml, secrets)
    stock = start_proxy(toml, secrets, env={**os.environ, "VAULTPROXY_LEAN_HTTP1": "0"})
    yield Env(upstream, lean, stock, secret, sse)
    sse.stop()


class Tunnel:
    """One agent connection: CONNECT, then TLS offering only HTTP/1.1, raw bytes."""

    def __init__(self, proxy: ProxyProcess, host: str = "lean.api.test") -> None:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
        ctx.set_alpn_protocols(["http/1.1"])
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        r = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        r.begin()
        if method != "HEAD":
            r.body = r.read()  # type: ignore[attr-defined]
            canary.scan_text("lean tunnel", r.body)  # type: ignore[attr-defined]
        return r

    def makefile(self, mode: str) -> Any:  # http.client reads one shared buffer
        return _NoClose(self.file)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoClose:
    """The tunnel's reader as one response sees it: closing the response leaves it open."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        pass


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: lean.api.test\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module", params=["lean", "stock"])
def proxy(request: pytest.FixtureRequest, env: Env) -> ProxyProcess:
    return env.lean if request.param == "lean" else env.stock


def test_keep_alive_requests_take_the_lean_path(env: Env) -> None:
    with agent_client(env.lean) as c:
        rs = [c.get(f"https://lean.api.test/k/{i}") for i in range(20)]
    assert [r.status_code for r in rs] == [200] * 20
    assert [r.json()["path"] for r in rs] == [f"/k/{i}" for i in range(20)]
    got = [x.header("authorization") for x in env.up.received if x.path.startswith("/k/")]
    assert got[-20:] == [f"Bearer {env.secret}"] * 20  # injected on the way up ...
    assert {r.json()["auth"] for r in rs} == {"Bearer __vault.lean__"}  # ... redacted back
    assert FIRST in env.lean.output()


def test_stock_proxy_never_takes_the_lean_path(env: Env) -> None:
    """The twin: with ``VAULTPROXY_LEAN_HTTP1=0`` the same requests never log the line."""
    with agent_client(env.stock) as c:
        rs = [c.get(f"https://lean.api.test/k/{i}") for i in range(5)]
    assert [r.status_code for r in rs] == [200] * 5
    assert FIRST not in env.stock.output()


def test_post_bodies(proxy: ProxyProcess) -> None:
    body = os.urandom(300_000)
    with agent_client(proxy) as c:
        r1 = c.post("https://lean.api.test/cl", content=body)
        r2 = c.post("https://lean.api.test/chunked", content=iter([body[:1000], body[1000:]]))
        r3 = c.post("https://lean.api.test/empty", content=b"")
    for r in (r1, r2):
        assert r.status_code == 200 and r.json()["len"] == len(body)
        assert r.json()["sha"] == hashlib.sha256(body).hexdigest()
    assert r3.status_code == 200 and r3.json()["len"] == 0


def test_chunked_upload_goes_to_mitmproxys_layer(env: Env) -> None:
    with agent_client(env.lean) as c:
        r = c.post("https://lean.api.test/chunked", content=iter([b"a", b"b"]))
    assert r.status_code == 200 and r.json()["len"] == 2
    assert f"{HANDED} (transfer-encoding)" in env.lean.output()


def test_head_204_304_then_more_on_one_connection(proxy: ProxyProcess) -> None:
    with Tunnel(proxy) as t:
        t.send(b"HEAD /h HTTP/1.1\r\nHost: lean.api.test\r\n\r\n")
        r = t.response("HEAD")
        assert r.status == 200 and r.read() == b""
        for path, status in (("/204", 204), ("/304", 304)):
            t.send(_get(path))
            r = t.response()
            assert r.status == status and r.body == b""  # type: ignore[attr-defined]
        t.send(_get("/after"))
        r = t.response()
        assert r.status == 200 and json.loads(r.body)["path"] == "/after"  # type: ignore[attr-defined]


def test_pipelined_requests_answer_in_order(proxy: ProxyProcess) -> None:
    with Tunnel(proxy) as t:
        t.send(_get("/p1") + _get("/p2") + _get("/p3"))
        paths = [json.loads(t.response().body)["path"] for _ in range(3)]  # type: ignore[attr-defined]
    assert paths == ["/p1", "/p2", "/p3"]


SMUGGLING = (b"POST /s HTTP/1.1\r\nHost: lean.api.test\r\nContent-Length: 4\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
             b"Host: lean.api.test\r\n\r\n")
MALFORMED = b"GET /m HTTP/1.1 junk\r\nHost: lean.api.test\r\n\r\n"


@pytest.mark.parametrize("head", [SMUGGLING, MALFORMED], ids=["cl-te", "request-line"])
def test_bad_heads_refused_as_by_mitmproxy(env: Env, proxy: ProxyProcess, head: bytes) -> None:
    """On a connection that has just served a request (the lean layer is serving it), a
    smuggling or malformed head is refused 400 with our JSON, and the smuggled request never
    reaches the upstream — on both proxies alike."""
    before = len(env.up.received)
    with Tunnel(proxy) as t:
        t.send(_get("/ok"))
        assert t.response().status == 200  # twin: this connection reaches the upstream
        t.send(head)
        r = t.response()
    assert r.status == 400, r.body  # type: ignore[attr-defined]
    assert json.loads(r.body)["error"]["code"] == "invalid_request"  # type: ignore[attr-defined]
    paths = [x.path for x in env.up.received[before:]]
    assert paths == ["/ok"]


def test_sse_event_arrives_before_the_next_is_produced(env: Env, proxy: ProxyProcess) -> None:
    """The upstream produces its second event only once the agent saw the first: a proxy
    that held the first until the stream ended would leave ``released`` False."""
    env.sse.seen_first.clear()
    env.sse.released.clear()
    with Tunnel(proxy, "leansse.api.test") as t:
        t.send(b"GET /sse HTTP/1.1\r\nHost: leansse.api.test\r\n\r\n")
        r = http.client.HTTPResponse(t, method="GET")  # type: ignore[arg-type]
        r.begin()
        assert r.status == 200
        first = b""
        while b"data: one" not in first:
            first += r.read1(4096)
        env.sse.seen_first.set()
        rest = r.read()
    assert b"data: two" in first + rest
    assert env.sse.released == [True]


def test_websocket_upgrade_goes_to_mitmproxys_layer(env: Env) -> None:
    ctx = ssl.create_default_context(cafile=str(env.lean.home.ca_cert))
    with ws_connect("wss://lean.api.test/ws", ssl=ctx, proxy=env.lean.url,
                    open_timeout=20) as ws:
        ws.send("hi")
        assert ws.recv(timeout=20) == "echo:hi"
    assert f"{HANDED} (upgrade)" in env.lean.output()


def test_lean_requests_are_audited(env: Env) -> None:
    with agent_client(env.lean) as c:
        assert c.get("https://lean.api.test/audited").status_code == 200
    rows = [a for a in env.lean.audit() if a.get("path") == "/audited"]
    assert rows and rows[-1]["status"] == 200 and rows[-1]["service"] == "lean"


def test_a_rule_refusal_answers_and_the_connection_goes_on(env: Env, proxy: ProxyProcess) -> None:
    """A stage answering itself (RequestGate's rule): 403, nothing reaches the upstream, and
    the next request on the same connection is served."""
    before = len(env.up.received)
    with Tunnel(proxy) as t:
        t.send(_get("/denied/x"))
        r = t.response()
        assert r.status == 403, r.body  # type: ignore[attr-defined]
        t.send(_get("/allowed"))
        assert t.response().status == 200
    assert [x.path for x in env.up.received[before:]] == ["/allowed"]


@pytest.mark.parametrize("path", ["/garbage", "/clte"])
def test_upstream_protocol_errors_answer_as_on_mitmproxys_layer(env: Env, path: str) -> None:
    """A malformed or smuggling upstream head: the same status and code on both paths, and
    none of the upstream's bytes."""
    got = {}
    for name, p in (("lean", env.lean), ("stock", env.stock)):
        with Tunnel(p, "leansse.api.test") as t:
            t.send(f"GET {path} HTTP/1.1\r\nHost: leansse.api.test\r\n\r\n".encode())
            r = t.response()
        assert b"bogus" not in r.body and b"hello" not in r.body  # type: ignore[attr-defined]
        got[name] = (r.status, json.loads(r.body)["error"]["code"])  # type: ignore[attr-defined]
    assert got["lean"] == got["stock"]
    assert got["lean"][0] == 502


def _audited(proxy: ProxyProcess, path: str) -> list[dict[str, object]]:
    """The path's records once its ``request`` record is there (written as the flow ends;
    a ``forward`` record, status null, may come first, when the credential went in)."""
    for _ in range(100):
        rows = [a for a in proxy.audit() if a.get("path") == path]
        if any(a.get("event") == "request" for a in rows):
            return rows
        time.sleep(0.05)
    return []


def test_a_request_cut_mid_body_is_audited_as_on_mitmproxys_layer(env: Env) -> None:
    """The agent sends a head and part of its body, then closes: the lean layer hands the
    bytes to mitmproxy's reader, so the flow's hooks see the disconnect and it is recorded
    as without the lean layer; nothing reaches the upstream."""
    before = len(env.up.received)
    got = {}
    for name, p in (("lean", env.lean), ("stock", env.stock)):
        path = f"/cut-{name}"
        with Tunnel(p) as t:
            t.send(_get("/first"))
            assert t.response().status == 200  # the lean layer serves this connection
            t.send(f"POST {path} HTTP/1.1\r\nHost: lean.api.test\r\n"
                   "Content-Length: 100\r\n\r\npartial".encode())
        rows = [a for a in _audited(p, path) if a.get("event") == "request"]
        assert rows, f"{name}: no record of the cut request"
        got[name] = (rows[-1].get("status"), rows[-1].get("reason"))
    assert got["lean"] == got["stock"]
    assert [x.path for x in env.up.received[before:]] == ["/first", "/first"]


def test_a_very_long_head_goes_to_mitmproxys_reader(env: Env) -> None:
    """A head still incomplete past 64 KiB is read by mitmproxy's reader (whose buffer is
    searched incrementally): the agent gets what it gets without the lean layer."""
    big = "x" * 200_000
    got = []
    for p in (env.lean, env.stock):
        with Tunnel(p) as t:
            t.send(_get("/first"))
            assert t.response().status == 200
            t.send(_get("/big", f"X-Big: {big}\r\n"))
            got.append(t.response().status)
    assert got[0] == got[1]
    assert f"{HANDED} (long head)" in env.lean.output()


def test_only_the_expected_shapes_left_the_lean_path(env: Env) -> None:
    """Every connection above that the lean layer handed to mitmproxy's HTTP layer did so for
    a shape it does not serve: HEAD, 204/304, pipelining, POST bodies, refusals and upstream
    errors stayed on the lean path (a reason line would name them otherwise)."""
    reasons = {line.split(HANDED, 1)[1].strip(" ()")
               for line in env.lean.output().splitlines() if HANDED in line}
    assert reasons <= {"transfer-encoding", "upgrade", "head refused", "closed mid-request",
                       "long head"}
    assert FIRST not in env.stock.output() and HANDED not in env.stock.output()
