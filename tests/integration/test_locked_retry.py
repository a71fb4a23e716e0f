"""A locked proxy tells SDKs not to retry: ``503 locked`` carries ``x-should-retry: false``
(the OpenAI and Anthropic SDKs honour it) and a body that says how to unlock.

Real client: the official ``openai`` SDK with ``max_retries=2``, through the proxy. Against
the locked proxy it makes one attempt. The negative twin: the same SDK against a plain 503
from an upstream (no such header) tries three times.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests import canary
from tests.canary import make_canary
from tests.harness.hostile import HostileUpstream, Request
from tests.harness.proxy import ProxyHome, ProxyProcess

pytestmark = pytest.mark.integration

SERVICE = """
[[service]]
name = "llm"
hosts = ["llm.api.test"]
mode = "placeholder"
auth = "bearer"
connect_to = "127.0.0.1:{port}"
allow_loopback = true
ca_cert = "up-ca.pem"
"""


def _busy(conn: ssl.SSLSocket, req: Request) -> None:
    body = b'{"error": {"message": "overloaded"}}'
    conn.sendall(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileUpstream]:
    up = HostileUpstream(tmp_path_factory.mktemp("busy"), {"/v1/models": _busy}).start()
    yield up
    up.stop()


def _proxy(base: Path, upstream: HostileUpstream, locked: bool) -> ProxyProcess:
    canary.watch(base)
    home = ProxyHome.create(
        base, SERVICE.format(port=upstream.port), {"llm": make_canary()},
        files={"up-ca.pem": upstream.ca_file.read_bytes()},
    )
    return ProxyProcess.start(home, locked=locked, args=("--workers", "1"))


def _sdk(proxy: ProxyProcess) -> openai.OpenAI:
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    http = httpx.Client(proxy=proxy.url, verify=ctx, timeout=20)
    return openai.OpenAI(
        api_key="__vault.llm__", base_url="https://llm.api.test/v1", max_retries=2,
        http_client=http,
    )


def test_locked_503_stops_sdk_retries(tmp_path: Path, upstream: HostileUpstream) -> None:
    proxy = _proxy(tmp_path, upstream, locked=True)
    try:
        with _sdk(proxy) as sdk, pytest.raises(openai.APIStatusError) as info:
            sdk.models.list()
        resp = info.value.response
        assert resp.status_code == 503
        assert resp.headers["x-vaultproxy-error"] == "locked"
        assert resp.headers["x-should-retry"] == "false"
        assert "vaultproxy unlock" in resp.json()["error"]["message"]
        attempts = [r for r in proxy.audit() if r.get("reason") == "locked"]
    finally:
        proxy.stop()
    attempts = [r for r in proxy.audit() if r.get("reason") == "locked"] or attempts
    assert len(attempts) == 1, attempts
    assert upstream.received == []


def test_twin_sdk_retries_a_plain_503(tmp_path: Path, upstream: HostileUpstream) -> None:
    proxy = _proxy(tmp_path, upstream, locked=False)
    before = len(upstream.received)
    try:
        with _sdk(proxy) as sdk, pytest.raises(openai.APIStatusError) as info:
            sdk.models.list()
        assert info.value.response.status_code == 503
        assert "x-should-retry" not in info.value.response.headers
    finally:
        proxy.stop()
    assert len(upstream.received) - before == 3  # 1 + max_retries
