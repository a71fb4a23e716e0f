"""The mutual-TLS listener (`run --mtls-listen`, ``[mtls]``), reached from another network
namespace over a veth pair (the off-host case: inside it, the proxy's loopback does not
exist). Client certificates come from a trustme CA: a known CN is that agent (its scopes, no
token) and gets the credential injected by curl and by httpx; an unknown CN gets 407
agent_auth_required; no certificate, or one from another CA with the same CN, is refused in
the handshake; start refuses a group/other-readable key."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess, cli
from tests.harness.raw import recv_response
from tests.harness.upstream import Upstream
from tests.integration.conftest import service_block


class Netns:
    """A network namespace joined to this one by a veth pair (/30): ``host_ip`` here,
    ``peer_ip`` inside; its loopback is its own."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"vpmtls{tag}"
        self.veth = f"vpm{tag}"
        net = int(tag[:2], 16)
        self.host_ip, self.peer_ip = f"10.232.{net}.1", f"10.232.{net}.2"
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "p"],
            ["ip", "link", "set", self.veth + "p", "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.peer_ip}/30",
             "dev", self.veth + "p"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.veth + "p", "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=30)

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout, env={"PATH": os.environ["PATH"]},
                              cwd=REPO)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


@dataclass
class Env:
    proxy: ProxyProcess
    ns: Netns
    mtls: tuple[str, int]
    base: Path
    server_ca: Path  # what clients trust for the listener's own certificate
    files: dict[str, tuple[Path, Path]]  # client name -> (cert, key)
    secrets: dict[str, str]
    token: str  # bot's agent token (the plain listener's credential)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _write(leaf: trustme.LeafCert, base: Path, name: str) -> tuple[Path, Path]:
    cert, key = base / f"{name}.crt", base / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    return cert, key


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("mtls")
    canary.watch(base)
    ns = Netns()
    try:
        server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
        files = {
            "bot": _write(client_ca.issue_cert("bot.clients.test", common_name="bot"), base,
                          "bot"),
            "stranger": _write(client_ca.issue_cert("s.clients.test", common_name="stranger"),
                               base, "stranger"),
            "forged": _write(other_ca.issue_cert("bot.clients.test", common_name="bot"), base,
                             "forged"),
        }
        toml = "".join(service_block(n, "host_inject", "bearer", upstream.port)
                       for n in ("svc-a", "svc-b"))
        toml += ('[mtls]\nserver_cert = "mtls/server.pem"\nserver_key = "mtls/server.key"\n'
                 'client_ca = "mtls/clients-ca.pem"\n')
        values = {"svc-a": make_canary(), "svc-b": make_canary()}
        home = ProxyHome.create(base, toml, dict(values),  # type: ignore[arg-type]
                                files={"upstream-ca.pem": upstream.ca_file.read_bytes()})
        mdir = home.path / "mtls"
        mdir.mkdir(mode=0o700)
        server = server_ca.issue_cert(ns.host_ip)
        (mdir / "server.pem").write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(mdir / "server.key"))
        os.chmod(mdir / "server.key", 0o600)
        client_ca.cert_pem.write_to_path(str(mdir / "clients-ca.pem"))
        server_ca.cert_pem.write_to_path(str(base / "server-ca.pem"))
        token = cli(home.path, "agent", "add", "bot", "--services", "svc-a",
                    "--password-file", str(home.password_file)).stdout.strip()
        mtls = (ns.host_ip, _free_port(ns.host_ip))
        proxy = ProxyProcess.start(home, args=("--mtls-listen", f"{mtls[0]}:{mtls[1]}"))
        assert proxy.extra["mtls"] == [f"{mtls[0]}:{mtls[1]}"]
        yield Env(proxy, ns, mtls, base, base / "server-ca.pem", files, values, token)
        proxy.stop()
    finally:
        ns.close()


def _tls(env: Env, client: str | None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(env.server_ca))
    if client is not None:
        ctx.load_cert_chain(*map(str, env.files[client]))
    raw = socket.create_connection(env.mtls, timeout=10)
    return ctx.wrap_socket(raw, server_hostname=env.mtls[0])


def _connect(env: Env, client: str | None, target: str,
             extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """A CONNECT over the mTLS listener (from this namespace: the listener itself)."""
    with _tls(env, client) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
        return recv_response(s)


def test_curl_from_another_namespace_is_the_agent(env: Env, upstream: Upstream) -> None:
    cert, key = env.files["bot"]
    # The namespace has no route to this host's loopback: only the mTLS address is there.
    unreachable = env.ns.run("curl", "-sS", "--max-time", "3",
                             f"http://127.0.0.1:{env.proxy.port}/")
    assert unreachable.returncode != 0
    r = env.ns.run(
        "curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}",
        "--proxy", f"https://{env.mtls[0]}:{env.mtls[1]}", "--proxy-cacert", str(env.server_ca),
        "--proxy-cert", str(cert), "--proxy-key", str(key),
        "--cacert", str(env.proxy.home.ca_cert), "https://svc-a.api.test/via-curl",
    )
    assert r.stdout == "200", r.stderr
    rec = upstream.received[-1]
    assert rec.path == "/via-curl"
    assert rec.header("authorization") == f"Bearer {env.secrets['svc-a']}"
    events = [e for e in env.proxy.audit() if e.get("path") == "/via-curl"]
    assert events and events[-1]["agent"] == "bot"


HTTPX_SCRIPT = """
import json, ssl, sys, httpx
listener, server_ca, cert, key, mitm_ca, url = sys.argv[1:]
proxy_ctx = ssl.create_default_context(cafile=server_ca)
proxy_ctx.load_cert_chain(cert, key)
proxy = httpx.Proxy(listener, ssl_context=proxy_ctx)
with httpx.Client(proxy=proxy, verify=ssl.create_default_context(cafile=mitm_ca)) as c:
    r = c.get(url)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""


def test_httpx_from_another_namespace(env: Env, upstream: Upstream) -> None:
    cert, key = env.files["bot"]
    r = env.ns.run(sys.executable, "-c", HTTPX_SCRIPT, f"https://{env.mtls[0]}:{env.mtls[1]}",
                   str(env.server_ca), str(cert), str(key), str(env.proxy.home.ca_cert),
                   "https://svc-a.api.test/via-httpx")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == 200
    assert upstream.received[-1].path == "/via-httpx"
    assert upstream.received[-1].header("authorization") == f"Bearer {env.secrets['svc-a']}"


def test_the_agents_scopes_apply(env: Env, upstream: Upstream) -> None:
    before = len(upstream.received)
    status, headers, body = _connect(env, "bot", "svc-b.api.test:443")
    assert status == 403 and json.loads(body)["error"]["code"] == "agent_scope"
    assert headers["x-vaultproxy-error"] == "agent_scope"
    assert len(upstream.received) == before
    assert _connect(env, "bot", "svc-a.api.test:443")[0] == 200


def test_unknown_cn_is_407_even_with_a_valid_token(env: Env) -> None:
    status, headers, body = _connect(env, "stranger", "svc-a.api.test:443")
    assert status == 407
    assert json.loads(body)["error"]["code"] == "agent_auth_required"
    assert headers["proxy-authenticate"].lower().startswith("basic")
    # The certificate decides on this listener: bot's real token does not help a stranger.
    auth = "Basic " + base64.b64encode(f"bot:{env.token}".encode()).decode()
    assert _connect(env, "stranger", "svc-a.api.test:443",
                    f"Proxy-Authorization: {auth}\r\n")[0] == 407
    # Twin: the same token on the plain listener is accepted.
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT svc-a.api.test:443 HTTP/1.1\r\nHost: svc-a.api.test:443\r\n"
                  f"Proxy-Authorization: {auth}\r\n\r\n".encode())
        assert recv_response(s)[0] == 200


def _answer(env: Env, client: str | None) -> int | None:
    """The status the listener answers a CONNECT with; None when the handshake refused
    (TLS 1.3: the server's refusal arrives as an alert or a close at the first read)."""
    try:
        status, _h, _b = _connect(env, client, "svc-a.api.test:443")
    except (ssl.SSLError, ConnectionError):
        return None
    return status or None


@pytest.mark.parametrize("client", [None, "forged"], ids=["no-cert", "other-ca"])
def test_no_certificate_or_another_ca_is_refused_in_the_handshake(
    env: Env, upstream: Upstream, client: str | None
) -> None:
    before = len(upstream.received)
    assert _answer(env, client) is None
    assert len(upstream.received) == before
    # The negative twin: the same probe with a certificate from client_ca gets an answer.
    assert _answer(env, "bot") == 200


def test_curl_without_a_certificate_is_refused(env: Env) -> None:
    r = env.ns.run(
        "curl", "-sS", "--max-time", "30", "--proxy", f"https://{env.mtls[0]}:{env.mtls[1]}",
        "--proxy-cacert", str(env.server_ca), "--cacert", str(env.proxy.home.ca_cert),
        "https://svc-a.api.test/no-cert",
    )
    assert r.returncode in (35, 56), r  # TLS handshake / receive failure, no HTTP answer
    assert r.stdout == ""


def test_start_refuses_a_readable_key(env: Env, tmp_path: Path) -> None:
    home = env.proxy.home.path
    key = home / "mtls" / "server.key"
    os.chmod(key, 0o640)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "vaultproxy", "run", "--home", str(home), "--listen",
             "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--mtls-listen", "127.0.0.1:1",
             "--password-file", str(env.proxy.home.password_file)],
            capture_output=True, text=True, timeout=60, cwd=REPO, start_new_session=True,
        )
    finally:
        os.chmod(key, 0o600)
    assert r.returncode != 0
    assert "server.key" in r.stderr and "chmod" in r.stderr


def test_env_mtls_kit_drives_curl_off_host(env: Env, upstream: Upstream) -> None:
    kit = cli(env.proxy.home.path, "env", "--mtls").stdout
    url = f"https://{env.mtls[0]}:{env.mtls[1]}"
    assert f"export HTTPS_PROXY='{url}';" in kit and "--proxy-cert" in kit
    renamed = cli(env.proxy.home.path, "env", "--mtls", "--mtls-host", "proxy.lan").stdout
    assert f"export HTTPS_PROXY='https://proxy.lan:{env.mtls[1]}';" in renamed
    cert, key = env.files["bot"]
    script = (kit + f'curl -sS --max-time 30 -o /dev/null -w "%{{http_code}}" '
              f'--proxy "$HTTPS_PROXY" --proxy-cacert {env.server_ca} --proxy-cert {cert} '
              f"--proxy-key {key} --cacert {env.proxy.home.ca_cert} "
              "https://svc-a.api.test/via-kit\n")
    r = env.ns.run("sh", "-c", script)
    assert r.stdout == "200", r.stderr
    assert upstream.received[-1].path == "/via-kit"
    none = cli(env.base, "env", "--mtls", "--home", str(env.base / "nowhere"), check=False)
    assert none.returncode == 2 and "--mtls-listen" in none.stderr
