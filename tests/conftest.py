from __future__ import annotations

import os

import pytest

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


def pytest_configure(config: pytest.Config) -> None:
    for name in _CLEARED:
        os.environ.pop(name, None)
