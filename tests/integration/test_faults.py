"""Faults under load (issue 15), each against the real proxy, a real TLS upstream that logs
every request it receives, and real clients:

- the audit disk fills up (a small tmpfs): under ``on_failure = "deny"`` (the default) no
  request leaves with a credential unless its record is in the file, the refusals say
  ``503 audit_unavailable``, ``/v1/health`` says ``degraded``, ``/metrics`` counts the
  failures, and once space returns the file holds whole, unique lines in order; the
  negative twin (``continue``) forwards them unaudited and says so at start;
- the supervisor is SIGKILLed under load: every request the upstream logged is in
  ``audit.jsonl``; the orphaned worker stops and exits; the next run removes the stale files;
- ``POST /v1/lock`` under load: every client gets an answer (its response scrubbed with the
  redactor its request started with, or ``503 locked``), and the audit says what the client
  got.

The tmpfs tests need root (mount); they are skipped, not passed, without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream, free_port
from tests.integration.conftest import agent_client, service_block
from tests.integration.test_admin import Quiet, unix

pytestmark = pytest.mark.integration

SERVICE = "fault"
HOST = f"{SERVICE}.api.test"


@pytest.fixture(scope="module")
def secret() -> Quiet:
    return Quiet({SERVICE: make_canary()})


def _records(home: Path) -> list[dict[str, object]]:
    """Every line of audit.jsonl (and its rotations); json.loads fails on a torn line."""
    out: list[dict[str, object]] = []
    for name in ("audit.jsonl.1", "audit.jsonl"):
        path = home / name
        if path.exists():
            for line in path.read_text().splitlines():
                assert line.strip(), "an empty line in audit.jsonl"
                out.append(json.loads(line))
    return out


def _audited_paths(home: Path | list[dict[str, object]], prefix: str) -> set[str]:
    records = _records(home) if isinstance(home, Path) else home
    return {str(r["path"]) for r in records
            if str(r.get("path") or "").startswith(prefix)
            and r["event"] in ("forward", "request")}


def _upstream_paths(upstream: Upstream, prefix: str) -> set[str]:
    return {r.path for r in list(upstream.received) if r.path.startswith(prefix)}


def _load(proxy: ProxyProcess, prefix: str, threads: int, per_thread: int | None,
          stop: threading.Event | None = None) -> list[tuple[str, int | str]]:
    """``threads`` clients, each on its own connections, each sending requests to
    ``prefix/<thread>/<n>``; returns (path, status or exception name) for every request."""
    results: list[tuple[str, int | str]] = []
    lock = threading.Lock()

    def one(t: int) -> None:
        n = 0
        with agent_client(proxy) as c:
            while (per_thread is None or n < per_thread) and not (stop and stop.is_set()):
                path = f"{prefix}/{t}/{n}"
                try:
                    got: int | str = c.get(f"https://{HOST}{path}").status_code
                except httpx.HTTPError as e:
                    got = type(e).__name__
                with lock:
                    results.append((path, got))
                n += 1
                if stop is None and per_thread is None:
                    break

    workers = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive(), "a client hung"
    return results


# -- the audit disk fills up --------------------------------------------------------------
@contextlib.contextmanager
def small_fs(where: Path, size: str = "3m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the audit disk-full test)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        canary.scan_path(where)  # before the files vanish with the mount
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Fill the file system to the last byte; returns the filler (delete it to free space)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while os.write(fd, block) == size:
                    pass
    finally:
        os.close(fd)
    return filler


@dataclass
class FullDisk:
    results: list[tuple[str, int | str]]
    health: dict[str, Any]
    metrics: str
    records: list[dict[str, object]]  # audit.jsonl after recovery, read before the unmount
    lines: list[str]
    output: str


def _full_disk_run(tmp_path: Path, upstream: Upstream, secret: Quiet, policy: str | None,
                   ) -> FullDisk:
    fs = tmp_path / "fs"
    stack = contextlib.ExitStack()
    stack.enter_context(small_fs(fs))
    toml = service_block(SERVICE, "host_inject", "bearer", upstream.port)
    if policy is not None:
        toml = f'[audit]\non_failure = "{policy}"\n\n' + toml
    home = ProxyHome.create(fs, toml, {SERVICE: secret[SERVICE]},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    stack.callback(proxy.stop)
    try:
        assert {s for _, s in _load(proxy, "/before", 2, 5)} == {200}
        filler = fill(fs)
        during = _load(proxy, "/full", 3, 8)
        with unix(proxy) as admin:
            health = admin.get("/v1/health").json()
            metrics = admin.get("/metrics").text
        filler.unlink()
        after = _load(proxy, "/after", 2, 5)
        with unix(proxy) as admin:
            health_after = admin.get("/v1/health").json()
        assert proxy.stop() == 0
        return FullDisk(during + after, {"during": health, "after": health_after}, metrics,
                        _records(home.path), (home.path / "audit.jsonl").read_text().splitlines(),
                        proxy.output())
    finally:
        stack.close()


def test_audit_disk_full_denies_unaudited_credentials(tmp_path, upstream, secret) -> None:  # type: ignore[no-untyped-def]
    run = _full_disk_run(tmp_path, upstream, secret, None)
    results, health, metrics = run.results, run.health, run.metrics
    during = [(p, s) for p, s in results if p.startswith("/full")]
    assert {s for _, s in during} <= {200, 503}, during
    assert any(s == 503 for _, s in during), "the full disk refused nothing"
    # Deny: every request the upstream saw is in the file (its forward record went first).
    seen = _upstream_paths(upstream, "/full")
    assert seen <= _audited_paths(run.records, "/full")
    refused = {p for p, s in during if s == 503}
    assert not refused & seen  # a refused request never reached the upstream
    assert health["during"]["status"] == "degraded"
    assert "audit.jsonl cannot be written" in health["during"]["problems"][0]
    assert "vaultproxy_audit_healthy 0.0" in metrics
    failed = [ln for ln in metrics.splitlines() if ln.startswith("vaultproxy_audit_records_failed")]
    assert failed and float(failed[0].split()[-1]) > 0
    # Space is back: service resumes, health is ok, the file is whole.
    assert {s for p, s in results if p.startswith("/after")} == {200}
    assert health["after"]["status"] == "ok"
    records, lines = run.records, run.lines  # every line parsed: nothing torn
    assert len(lines) == len(set(lines)), "a duplicate line"
    requests = [r for r in records if r["event"] == "request"]
    by_path = {str(r["path"]): r for r in requests}
    for path, status in during:  # what each client got is what the audit says
        assert by_path[path]["status"] == status, path
        if status == 503:
            assert by_path[path]["reason"] == "audit_unavailable"
    # One process: records are in the order they were made (the kept ones first).
    order = [str(r["path"]).split("/")[1] for r in requests]
    assert order == sorted(order, key=["before", "full", "after"].index)
    assert "audit:" in run.output and "record(s) written" in run.output


def test_audit_disk_full_with_continue_forwards_unaudited(tmp_path, upstream, secret) -> None:  # type: ignore[no-untyped-def]
    """The negative twin: ``on_failure = "continue"`` keeps injecting while nothing can be
    written, says so at start, and still reports ``degraded``."""
    run = _full_disk_run(tmp_path, upstream, secret, "continue")
    during = [(p, s) for p, s in run.results if p.startswith("/full")]
    assert {s for _, s in during} == {200}  # nothing refused: forwarded with the credential
    assert run.health["during"]["status"] == "degraded"
    assert 'SECURITY: [audit] on_failure = "continue"' in run.output
    # The records kept in memory were written once space returned: whole lines, no loss.
    assert _upstream_paths(upstream, "/full") <= _audited_paths(run.records, "/full")


# -- the supervisor is killed -------------------------------------------------------------
def test_supervisor_kill_leaves_no_unaudited_request(start_proxy, upstream, secret) -> None:  # type: ignore[no-untyped-def]
    toml = service_block(SERVICE, "host_inject", "bearer", upstream.port)
    proxy = start_proxy(toml, {SERVICE: secret[SERVICE]}, args=("--workers", "2"))
    home = proxy.home.path
    (worker,) = proxy.extra["worker_pids"]  # type: ignore[misc]
    stop = threading.Event()
    results: list[tuple[str, int | str]] = []
    loader = threading.Thread(target=lambda: results.extend(
        _load(proxy, "/kill", 6, None, stop)))
    loader.start()
    deadline = time.monotonic() + 10
    while len(_upstream_paths(upstream, "/kill")) < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.proc.kill()  # SIGKILL: no chance to flush or tell anyone
    proxy.proc.wait()
    time.sleep(0.5)  # the load goes on against the orphaned worker
    stop.set()
    loader.join(60)
    assert not loader.is_alive(), "a client hung"
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    seen = _upstream_paths(upstream, "/kill")
    assert len(seen) >= 30
    missing = seen - _audited_paths(home, "/kill")
    assert not missing, f"{len(missing)} upstream request(s) with no audit record"
    # The worker stopped: nothing listens on the proxy port any more.
    with pytest.raises(httpx.HTTPError):
        with agent_client(proxy) as c:
            c.get(f"https://{HOST}/after-kill")
    # Stale files: left behind by the kill, removed (and said so) by the next run.
    assert (home / "admin-token").exists() and (home / "admin.sock").exists()
    again = ProxyProcess.start(proxy.home, args=("--workers", "2"))
    try:
        assert "removed a stale admin-token" in again.output()
        with agent_client(again) as c:
            assert c.get(f"https://{HOST}/restarted").status_code == 200
    finally:
        assert again.stop() == 0


# -- lock under load ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Takes its time and echoes the Authorization it got (a careless upstream)."""

    def slow(rec: Received) -> Reply:
        time.sleep(0.15)
        body = json.dumps({"path": rec.path, "auth": rec.header("authorization")}).encode()
        return 200, [(b"content-type", b"application/json")], [body]

    u = Upstream(tmp_path_factory.mktemp("slow"), handler=slow).start()
    yield u
    u.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lock_under_load_answers_every_client(tmp_path, slow_upstream, secret, workers) -> None:  # type: ignore[no-untyped-def]
    toml = service_block(SERVICE, "host_inject", "bearer", slow_upstream.port)
    home = ProxyHome.create(tmp_path, toml, {SERVICE: secret[SERVICE]},
                            files={"upstream-ca.pem": slow_upstream.ca_file.read_bytes()})
    canary.watch(tmp_path)
    proxy = ProxyProcess.start(home, args=("--workers", workers))
    bodies: list[tuple[str, int, bytes]] = []
    errors: list[str] = []
    started = threading.Barrier(9)

    def one(i: int) -> None:
        with agent_client(proxy) as c:
            started.wait()
            try:
                r = c.get(f"https://{HOST}/lock/{workers}/{i}")
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
                return
            bodies.append((f"/lock/{workers}/{i}", r.status_code, r.content))

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        started.wait()
        deadline = time.monotonic() + 10
        while not _upstream_paths(slow_upstream, f"/lock/{workers}/") and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        with unix(proxy) as admin:
            assert admin.post("/v1/lock").json() == {"locked": True}
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a client hung"
        assert not errors, errors
        statuses = {s for _, s, _ in bodies}
        assert statuses <= {200, 503} and 200 in statuses, statuses
        for path, status, body in bodies:
            assert secret[SERVICE].encode() not in body  # scrubbed although locked meanwhile
            if status == 200:
                assert path in _upstream_paths(slow_upstream, path)
                assert json.loads(body)["auth"] == f"Bearer __vault.{SERVICE}__"
        # The negative twin: what the upstream itself sent back carried the credential.
        assert any(r.header("authorization") == f"Bearer {secret[SERVICE]}"
                   for r in slow_upstream.received)
        assert proxy.stop() == 0
        got = {str(r["path"]): r["status"] for r in proxy.audit() if r["event"] == "request"}
        assert all(got[path] == status for path, status, _ in bodies), (got, bodies)
        # The shutdown summary counts every process's records: all the lines in the file.
        summary = re.search(r"vaultproxy: audit: (\d+) record\(s\) written, 0 write\(s\) "
                            r"failed, 0 record\(s\) lost", proxy.output())
        assert summary and int(summary[1]) == len(proxy.audit()), proxy.output()[-500:]
    finally:
        proxy.stop()


# -- reload applies a changed ca_cert -----------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_reload_applies_a_changed_ca_cert(tmp_path, upstream, secret, workers) -> None:  # type: ignore[no-untyped-def]
    """The file named by ``ca_cert`` changes, services.toml does not: ``POST /v1/reload``
    and SIGHUP apply it on every worker (the negative twin is the state before each)."""
    wrong = trustme.CA().cert_pem.bytes()
    right = upstream.ca_file.read_bytes()
    toml = service_block(SERVICE, "host_inject", "bearer", upstream.port).replace(
        'ca_cert = "upstream-ca.pem"', 'ca_cert = "lab-ca.pem"')
    home = ProxyHome.create(tmp_path, toml, {SERVICE: secret[SERVICE]},
                            files={"lab-ca.pem": wrong})
    canary.watch(tmp_path)
    proxy = ProxyProcess.start(home, args=("--workers", workers))

    def codes(n: int = 6) -> set[object]:
        out: set[object] = set()
        for i in range(n):  # fresh connections: both workers, no pooled upstream
            with agent_client(proxy) as c:
                r = c.get(f"https://{HOST}/ca/{i}")
                out.add(200 if r.status_code == 200 else r.json()["error"]["code"])
        return out

    try:
        assert codes() == {"upstream_tls"}  # the wrong CA: not trusted
        (home.path / "lab-ca.pem").write_bytes(right)
        with unix(proxy) as admin:
            assert admin.post("/v1/reload").status_code == 200
        assert codes() == {200}
        (home.path / "lab-ca.pem").write_bytes(wrong)
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while codes(2) != {"upstream_tls"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert codes() == {"upstream_tls"}
    finally:
        proxy.stop()


# -- run.json means serving ---------------------------------------------------------------
def test_nothing_is_served_before_run_json(tmp_path, upstream, secret) -> None:  # type: ignore[no-untyped-def]
    """A client that connects the moment the port listens (while worker 1 still starts) is
    held: its CONNECT is answered only once run.json (and the ready line) are out."""
    toml = service_block(SERVICE, "host_inject", "bearer", upstream.port)
    home = ProxyHome.create(tmp_path, toml, {SERVICE: secret[SERVICE]},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    canary.watch(tmp_path)
    port = free_port()
    started: list[ProxyProcess] = []
    starter = threading.Thread(target=lambda: started.append(ProxyProcess.start(
        home, args=("--listen", f"127.0.0.1:{port}", "--workers", "2"))))
    starter.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the proxy never listened"
                time.sleep(0.005)
        early = not (home.path / "run.json").exists()
        sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
        answer = sock.recv(4096)
        served_at_run_json = (home.path / "run.json").exists()
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert early, "run.json was there before the port listened: nothing was tested"
        assert served_at_run_json, "the CONNECT was answered before run.json existed"
    finally:
        starter.join(60)
        for p in started:
            assert p.stop() == 0
