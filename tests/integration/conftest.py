from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest

from tests import canary
from tests.harness.proxy import ProxyHome, ProxyProcess
from tests.harness.upstream import Upstream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    d = tmp_path_factory.mktemp("upstream")
    u = Upstream(d).start()
    yield u
    u.stop()


def service_block(name: str, mode: str, auth: str, port: int, **extra: str) -> str:
    lines = [
        "[[service]]",
        f'name = "{name}"',
        f'hosts = ["{name}.api.test"]',
        f'mode = "{mode}"',
        f'auth = "{auth}"',
        f'connect_to = "127.0.0.1:{port}"',
        "allow_loopback = true",
        'ca_cert = "upstream-ca.pem"',
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="module")
def start_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[object]:
    """start_proxy(services_toml, secrets) -> ProxyProcess (stopped at module teardown)."""
    procs: list[ProxyProcess] = []
    tmp_path = tmp_path_factory.mktemp("proxies")
    canary.watch(tmp_path)

    def start(services: str, secrets: dict[str, object], **kw: object) -> ProxyProcess:
        base = tmp_path / f"p{len(procs)}"
        base.mkdir()
        home = ProxyHome.create(
            base,
            services,
            secrets,  # type: ignore[arg-type]
            files={"upstream-ca.pem": upstream.ca_file.read_bytes()},
        )
        proc = ProxyProcess.start(home, **kw)  # type: ignore[arg-type]
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()


def scan_response(response: httpx.Response) -> None:
    """Feed everything the agent got back (headers and body) to the session canary check."""
    response.read()
    where = f"response to {response.request.method} {response.request.url.path}"
    canary.scan_text(where, repr(response.headers.multi_items()).encode() + response.content)


def agent_client(proxy: ProxyProcess, http2: bool = False, **kw: object) -> httpx.Client:
    """An httpx client behind the proxy, trusting only vaultproxy's CA; every response it
    receives is scanned for canaries at the end of the session."""
    ctx = ssl.create_default_context(cafile=str(proxy.home.ca_cert))
    hooks = {"response": [scan_response]}
    return httpx.Client(  # type: ignore[arg-type]
        proxy=proxy.url, verify=ctx, http2=http2, timeout=20, event_hooks=hooks, **kw
    )
