"""``prewarm = N``: each worker opens N verified upstream connections of a service at start
and after a reload, so the first agent request goes out on a warm one; never for a service
without a pool, never without the service's trust, and dropped (then warmed again) on a
reload.

Each service has an upstream of its own that counts the TCP connections it accepts and
answers JSON naming the connection a request came on (test_upstream_pool's
CountingUpstream)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream, free_port
from tests.integration.test_upstream_pool import CountingUpstream

pytestmark = pytest.mark.integration


def _service(name: str, port: int, *extra: str) -> str:
    return (f'[[service]]\nname = "{name}"\nhosts = ["{name}.api.test"]\nmode = "host_inject"\n'
            f'auth = "bearer"\nconnect_to = "127.0.0.1:{port}"\nallow_loopback = true\n'
            + "".join(f"{line}\n" for line in extra) + "\n")


TRUST = 'ca_cert = "upstream-ca.pem"'


def curl(proxy: ProxyProcess, url: str) -> tuple[int, bytes]:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-x", proxy.url, "--cacert", str(proxy.home.ca_cert),
         "-w", "\n%{http_code}", url], capture_output=True, check=True, timeout=30).stdout
    canary.scan_text(f"curl {url}", out)
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def wait_for(what: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


@dataclass
class Env:
    warm: CountingUpstream  # prewarm = 2
    cold: CountingUpstream  # the twin: no prewarm
    untrusted: CountingUpstream  # prewarm = 1, but no ca_cert: its certificate is not trusted
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def env(start_proxy, upstream: Upstream) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    ups = [CountingUpstream(upstream.ca, (f"{n}.api.test",)).start() for n in ("wa", "wb", "wc")]
    toml = (_service("wa", ups[0].port, TRUST, "prewarm = 2")
            + _service("wb", ups[1].port, TRUST)
            + _service("wc", ups[2].port, "prewarm = 1"))
    proxy = start_proxy(toml, {n: canary.make_canary() for n in ("wa", "wb", "wc")})
    yield Env(ups[0], ups[1], ups[2], proxy)
    for u in ups:
        u.stop()


def warmed(proxy: ProxyProcess, name: str, times: int = 1) -> Callable[[], bool]:
    """The worker's log says the service's connections are in its pool."""
    return lambda: proxy.output().count(f"prewarm of {name} ({name}.api.test): ") >= times


def test_the_first_request_goes_out_on_a_prewarmed_connection(env: Env) -> None:
    wait_for(warmed(env.proxy, "wa"))  # opened at start, before any request
    assert env.warm.accepted == 2
    status, body = curl(env.proxy, "https://wa.api.test/first")
    assert status == 200 and json.loads(body)["conn"] in (1, 2)
    assert env.warm.accepted == 2  # no dial of its own


def test_twin_without_prewarm_the_first_request_dials(env: Env) -> None:
    wait_for(warmed(env.proxy, "wa"))  # the proxy's upkeep has run
    assert env.cold.accepted == 0
    status, _ = curl(env.proxy, "https://wb.api.test/first")
    assert status == 200 and env.cold.accepted == 1


def test_an_untrusted_upstream_is_never_kept_warm(env: Env) -> None:
    """The pre-warm dial verifies as a request's would: the handshake is tried and refused,
    and the request still answers ``502 upstream_tls`` (no connection was kept)."""
    wait_for(warmed(env.proxy, "wc"))
    assert env.untrusted.accepted == 1
    status, body = curl(env.proxy, "https://wc.api.test/x")
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_tls"


def test_reload_drops_the_warm_connections_and_warms_new_ones(env: Env) -> None:
    wait_for(warmed(env.proxy, "wa"))
    before = env.warm.accepted
    token = (env.proxy.home.path / "admin-token").read_text().strip()
    r = httpx.post(f"{env.proxy.extra['admin_url']}/v1/reload", trust_env=False,
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200
    wait_for(warmed(env.proxy, "wa", times=2))
    assert env.warm.accepted == before + 2
    status, body = curl(env.proxy, "https://wa.api.test/after")
    assert status == 200 and json.loads(body)["conn"] > before  # a connection of the new policy
    assert env.warm.accepted == before + 2


def test_no_prewarm_for_a_service_without_a_pool(  # type: ignore[no-untyped-def]
        start_proxy, upstream: Upstream) -> None:
    up = CountingUpstream(upstream.ca, ("wa.api.test",)).start()
    try:
        twin = CountingUpstream(upstream.ca, ("wa.api.test",)).start()
        try:
            # the same entry in a proxy with the pool: warmed (the twin), then without: never
            pooled = start_proxy(_service("wa", twin.port, TRUST, "prewarm = 1"),
                                 {"wa": canary.make_canary()})
            wait_for(warmed(pooled, "wa"))
            assert twin.accepted == 1
            proxy = start_proxy("[proxy]\nupstream_pool_idle = 0\n\n"
                                + _service("wa", up.port, TRUST, "prewarm = 1"),
                                {"wa": canary.make_canary()})
            time.sleep(3)  # three rounds of the pool's upkeep (once a second)
            assert up.accepted == 0
            status, _ = curl(proxy, "https://wa.api.test/x")
            assert status == 200 and up.accepted == 1
        finally:
            twin.stop()
    finally:
        up.stop()


class ClosingCount(CountingUpstream):
    """Also counts the connections the proxy closed (a read saw the end)."""

    closed = 0

    def _serve(self, raw: socket.socket, n: int) -> None:
        super()._serve(raw, n)
        self.closed += 1


def test_an_unused_warm_connection_closes_after_upstream_pool_idle(  # type: ignore[no-untyped-def]
        start_proxy, upstream: Upstream) -> None:
    """No request ever comes for it: the pool's upkeep closes it all the same (httpcore
    itself only looks when a request comes)."""
    up = ClosingCount(upstream.ca, ("wa.api.test",)).start()
    try:
        proxy = start_proxy("[proxy]\nupstream_pool_idle = 2\n\n"
                            + _service("wa", up.port, TRUST, "prewarm = 1"),
                            {"wa": canary.make_canary()})
        wait_for(warmed(proxy, "wa"))
        assert up.accepted == 1 and up.closed == 0  # the twin: open while fresh
        wait_for(lambda: up.closed == 1)
    finally:
        up.stop()


def test_a_denied_address_is_never_prewarmed(start_proxy) -> None:  # type: ignore[no-untyped-def]
    """The pre-warm dial is checked as a tunnel's: here the service's ``connect_to`` is the
    proxy's own listener, which the egress policy refuses at run time (config allows the
    loopback address). The log names the refusal; the twin is every other test here, where
    the same check lets the upstream's address through and the connections open."""
    port = free_port()
    proxy = start_proxy(_service("wd", port, TRUST, "prewarm = 1"),
                        {"wd": canary.make_canary()}, args=("--listen", f"127.0.0.1:{port}"))
    assert proxy.port == port
    wait_for(warmed(proxy, "wd"))
    line = next(x for x in proxy.output().splitlines() if "prewarm of wd" in x)
    assert "destination denied" in line, line
