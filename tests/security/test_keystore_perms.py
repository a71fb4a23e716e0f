"""Threat: other local users reading the keystore. Home 0700, keystore files 0600; a
group/other-readable keystore or home is refused with the chmod fix named."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.keystore_cli import init_home, password_file, vp
from vaultproxy.errors import PermissionProblem
from vaultproxy.keystore import KdfParams, Keystore, store
from vaultproxy.secret import Secret

pytestmark = pytest.mark.security
FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def made(tmp_path: Path, canary: Callable[[], str], canary_watch: Callable[[Path], None],
         monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Secret]:
    monkeypatch.setattr(store, "KDF_FLOOR", FAST)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    canary_watch(home)
    pw = Secret(canary())
    ks = Keystore.create(home / "keystore.enc", pw, FAST)
    ks.set_value("a", Secret(canary()))
    ks.save()
    return home, pw


def test_files_are_private_after_save(made: tuple[Path, Secret]) -> None:
    home, _ = made
    assert _mode(home) == 0o700
    for name in ("keystore.enc", "keystore.enc.bak", "keystore.enc.lock"):
        assert _mode(home / name) == 0o600, name


def test_files_are_private_even_with_a_lax_umask(made: tuple[Path, Secret]) -> None:
    home, pw = made
    old = os.umask(0o000)
    try:
        ks = Keystore.open(home / "keystore.enc", pw)
        ks.save()
    finally:
        os.umask(old)
    for name in ("keystore.enc", "keystore.enc.bak", "keystore.enc.lock"):
        assert _mode(home / name) == 0o600, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_keystore_is_refused(made: tuple[Path, Secret], mode: int) -> None:
    home, pw = made
    path = home / "keystore.enc"
    path.chmod(mode)
    with pytest.raises(PermissionProblem, match=f"chmod 0600 {path}"):
        Keystore.open(path, pw)


def test_readable_home_is_refused(made: tuple[Path, Secret]) -> None:
    home, pw = made
    home.chmod(0o755)
    with pytest.raises(PermissionProblem, match=f"chmod 0700 {home}"):
        Keystore.open(home / "keystore.enc", pw)


def test_symlinked_keystore_is_refused(made: tuple[Path, Secret], tmp_path: Path) -> None:
    home, pw = made
    real = tmp_path / "elsewhere.enc"
    (home / "keystore.enc").rename(real)
    (home / "keystore.enc").symlink_to(real)
    with pytest.raises(PermissionProblem, match="symbolic link"):
        Keystore.open(home / "keystore.enc", pw)


def test_negative_twin_private_keystore_opens(made: tuple[Path, Secret]) -> None:
    home, pw = made
    (home / "keystore.enc").chmod(0o600)
    assert Keystore.open(home / "keystore.enc", pw).names() == ["a"]


def test_cli_init_modes_and_refusal(tmp_path: Path, canary: Callable[[], str],
                                    canary_watch: Callable[[Path], None]) -> None:
    home = tmp_path / "new" / "home"
    canary_watch(home)
    pw = password_file(tmp_path, canary())
    init_home(home, pw)
    assert _mode(home) == 0o700
    assert _mode(home / "keystore.enc") == 0o600
    assert _mode(home / "services.toml") == 0o600
    common = ["--home", str(home), "--password-file", str(pw)]
    assert vp("secret", "set", "a", *common, stdin=canary().encode()).returncode == 0
    for name in ("keystore.enc", "keystore.enc.bak"):
        assert _mode(home / name) == 0o600

    (home / "keystore.enc").chmod(0o644)
    before = (home / "keystore.enc").read_bytes()
    r = vp("secret", "list", *common)
    assert r.returncode == 1
    assert f"chmod 0600 {home / 'keystore.enc'}" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert (home / "keystore.enc").read_bytes() == before
