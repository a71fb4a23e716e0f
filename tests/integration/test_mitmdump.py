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



# --- The load gate (addons/vaultproxy.py): whatever raises while mitmdump loads the script,
# nothing is forwarded. Each break is made in the mitmdump process only, by a sitecustomize
# on its PYTHONPATH; the "upstream" is a bare TCP listener that counts every connection
# mitmdump opens to it (a forwarded request, a tunnel, a TLS handshake: anything).

_BREAKS = {
    # a vaultproxy module (a dependency of the engine) raises on import
    "import": """
import sys
class _Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "vaultproxy.dashboard.server":
            raise ImportError("vpt-simulated: a dependency is missing")
        return None
sys.meta_path.insert(0, _Broken())
""",
    # an exception in our load (one of our options cannot be declared)
    "load": """
from mitmproxy import addonmanager
_add = addonmanager.Loader.add_option
def add_option(self, name, *a, **k):
    if name == "vaultproxy_dashboard_listen":
        raise RuntimeError("vpt-simulated: add_option failed")
    return _add(self, name, *a, **k)
addonmanager.Loader.add_option = add_option
""",
    # the same with the one exception mitmproxy's safecall lets through (OptionsError, as the
    # deferred --set parse raised in session 13): it ends mitmdump's script loader task and
    # nothing at all is logged at ERROR by mitmproxy
    "load-optionserror": """
from mitmproxy import addonmanager, exceptions
_add = addonmanager.Loader.add_option
def add_option(self, name, *a, **k):
    if name == "vaultproxy_dashboard_listen":
        raise exceptions.OptionsError("vpt-simulated: add_option failed")
    return _add(self, name, *a, **k)
addonmanager.Loader.add_option = add_option
""",
    "none": "",  # twin: the normal start
}


class _Counter:
    """A TCP listener on port 0 that counts the connections made to it."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _start_broken(tmp_path: Path, upstream: Upstream, custom: str) -> tuple[
        subprocess.Popen[bytes], Path, ProxyHome, int | None]:
    """mitmdump on port 0 with the sitecustomize ``custom``; the port read from its
    "listening at" line (run.json is written only by a loaded vaultproxy). None: it exited."""
    import re

    canary.watch(tmp_path)
    toml = service_block("hi-bearer", "host_inject", "bearer", upstream.port)
    home = ProxyHome.create(
        tmp_path, toml, {"hi-bearer": make_canary()},
        files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
    )
    script = tmp_path / "vaultproxy.py"
    shutil.copy(REPO / "addons" / "vaultproxy.py", script)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(custom)
    log = tmp_path / "mitmdump.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as f:  # (the child has its own copy of the descriptor)
        proc = subprocess.Popen(
            [str(MITMDUMP), "-s", str(script), "--mode", "regular@127.0.0.1:0",
             "--set", f"vaultproxy_home={home.path}",
             "--set", f"vaultproxy_password_file={home.password_file}",
             "--set", "vaultproxy_admin_listen=127.0.0.1:0",
             "--set", "vaultproxy_dashboard_listen="],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace")
        m = re.search(r"listening at \S*?:(\d+)", out)
        if m and (custom == "" and (home.path / "run.json").exists() or custom != ""):
            time.sleep(1.0)  # (a load that fails logs, and exits, within this)
            if proc.poll() is None:
                return proc, log, home, int(m.group(1))
        if proc.poll() is not None:
            return proc, log, home, None
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("mitmdump neither listened nor exited:\n" + log.read_text())


@pytest.mark.parametrize("broken", list(_BREAKS))
def test_a_script_that_fails_to_load_forwards_nothing(tmp_path, upstream, broken):  # type: ignore[no-untyped-def]
    """Whatever raises while mitmdump loads addons/vaultproxy.py (an import, a ``load``, the
    exception mitmproxy does not even log), the load gate the script puts first refuses
    everything: mitmdump exits on the ERROR at start-up or serves 503s; it never opens a
    connection to the destination. Twin (``none``): the normal start serves, and the gate is
    gone once loaded."""
    counter = _Counter()
    proc, log, home, port = _start_broken(tmp_path, upstream, _BREAKS[broken])
    try:
        if port is not None:
            try:
                _refused_or_served(port, counter, home, broken)
            except (httpx.TransportError, ConnectionError):
                # (it exited on the ERROR line meanwhile: nothing is listening any more)
                assert broken != "none"
                proc.wait(15)
                port = None
        out = log.read_text(errors="replace")
        if broken == "none":
            assert port is not None, out
            assert "refusing ALL traffic" not in out, out
        else:
            assert "vaultproxy failed to load, refusing ALL traffic" in out, out
            assert "vpt-simulated" in out, out
            assert counter.accepted == 0, "mitmdump forwarded with vaultproxy not loaded"
            assert port is not None or proc.returncode == 1, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        counter.close()


def _refused_or_served(port: int, counter: _Counter, home: ProxyHome, broken: str) -> None:
    """A plain request and a CONNECT to the counter; with vaultproxy loaded (``none``), also
    a request to a configured service, served."""
    proxy = f"http://127.0.0.1:{port}"
    with httpx.Client(proxy=proxy, timeout=10) as c:
        r = c.get(f"http://127.0.0.1:{counter.port}/plain")
    if broken == "none":  # (vaultproxy refuses a host no service names; the point: not us)
        assert r.headers.get("X-Vaultproxy-Error") != "not_loaded", r.text
    else:
        assert r.status_code == 503, r.text
        assert r.headers["X-Vaultproxy-Error"] == "not_loaded"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{counter.port} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{counter.port}\r\n\r\n".encode())
        head = s.recv(4096)
    if broken != "none":
        if not head:
            raise ConnectionError("closed")  # (exiting, see the caller)
        assert head.startswith(b"HTTP/1.1 503"), head
        return
    import ssl

    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    with httpx.Client(proxy=proxy, verify=ctx, timeout=20) as c:
        r = c.get("https://hi-bearer.api.test/served",
                  headers={"Authorization": "Bearer agent-own"})
    assert r.status_code == 200, r.text


def test_a_hot_reload_whose_import_fails_refuses_with_the_gate(mitm, upstream):  # type: ignore[no-untyped-def]
    """A reload whose package import raises (the shim catches it): the gate goes back in,
    closed, and refuses; mitmdump keeps running. (Runs after the other ``mitm`` tests.)"""
    md, home, _secrets, script = mitm
    text = (REPO / "addons" / "vaultproxy.py").read_text()
    broken = text.replace("    addons = make_addons()\n", "    addons = make_addons()\n"
                          "    raise ImportError('vpt-simulated: reload import')\n")
    assert broken != text
    script.write_text(broken)
    deadline = time.monotonic() + 20
    while "vpt-simulated: reload import" not in md.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = md.output()
    assert "vaultproxy failed to load, refusing ALL traffic: ImportError" in out, out
    counter = _Counter()
    try:
        with httpx.Client(proxy=md.url, timeout=10) as c:
            r = c.get(f"http://127.0.0.1:{counter.port}/after-reload")
        assert r.status_code == 503 and r.headers["X-Vaultproxy-Error"] == "not_loaded", r.text
        assert counter.accepted == 0
        assert md.proc.poll() is None
    finally:
        counter.close()
        script.write_text(text)  # (the fixture's process ends after this module anyway)
