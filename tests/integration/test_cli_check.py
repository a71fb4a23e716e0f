"""`vaultproxy check` as a subprocess: exit codes, `path: message` lines, secret references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[[service]]
name = "openai"
hosts = ["api.openai.com"]
mode = "placeholder"
auth = "bearer"

[[service]]
name = "registry"
hosts = ["registry.example.com", "*.registry.example.com"]
mode = "host_inject"
auth = "basic"
secret = "reg-creds"
"""


def run_check(home: Path, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTPROXY_")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vaultproxy", "check", "--home", str(home), *extra],
        capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL, timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    (h / "services.toml").write_text(GOOD)
    return h


def _keystore(home: Path, canary: Any, *, basic_fields: tuple[str, ...]) -> Path:
    pw = home.parent / "pw"
    pw.write_text(canary() + "\n")
    kdf = KdfParams(time_cost=1, memory_kib=8, parallelism=1)  # fast KDF for tests
    ks = Keystore.create(home / "keystore.enc", Secret(pw.read_text().strip()), kdf)
    ks.set_value("openai", Secret(canary()))
    for f in basic_fields:
        ks.set_field("reg-creds", f, Secret(canary()))
    ks.save()
    return pw


def test_ok_without_password(home: Path) -> None:
    r = run_check(home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ("services.toml OK: 2 service(s), 3 host(s); secrets not checked "
                        "(no master password; use --password-file)\n")


def test_every_problem_listed(home: Path, canary: Any) -> None:
    c = canary()
    (home / "services.toml").write_text(
        GOOD + f'\n[[service]]\nname = "openai"\nhosts = ["api.openai.com", "{c}*"]\n'
        f'mode = "{c}"\nauth = "bearer"\nbogus = 1\n'
    )
    r = run_check(home)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        'service "openai" (service[2]).bogus: unknown key',
        'service "openai" (service[2]).mode: must be "placeholder" or "host_inject"',
        'service "openai" (service[2]).hosts[1]: wildcard may only be "*." followed by a domain',
        'service "openai" (service[2]).name: already used by service[0]',
        'service "openai" (service[2]).hosts[0]: host and port already served by service[0]',
    ]
    assert r.stderr == "vaultproxy check: 5 problem(s)\n"
    assert c not in r.stdout + r.stderr


def test_syntax_error(home: Path, canary: Any) -> None:
    c = canary()
    (home / "services.toml").write_text(f'[proxy]\negress = "{c}\n')
    r = run_check(home)
    assert r.returncode == 1
    assert r.stdout.startswith("services.toml: line 2, column 10: a string starts here and is "
                               "not closed on this line; add the closing quote")
    assert c not in r.stdout + r.stderr


def test_missing_file(tmp_path: Path) -> None:
    r = run_check(tmp_path)
    assert r.returncode == 1
    assert r.stdout == "services.toml: not found; run `vaultproxy init` to create one\n"


def test_secrets_present(home: Path, canary: Any) -> None:
    pw = _keystore(home, canary, basic_fields=("username", "password"))
    r = run_check(home, "--password-file", str(pw))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("services.toml OK: 2 service(s), 3 host(s); ")
    r = run_check(home, env={"VAULTPROXY_PASSWORD_FILE": str(pw)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_secrets_missing(home: Path, canary: Any) -> None:
    pw = _keystore(home, canary, basic_fields=("username",))
    (home / "services.toml").write_text(GOOD + '\n[[service]]\nname = "gh"\n'
                                        'hosts = ["api.github.com"]\nmode = "host_inject"\n'
                                        'auth = "bearer"\n')
    r = run_check(home, "--password-file", str(pw))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        'service "registry" (service[1]).secret: keystore entry "reg-creds" lacks field(s) '
        'password (auth = "basic" needs username and password)',
        'service "gh" (service[2]).secret: keystore has no entry named "gh"',
    ]


def test_wrong_password(home: Path, canary: Any) -> None:
    _keystore(home, canary, basic_fields=())
    bad = home.parent / "bad"
    bad.write_text(canary())
    r = run_check(home, "--password-file", str(bad))
    assert r.returncode == 1
    assert r.stdout.startswith("keystore.enc: ")
    assert "wrong master password" in r.stdout


def test_password_but_no_keystore(home: Path, canary: Any) -> None:
    pw = home.parent / "pw"
    pw.write_text(canary())
    r = run_check(home, "--password-file", str(pw))
    assert r.returncode == 1
    assert r.stdout == "keystore.enc: not found; run `vaultproxy init`\n"
