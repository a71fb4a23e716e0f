"""The Bitwarden/Vaultwarden client against values the *official* Bitwarden CLI encrypted.

The oracle: ``@bitwarden/cli`` (tests/harness/bitwarden_cli.py) logs in to a minimal
Bitwarden-compatible server (tests/harness/bitwarden_server.py) over TLS, creates a folder,
a login item (username, password, TOTP seed, notes, custom fields), an item outside the
folder and an organisation item, each encrypted by Bitwarden's own code. vaultproxy's client
must then read exactly those values: with both KDFs (PBKDF2-SHA256 600k and Argon2id), with
and without per-item keys (the CLI's "cipher-key-encryption"), by password and by API-key
login. Negative twins: a flipped MAC, a wrong master password, a wrong API key, the egress
policy and plain HTTP off loopback are refused, and no value reaches an error.

(The server is the test's; it only stores and returns what the CLI sent. It stands in for
Vaultwarden, which cannot run here.)
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.canary import make_canary
from tests.harness.bitwarden_cli import BwCli, install_cli
from tests.harness.bitwarden_server import ARGON2ID, PBKDF2, Account, BitwardenServer
from vaultproxy.keystore.totp import current_code
from vaultproxy.net.egress import AddressContext
from vaultproxy.net.outbound import UpstreamClients
from vaultproxy.secret import Secret
from vaultproxy.sync.base import SourceError, SourceSpec, build_source, parse_ref
from vaultproxy.sync.bitwarden import BitwardenItem, BitwardenSource

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOOPBACK = AddressContext(allow_loopback=True)
FOLDER = "vault-proxy"
TOTP_SEED = "JBSWY3DPEHPK3PXP"  # not a secret: the test compares codes computed from it


@dataclass
class Vault:
    server: BitwardenServer
    account: Account
    email: str
    password: str
    cli: BwCli
    values: dict[str, str]  # what the CLI was given, by role
    ids: dict[str, str]  # item ids the CLI got back

    def source(self, auth: str = "password", folder: str | None = FOLDER,
               address: AddressContext = LOOPBACK, url: str | None = None) -> BitwardenSource:
        return BitwardenSource("vw", url or self.server.url, folder, self.server.ca_file,
                               address, auth)

    def creds(self, **override: str) -> dict[str, Secret]:
        base = {"email": self.email, "password": self.password}
        return {k: Secret(v) for k, v in {**base, **override}.items()}

    def apikey(self, **override: str) -> dict[str, Secret]:
        base = {"client_id": self.account.client_id,
                "client_secret": self.account.client_secret, "password": self.password}
        return {k: Secret(v) for k, v in {**base, **override}.items()}


def _run[T](call: Callable[[UpstreamClients], Awaitable[T]]) -> T:
    async def go() -> T:
        clients = UpstreamClients()
        try:
            return await call(clients)
        finally:
            await clients.aclose()

    return asyncio.run(go())


def read(src: BitwardenSource, creds: dict[str, Secret], *names: str) -> dict[str, BitwardenItem]:
    return _run(lambda c: src.read_items(c, creds, list(names)))


def fill_vault(tmp: Path, kdf: dict[str, Any], features: dict[str, bool]) -> Vault:
    bw_js = install_cli()
    server = BitwardenServer(tmp, features)
    email, password = "Ops@Example.test", make_canary()
    account = server.register(email, password, kdf)
    org = server.add_organization(account, "Acme", "Shared")
    cli = BwCli(bw_js, tmp / "cli", server.url, server.ca_file)
    cli.login(email.lower(), password)
    cli.unlock(password)  # the CLI's own unlock path derives the keys again
    values = {role: make_canary() for role in
              ("username", "password", "notes", "api_key", "org_id", "other", "org_password")}
    folder = cli.create("folder", {"name": FOLDER})
    elsewhere = cli.create("folder", {"name": "personal"})
    ids = {}
    ids["openai"] = cli.create("item", {
        "type": 1, "name": "openai", "folderId": folder["id"], "notes": values["notes"],
        "login": {"username": values["username"], "password": values["password"],
                  "totp": TOTP_SEED, "uris": [{"uri": "https://api.openai.com", "match": None}]},
        "fields": [{"name": "api_key", "value": values["api_key"], "type": 1},
                   {"name": "org id", "value": values["org_id"], "type": 0},
                   {"name": "password", "value": make_canary(), "type": 0}],
    })["id"]  # fmt: skip
    ids["other"] = cli.create("item", {
        "type": 1, "name": "other", "folderId": elsewhere["id"],
        "login": {"username": "x", "password": values["other"]},
    })["id"]  # fmt: skip
    cli.run("sync")  # the CLI learns of the organisation (its key comes RSA-wrapped)
    ids["github"] = cli.create("item", {
        "type": 1, "name": "github", "folderId": folder["id"], "organizationId": org.id,
        "collectionIds": [org.collection_id],
        "login": {"username": "ci-bot", "password": values["org_password"]},
    })["id"]  # fmt: skip
    return Vault(server, account, email, password, cli, values, ids)


# Both KDFs; per-item keys (the CLI's "cipher-key-encryption" flag) on for one, off for the
# other, so each path is read from what the CLI wrote.
KINDS = {
    "pbkdf2": (PBKDF2, {}),
    "argon2id-item-keys": (ARGON2ID, {"cipher-key-encryption": True}),
}


@pytest.fixture(scope="module", params=list(KINDS))
def vault(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Vault]:
    kdf, features = KINDS[request.param]
    v = fill_vault(tmp_path_factory.mktemp(f"bw-{request.param}"), kdf, features)
    yield v
    v.server.stop()


def test_reads_exactly_what_the_official_cli_encrypted(vault: Vault) -> None:
    items = read(vault.source(), vault.creds(), "openai", "github")
    openai = items["openai"]
    got = {k: v.reveal_str() for k, v in openai.fields.items()}
    assert got == {
        "username": vault.values["username"], "password": vault.values["password"],
        "notes": vault.values["notes"], "totp": TOTP_SEED, "api_key": vault.values["api_key"],
        "org id": vault.values["org_id"],
    }  # a custom field named "password" does not shadow the login's password
    assert openai.id == vault.ids["openai"]
    for value in vault.values.values():
        assert value not in repr(items)


def test_an_organisation_item_is_decrypted_with_the_rsa_wrapped_org_key(vault: Vault) -> None:
    github = read(vault.source(), vault.creds(), "github")["github"]
    assert github.fields["username"].reveal_str() == "ci-bot"
    assert github.fields["password"].reveal_str() == vault.values["org_password"]


def test_per_item_keys_are_what_the_cli_wrote_when_the_flag_is_on(vault: Vault) -> None:
    # The twin of the per-item key path: the flag decides whether the CLI wrapped a key.
    keyed = [c for c in vault.server.ciphers if c.get("key")]
    expect = bool(vault.server.features.get("cipher-key-encryption"))
    assert bool(keyed) == expect
    assert len(keyed) == (3 if expect else 0)


def test_only_the_folder_is_read_and_a_missing_name_is_left_out(vault: Vault) -> None:
    items = read(vault.source(), vault.creds(), "openai", "other", "no such item")
    assert set(items) == {"openai"}
    everything = read(vault.source(folder=None), vault.creds(), "openai", "other")
    assert everything["other"].fields["password"].reveal_str() == vault.values["other"]


def test_api_key_login_then_the_master_password_decrypts(vault: Vault) -> None:
    items = read(vault.source(auth="apikey"), vault.apikey(), "openai")
    assert items["openai"].fields["api_key"].reveal_str() == vault.values["api_key"]
    grants = [g for g in vault.server.requests if g == ("POST", "/identity/connect/token")]
    assert grants


def test_totp_is_the_code_the_official_cli_computes(vault: Vault) -> None:
    ref = parse_ref("vw:openai#totp")
    src = build_source(SourceSpec("vw", "bitwarden", vault.server.url, "password",
                                  vault.server.ca_file, LOOPBACK, folder=FOLDER))
    fetched = _run(lambda c: src.fetch(c, vault.creds(), [ref]))[ref]
    assert fetched.totp == {"totp"}  # the seed is marked: services get the code, not it
    seed = fetched.fields["totp"]
    before = current_code(seed, "vw:openai").reveal_str()
    cli_code = vault.cli.run("get", "totp", vault.ids["openai"]).stdout.strip()
    after = current_code(seed, "vw:openai").reveal_str()
    assert cli_code in {before, after}  # a 30 s step may turn between the three
    assert len(cli_code) == 6 and cli_code.isdigit()


def test_prelogin_falls_back_to_bitwardens_newer_path(vault: Vault) -> None:
    vault.server.prelogin_paths = {"/identity/accounts/prelogin/password"}
    try:
        before = len(vault.server.requests)
        items = read(vault.source(), vault.creds(), "openai")
        asked = [p for _, p in vault.server.requests[before:] if "prelogin" in p]
    finally:
        vault.server.prelogin_paths = {"/identity/accounts/prelogin",
                                       "/identity/accounts/prelogin/password"}
    assert asked == ["/identity/accounts/prelogin", "/identity/accounts/prelogin/password"]
    assert items["openai"].fields["password"].reveal_str() == vault.values["password"]


# ---- negative twins --------------------------------------------------------------------


def _no_values(vault: Vault, message: str) -> None:
    for value in [*vault.values.values(), vault.password, vault.account.client_secret]:
        assert value not in message


def test_a_flipped_mac_is_rejected_and_the_cli_refuses_it_too(vault: Vault) -> None:
    with vault.server.tampered("login.password"):
        with pytest.raises(SourceError) as err:
            read(vault.source(), vault.creds(), "openai")
        message = str(err.value)
        assert "MAC check failed" in message and vault.ids["openai"] in message
        _no_values(vault, message)
        vault.cli.run("sync")
        shown = json.loads(vault.cli.run("get", "item", vault.ids["openai"]).stdout)
        assert shown["login"].get("password") != vault.values["password"]  # the oracle agrees
    vault.cli.run("sync")
    # Its positive twin: untouched, the same read succeeds.
    items = read(vault.source(), vault.creds(), "openai")
    assert items["openai"].fields["password"].reveal_str() == vault.values["password"]


def test_a_wrong_master_password_fails_cleanly(vault: Vault) -> None:
    wrong = make_canary()
    with pytest.raises(SourceError) as err:
        read(vault.source(), vault.creds(password=wrong), "openai")
    assert "login was refused" in str(err.value)
    _no_values(vault, str(err.value))
    assert wrong not in str(err.value)
    # With an API key the server lets us in; the wrong password then fails the account key.
    with pytest.raises(SourceError) as err:
        read(vault.source(auth="apikey"), vault.apikey(password=wrong), "openai")
    assert "does not decrypt the account key" in str(err.value)
    _no_values(vault, str(err.value))
    assert wrong not in str(err.value)


@pytest.mark.parametrize("answer", [
    {"kdf": 0, "kdfIterations": 50_000_000},  # minutes of CPU per sync
    {"kdf": 1, "kdfIterations": 3, "kdfMemory": 1_000_000, "kdfParallelism": 4},  # ~1 TB
    {"kdf": 0, "kdfIterations": 1},  # a downgrade that would make the hash cheap to crack
])  # fmt: skip
def test_a_hostile_kdf_answer_is_refused_before_any_work(
    vault: Vault, answer: dict[str, Any]
) -> None:
    vault.server.prelogin_override = answer
    try:
        before = len(vault.server.requests)
        with pytest.raises(SourceError, match="the server's KDF settings"):
            read(vault.source(), vault.creds(), "openai")
        after = vault.server.requests[before:]
    finally:
        vault.server.prelogin_override = None
    assert ("POST", "/identity/connect/token") not in after  # no login with a weak hash


def test_a_wrong_api_key_is_refused(vault: Vault) -> None:
    bad = make_canary()
    with pytest.raises(SourceError) as err:
        read(vault.source(auth="apikey"), vault.apikey(client_secret=bad), "openai")
    assert "check the API key" in str(err.value)
    assert bad not in str(err.value)
    _no_values(vault, str(err.value))


def test_two_items_with_the_wanted_name_are_refused_not_guessed(vault: Vault) -> None:
    with vault.server.lock:
        [original] = [c for c in vault.server.ciphers if c["id"] == vault.ids["openai"]]
        twin = {**copy.deepcopy(original), "id": "00000000-0000-4000-8000-000000000001"}
        vault.server.ciphers.append(twin)
    try:
        with pytest.raises(SourceError, match="two items named 'openai' in folder"):
            read(vault.source(), vault.creds(), "openai")
        assert set(read(vault.source(), vault.creds(), "github")) == {"github"}  # twin
    finally:
        with vault.server.lock:
            vault.server.ciphers.remove(twin)


def test_missing_credentials_name_the_field_and_the_fix(vault: Vault) -> None:
    with pytest.raises(SourceError) as err:
        read(vault.source(auth="apikey"), {"password": Secret(vault.password)}, "openai")
    assert "lacks field(s) client_id, client_secret" in str(err.value)
    assert "vaultproxy secret set source.vw" in str(err.value)


def test_the_egress_policy_and_plain_http_are_enforced(vault: Vault) -> None:
    with pytest.raises(SourceError) as err:  # loopback not allowed for this source
        read(vault.source(address=AddressContext()), vault.creds(), "openai")
    assert "vw" in str(err.value)
    # A private address the policy allows, over plain HTTP: refused before any packet is
    # sent (the master password hash would otherwise cross the network in clear).
    src = vault.source(url="http://10.255.255.1:8080", address=AddressContext(
        allow_loopback=True, allow_private=True))
    with pytest.raises(SourceError, match="plain HTTP is allowed only to a loopback"):
        read(src, vault.creds(), "openai")


def test_the_source_interface_fetches_refs_by_item_name(vault: Vault) -> None:
    spec = SourceSpec("vw", "bitwarden", vault.server.url, "password", vault.server.ca_file,
                      LOOPBACK, folder=FOLDER)
    src = build_source(spec)
    refs = [parse_ref("vw:openai#api_key"), parse_ref("vw:github#password"),
            parse_ref("vw:other#password")]
    fetched = _run(lambda c: src.fetch(c, vault.creds(), refs))
    assert set(fetched) == {refs[0], refs[1]}  # "other" is not in the folder: left out
    assert fetched[refs[0]].fields["api_key"].reveal_str() == vault.values["api_key"]
    assert fetched[refs[1]].fields["password"].reveal_str() == vault.values["org_password"]
    stored = {c["id"]: c["revisionDate"] for c in vault.server.ciphers}
    assert fetched[refs[0]].version == stored[vault.ids["openai"]]
    assert vault.values["api_key"] not in repr(fetched)


def test_an_unknown_auth_is_refused_at_build_time() -> None:
    spec = SourceSpec("vw", "bitwarden", "https://vw.test", "token", Path("/dev/null"),
                      LOOPBACK, folder=FOLDER)
    with pytest.raises(SourceError, match='"password" or "apikey"'):
        build_source(spec)
