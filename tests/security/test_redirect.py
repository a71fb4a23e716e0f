"""Threat: the upstream (or anyone who controls a redirect) sends the agent elsewhere, hoping
the credential follows the redirect.

Credentials are bound to the CONNECT host: a client that follows a 302 from a registered
host to another host sends none of the secret there, whatever the client does with its own
headers. The second host here is the same upstream reached as ``127.0.0.1:<port>`` through
an allowed passthrough tunnel, so its own record shows what arrived.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
import requests

from tests import canary
from tests.canary import make_canary
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream import Received, Reply, Upstream
from tests.integration import conftest as integration
from tests.integration.conftest import service_block

pytestmark = [pytest.mark.security, pytest.mark.integration]
start_proxy = integration.start_proxy  # the module-scoped fixture, shared

_PORT: list[int] = []


def redirecting(rec: Received) -> Reply:
    if rec.path.startswith("/start"):
        location = f"https://127.0.0.1:{_PORT[0]}/x"
        return 302, [(b"location", location.encode()), (b"content-length", b"0")], []
    return 200, [(b"content-type", b"text/plain")], [b"landed"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("redirect-upstream"), handler=redirecting).start()
    _PORT.append(u.port)
    yield u
    u.stop()
    _PORT.clear()


@pytest.fixture(scope="module")
def secrets_() -> dict[str, str]:
    return {"hi": make_canary(), "ph": make_canary()}


@pytest.fixture(scope="module")
def proxy(start_proxy, upstream: Upstream, secrets_: dict[str, str]) -> ProxyProcess:  # type: ignore[no-untyped-def]
    toml = f'[proxy]\npassthrough_allow = ["127.0.0.1:{upstream.port}"]\n\n'
    toml += service_block("hi", "host_inject", "bearer", upstream.port)
    toml += service_block("ph", "placeholder", "header", upstream.port, header_name='"X-Api-Key"')
    return start_proxy(toml, dict(secrets_))  # type: ignore[no-any-return]


def _trust(proxy: ProxyProcess, upstream: Upstream) -> ssl.SSLContext:
    """The agent trusts the proxy CA and, for the passthrough hop, the upstream's own CA."""
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    ctx.load_verify_locations(cafile=str(upstream.ca_file))
    return ctx


def _landing(upstream: Upstream, since: int) -> Received:
    landed = [r for r in upstream.received[since:] if r.path == "/x"]
    assert len(landed) == 1, [r.path for r in upstream.received[since:]]
    return landed[0]


def _carries(rec: Received, secrets_: dict[str, str]) -> bool:
    text = repr(rec.headers) + rec.path + rec.query
    return any(s in text for s in secrets_.values())


@pytest.mark.parametrize("service", ["hi", "ph"])
def test_httpx_following_redirect_sends_no_credential(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str], service: str
) -> None:
    before = len(upstream.received)
    headers = {"X-Api-Key": "__vault.ph__"} if service == "ph" else {}
    with httpx.Client(
        proxy=proxy.url, verify=_trust(proxy, upstream), follow_redirects=True, timeout=20
    ) as c:
        r = c.get(f"https://{service}.api.test/start", headers=headers)
    canary.scan_text("agent response after redirect", r.content)
    assert r.status_code == 200 and r.content == b"landed"
    start = [x for x in upstream.received[before:] if x.path == "/start"]
    # The first hop, on the registered host, did carry the credential...
    first_injected = len(start) == 1 and _carries(start[0], secrets_)
    assert first_injected
    # ...the redirected hop, to another host, carries none.
    landed = _landing(upstream, before)
    leaked = _carries(landed, secrets_)
    assert not leaked, "the credential followed the redirect"
    if service == "ph":
        # The client did re-send its header: only the placeholder, never substituted.
        assert landed.header("x-api-key") == "__vault.ph__"


def test_requests_following_redirect_sends_no_credential(
    proxy: ProxyProcess, upstream: Upstream, secrets_: dict[str, str]
) -> None:
    before = len(upstream.received)
    bundle = proxy.home.path.parent / "agent-bundle.pem"
    bundle.write_bytes(proxy.home.ca_cert.read_bytes() + upstream.ca_file.read_bytes())
    r = requests.get(
        "https://hi.api.test/start",
        proxies={"https": proxy.url},
        verify=str(bundle),
        headers={"Authorization": "Bearer agent-own"},
        timeout=20,
    )
    canary.scan_text("agent response after redirect (requests)", r.content)
    assert r.status_code == 200
    landed = _landing(upstream, before)
    leaked = _carries(landed, secrets_)
    assert not leaked
