"""The admin listener also runs inside a stock `mitmdump -s addons/vaultproxy.py`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.harness.proxy import REPO, ProxyHome

pytestmark = pytest.mark.integration

MITMDUMP = Path(sys.executable).with_name("mitmdump")


def test_mitmdump_serves_the_admin_api(tmp_path: Path) -> None:
    canary.watch(tmp_path)
    toml = '[[service]]\nname = "svc"\nhosts = ["svc.api.test"]\nmode = "host_inject"\n' \
        'auth = "bearer"\n'
    home = ProxyHome.create(tmp_path, toml, {"svc": canary.make_canary()})
    # Every listener on port 0 (a port probed free can be taken before mitmdump binds it, by
    # an xdist neighbour): the ports are read back from run.json, which the addon writes once
    # mitmdump listens and the admin API and dashboard are up.
    log = tmp_path / "mitmdump.log"
    run_json = home.path / "run.json"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(MITMDUMP), "-s", str(REPO / "addons" / "vaultproxy.py"),
             "--mode", "regular@127.0.0.1:0",
             "--set", f"vaultproxy_home={home.path}",
             "--set", f"vaultproxy_password_file={home.password_file}",
             "--set", "vaultproxy_admin_listen=127.0.0.1:0",
             "--set", "vaultproxy_dashboard_listen=127.0.0.1:0"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        )
        try:
            sock = home.path / "admin.sock"
            deadline = time.monotonic() + 30
            data: dict[str, object] = {}
            while data.get("pid") != proc.pid and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
                try:
                    data = json.loads(run_json.read_text())
                except (OSError, json.JSONDecodeError):
                    data = {}
            # run.json is written, so `vaultproxy status` / env / exec work under mitmdump;
            # it names the ports mitmdump got (the proxy's as mitmdump's own log line does).
            assert data.get("pid") == proc.pid, log.read_text()
            assert sock.exists()
            listening = re.search(r"proxy listening at 127\.0\.0\.1:(\d+)", log.read_text())
            assert listening, log.read_text()
            port = int(listening.group(1))
            assert data["proxy_url"] == f"http://127.0.0.1:{port}", data
            admin_port = int(str(data["admin_url"]).rsplit(":", 1)[1])
            dash_port = int(str(data["dashboard_url"]).rsplit(":", 1)[1])
            assert data["admin_url"] == f"http://127.0.0.1:{admin_port}", data
            assert data["dashboard_url"] == f"http://127.0.0.1:{dash_port}", data
            assert 0 not in (port, admin_port, dash_port)
            token = (home.path / "admin-token").read_text().strip()
            with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", trust_env=False,
                              headers={"Authorization": f"Bearer {token}"}) as c:
                assert c.get("/v1/health").json()["services"] == 1
                bad = c.get("/v1/services", headers={"Authorization": "Bearer x"})
                assert bad.status_code == 401
                assert [s["name"] for s in c.get("/v1/secrets").json()["secrets"]] == ["svc"]
            _dashboard_logs_in(home, dash_port)
            uds = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=uds, base_url="http://localhost", trust_env=False) as c:
                assert c.post("/v1/lock").json() == {"locked": True}
                # The error shape every SDK prints, on this path too: POST /proxy ...
                r = c.post("/proxy", json={"service": "svc", "method": "GET", "path": "/"})
                assert r.status_code == 503 and r.headers["X-Vaultproxy-Error"] == "locked"
                assert r.json()["error"]["type"] == "vaultproxy_error"
                assert "vaultproxy unlock" in r.json()["error"]["message"]
            st = subprocess.run([sys.executable, "-m", "vaultproxy", "status", "--home",
                                 str(home.path)], capture_output=True, text=True, timeout=60)
            assert st.returncode == 0 and "LOCKED" in st.stdout, st.stdout + st.stderr
            env = subprocess.run([sys.executable, "-m", "vaultproxy", "env", "--home",
                                  str(home.path)], capture_output=True, text=True, timeout=60)
            assert f"HTTPS_PROXY='http://127.0.0.1:{port}'" in env.stdout, env.stderr
            # The admin port is an own listener here too.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"CONNECT 127.0.0.1:{admin_port} HTTP/1.1\r\n\r\n".encode())
                assert s.recv(4096).startswith(b"HTTP/1.1 403")
        finally:
            proc.terminate()
            proc.wait(15)
    assert not sock.exists()
    assert not (home.path / "run.json").exists()


def _dashboard_logs_in(home: ProxyHome, dash_port: int) -> None:
    """mitmdump serves the dashboard too: `vaultproxy dashboard` mints a login through
    admin.sock, the session shows the services."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "vaultproxy", "dashboard", "--home",
                              str(home.path)], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            break
        time.sleep(0.2)
    assert out.returncode == 0, out.stderr
    base = f"http://127.0.0.1:{dash_port}"
    url = out.stdout.strip()
    assert url.startswith(base + "/login#token=")
    with httpx.Client(base_url=base, trust_env=False) as c:
        assert c.get("/").status_code == 401
        r = c.post("/login", json={"token": url.split("=", 1)[1]}, headers={"Origin": base})
        assert r.status_code == 200
        assert "svc.api.test" in c.get("/").text
