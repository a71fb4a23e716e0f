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


def flood(port: int) -> list[socket.socket]:
    socks = []
    for _ in range(IDLE):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def test_out_of_descriptors_refuses_at_once_logs_little_and_recovers(  # type: ignore[no-untyped-def]
    start_proxy, upstream: Upstream
) -> None:
    toml = service_block("ov", "host_inject", "bearer", upstream.port)
    proxy: ProxyProcess = start_proxy(toml, Quiet({"ov": make_canary()}), nofile=NOFILE)
    pid = proxy.proc.pid
    with agent_client(proxy) as c:
        assert c.get("https://ov.api.test/before").status_code == 200  # twin: not overloaded
    socks = flood(proxy.port)
    try:
        full = NOFILE - 20  # the table is full up to its reserve (seam/accept.py)
        deadline = time.monotonic() + 15
        while len(os.listdir(f"/proc/{pid}/fd")) < full and time.monotonic() < deadline:
            time.sleep(0.1)  # the proxy takes what it can
        time.sleep(0.5)
        log_before = proxy.log.stat().st_size
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        refused = 0
        while time.monotonic() - started < 4.0:
            with agent_client(proxy) as c, pytest.raises(httpx.ProxyError) as e:
                c.get("https://ov.api.test/flooded")
            assert "503" in str(e.value)
            refused += 1
            time.sleep(0.2)
        log_growth = proxy.log.stat().st_size - log_before
        cpu = cpu_seconds(pid) - cpu_before
        with unix(proxy) as admin:  # the admin socket still has its descriptors
            assert admin.get("/v1/health").status_code == 200
    finally:
        for s in socks:
            s.close()
    print(f"{refused} probes refused with 503; log grew {log_growth} bytes, "
          f"proxy CPU {cpu:.2f} s in 4 s")
    assert log_growth < 10_000, proxy.output()[-3000:]
    assert cpu < 1.5  # a spinning accept loop burns ~4 s of CPU here
    assert "overloaded: out of file descriptors (limit 160" in proxy.output()
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline:
        with agent_client(proxy) as c:
            try:
                status = c.get("https://ov.api.test/after").status_code
            except httpx.ProxyError:
                status = 503
        if status == 200:
            break
        time.sleep(0.3)
    assert status == 200


def test_accept_failing_with_emfile_pauses_and_backs_off(  # type: ignore[no-untyped-def]
    start_proxy, upstream: Upstream
) -> None:
    """The limit drops under a running proxy (``prlimit``), below its reserve: ``accept()``
    itself fails with EMFILE. Probes are still answered at once (``503 overloaded``, the
    spare descriptor) or closed, never left hanging; the loop backs off instead of spinning."""
    import resource

    toml = service_block("ov2", "host_inject", "bearer", upstream.port)
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
            with agent_client(proxy) as c:
                try:
                    c.get("https://ov2.api.test/squeezed")
                    outcomes.append("answered")
                except httpx.ProxyError as e:
                    outcomes.append("503" if "503" in str(e) else "other")
                except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
                    outcomes.append("closed")
            time.sleep(0.2)
        log_growth = proxy.log.stat().st_size - log_before
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        for s in socks:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    print(f"EMFILE: probes {outcomes}; log grew {log_growth} bytes; CPU {cpu:.2f} s in 4 s")
    assert outcomes and set(outcomes) <= {"503", "closed"}, outcomes  # none hung (20 s timeout)
    assert "503" in outcomes
    assert log_growth < 10_000 and cpu < 1.5
    assert "accept paused" in proxy.output()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with agent_client(proxy) as c, contextlib.suppress(httpx.HTTPError):
            if c.get("https://ov2.api.test/after").status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail("the proxy did not recover:\n" + proxy.output()[-3000:])
