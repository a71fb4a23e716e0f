"""``--workers 2`` under worker faults, against the real proxy and a real TLS upstream:

- the workers share ONE listening socket: nothing can join the port with SO_REUSEPORT (twin:
  the same join succeeds against a plain SO_REUSEPORT listener), and every worker holds the
  very same socket;
- a SIGSTOPped worker strands no new connection (all answered while it is stopped), the
  supervisor's heartbeat replaces it within its bound and says so (stopped while idle: the
  kernel's notice makes the heartbeat watch it), and the old process drains and exits;
- an idle proxy sleeps: no process wakes while no worker holds a connection; a worker that
  holds one is pinged every second (the twin), and sleeps again once it is closed;
- a reload while a worker is stopped returns promptly (the stopped worker is replaced, not
  waited on) and the new registry is served;
- ``/metrics``' audit counters never go backwards when a worker is killed with SIGKILL;
- a worker orphaned with requests in flight exits without CancelledError tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_admin import Quiet, unix
from vaultproxy.engine.workers import HEARTBEAT_DEADLINE, HEARTBEAT_INTERVAL

pytestmark = pytest.mark.integration

PROBES = 10


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = service_block("wf", "host_inject", "bearer", upstream.port)
    return start_proxy(toml, Quiet({"wf": make_canary()}), args=("--workers", "2"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def port(upstream: Upstream) -> int:
    """The upstream's port only: a failure report then shows none of what it received."""
    return upstream.port


def worker_pid(proxy: ProxyProcess) -> int | None:
    """The one extra worker's pid (None while it is being replaced)."""
    data = json.loads((proxy.home.path / "run.json").read_text())
    pids = data["worker_pids"]
    return int(pids[0]) if pids else None


def serving_worker(proxy: ProxyProcess) -> int:
    """The extra worker's pid once it serves (run.json lists a replacement from its start;
    the log says when it serves; the first one served before run.json was written)."""

    def serving() -> int | None:
        pid = worker_pid(proxy)
        first = proxy.extra["worker_pids"] == [pid]
        return pid if pid is not None and (first or f"(pid {pid}) serves" in proxy.output()) \
            else None

    assert wait_for(lambda: serving() is not None), proxy.output()
    pid = serving()
    assert pid is not None
    return pid


def listening_inodes(pid: int, port: int) -> set[str]:
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":
            listening.add(f[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listening:
            held.add(target[8:-1])
    return held


def reuseport_join(port: int) -> OSError | None:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def probe_all(proxy: ProxyProcess, tag: str) -> list[int]:
    """PROBES new connections, one request each; the statuses (a hang fails the test)."""
    statuses = []
    for i in range(PROBES):
        with agent_client(proxy) as c:
            statuses.append(c.get(f"https://wf.api.test/{tag}/{i}").status_code)
    return statuses


def wait_for(pred, seconds: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_nothing_joins_the_proxy_port(proxy: ProxyProcess) -> None:
    err = reuseport_join(proxy.port)
    assert err is not None and err.errno == errno.EADDRINUSE
    # Twin: the probe does join a listener that uses SO_REUSEPORT (as per-worker ones did).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert reuseport_join(s.getsockname()[1]) is None
    # One socket, held by both processes (the same inode).
    mine = listening_inodes(proxy.proc.pid, proxy.port)
    assert len(mine) == 1 and listening_inodes(serving_worker(proxy), proxy.port) == mine


def test_a_stopped_worker_strands_nothing_and_is_replaced(proxy: ProxyProcess) -> None:
    """The worker is idle (no connection: not pinged until the kernel says it stopped) when
    it is stopped: it is replaced within the heartbeat's bound all the same."""
    old = serving_worker(proxy)
    time.sleep(1.5)  # idle: its connections (serving_worker's probes) are over
    os.kill(old, signal.SIGSTOP)
    stopped = time.monotonic()
    replaced = re.compile(rf"worker 1 \(pid {old}\) is stopped: no heartbeat answer")
    try:
        started = time.monotonic()
        statuses = probe_all(proxy, "stopped")
        took = time.monotonic() - started
        assert statuses == [200] * PROBES, statuses  # each answered (client timeout: 20 s)
        assert wait_for(lambda: replaced.search(proxy.output()) is not None, 20), \
            proxy.output()
        noticed = time.monotonic() - stopped
        assert wait_for(lambda: worker_pid(proxy) not in (None, old)), proxy.output()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the supervisor may have reaped it
            os.kill(old, signal.SIGCONT)
    # the bound: no answer for HEARTBEAT_DEADLINE (5 s), counted in 1 s rounds, + slack
    assert noticed < HEARTBEAT_DEADLINE + 2 * HEARTBEAT_INTERVAL + 3.0, noticed
    out = proxy.output()
    assert replaced.search(out), out
    assert wait_for(lambda: not os.path.exists(f"/proc/{old}")
                    or Path(f"/proc/{old}/stat").read_text().split()[2] == "Z")
    assert wait_for(lambda: f"replaced worker 1 (pid {old}) exited" in proxy.output())
    assert probe_all(proxy, "after") == [200] * PROBES
    print(f"{PROBES} probes during the stop answered in {took:.2f} s")


def test_a_reload_does_not_wait_on_a_stopped_worker(proxy: ProxyProcess, port: int) -> None:
    old = serving_worker(proxy)
    services = proxy.home.path / "services.toml"
    services.write_text(services.read_text() + service_block(
        "wf2", "host_inject", "bearer", port, secret='"wf"'))
    os.kill(old, signal.SIGSTOP)
    try:
        with unix(proxy) as admin:
            started = time.monotonic()
            r = admin.post("/v1/reload")
            took = time.monotonic() - started
        assert r.status_code == 200 and r.json()["after"] == 2, r.text
        assert took < 5.0, took  # it used to wait the full 10 s settle timeout, then kill
    finally:
        os.kill(old, signal.SIGCONT)
    print(f"reload during a stop answered in {took:.2f} s")
    assert f"(pid {old}) is stopped (SIGSTOP?) and cannot take the new state" in proxy.output()
    assert wait_for(lambda: worker_pid(proxy) not in (None, old))
    with agent_client(proxy) as c:
        assert c.get("https://wf2.api.test/reloaded").status_code == 200


def _written(text: str) -> float:
    m = re.search(r"^vaultproxy_audit_records_written\S*\s+(\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def test_metrics_do_not_go_backwards_when_a_worker_is_killed(proxy: ProxyProcess) -> None:
    with unix(proxy) as admin:
        before = _written(admin.get("/metrics").text)
        old = serving_worker(proxy)
        probe_all(proxy, "counted")
        os.kill(old, signal.SIGKILL)  # at once: its last report may predate these records
        assert wait_for(lambda: worker_pid(proxy) not in (None, old))
        after = _written(admin.get("/metrics").text)
    records = len(proxy.audit())  # every record in the file, both processes'
    assert after >= before
    assert after == records, (after, records)


def test_an_orphaned_worker_exits_cleanly_with_requests_in_flight(tmp_path: Path) -> None:
    """The supervisor is SIGKILLed while the worker holds requests longer than its orphan
    drain (5 s): the worker still exits without a CancelledError traceback. (Twin: the
    requests were in flight and outlived the drain -- the log says both.)"""
    import threading

    from tests.harness.proxy import ProxyHome

    def slow(rec):  # type: ignore[no-untyped-def]
        time.sleep(9)
        return 200, [(b"content-type", b"text/plain")], [b"ok"]

    (tmp_path / "slow").mkdir()
    up = Upstream(tmp_path / "slow", handler=slow).start()
    try:
        home = ProxyHome.create(tmp_path, service_block("orph", "host_inject", "bearer", up.port),
                                Quiet({"orph": make_canary()}),
                                files={"upstream-ca.pem": up.ca_file.read_bytes()})
        proxy = ProxyProcess.start(home, args=("--workers", "2"))
        worker = serving_worker(proxy)

        def call(i: int) -> None:
            with contextlib.suppress(httpx.HTTPError), agent_client(proxy) as c:
                c.get(f"https://orph.api.test/{i}")

        calls = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for t in calls:
            t.start()
        time.sleep(2.0)
        proxy.proc.kill()
        proxy.proc.wait()
        assert wait_for(lambda: not os.path.exists(f"/proc/{worker}")
                        or Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z", 20)
        for t in calls:
            t.join(30)
        proxy.stop()
    finally:
        up.stop()
    out = proxy.output()
    assert re.search(r"finishes its [1-9]\d* in-flight request", out), out
    assert "still in flight at shutdown" in out, out
    assert "CancelledError" not in out and "Traceback" not in out, out


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid``: one per wake from a sleep."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def _wakes(pids: list[int], seconds: float) -> list[int]:
    before = [_switches(p) for p in pids]
    time.sleep(seconds)
    return [_switches(p) - b for p, b in zip(pids, before, strict=True)]


def _held_by(pid: int, sock: socket.socket) -> bool:
    """Does ``pid`` hold the proxy's end of ``sock`` (its accepted socket)?"""
    port = sock.getsockname()[1]
    inodes = {f"socket:[{line.split()[9]}]"
              for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if int(line.split()[2].rsplit(":", 1)[1], 16) == port}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


def test_an_idle_proxy_sleeps_and_a_worker_with_a_connection_is_watched(
    start_proxy, upstream: Upstream,  # type: ignore[no-untyped-def]
) -> None:
    """No connection: neither process wakes (the heartbeat pinged every worker every second:
    ~3 wakes a second in the supervisor, 1 in the worker). A connection held by the worker:
    it is pinged every second (twin); closed: both sleep again. (No upstream pool: its
    watcher looks once a second while an HTTP/2 pool holds a connection, up to
    ``upstream_pool_idle`` after the last request.)"""
    toml = "[proxy]\nupstream_pool_idle = 0\n\n" + service_block(
        "wf", "host_inject", "bearer", upstream.port)
    proxy = start_proxy(toml, Quiet({"wf": make_canary()}), args=("--workers", "2"))
    worker = serving_worker(proxy)
    pids = [proxy.proc.pid, worker]
    time.sleep(2.0)  # serving_worker's probes are over, their last pings answered
    idle = _wakes(pids, 3.0)
    assert max(idle) <= 1, idle
    held: socket.socket | None = None
    tries: list[socket.socket] = []
    try:
        for _ in range(60):  # one accept queue: a new connection lands on either process
            s = socket.create_connection(("127.0.0.1", proxy.port))
            tries.append(s)
            if wait_for(lambda s=s: _held_by(worker, s) or _held_by(proxy.proc.pid, s), 5) \
                    and _held_by(worker, s):
                held = s
                break
        assert held is not None, "no connection landed on the worker"
        for s in tries:
            if s is not held:
                s.close()
        time.sleep(0.5)
        busy = _wakes([worker], 3.2)
        assert busy[0] >= 2, busy  # pinged each second while it holds a connection
    finally:
        for s in tries:
            s.close()
    time.sleep(2.0)  # the connection's end reported (idle), the last ping answered
    again = _wakes(pids, 3.0)
    assert max(again) <= 1, again
    print(f"wakes in 3 s: idle {idle}, worker with a connection {busy}, idle again {again}")
