"""`vaultproxy run --workers N` against a real TLS upstream: connections land on every worker
process, and every admin action (lock, unlock, secret write, reload) reaches all of them
before the admin API answers; one audit stream; a killed worker is replaced; SIGTERM stops
them all; a dead supervisor takes its workers down; a second instance cannot share the port.

Which process serves a connection is read from /proc: the owner of the accepted socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, REPO, ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_admin import Quiet, unix

pytestmark = pytest.mark.integration

CONNS = 16  # connections per round of fan_out
ROUNDS = 6  # rounds fan_out tries before a test says one process served nothing


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return Quiet({"w-bearer": make_canary(), "w-new": make_canary()})


@pytest.fixture()
def workers_proxy(start_proxy, upstream: Upstream, secrets):  # type: ignore[no-untyped-def]
    toml = service_block("w-bearer", "host_inject", "bearer", upstream.port)
    return start_proxy(toml, {"w-bearer": secrets["w-bearer"]}, args=("--workers", "2"))


def run_json(proxy: ProxyProcess) -> dict[str, object]:
    return json.loads((proxy.home.path / "run.json").read_text())  # type: ignore[no-any-return]


def all_pids(proxy: ProxyProcess) -> list[int]:
    data = run_json(proxy)
    return [int(data["pid"]), *(int(p) for p in data["worker_pids"])]  # type: ignore[union-attr,call-overload]


def established_owners(port: int, pids: list[int]) -> Counter[int]:
    """How many ESTABLISHED sockets on local port ``port`` each of ``pids`` holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    owners: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[pid] += 1
    return owners


def fan_out(proxy: ProxyProcess, host: str, path: str,
            together: bool = True) -> tuple[list[httpx.Response], Counter[int]]:
    """Rounds of CONNS requests, each on its own held-open connection, all of a round at once,
    until every process owned at least one (at most ROUNDS rounds); returns every reply (in
    request order) and the owners summed over the rounds. At once, not one after another: the
    processes share one accept queue, and a process that answers fast (a locked 503, a pooled
    upstream) is idle again, and woken first, before the next sequential connection arrives.
    More than one round only on a machine so loaded that one process took a whole round: the
    kernel promises no spread, only that any process may take any connection."""
    replies: list[httpx.Response] = []
    owners: Counter[int] = Counter()
    pids = all_pids(proxy)
    for _ in range(ROUNDS):
        got, seen = _fan_round(proxy, host, path, together, len(replies))
        replies += got
        owners += seen
        if all(owners[p] >= 1 for p in pids):
            break
    return replies, owners


def _fan_round(proxy: ProxyProcess, host: str, path: str, together: bool,
               first: int) -> tuple[list[httpx.Response], Counter[int]]:
    with ExitStack() as stack:
        clients = [stack.enter_context(agent_client(proxy)) for _ in range(CONNS)]
        def get(ic: tuple[int, httpx.Client]) -> httpx.Response:
            return ic[1].get(f"https://{host}{path}/{first + ic[0]}")

        if together:
            with ThreadPoolExecutor(CONNS) as pool:
                replies = list(pool.map(get, enumerate(clients)))
        else:  # one after another (each request sees what the one before it caused)
            replies = [get(ic) for ic in enumerate(clients)]
        owners = established_owners(proxy.port, all_pids(proxy))
    return replies, owners


def assert_spread(owners: Counter[int], proxy: ProxyProcess) -> None:
    pids = all_pids(proxy)
    assert len(pids) == 2
    assert sum(owners.values()) % CONNS == 0, owners
    assert all(owners[p] >= 1 for p in pids), f"a worker served nothing: {owners}"


def requests(proxy: ProxyProcess) -> list[dict[str, object]]:
    """The audit's ``request`` records (each injected request also has a ``forward`` one)."""
    return [r for r in proxy.audit() if r["event"] == "request"]


def auths_seen(upstream: Upstream, path: str) -> list[str | None]:
    return [r.header("authorization") for r in upstream.received if r.path.startswith(path)]


def test_connections_spread_and_every_worker_injects(workers_proxy, upstream, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    assert proxy.extra["workers"] == 2 and len(proxy.extra["worker_pids"]) == 1  # type: ignore[arg-type]
    assert "(2 worker processes)" in proxy.output()
    replies, owners = fan_out(proxy, "w-bearer.api.test", "/spread")
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert_spread(owners, proxy)
    assert auths_seen(upstream, "/spread") == [f"Bearer {secrets['w-bearer']}"] * len(replies)
    # One audit stream: the admin API answers with every worker's records, at once (once
    # the workers wrote them: right after each response's send, ProxyProcess.settle).
    proxy.settle()
    with unix(proxy) as admin:
        records = admin.get("/v1/audit", params={"limit": 100}).json()["records"]
        metrics = admin.get("/metrics").text
    spread = [r for r in records
              if r["event"] == "request" and (r["path"] or "").startswith("/spread")]
    # Each injected request also has its "forward" record, written before it left.
    assert len([r for r in records if r["event"] == "forward"]) == len(replies)
    assert len(spread) == len(replies) and {r["outcome"] for r in spread} == {"injected"}
    n = len(replies)
    assert f'vaultproxy_flows_total{{outcome="injected",service="w-bearer"}} {n}.0' in metrics
    assert proxy.stop() == 0
    lines = [r for r in requests(proxy) if str(r.get("path")).startswith("/spread")]
    assert len(lines) == len(replies)  # written once each, by the process that served it


def test_lock_and_unlock_reach_every_worker(workers_proxy, upstream, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    with unix(proxy) as admin:
        assert admin.post("/v1/lock").json() == {"locked": True}
        replies, owners = fan_out(proxy, "w-bearer.api.test", "/locked")
        assert_spread(owners, proxy)
        assert {(r.status_code, r.json()["error"]["code"]) for r in replies} == {(503, "locked")}
        assert auths_seen(upstream, "/locked") == []  # nothing forwarded by any worker
        assert admin.post("/v1/unlock", json={"password": PASSWORD}).status_code == 200
        replies, owners = fan_out(proxy, "w-bearer.api.test", "/unlocked")
    assert_spread(owners, proxy)
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert auths_seen(upstream, "/unlocked") == [f"Bearer {secrets['w-bearer']}"] * len(replies)


def test_secret_write_reaches_every_worker(workers_proxy, upstream, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    new = secrets["w-new"]
    with unix(proxy) as admin:
        r = admin.put("/v1/secrets/w-bearer", json={"value": new})
        assert r.status_code == 200, r.text
    replies, owners = fan_out(proxy, "w-bearer.api.test", "/rotated")
    assert_spread(owners, proxy)
    assert [r.status_code for r in replies] == [200] * len(replies)
    seen = auths_seen(upstream, "/rotated")
    assert seen == [f"Bearer {new}"] * len(replies)  # and never the old value


def test_reload_reaches_every_worker(workers_proxy, upstream, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    services = proxy.home.path / "services.toml"
    good = services.read_text() + service_block("w-second", "host_inject", "bearer",
                                                upstream.port, secret='"w-bearer"')
    # A broken file first: every worker keeps the old registry (the new host stays refused).
    services.write_text(good + "[[service]]\nname = 42\n")
    with unix(proxy) as admin:
        assert admin.post("/v1/reload").status_code == 409
        for _ in range(CONNS):  # the CONNECT is refused by whichever worker takes it
            with agent_client(proxy) as c, pytest.raises(httpx.ProxyError):  # unknown: 502
                c.get("https://w-second.api.test/before")
        assert auths_seen(upstream, "/before") == []
        services.write_text(good)
        proxy.signal(signal.SIGHUP)  # as an operator would; then the API reload barriers
        assert admin.post("/v1/reload").json()["after"] == 2
    replies, owners = fan_out(proxy, "w-second.api.test", "/after")
    assert_spread(owners, proxy)
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert auths_seen(upstream, "/after") == [f"Bearer {secrets['w-bearer']}"] * len(replies)


def test_killed_worker_is_replaced_with_the_current_state(workers_proxy, upstream, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    new = secrets["w-new"]
    with unix(proxy) as admin:
        assert admin.put("/v1/secrets/w-bearer", json={"value": new}).status_code == 200
    (old,) = proxy.extra["worker_pids"]  # type: ignore[misc]
    os.kill(old, signal.SIGKILL)  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = run_json(proxy)["worker_pids"]  # lists the replacement from its start
        if pids and pids != [old] and f"(pid {pids[0]}) serves" in proxy.output():  # type: ignore[index]
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker not replaced:\n{proxy.output()}")
    assert "exited (signal SIGKILL); restarting it" in proxy.output()
    replies, owners = fan_out(proxy, "w-bearer.api.test", "/respawned")
    assert_spread(owners, proxy)
    assert auths_seen(upstream, "/respawned") == [f"Bearer {new}"] * len(replies)


def test_sigterm_stops_every_worker_and_keeps_their_audit(workers_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    pids = all_pids(proxy)
    replies, owners = fan_out(proxy, "w-bearer.api.test", "/last")
    assert_spread(owners, proxy)
    assert proxy.stop() == 0  # SIGTERM right after the requests
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not (proxy.home.path / "run.json").exists()
    last = [r for r in requests(proxy) if str(r.get("path")).startswith("/last")]
    assert len(last) == len(replies)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_dead_supervisor_takes_its_workers_down(workers_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    (worker,) = proxy.extra["worker_pids"]  # type: ignore[misc]
    proxy.proc.kill()
    proxy.proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists() and not _zombie(worker):  # type: ignore[arg-type]
        time.sleep(0.05)
    assert not Path(f"/proc/{worker}").exists() or _zombie(worker)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_instance_cannot_share_the_port(workers_proxy, tmp_path, workers) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    other = ProxyHome.create(tmp_path, "", {})
    r = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "run", "--home", str(other.path),
         "--listen", f"127.0.0.1:{proxy.port}", "--admin-listen", "127.0.0.1:0",
         "--dashboard-listen", "", "--workers", workers],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, r.stdout + r.stderr  # a busy port: exit 2 naming the flag
    assert f"127.0.0.1:{proxy.port}" in r.stderr and "in use" in r.stderr and "--listen" in r.stderr
    # Nobody joined the port: a fresh connection still reaches our workers only.
    replies, owners = fan_out(proxy, "w-bearer.api.test", "/still-ours")
    assert_spread(owners, proxy)


def test_a_second_run_on_the_same_home_is_refused_and_harms_nothing(workers_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    before = {f: (proxy.home.path / f).read_bytes() for f in ("run.json", "admin-token")}
    r = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "run", "--home", str(proxy.home.path),
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--dashboard-listen", "", "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1
    assert f"another vaultproxy (pid {proxy.proc.pid}) is already running on" in r.stderr
    assert {f: (proxy.home.path / f).read_bytes() for f in before} == before
    with unix(proxy) as admin:
        assert admin.get("/v1/health").status_code == 200


def test_no_secret_reaches_a_worker_by_argv_or_environment(workers_proxy, secrets) -> None:  # type: ignore[no-untyped-def]
    proxy = workers_proxy
    (worker,) = proxy.extra["worker_pids"]  # type: ignore[misc]
    cmdline = Path(f"/proc/{worker}/cmdline").read_bytes()
    environ = Path(f"/proc/{worker}/environ").read_bytes()
    assert b"vaultproxy.engine.worker" in cmdline
    for value in (secrets["w-bearer"], "PASSWORD", str(proxy.home.password_file)):
        assert value.encode() not in cmdline and value.encode() not in environ
    # Its channel is the only extra socket it was handed: no admin listener in the worker.
    admin_port = int(str(proxy.extra["admin"]).rsplit(":", 1)[1])
    assert established_owners(admin_port, [worker]) == Counter()


@pytest.mark.parametrize("value", ["0", "-1", "65", "two"])
def test_bad_workers_value_is_a_usage_error(tmp_path: Path, value: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "run", "--home", str(tmp_path), f"--workers={value}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2
    assert "--workers must be auto or a number from 1 to 64" in r.stderr
