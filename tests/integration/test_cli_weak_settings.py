"""Weak settings are said out loud, never accepted silently: a group/other-readable password
file, a password file inside the home, a short master password, `passthrough_allow`
entries that can never apply. Each warning has a twin where the setting is fine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.proxy import PASSWORD
from tests.keystore_cli import init_home, password_file, vp

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, Path]:
    pw = password_file(tmp_path, PASSWORD)
    h = tmp_path / "home"
    init_home(h, pw)
    return h, pw


def test_group_readable_password_file_is_warned(home: tuple[Path, Path]) -> None:
    h, pw = home
    r = vp("secret", "list", "--home", str(h), "--password-file", str(pw))
    assert r.returncode == 0 and "SECURITY" not in r.stderr  # 0600: fine
    pw.chmod(0o644)
    r = vp("secret", "list", "--home", str(h), "--password-file", str(pw))
    assert r.returncode == 0
    assert f"SECURITY: password file {pw} is readable by group/other (mode 0644); " \
           f"fix with: chmod 600 {pw}" in r.stderr
    r = vp("check", "--home", str(h), env={"VAULTPROXY_PASSWORD_FILE": str(pw)})
    assert "readable by group/other" in r.stderr


def test_password_file_inside_the_home_is_warned(home: tuple[Path, Path]) -> None:
    h, pw = home
    inside = password_file(h, PASSWORD, name="password")
    r = vp("secret", "list", "--home", str(h), "--password-file", str(inside))
    assert r.returncode == 0
    assert f"password file {inside} is inside the vaultproxy home" in r.stderr
    r = vp("secret", "list", "--home", str(h), "--password-file", str(pw))
    assert "inside the vaultproxy home" not in r.stderr


def test_short_master_password_is_warned_at_init_and_passwd(tmp_path: Path) -> None:
    short = password_file(tmp_path, "tiny-pw", name="short")
    long = password_file(tmp_path, PASSWORD, name="long")
    r = vp("init", "--home", str(tmp_path / "a"), "--password-file", str(short))
    assert r.returncode == 0
    assert "SECURITY: the master password has 7 characters; use 12 or more" in r.stderr
    r = vp("init", "--home", str(tmp_path / "b"), "--password-file", str(long))
    assert r.returncode == 0 and "SECURITY" not in r.stderr
    r = vp("passwd", "--home", str(tmp_path / "b"), "--password-file", str(long),
           "--new-password-file", str(short))
    assert r.returncode == 0 and "has 7 characters" in r.stderr
    # Unlocking with an existing short password is not nagged about on every command.
    r = vp("secret", "list", "--home", str(tmp_path / "b"), "--password-file", str(short))
    assert r.returncode == 0 and "SECURITY" not in r.stderr


def test_check_flags_passthrough_allow_entries_that_never_apply(tmp_path: Path) -> None:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    (h / "services.toml").write_text(
        '[proxy]\npassthrough_allow = ["169.254.169.254", "10.0.0.0/8", "192.0.2.0/24", '
        '"127.0.0.1:8080", "fe80::/10"]\n')
    r = vp("check", "--home", str(h))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert [ln.split(":", 1)[0] for ln in lines] == [
        "proxy.passthrough_allow[0]", "proxy.passthrough_allow[2]", "proxy.passthrough_allow[4]"]
    assert "cloud metadata" in lines[0] and "documentation" in lines[1] \
        and "link-local" in lines[2]
    assert all("can never apply" in ln for ln in lines)
    (h / "services.toml").write_text('[proxy]\npassthrough_allow = ["10.0.0.0/8", '
                                     '"127.0.0.1:8080"]\n')
    r = vp("check", "--home", str(h))
    assert r.returncode == 0, r.stdout


def test_help_is_written_for_users() -> None:
    r = subprocess.run([sys.executable, "-m", "vaultproxy", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    assert "one module per subcommand" not in r.stdout and "register()" not in r.stdout
    for word in ("keeps API keys out of AI agents", "status", "unlock", "lock", "reload",
                 "first steps"):
        assert word in r.stdout, word
    r = subprocess.run([sys.executable, "-m", "vaultproxy", "run", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert "default 1" in r.stdout and "auto = one per CPU" in r.stdout
