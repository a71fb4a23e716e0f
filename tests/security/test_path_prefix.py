"""Threat: a token carried in the URL path (auth = "path_prefix", Telegram's /bot<token>/)
is echoed back by the upstream: in a redirect ``Location``, another header, or an error body
quoting the path it was asked for (plain, percent-encoded, JSON, base64).

Through the proxy the agent gets the placeholder in every one of those places; the twin
fetches the same reply straight from the hostile upstream and finds the token in each. The
agent's own path never carries the token, and the audit line records the agent's path."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness import agent
from tests.harness.hostile import HostileUpstream, Request
from tests.harness.proxy import ProxyHome, ProxyProcess

pytestmark = [pytest.mark.security, pytest.mark.integration]

HOST = "tg.api.test"
SERVICES = """
[[service]]
name = "tg"
hosts = ["tg.api.test"]
mode = "host_inject"
auth = "path_prefix"
path_prefix = "/bot{{secret}}"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "hostile-ca.pem"
"""


def echo_path(conn: ssl.SSLSocket, req: Request) -> None:
    """A careless upstream: redirects to, and complains about, the exact path it got."""
    target = req.target
    body = json.dumps({
        "ok": False, "description": f"Not Found: {target}",
        "quoted": quote(target, safe=""), "b64": base64.b64encode(target.encode()).decode(),
    }).encode()
    conn.sendall(
        b"HTTP/1.1 302 Found\r\nLocation: https://" + HOST.encode() + target.encode()
        + b"\r\nX-Request-Path: " + target.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )


@pytest.fixture(scope="module")
def token() -> str:
    return "123456:" + make_canary()  # Telegram tokens are <bot id>:<secret>


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, token: str) -> Iterator[HostileUpstream]:
    prefix = "/bot" + quote(token, safe="!$&'()*+,;=:@-._~")
    scripts = {prefix + "/getMe": echo_path, prefix + "/": echo_path}
    up = HostileUpstream(tmp_path_factory.mktemp("tg"), scripts).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, hostile: HostileUpstream, token: str
) -> Iterator[ProxyProcess]:
    base = tmp_path_factory.mktemp("tg-proxy")
    canary.watch(base)
    home = ProxyHome.create(base, SERVICES.format(port=hostile.port), {"tg": token},
                            files={"hostile-ca.pem": hostile.ca_file.read_bytes()})
    p = ProxyProcess.start(home)
    yield p
    p.stop()


def _get(conn: ssl.SSLSocket, target: str, scan: bool = True) -> bytes:
    return agent.exchange(
        conn, f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
        "agent GET" if scan else None,
    )


def leaked(reply: bytes, token: str) -> list[str]:
    """Which forms of the token ``reply`` holds (an independent check, not values/redact.py)."""
    found = [name for name, form in (
        ("raw", token.encode()), ("percent", quote(token, safe="").encode()),
        ("secret part", token.split(":", 1)[1].encode()),
    ) if form in reply]
    try:
        b64 = json.loads(reply.split(b"\r\n\r\n", 1)[1])["b64"]
        if token.encode() in base64.b64decode(b64, validate=True):
            found.append("base64")
    except (ValueError, KeyError, IndexError):
        pass  # redacted into something that is not base64 any more
    return found


@pytest.mark.parametrize("path", ["/getMe", "/getMe?chat_id=1", "/"])
def test_token_goes_in_the_path_and_never_comes_back(
    proxy: ProxyProcess, hostile: HostileUpstream, token: str, path: str
) -> None:
    before = len(hostile.received)
    reply = _get(agent.tunnel(proxy.port, proxy.home.ca_cert, HOST), path)
    assert len(hostile.received) == before + 1
    sent = hostile.received[-1].target
    assert sent == "/bot" + token + (path if path != "/" else "/"), sent
    assert agent.status_of(reply) == 302
    assert leaked(reply, token) == [], "a form of the token reached the agent"
    location = agent.header_of(reply, "location") or ""
    assert "__vault.tg__" in location
    canary.scan_text(f"agent reply to {path}", reply)


def test_twin_the_upstream_does_echo_the_token(hostile: HostileUpstream, token: str) -> None:
    """Without the proxy the same script hands the token back in every place."""
    prefix = "/bot" + token
    reply = _get(agent.direct(hostile.port, hostile.ca_file, "localhost"), prefix + "/getMe",
                 scan=False)  # read straight from the upstream on purpose
    assert leaked(reply, token) == ["raw", "percent", "secret part", "base64"]
    assert agent.header_of(reply, "location") == f"https://{HOST}/bot__TOKEN__/getMe".replace(
        "__TOKEN__", token), "the upstream did not echo the token"


def _tg_audit(proxy: ProxyProcess) -> list[dict[str, object]]:
    return [e for e in proxy.audit() if e.get("service") == "tg"]


def test_audit_records_the_agents_path(proxy: ProxyProcess, token: str) -> None:
    before = len(_tg_audit(proxy))
    _get(agent.tunnel(proxy.port, proxy.home.ca_cert, HOST), "/getMe?audit=1")
    deadline = time.monotonic() + 10  # the line is written after the reply is sent
    while len(_tg_audit(proxy)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = _tg_audit(proxy)
    assert len(lines) > before
    assert lines[-1]["path"] == "/getMe"
    assert "vpcanary" not in json.dumps(lines)  # no form of the token in any tg line
    assert token.split(":", 1)[1] not in proxy.output()


def test_a_target_that_is_not_a_path_is_refused(
    proxy: ProxyProcess, hostile: HostileUpstream
) -> None:
    before = len(hostile.received)
    reply = agent.exchange(
        agent.tunnel(proxy.port, proxy.home.ca_cert, HOST),
        f"OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
        "agent OPTIONS *",
    )
    assert agent.status_of(reply) == 400
    assert len(hostile.received) == before
