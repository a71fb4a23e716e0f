"""`vaultproxy check` for minted auth types: the new keys are validated, and the keystore
entry must hold the fields each type needs (SPEC §4.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli_check import run_check
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration

SERVICES = """\
[[service]]
name = "rt"
hosts = ["api.example.com"]
mode = "host_inject"
auth = "oauth2_refresh"
token_url = "https://login.example.com/oauth/token"

[[service]]
name = "cc"
hosts = ["cc.example.com"]
mode = "host_inject"
auth = "oauth2_client_credentials"
token_url = "/token"

[[service]]
name = "npm"
hosts = ["npm.example.com"]
mode = "host_inject"
auth = "session"
login_url = "/api/tokens"

[[service]]
name = "unifi"
hosts = ["unifi.example.com"]
mode = "host_inject"
auth = "unifi_dual"
"""

FULL = {
    "rt": ("client_id", "refresh_token"),
    "cc": ("client_id", "client_secret"),
    "npm": ("username", "password"),
    "unifi": ("api_key", "username", "password"),
}


def _home(tmp_path: Path, canary: Any, fields: dict[str, tuple[str, ...]]) -> tuple[Path, Path]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "services.toml").write_text(SERVICES)
    pw = tmp_path / "pw"
    pw.write_text(canary() + "\n")
    pw.chmod(0o600)
    kdf = KdfParams(time_cost=1, memory_kib=8, parallelism=1)  # fast KDF for tests
    ks = Keystore.create(home / "keystore.enc", Secret(pw.read_text().strip()), kdf)
    for entry, names in fields.items():
        for name in names:
            ks.set_field(entry, name, Secret(canary()))
    ks.save()
    return home, pw


def test_complete_entries_pass(tmp_path: Path, canary: Any) -> None:
    home, pw = _home(tmp_path, canary, FULL)
    r = run_check(home, "--password-file", str(pw))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 secret reference(s) found" in r.stdout


def test_a_missing_field_is_named_with_the_type_that_needs_it(tmp_path: Path, canary: Any
                                                              ) -> None:
    fields = dict(FULL, rt=("client_id",), unifi=("username", "password"))
    home, pw = _home(tmp_path, canary, fields)
    r = run_check(home, "--password-file", str(pw))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(line.startswith('service "rt" (service[0]).secret:') and "refresh_token" in line
               and 'auth = "oauth2_refresh"' in line for line in lines), lines
    assert any(line.startswith('service "unifi" (service[3]).secret:') and "api_key" in line
               for line in lines)
    assert not any(line.startswith(('service "cc" (service[1])', 'service "npm" (service[2])'))
                   for line in lines)


def test_a_bad_minted_key_fails_without_the_keystore(tmp_path: Path, canary: Any) -> None:
    home, _pw = _home(tmp_path, canary, FULL)
    (home / "services.toml").write_text(SERVICES.replace(
        'token_url = "/token"', 'token_url = "http://cc.example.com/token"'))
    r = run_check(home)
    assert r.returncode == 1
    assert r.stdout.startswith("service \"cc\" (service[1]).token_url:"), r.stdout
