"""Watching what agents do, live: `vaultproxy tail [--follow]` over admin.sock (from the SSE
stream ``GET /v1/audit/stream``), and `run`'s own line per request on a terminal.

The proxy runs with two worker processes, so a record a worker wrote reaches the stream
too. `tail --follow` and `run` run under a real pty (pexpect).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}


def vp(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaultproxy", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO,
                          start_new_session=True)


def spawn(*args: str, log: Path) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "vaultproxy", *args], env=_env(),
                          encoding="utf-8", timeout=30, cwd=str(REPO), dimensions=(24, 250))
    child.logfile_read = log.open("a")
    return child


def end(child: pexpect.spawn, *, sig: int = signal.SIGINT) -> None:
    if child.isalive():
        child.kill(sig)
        child.expect(pexpect.EOF)
    child.close()
    if child.logfile_read is not None:
        child.logfile_read.close()


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream) -> ProxyProcess:  # type: ignore[no-untyped-def]
    services = service_block("watch-a", "host_inject", "bearer", upstream.port)
    services += service_block("watch-b", "host_inject", "bearer", upstream.port)
    return start_proxy(services, {"watch-a": make_canary(), "watch-b": make_canary()},  # type: ignore[no-any-return]
                       args=("--workers", "2"))


def _get(proxy: ProxyProcess, service: str, path: str) -> httpx.Response:
    with agent_client(proxy) as client:
        return client.get(f"https://{service}.api.test{path}")


def test_tail_follow_shows_a_request_within_a_second(proxy: ProxyProcess, tmp_path: Path) -> None:
    child = spawn("tail", "--follow", "--lines", "0", "--home", str(proxy.home.path),
                  log=tmp_path / "tail.log")
    try:
        child.expect("following the audit")
        # Several requests: with two workers sharing the port, both answer some of them.
        paths = [f"/v1/follow-{i}-{time.monotonic_ns()}" for i in range(6)]
        for path in paths:
            assert _get(proxy, "watch-a", path).status_code == 200
            done = time.monotonic()
            child.expect_exact(path, timeout=5)
            assert time.monotonic() - done < 1.0, "the line came later than a second"
        line = child.before + child.after
        assert "watch-a" in line and "GET" in line and "watch-a.api.test" in line
        child.expect(r"200\s+injected")
    finally:
        end(child)
    assert child.exitstatus == 0
    assert "Traceback" not in (tmp_path / "tail.log").read_text()


def test_tail_filters_and_json(proxy: ProxyProcess) -> None:
    a = f"/v1/only-a-{time.monotonic_ns()}"
    b = f"/v1/only-b-{time.monotonic_ns()}"
    assert _get(proxy, "watch-a", a).status_code == 200
    assert _get(proxy, "watch-b", b).status_code == 200
    r = vp(proxy.home.path, "tail", "--service", "watch-b", "--lines", "50")
    assert r.returncode == 0, r.stderr
    assert b in r.stdout and a not in r.stdout
    assert all("watch-b" in line for line in r.stdout.splitlines())
    r = vp(proxy.home.path, "tail", "--json", "--lines", "5")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert records and all({"ts", "event", "service", "outcome"} <= set(x) for x in records)
    r = vp(proxy.home.path, "tail", "--agent", "nobody-of-that-name", "--lines", "50")
    assert r.returncode == 0 and r.stdout == ""


def test_stream_is_server_sent_events_over_tcp_with_the_token(proxy: ProxyProcess) -> None:
    admin = str(proxy.extra["admin_url"])
    token = (proxy.home.path / "admin-token").read_text().strip()
    with httpx.Client(base_url=admin, timeout=10) as client:
        assert client.get("/v1/audit/stream").status_code == 401  # the negative twin
        with client.stream("GET", "/v1/audit/stream", params={"service": "watch-b"},
                           headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines).startswith(":")
            path = f"/v1/sse-{time.monotonic_ns()}"
            assert _get(proxy, "watch-a", "/v1/not-this-one").status_code == 200
            assert _get(proxy, "watch-b", path).status_code == 200
            data = next(line for line in lines if line.startswith("data:"))
            record = json.loads(data[5:])
            assert record["service"] == "watch-b" and record["path"] == path


def test_sighup_reload_is_an_admin_event_in_the_stream(proxy: ProxyProcess, tmp_path: Path) -> None:
    child = spawn("tail", "--follow", "--lines", "0", "--home", str(proxy.home.path),
                  log=tmp_path / "tail.log")
    try:
        child.expect("following the audit")
        proxy.signal(signal.SIGHUP)
        child.expect(r"admin\s+signal:SIGHUP\s+SIGHUP services.toml 200 ok \(reload\)")
    finally:
        end(child)


def test_run_on_a_terminal_prints_one_line_per_request(
    upstream: Upstream, tmp_path: Path
) -> None:
    home = ProxyHome.create(tmp_path, service_block("watch-run", "host_inject", "bearer",
                                                    upstream.port),
                            {"watch-run": make_canary()},
                            files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
    child = spawn("run", "--home", str(home.path), "--password-file", str(home.password_file),
                  "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                  log=tmp_path / "run.log")
    try:
        child.expect("ready")
        deadline = time.monotonic() + 20
        while not (home.path / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = json.loads((home.path / "run.json").read_text())["proxy_url"]
        path = f"/v1/on-the-terminal-{time.monotonic_ns()}"
        with httpx.Client(proxy=url, verify=str(home.ca_cert), trust_env=False) as client:
            assert client.get(f"https://watch-run.api.test{path}").status_code == 200
        child.expect_exact(path, timeout=3)
        child.expect(r"200\s+injected")
        # A follower stays connected; stopping the proxy ends its stream instead of
        # waiting for it (the admin server's graceful shutdown would otherwise wait 5 s).
        tail = spawn("tail", "-f", "-n", "0", "--home", str(home.path),
                     log=tmp_path / "tail.log")
        tail.expect("following the audit")
        stopping = time.monotonic()
        child.kill(signal.SIGTERM)
        child.expect(pexpect.EOF, timeout=20)
        tail.expect("the proxy stopped; the stream ended", timeout=10)
        end(tail)
        assert time.monotonic() - stopping < 4.0
    finally:
        end(child, sig=signal.SIGTERM)
