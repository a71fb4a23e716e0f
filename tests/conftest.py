from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness.proxy import ProxyHome, ProxyProcess, cheap_kdf_floor
from tests.harness.upstream import Upstream

pytest_plugins = ["tests.canary", "pytester"]

# This machine exports CA and proxy variables; tests set their own.
_CLEARED = (
    "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "SSLKEYLOGFILE", "MITMPROXY_SSLKEYLOGFILE", "VAULTPROXY_HOME", "VAULTPROXY_PASSWORD_FILE",
    "VAULTPROXY_TCTI",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cheap_kdf() -> Iterator[None]:
    """Keystore saves keep the cheap KDF parameters the test made its keystore with (see
    tests/harness/proxy.py's cheap_kdf_floor). Not for keystore format or KDF tests."""
    with cheap_kdf_floor():
        yield


def pytest_configure(config: pytest.Config) -> None:
    for name in _CLEARED:
        os.environ.pop(name, None)
    # Every proxy a test starts serves no dashboard unless the test asks (tests/harness and
    # test_dashboard.py pass --dashboard-listen): several proxies at once must not all try
    # the fixed 127.0.0.1:3202.
    os.environ["VAULTPROXY_DASHBOARD_LISTEN"] = ""


# --- one proxy for the session ------------------------------------------------------------
# Modules that only read from a proxy (no reload, lock, secret write, config edit, signal)
# share this one instead of starting their own: each start is a process, a CA, a keystore
# unlock and an upstream. Its services are host_inject bearer against one shared upstream.
SHARED_SERVICES = ("a", "b", "proto", "reg")


@dataclass(frozen=True)
class Shared:
    proxy: ProxyProcess
    upstream: Upstream
    secrets: dict[str, str]


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    from tests import canary
    from tests.integration.conftest import service_block

    up = Upstream(tmp_path_factory.mktemp("shared-upstream")).start()
    base = tmp_path_factory.mktemp("shared-proxy")
    canary.watch(base)
    secrets = {name: canary.make_canary() for name in SHARED_SERVICES}
    toml = "".join(service_block(n, "host_inject", "bearer", up.port) for n in SHARED_SERVICES)
    home = ProxyHome.create(base, toml, dict(secrets),  # type: ignore[arg-type]
                            files={"upstream-ca.pem": up.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    yield Shared(proxy, up, secrets)
    proxy.stop()
    up.stop()
