"""ca-bundle.pem = system CAs + ours, refreshed when ca.crt changes, never including itself."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl
import stat
from pathlib import Path

import pytest

from tests.unit.test_ca import make_home
from vaultproxy import ca as ca_mod
from vaultproxy.ca import bundle as ca_bundle
from vaultproxy.errors import CAError
from vaultproxy.files.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def fingerprints(path: Path) -> list[str]:
    """SHA-256 of every certificate in a PEM file (hashlib: some system roots make
    cryptography warn, and warnings are errors here)."""
    return [
        hashlib.sha256(ssl.PEM_cert_to_DER_cert(block)).digest().hex(":").upper()
        for block in PEM_BLOCK.findall(path.read_text())
    ]


def system_fingerprints(home: Home) -> list[str]:
    return fingerprints(ca_mod.system_ca_file(home))


def test_bundle_holds_ours_once_and_the_system_cas(home: Home) -> None:
    path = ca_mod.build_bundle(home)
    assert path == home.ca_bundle
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644
    got = fingerprints(path)
    ours = ca_mod.load_ca(home).fingerprint_sha256
    assert got.count(ours) == 1
    system = system_fingerprints(home)
    assert len(system) >= 1
    assert set(system) <= set(got)
    assert len(got) == len(set(system)) + 1


def test_bundle_loads_into_ssl(home: Home) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_mod.build_bundle(home)))
    assert len(ctx.get_ca_certs()) > 1


def test_bundle_not_rewritten_when_unchanged(home: Home) -> None:
    path = ca_mod.build_bundle(home)
    inode = os.stat(path).st_ino
    ca_mod.build_bundle(home)
    assert os.stat(path).st_ino == inode


def test_bundle_refreshed_when_ca_changes(home: Home, tmp_path: Path) -> None:
    old = ca_mod.load_ca(home).fingerprint_sha256
    ca_mod.build_bundle(home)
    other = make_home(tmp_path / "other")
    shutil.copy2(other.ca_key, home.ca_key)
    shutil.copy2(other.ca_cert, home.ca_cert)
    new = ca_mod.load_ca(home).fingerprint_sha256
    assert new != old
    got = fingerprints(ca_mod.build_bundle(home))
    assert new in got and old not in got


def test_bundle_repaired_when_tampered(home: Home) -> None:
    path = ca_mod.build_bundle(home)
    path.write_bytes(b"nothing useful\n")
    os.chmod(path, 0o600)
    ca_mod.build_bundle(home)
    assert ca_mod.load_ca(home).fingerprint_sha256 in fingerprints(path)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644


def test_bundle_never_feeds_on_itself(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    # An agent shell exports SSL_CERT_FILE=<our bundle>; rebuilding there must not nest it.
    path = ca_mod.build_bundle(home)
    first = path.read_bytes()
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    assert ssl.get_default_verify_paths().cafile == str(path)  # the trap is real
    assert ca_mod.system_ca_file(home) != path
    ca_mod.build_bundle(home)
    assert path.read_bytes() == first


def test_system_store_holding_our_ca_is_deduplicated(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "system.pem"
    system.write_bytes(ca_mod.system_ca_file(home).read_bytes() + home.ca_cert.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    got = fingerprints(ca_mod.build_bundle(home))
    assert got.count(ca_mod.load_ca(home).fingerprint_sha256) == 1


def test_empty_system_store_is_refused(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"# no certificates here\n")
    monkeypatch.setattr(ca_bundle, "system_ca_file", lambda _home: empty)
    with pytest.raises(CAError, match="holds no certificates"):
        ca_mod.build_bundle(home)
    assert not home.ca_bundle.exists()
