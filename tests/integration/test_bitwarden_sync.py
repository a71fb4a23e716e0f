"""A Bitwarden source end to end: values the official Bitwarden CLI encrypted, synced by
a real `vaultproxy run` (`vaultproxy sync`, `POST /v1/sync`), injected by the proxy, the
TOTP field as the code valid now; a tampered item fails the sync, the cache keeps serving,
and nothing but names and the check reaches the API, the audit or the output."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import canary
from tests.harness.bitwarden_server import PBKDF2
from tests.harness.proxy import PASSWORD, ProxyHome, ProxyProcess, cli
from tests.harness.upstream import Upstream
from tests.integration.test_bitwarden_source import FOLDER, TOTP_SEED, Vault, fill_vault
from tests.integration.test_sources import (
    admin,
    agent_get,
    echo_auth,
    injected,
    service,
    sources,
    sync_records,
)
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.totp import current_code
from vaultproxy.secret import Secret

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    v = fill_vault(tmp_path_factory.mktemp("bw"), PBKDF2, {})
    yield v
    v.server.stop()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("echo"), handler=echo_auth).start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, vault: Vault, echo: Upstream
          ) -> Iterator[dict[str, Any]]:
    toml = ("[[source]]\nname = \"vw\"\nkind = \"bitwarden\"\n"
            f"url = \"{vault.server.url}\"\nauth = \"password\"\nfolder = \"{FOLDER}\"\n"
            "ca_cert = \"bw-ca.pem\"\nallow_loopback = true\n\n"
            + service("openai", "vw:openai#api_key", echo.port)
            + service("github", "vw:github#password", echo.port)
            + service("otp", "vw:openai#totp", echo.port))
    base = tmp_path_factory.mktemp("bw-world")
    canary.watch(base)
    home = ProxyHome.create(base, toml, {
        "source.vw": {"email": vault.email, "password": vault.password},
    }, files={"upstream-ca.pem": echo.ca_file.read_bytes(),
              "bw-ca.pem": vault.server.ca_file.read_bytes()})
    proxy = ProxyProcess.start(home)
    yield {"home": home, "proxy": proxy}
    proxy.stop()


def _failed_syncs(home: ProxyHome) -> list[dict[str, Any]]:
    """The failed sync records, once the audit writer has them on disk (it writes behind)."""
    deadline = time.monotonic() + 15
    while True:
        failed = [rec for rec in sync_records(home) if rec["outcome"] == "failed"]
        if failed or time.monotonic() > deadline:
            return failed
        time.sleep(0.2)


def test_sync_then_the_proxy_injects_what_the_cli_encrypted(
    world: dict[str, Any], vault: Vault, echo: Upstream
) -> None:
    proxy, home = world["proxy"], world["home"]
    r = cli(home.path, "sync", "vw")
    assert "vw: 2 items synced" in r.stdout, r.stdout + r.stderr
    assert injected(echo, proxy, "openai.api.test") == f"Bearer {vault.values['api_key']}"
    assert injected(echo, proxy, "github.api.test") == f"Bearer {vault.values['org_password']}"
    listed = sources(proxy)["vw"]
    assert listed["items"] == 2 and listed["last_error"] is None
    ks = Keystore.open(home.path / "keystore.enc", Secret(PASSWORD))
    item = ks.synced_item("vw", "openai")
    assert item is not None and "totp" in item.totp


def test_the_totp_service_gets_the_code_the_cli_computes(
    world: dict[str, Any], vault: Vault, echo: Upstream
) -> None:
    cli(world["home"].path, "sync", "vw")
    ours_before = current_code(Secret(TOTP_SEED), "seed").reveal_str()
    code_cli = vault.cli.run("get", "totp", vault.ids["openai"]).stdout.strip()
    ours_after = current_code(Secret(TOTP_SEED), "seed").reveal_str()
    before = len(echo.received)
    # (not `injected()`: that also asserts the reflected value is scrubbed for the agent,
    # which a 6-digit one-time code is not; see the report on issue 17)
    assert agent_get(world["proxy"], "otp.api.test").status_code == 200
    got = echo.received[before].header("authorization")
    code_after = vault.cli.run("get", "totp", vault.ids["openai"]).stdout.strip()
    assert got in {f"Bearer {code_cli}", f"Bearer {code_after}"}  # a step may turn between
    assert got != f"Bearer {TOTP_SEED}"  # never the seed itself
    # our TOTP is the CLI's: computed just before and just after it, in the step it used
    # (a 30 s step may turn during the CLI call: then it matches one side)
    assert code_cli in {ours_before, ours_after}


def test_a_tampered_item_fails_the_sync_and_the_cache_keeps_serving(
    world: dict[str, Any], vault: Vault, echo: Upstream
) -> None:
    proxy, home = world["proxy"], world["home"]
    cli(home.path, "sync", "vw")
    with vault.server.tampered("login.password"):
        r = admin(proxy, "POST", "/v1/sync", {"source": "vw"})
        body = r.json()
        assert r.status_code == 200 and body["ok"] is False, r.text
        [result] = body["results"]
        assert "MAC check failed" in result["error"]
        for value in vault.values.values():
            assert value not in r.text
        listed = sources(proxy)["vw"]
        assert "MAC check failed" in listed["last_error"] and listed["items"] == 2
        # the cached values keep serving while the source is bad
        assert injected(echo, proxy, "openai.api.test") == f"Bearer {vault.values['api_key']}"
    failed = _failed_syncs(home)
    assert failed and "MAC check failed" in failed[-1]["reason"], sync_records(home)
    # twin: the untouched vault syncs again
    r = admin(proxy, "POST", "/v1/sync", {"source": "vw"})
    assert r.json()["ok"] is True, r.text
    assert sources(proxy)["vw"]["last_error"] is None
