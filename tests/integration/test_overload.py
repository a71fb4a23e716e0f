"""Out of file descriptors (the proxy started with a small RLIMIT_NOFILE, as `ulimit -n`):
idle connections fill the table; a new agent gets ``503 overloaded`` at once (twin: the same
probe before the flood gets a 200), the log grows by a few lines, not megabytes, the proxy
does not spin (its CPU time barely moves), the admin API still answers (the reserve), and
once the idle connections close the proxy serves again."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_admin import Quiet, unix

pytestmark = pytest.mark.integration

NOFILE = 160
IDLE = 260  # more than the table holds


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def upstream_port(upstream: Upstream) -> int:
    """Only the port: a failure report then shows no request the upstream logged."""
    return upstream.port


def settle(pid: int) -> None:
    """Until the proxy's descriptor count holds still for a second (closing connections)."""
    last, still = -1, 0.0
    deadline = time.monotonic() + 10
    while still < 1.0 and time.monotonic() < deadline:
        n = len(os.listdir(f"/proc/{pid}/fd"))
        still = still + 0.1 if n == last else 0.0
        last = n
        time.sleep(0.1)


def probe(proxy: ProxyProcess, url: str) -> str:
    """One new agent connection: "200", "503" (refused at once), "closed", or "hung"."""
    with agent_client(proxy) as c:
        try:
            return str(c.get(url).status_code)
        except httpx.ProxyError as e:
            return "503" if "503" in str(e) else f"other: {e}"
        except httpx.TimeoutException:
            return "hung"
        except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
            return "closed"


def flood(port: int, n: int = IDLE) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def test_out_of_descriptors_refuses_at_once_logs_little_and_recovers(  # type: ignore[no-untyped-def]
    start_proxy, upstream_port: int
) -> None:
    toml = service_block("ov", "host_inject", "bearer", upstream_port)
    proxy: ProxyProcess = start_proxy(toml, Quiet({"ov": make_canary()}), nofile=NOFILE)
    pid = proxy.proc.pid
    with agent_client(proxy) as c:
        assert c.get("https://ov.api.test/before").status_code == 200  # twin: not overloaded
    settle(pid)
    socks = flood(proxy.port)
    try:
        full = NOFILE - 20  # the table is full up to its reserve (seam/accept.py)
        deadline = time.monotonic() + 15
        while len(os.listdir(f"/proc/{pid}/fd")) < full and time.monotonic() < deadline:
            time.sleep(0.1)  # the proxy takes what it can
        socks += flood(proxy.port, 40)  # and whatever a closing connection freed since
        time.sleep(0.5)
        log_before = proxy.log.stat().st_size
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        outcomes = []
        while time.monotonic() - started < 4.0:
            outcomes.append(probe(proxy, "https://ov.api.test/flooded"))
            time.sleep(0.2)
        log_growth = proxy.log.stat().st_size - log_before
        cpu = cpu_seconds(pid) - cpu_before
        with unix(proxy) as admin:  # the admin socket still has its descriptors
            assert admin.get("/v1/health").status_code == 200
    finally:
        for s in socks:
            s.close()
    print(f"probes {outcomes}; log grew {log_growth} bytes, proxy CPU {cpu:.2f} s in 4 s")
    assert "hung" not in outcomes and outcomes.count("503") >= len(outcomes) // 2, outcomes
    assert log_growth < 10_000, proxy.output()[-3000:]
    assert cpu < 1.5  # a spinning accept loop burns ~4 s of CPU here
    assert "overloaded: out of file descriptors (limit 160" in proxy.output()
    deadline = time.monotonic() + 15
    while probe(proxy, "https://ov.api.test/after") != "200" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert probe(proxy, "https://ov.api.test/after") == "200"


def test_accept_failing_with_emfile_pauses_and_backs_off(  # type: ignore[no-untyped-def]
    start_proxy, upstream_port: int
) -> None:
    """The limit drops under a running proxy (``prlimit``), below its reserve: ``accept()``
    itself fails with EMFILE. Probes are still answered at once (``503 overloaded``, the
    spare descriptor) or closed, never left hanging; the loop backs off instead of spinning."""
    import resource

    toml = service_block("ov2", "host_inject", "bearer", upstream_port)
    proxy: ProxyProcess = start_proxy(toml, Quiet({"ov2": make_canary()}))
    pid = proxy.proc.pid
    with agent_client(proxy) as c:
        assert c.get("https://ov2.api.test/before").status_code == 200  # twin
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 8,
                                                   before[1]))
    socks = flood(proxy.port)
    try:
        time.sleep(1.0)
        log_before, cpu_before = proxy.log.stat().st_size, cpu_seconds(pid)
        started = time.monotonic()
        outcomes = []
        while time.monotonic() - started < 4.0:
            outcomes.append(probe(proxy, "https://ov2.api.test/squeezed"))
            time.sleep(0.2)
        log_growth = proxy.log.stat().st_size - log_before
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        for s in socks:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    print(f"EMFILE: probes {outcomes}; log grew {log_growth} bytes; CPU {cpu:.2f} s in 4 s")
    assert "hung" not in outcomes and outcomes.count("503") >= len(outcomes) // 2, outcomes
    assert log_growth < 10_000 and cpu < 1.5
    assert "accept paused" in proxy.output()
    deadline = time.monotonic() + 15
    while probe(proxy, "https://ov2.api.test/after") != "200" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert probe(proxy, "https://ov2.api.test/after") == "200", proxy.output()[-3000:]
