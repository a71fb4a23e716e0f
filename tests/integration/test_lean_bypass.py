"""The lean bypass (seam/bypass.py): once the lean layer serves a tunnel, the agent's bytes
and the completion of each request's hook go straight to the ClientTLSLayer, and the
response straight out; everything else takes mitmproxy's whole stack, so a connection can
still be handed to mitmproxy's HTTP layer, and closed, afterwards.

Proxies on the same upstream: ``on`` (the default) and ``off`` (``VAULTPROXY_LEAN_BYPASS=0``:
the lean layer behind mitmproxy's whole stack); each behaviour is checked on both, and which
route the events took is read from the proxy's own counter lines."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block
from tests.integration.test_lean_http1 import FIRST, HANDED, SseUpstream, Tunnel

pytestmark = pytest.mark.integration

COUNT = re.compile(r"lean bypass: events routed past the layers above the ClientTLSLayer "
                   r"so far: (\d+) \((\d+) spliced\)")
SPLICED_CLOSE = "lean bypass: a CloseConnection takes the whole stack"
N = 40  # requests on one connection


def _handler(rec: Received) -> Reply:
    body = json.dumps({"method": rec.method, "path": rec.path, "len": len(rec.body),
                       "sha": hashlib.sha256(rec.body).hexdigest()}).encode()
    return 200, [(b"content-type", b"application/json")], [body]


@dataclass
class Env:
    up: Upstream
    sse: SseUpstream
    on: ProxyProcess
    off: ProxyProcess


@pytest.fixture(scope="module")
def env(start_proxy, upstream: Upstream) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    upstream.handler = _handler
    sse = SseUpstream(upstream.ca).start()
    sse.seen_first.set()  # its events all at once
    toml = (service_block("lean", "host_inject", "bearer", upstream.port)
            + service_block("leansse", "host_inject", "bearer", sse.port))
    secrets = {"lean": canary.make_canary(), "leansse": canary.make_canary()}
    on = start_proxy(toml, secrets)
    off = start_proxy(toml, secrets, env={**os.environ, "VAULTPROXY_LEAN_BYPASS": "0"})
    yield Env(upstream, sse, on, off)
    sse.stop()


@pytest.fixture(scope="module", params=["on", "off"])
def proxy(request: pytest.FixtureRequest, env: Env) -> ProxyProcess:
    return env.on if request.param == "on" else env.off


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: lean.api.test\r\n\r\n".encode()


def _path(t: Tunnel) -> str:
    r = t.response()
    assert r.status == 200, r.body  # type: ignore[attr-defined]
    return str(json.loads(r.body)["path"])  # type: ignore[attr-defined]


def _counts(p: ProxyProcess) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in COUNT.findall(p.output())]


def _serve(p: ProxyProcess) -> None:
    with Tunnel(p) as t:
        for i in range(N):
            t.send(_get(f"/k/{i}"))
            assert _path(t) == f"/k/{i}"


def test_per_request_events_take_the_short_route(start_proxy, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    """A fresh proxy serves N keep-alive requests on one tunnel: all but the first request's
    bytes (the route is laid at the first request's hook) and every hook's completion (one
    or more a request) went straight to the ClientTLSLayer — at least 2N-1 events, so the
    counter's line for 64 is there — and nothing was spliced."""
    upstream.handler = _handler
    p = start_proxy(service_block("lean", "host_inject", "bearer", upstream.port),
                    {"lean": canary.make_canary()})
    _serve(p)
    counts = _counts(p)
    assert FIRST in p.output()
    assert [n for n, _ in counts][:7] == [1, 2, 4, 8, 16, 32, 64], counts
    assert {s for _, s in counts} == {0}
    assert "has crashed" not in p.output()


def test_switched_off_every_event_takes_the_whole_stack(env: Env) -> None:
    """The twin: with ``VAULTPROXY_LEAN_BYPASS=0`` the lean layer serves the same requests
    (its line is there) and no event was routed short."""
    _serve(env.off)
    assert FIRST in env.off.output()
    assert _counts(env.off) == []


def test_lean_requests_then_mitmproxys_layer_then_close(env: Env, proxy: ProxyProcess) -> None:
    """Lean requests, then a chunked upload (mitmproxy's HTTP layer takes the connection from
    the lean layer, after events routed short), then requests on mitmproxy's layer, then the
    agent closes: every request answered, and the proxy serves the next tunnel."""
    body = os.urandom(50_000)
    with Tunnel(proxy) as t:
        for i in range(3):
            t.send(_get(f"/before/{i}"))
            assert _path(t) == f"/before/{i}"
        t.send(b"POST /upload HTTP/1.1\r\nHost: lean.api.test\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (len(body[:1000]), body[:1000])
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[1000:]), body[1000:]))
        r = t.response()
        got = json.loads(r.body)  # type: ignore[attr-defined]
        assert r.status == 200 and got["len"] == len(body)
        assert got["sha"] == hashlib.sha256(body).hexdigest()
        for i in range(3):
            t.send(_get(f"/after/{i}"))
            assert _path(t) == f"/after/{i}"
    with Tunnel(proxy) as t:
        t.send(_get("/next"))
        assert _path(t) == "/next"
    out = proxy.output()
    assert f"{HANDED} (transfer-encoding)" in out
    assert "has crashed" not in out and "were lost" not in out
    if proxy is env.on:
        assert _counts(proxy), out  # the first part of this test took the short route


def test_a_close_is_spliced_into_the_whole_stack(env: Env, proxy: ProxyProcess) -> None:
    """A streamed response, then an upstream head mitmproxy's checks refuse: the lean layer
    answers 502 and closes the agent's connection. On the bypass the answer's bytes go out
    short and the close takes the whole stack; the agent gets both responses, then the end
    of the stream, as without the bypass."""
    with Tunnel(proxy, "leansse.api.test") as t:
        t.send(b"GET /sse HTTP/1.1\r\nHost: leansse.api.test\r\n\r\n")
        r = t.response()
        assert r.status == 200
        assert b"data: one" in r.body and b"data: two" in r.body  # type: ignore[attr-defined]
        t.send(b"GET /garbage HTTP/1.1\r\nHost: leansse.api.test\r\n\r\n")
        r = t.response()
        assert r.status == 502, r.body  # type: ignore[attr-defined]
        assert b"bogus" not in r.body  # type: ignore[attr-defined]
        t.sock.settimeout(10)  # (a connection left open fails here)
        assert t.file.read(1) == b""
    out = proxy.output()
    assert "has crashed" not in out and "were lost" not in out
    if proxy is env.on:
        assert SPLICED_CLOSE in out
    else:
        assert SPLICED_CLOSE not in out
