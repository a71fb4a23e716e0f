"""`vaultproxy exec` / `env` with unmodified real clients: curl, requests, httpx, the openai
SDK, git over HTTPS (dumb HTTP, host_inject basic auth), and sh/fish sourcing `env`.

``exec`` runs isolated by default (bubblewrap, tests/security/test_isolation.py): every client
here works unchanged inside the sandbox; the environment and exit-status tests also run
under ``--no-isolate``."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import REPO, ProxyHome, ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration.conftest import service_block

PLACEHOLDER = "__vault.openai__"


def chat_handler(rec: Received) -> Reply:
    """An OpenAI-compatible chat completion that echoes the credential it received."""
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"auth={rec.header('authorization')}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return 200, [(b"content-type", b"application/json")], [json.dumps(body).encode()]


class GitServer:
    """A TLS static file server (dumb HTTP git) that requires Basic auth and records it."""

    def __init__(self, root: Path, cert_pem: Path, expected: str) -> None:
        self.seen: list[str | None] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive with Content-Length, as real servers

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                server.seen.append(auth)
                if auth != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert_pem))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Setup:
    def __init__(
        self, proxy: ProxyProcess, upstream: Upstream, git: GitServer, secrets: dict[str, object]
    ) -> None:
        self.proxy, self.upstream, self.git, self.secrets = proxy, upstream, git, secrets

    def exec(self, *cmd: str, env: dict[str, str] | None = None, check: bool = True,
             flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "vaultproxy", "exec", "--home", str(self.proxy.home.path),
             *flags, "--", *cmd],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        )
        if check:
            assert result.returncode == 0, result.stderr + result.stdout
        return result


def _make_repo(root: Path) -> None:
    work = root / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("hello from the test repo\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "srv" / "repo.git")],
                   check=True)
    subprocess.run(["git", "-C", str(root / "srv" / "repo.git"), "update-server-info"],
                   check=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("envexec")
    canary.watch(base)
    upstream = Upstream(base, handler=chat_handler).start()
    _make_repo(base)
    git_cert = base / "git-cert.pem"
    upstream.ca.issue_cert("git.api.test").private_key_and_cert_chain_pem.write_to_path(
        str(git_cert)
    )
    git_secret = {"username": "git-user", "password": make_canary()}
    expected = "Basic " + base64.b64encode(
        f"git-user:{git_secret['password']}".encode()
    ).decode()
    git = GitServer(base / "srv", git_cert, expected)
    toml = service_block(
        "openai", "placeholder", "bearer", upstream.port, env='"OPENAI_API_KEY"'
    ) + service_block("gitsrv", "host_inject", "basic", git.port).replace(
        '"gitsrv.api.test"', '"git.api.test"'
    )
    secrets: dict[str, object] = {"openai": make_canary(), "gitsrv": git_secret}
    home = ProxyHome.create(
        base, toml, secrets, files={"upstream-ca.pem": upstream.ca_file.read_bytes()}  # type: ignore[arg-type]
    )
    proxy = ProxyProcess.start(home)
    yield Setup(proxy, upstream, git, secrets)
    proxy.stop()
    git.stop()
    upstream.stop()


URL = "https://openai.api.test/v1/chat/completions"

REQUESTS = f"""
import os, requests
r = requests.post({URL!r}, json={{}},
                  headers={{"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}})
print(r.status_code, r.text)
"""

HTTPX = f"""
import os, httpx
r = httpx.post({URL!r}, json={{}},
               headers={{"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}})
print(r.status_code, r.text)
"""

OPENAI = """
from openai import OpenAI
client = OpenAI(base_url="https://openai.api.test/v1", max_retries=0)
out = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print(200, out.choices[0].message.content)
"""

CLIENTS = {
    "curl": [
        "sh", "-c",
        f'curl -sS --fail -w " %{{http_code}}" -H "Authorization: Bearer $OPENAI_API_KEY" '
        f'-H "Content-Type: application/json" -d "{{}}" {URL}',
    ],
    "requests": [sys.executable, "-c", REQUESTS],
    "httpx": [sys.executable, "-c", HTTPX],
    "openai": [sys.executable, "-c", OPENAI],
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_unmodified_clients_get_the_secret_injected(setup: Setup, client: str) -> None:
    if client == "openai":
        pytest.importorskip("openai")
    before = len(setup.upstream.received)
    result = setup.exec(*CLIENTS[client])
    assert len(setup.upstream.received) == before + 1
    rec = setup.upstream.received[-1]
    assert rec.path == "/v1/chat/completions"
    secret = setup.secrets["openai"]
    assert rec.header("authorization") == f"Bearer {secret}"
    # The echoed credential came back redacted to the placeholder.
    assert "200" in result.stdout
    assert f"auth=Bearer {PLACEHOLDER}" in result.stdout
    assert str(secret) not in result.stdout + result.stderr


def test_git_ls_remote_and_clone_with_injected_basic_auth(setup: Setup, tmp_path: Path) -> None:
    setup.git.seen.clear()
    remote = "https://git.api.test/repo.git"
    ls = setup.exec("git", "ls-remote", remote)
    assert "refs/heads/main" in ls.stdout
    dest = tmp_path / "clone"
    # The sandbox writes only the working directory, its own /tmp and --write paths.
    setup.exec("git", "clone", "-q", remote, str(dest), flags=("--write", str(tmp_path)))
    assert (dest / "README").read_text() == "hello from the test repo\n"
    password = setup.secrets["gitsrv"]["password"]  # type: ignore[index]
    expected = "Basic " + base64.b64encode(f"git-user:{password}".encode()).decode()
    assert setup.git.seen and all(a == expected for a in setup.git.seen)
    assert password not in (dest / ".git" / "config").read_text()


MODES = {"isolated": (), "no-isolate": ("--no-isolate",)}


@pytest.mark.parametrize("mode", list(MODES))
def test_exec_passes_exit_code_signals_and_stdin(setup: Setup, mode: str) -> None:
    flags = MODES[mode]
    assert setup.exec("sh", "-c", "exit 7", check=False, flags=flags).returncode == 7
    assert setup.exec("sh", "-c", "kill -TERM $$", check=False,
                      flags=flags).returncode == -15
    r = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "exec", "--home", str(setup.proxy.home.path),
         *flags, "--", "cat"], input="stdin passes\n", capture_output=True, text=True,
        timeout=60, cwd=REPO,
    )
    assert r.stdout == "stdin passes\n"
    missing = setup.exec("no-such-command-xyz", check=False, flags=flags)
    assert missing.returncode == 127
    assert "no-such-command-xyz: command not found" in missing.stderr


def test_exec_relays_sigterm_to_the_isolated_agent(setup: Setup) -> None:
    """SIGTERM sent to `vaultproxy exec` reaches the agent in the sandbox, and exec then
    ends the way the agent did (here: the agent's trap exits 42)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultproxy", "exec", "--home", str(setup.proxy.home.path),
         "--", "sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 42
    proc.stdout.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_exec_environment_has_only_agent_values(setup: Setup, mode: str) -> None:
    pw = str(setup.proxy.home.password_file)
    r = setup.exec("env", env={"VAULTPROXY_PASSWORD_FILE": pw, "VAULTPROXY_HOME": "/x",
                               "ALL_PROXY": "http://elsewhere:1", "GOPATH": "/go",
                               "KEPT_ONE": "kept", "LC_TEST": "C"},
                   flags=(*MODES[mode], "--keep-env", "KEPT_ONE"))
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert not [k for k in env if k.startswith("VAULTPROXY_")]
    assert "ALL_PROXY" not in env and "GOPATH" not in env  # reset: an allowlist
    assert env["KEPT_ONE"] == "kept" and env["LC_TEST"] == "C" and "PATH" in env
    home = setup.proxy.home.path
    # Isolated: the CA files sit in the sandbox's own read-only directory, outside the home.
    files = Path(env["SSL_CERT_FILE"]).parent if mode == "isolated" else home
    if mode == "isolated":
        assert not files.is_relative_to(home)
    bundle = str(files / "ca-bundle.pem")
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[k] == setup.proxy.url
    for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
              "AWS_CA_BUNDLE"):
        assert env[k] == bundle
    assert env["NODE_EXTRA_CA_CERTS"] == str(files / "ca.crt")
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert env["NPM_CONFIG_CAFILE"] == bundle
    assert Path(env["WGETRC"]).parent == files
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    assert env["OPENAI_API_KEY"] == PLACEHOLDER
    bundle_text = (home / "ca-bundle.pem").read_text()
    assert (home / "ca.crt").read_text().strip() in bundle_text
    if mode == "no-isolate":
        assert "--no-isolate" in r.stderr and "can read the vaultproxy home" in r.stderr
    admin_token = home / "admin-token"
    if admin_token.exists() and admin_token.read_text().strip():
        assert admin_token.read_text().strip() not in r.stdout
    assert pw not in r.stdout


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "fish"])
def test_env_output_sources_in_shells(setup: Setup, shell: str, tmp_path: Path) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} not installed")
    syntax = "fish" if shell == "fish" else "sh"
    out = subprocess.run(
        [sys.executable, "-m", "vaultproxy", "env", "--home", str(setup.proxy.home.path),
         "--shell", syntax], capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    ).stdout
    script = tmp_path / "env.out"
    script.write_text(out)
    cmd = f"source {script}; env" if shell == "fish" else f". {script}; env"
    r = subprocess.run([exe, "-c", cmd], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert out.startswith("# vaultproxy: a shell using these variables is not isolated")
    assert env["HTTPS_PROXY"] == setup.proxy.url
    assert env["OPENAI_API_KEY"] == PLACEHOLDER
    assert env["SSL_CERT_FILE"].endswith("ca-bundle.pem")


def test_env_when_proxy_not_running(tmp_path: Path) -> None:
    home = tmp_path / "h"
    pw = tmp_path / "pw"
    pw.write_text("pw-for-not-running")
    base = [sys.executable, "-m", "vaultproxy"]
    subprocess.run([*base, "init", "--home", str(home), "--password-file", str(pw)],
                   check=True, capture_output=True, cwd=REPO, timeout=60)
    r = subprocess.run([*base, "env", "--home", str(home)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 1 and f"vaultproxy run --home {home}" in r.stderr
    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "run.json").write_text(json.dumps({"pid": dead.pid, "proxy_url": "http://x:1"}))
    r = subprocess.run([*base, "exec", "--home", str(home), "--", "true"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and "is gone" in r.stderr and "vaultproxy run --home" in r.stderr
