"""Honeytokens (SPEC §10): a decoy used anywhere the proxy can read -- header, query, body,
Basic credential, base64, percent-encoding; an intercepted host, a plain-HTTP passthrough
host, a CONNECT's Proxy-Authorization, ``POST /proxy`` -- is refused with ``403 honeytoken``,
never forwarded, audited as a ``honeytoken`` event and reported through ``notify_command``.

Each case has a twin: the same request with a non-decoy value reaches the upstream."""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.conftest import agent_client, service_block

pytestmark = pytest.mark.security

DECOY = "__vault.aws-prod__"
DECOY2 = "AKIADECOYDECOY1234"  # a custom placeholder that looks like a real key id


class _Plain(BaseHTTPRequestHandler):
    seen: list[str] = []

    def _any(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        _Plain.seen.append(self.path + " " + body.decode("latin-1"))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _any

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Env:
    proxy: ProxyProcess
    upstream: Upstream
    plain_port: int
    notified: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    up = Upstream(tmp_path_factory.mktemp("up")).start()
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    base = tmp_path_factory.mktemp("honey")
    canary.watch(base)
    notified = base / "notified"
    script = base / "notify.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.argv[-1] + '\\n')\n")
    toml = (f'[proxy]\npassthrough_allow = ["127.0.0.1:{plain.server_port}"]\n\n'
            f"[approvals]\nnotify_command = [{json.dumps(sys.executable)}, "
            f"{json.dumps(str(script))}, {json.dumps(str(notified))}]\n\n"
            '[[honeytoken]]\nname = "aws-prod"\nenv = "AWS_SECRET_ACCESS_KEY"\n\n'
            f'[[honeytoken]]\nname = "decoy2"\nplaceholder = "{DECOY2}"\n\n'
            + service_block("ai", "host_inject", "bearer", up.port))
    home = ProxyHome.create(base, toml, {"ai": canary.make_canary()},
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    yield Env(proxy, up, plain.server_port, notified)
    proxy.stop()
    plain.shutdown()
    plain.server_close()
    up.stop()


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


# name -> how to put ``value`` into a request: (kwargs for httpx.Client.request, path)
SURFACES: dict[str, Callable[[str], dict[str, object]]] = {
    "header": lambda v: {"headers": {"X-Aws-Secret": v}},
    "query": lambda v: {"params": {"key": v}},
    "body-json": lambda v: {"json": {"credentials": {"secret": v}}},
    "body-form": lambda v: {"data": {"secret": v}},
    "basic-auth": lambda v: {"auth": ("AKIAUSER", v)},
    "base64-header": lambda v: {"headers": {"X-Blob": b64("config:" + v + ";")}},
    "percent-query": lambda v: {"params": {"k": "".join(f"%{b:02X}" for b in v.encode())}},
}


def _records(env: Env, kind: str) -> list[dict[str, object]]:
    return [r for r in env.proxy.audit() if r["event"] == kind]


def _notified(env: Env) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not env.notified.exists():
        time.sleep(0.05)
    return env.notified.read_text() if env.notified.exists() else ""


@pytest.mark.parametrize("decoy", [DECOY, DECOY2])
@pytest.mark.parametrize("surface", list(SURFACES))
def test_intercepted_host(env: Env, surface: str, decoy: str) -> None:
    before = len(env.upstream.received)
    hits = len(_records(env, "honeytoken"))
    with agent_client(env.proxy) as c:
        r = c.post("https://ai.api.test/v1/x", **SURFACES[surface](decoy))  # type: ignore[arg-type]
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "honeytoken"
    assert len(env.upstream.received) == before  # never forwarded
    got = _records(env, "honeytoken")
    assert len(got) == hits + 1 and got[-1]["service"] == "ai"
    assert "HONEYTOKEN" in _notified(env)


@pytest.mark.parametrize("surface", list(SURFACES))
def test_twin_an_ordinary_value_passes(env: Env, surface: str) -> None:
    before = len(env.upstream.received)
    with agent_client(env.proxy) as c:
        ordinary = SURFACES[surface]("AKIANOTADECOY99999")
        r = c.post("https://ai.api.test/v1/x", **ordinary)  # type: ignore[arg-type]
    assert r.status_code == 200
    assert len(env.upstream.received) == before + 1


@pytest.mark.parametrize("surface", ["header", "query", "body-json", "basic-auth",
                                     "base64-header"])
def test_plain_http_passthrough_host(env: Env, surface: str) -> None:
    url = f"http://127.0.0.1:{env.plain_port}/p"
    before = len(_Plain.seen)
    with httpx.Client(proxy=env.proxy.url, timeout=20) as c:
        r = c.post(url, **SURFACES[surface](DECOY))  # type: ignore[arg-type]
        assert r.status_code == 403 and r.json()["error"]["code"] == "honeytoken"
        assert len(_Plain.seen) == before
        twin = c.post(url, **SURFACES[surface]("ordinary-value-1234"))  # type: ignore[arg-type]
    assert twin.status_code == 200 and len(_Plain.seen) == before + 1


def _connect(env: Env, auth: str) -> bytes:
    with socket.create_connection(("127.0.0.1", env.proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{env.plain_port} HTTP/1.1\r\nHost: 127.0.0.1:"
                  f"{env.plain_port}\r\nProxy-Authorization: Basic {b64(auth)}\r\n\r\n".encode())
        return s.recv(4096)


def test_connect_proxy_authorization(env: Env) -> None:
    head = _connect(env, "agent:" + DECOY)
    assert head.startswith(b"HTTP/1.1 403") and b"honeytoken" in head
    twin = _connect(env, "agent:not-a-decoy-at-all")  # wrong agent credentials: 407
    assert twin.startswith(b"HTTP/1.1 407")


@pytest.mark.parametrize("field", ["headers", "query", "body"])
def test_post_proxy(env: Env, field: str) -> None:
    token = (env.proxy.home.path / "admin-token").read_text().strip()
    value: object = {"headers": {"X-K": DECOY}, "query": {"k": DECOY},
                     "body": {"k": DECOY}}[field]
    before = len(env.upstream.received)
    with httpx.Client(base_url=str(env.proxy.extra["admin_url"]), timeout=20,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/proxy", json={"service": "ai", "method": "POST", "path": "/v1/x",
                                   field: value})
    assert r.status_code == 403 and r.json()["error"]["code"] == "honeytoken"
    assert len(env.upstream.received) == before
    assert "via api" in str(_records(env, "honeytoken")[-1]["reason"])


def test_env_exports_the_decoy_like_a_real_placeholder(env: Env) -> None:
    out = cli(env.proxy.home.path, "env").stdout
    assert f"AWS_SECRET_ACCESS_KEY={DECOY}" in out.replace("'", "").replace('"', "")
