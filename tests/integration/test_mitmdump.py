"""The stock-mitmdump path: `mitmdump -s addons/vaultproxy.py` injects like `vaultproxy run`,
and a broken hot reload of the script refuses intercepted traffic instead of forwarding it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import PASSWORD, REPO, ProxyHome
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block
from tests.integration.test_inject import MATRIX, _agent_request, _expected

MITMDUMP = Path(sys.executable).with_name("mitmdump")


class Mitmdump:
    """Every listener on port 0 (proxy, admin API; the dashboard off): a second proxy on the
    machine, another helper's or an xdist neighbour's, holds no port this one needs. The port
    the proxy got is read back from run.json, which the addon writes once mitmdump listens."""

    def __init__(self, home: ProxyHome, script: Path, log: Path, *extra: str) -> None:
        self.log = log
        run_json = home.path / "run.json"
        run_json.unlink(missing_ok=True)
        self._f = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(MITMDUMP),
                "-s",
                str(script),
                "--mode",
                "regular@127.0.0.1:0",
                "--set",
                f"vaultproxy_home={home.path}",
                "--set",
                f"vaultproxy_password_file={home.password_file}",
                "--set",
                "vaultproxy_admin_listen=127.0.0.1:0",  # never the fixed 3201 in tests
                "--set",
                "vaultproxy_dashboard_listen=",  # never the fixed 3202 in tests
                *extra,
            ],
            stdout=self._f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, log.read_text()
                try:
                    data = json.loads(run_json.read_text())
                except (OSError, json.JSONDecodeError):
                    data = {}
                if data.get("pid") == self.proc.pid:
                    self.url = str(data["proxy_url"])
                    self.port = int(self.url.rsplit(":", 1)[1])
                    with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                        return
                time.sleep(0.1)
            raise AssertionError("mitmdump did not start:\n" + log.read_text())
        except BaseException:
            self.stop()  # (no process left running behind a failed start)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._f.close()


@pytest.fixture(scope="module")
def mitm(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[tuple[Mitmdump, ProxyHome, dict[str, object], Path]]:
    base = tmp_path_factory.mktemp("mitmdump")
    canary.watch(base)
    toml = "".join(service_block(n, m, a, upstream.port, **x) for n, m, a, x in MATRIX)
    secrets: dict[str, object] = {}
    for name, _m, auth, _x in MATRIX:
        secrets[name] = (
            {"username": "svc-user", "password": make_canary()}
            if auth == "basic"
            else make_canary()
        )
    home = ProxyHome.create(
        base, toml, secrets, files={"upstream-ca.pem": upstream.ca_file.read_bytes()}
    )  # type: ignore[arg-type]
    script = base / "vaultproxy.py"
    shutil.copy(REPO / "addons" / "vaultproxy.py", script)
    md = Mitmdump(home, script, base / "mitmdump.log")
    yield md, home, secrets, script
    md.stop()


def _client(md: Mitmdump, home: ProxyHome) -> httpx.Client:
    import ssl

    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    return httpx.Client(proxy=md.url, verify=ctx, timeout=20)


@pytest.mark.parametrize(("name", "mode", "auth", "extra"), MATRIX, ids=[m[0] for m in MATRIX])
def test_mitmdump_injects_like_run(mitm, upstream, name, mode, auth, extra):  # type: ignore[no-untyped-def]
    md, home, secrets, _ = mitm
    headers, params = _agent_request(name, mode, auth)
    with _client(md, home) as c:
        r = c.get(f"https://{name}.api.test/md", headers=headers, params=params)
    assert r.status_code == 200, r.text
    where, key, value = _expected(name, mode, auth, secrets[name])
    rec = upstream.received[-1]
    if where == "header":
        assert rec.header(key) == value
    else:
        assert f"{key}={value}" in rec.query.split("&")
    assert "agent-own" not in repr(rec.headers)


def test_mitmdump_flow_output_never_shows_injected_secrets(mitm, upstream):  # type: ignore[no-untyped-def]
    """mitmdump prints flows after our stages ran; flow output is forced off (the dumper
    would print the query-param credential of hi-query/ph-query otherwise)."""
    md, home, secrets, _ = mitm
    with _client(md, home) as c:
        assert c.get("https://hi-query.api.test/printed", params={"q": "1"}).status_code == 200
    time.sleep(0.5)
    out = md.output()
    assert "flow_detail forced to 0" in out
    # Not even a prefix: mitmdump's dumper truncates long URLs ("key=vpcanary_02a5ad…").
    assert "vpcanary_" not in out


@pytest.mark.parametrize("times", [2, 1])
def test_an_option_set_twice_refuses_traffic(tmp_path, upstream, times):  # type: ignore[no-untyped-def]
    """mitmproxy parses a ``--set`` of a script's option once the script declares it; a
    non-list option given twice made that parse raise half-way through our registration, so
    neither vaultproxy nor its Ready stage was in the chain and mitmdump forwarded traffic
    unproxied, saying nothing. Now the option is named and nothing is served (mitmdump
    exits on the error). Twin (``times=1``): the same command with it once serves."""
    canary.watch(tmp_path)
    toml = service_block("hi-bearer", "host_inject", "bearer", upstream.port)
    home = ProxyHome.create(
        tmp_path, toml, {"hi-bearer": make_canary()},
        files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    script = tmp_path / "vaultproxy.py"
    shutil.copy(REPO / "addons" / "vaultproxy.py", script)
    log = tmp_path / "mitmdump.log"
    if times == 1:
        md = Mitmdump(home, script, log)  # (admin_listen given once, by the fixture)
        try:
            assert "refusing traffic" not in md.output()
        finally:
            md.stop()
        return
    before = len(upstream.received)
    with pytest.raises(AssertionError):  # (it exits: no run.json, no proxy)
        Mitmdump(home, script, log, "--set", "vaultproxy_admin_listen=127.0.0.1:0")
    out = log.read_text(errors="replace")
    assert "vaultproxy not loaded, refusing traffic" in out, out
    assert "Error logged during startup, exiting" in out, out
    assert "--set vaultproxy_admin_listen is given 2 times: give it once" in out, out
    assert len(upstream.received) == before


def test_flow_file_sink_refuses_to_run(tmp_path, upstream):  # type: ignore[no-untyped-def]
    """`-w`/save_stream_file would store injected credentials: mitmdump refuses to start."""
    canary.watch(tmp_path)
    toml = service_block("hi-bearer", "host_inject", "bearer", upstream.port)
    home = ProxyHome.create(
        tmp_path,
        toml,
        {"hi-bearer": make_canary()},
        files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    script = tmp_path / "vaultproxy.py"
    shutil.copy(REPO / "addons" / "vaultproxy.py", script)
    flows = tmp_path / "flows.mitm"
    proc = subprocess.run(
        [
            str(MITMDUMP),
            "-s",
            str(script),
            "--mode",
            "regular@127.0.0.1:0",
            "--set",
            f"vaultproxy_home={home.path}",
            "--set",
            f"vaultproxy_password_file={home.password_file}",
            "--set",
            "vaultproxy_admin_listen=",
            "--set",
            "vaultproxy_dashboard_listen=",
            "--set",
            f"save_stream_file={flows}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "save_stream_file would write injected credentials" in proc.stdout + proc.stderr


def test_mitmdump_errors_have_the_shape_every_sdk_prints(mitm):  # type: ignore[no-untyped-def]
    """Locked, an intercepted request through mitmdump answers like `vaultproxy run`: the
    error object the OpenAI/Anthropic SDKs print, and X-Vaultproxy-Error."""
    md, home, _secrets, _ = mitm
    name = MATRIX[0][0]
    admin = httpx.Client(transport=httpx.HTTPTransport(uds=str(home.path / "admin.sock")),
                         base_url="http://localhost", timeout=60)
    with admin:
        assert admin.post("/v1/lock").status_code == 200
        try:
            with _client(md, home) as c:
                r = c.get(f"https://{name}.api.test/v1/models")
            assert r.status_code == 503 and r.headers["X-Vaultproxy-Error"] == "locked"
            error = r.json()["error"]
            assert error["type"] == "vaultproxy_error" and error["code"] == "locked"
            assert "vaultproxy unlock" in error["message"]
        finally:
            assert admin.post("/v1/unlock", json={"password": PASSWORD}).status_code == 200


def test_broken_hot_reload_refuses_instead_of_forwarding(mitm, upstream):  # type: ignore[no-untyped-def]
    md, home, _secrets, script = mitm
    script.write_text("this is not python (\n")
    deadline = time.monotonic() + 20
    while "SyntaxError" not in md.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "SyntaxError" in md.output(), md.output()
    before = len(upstream.received)
    with _client(md, home) as c:
        with pytest.raises(httpx.ProxyError) as e:
            c.get(
                "https://hi-bearer.api.test/after-break",
                headers={"Authorization": "Bearer agent-own"},
            )
    assert "503" in str(e.value)
    assert len(upstream.received) == before, "a request went upstream with the chain broken"
    assert md.proc.poll() is None

