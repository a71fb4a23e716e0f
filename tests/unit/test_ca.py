"""The MITM CA: its properties, file permissions, refusal of unsafe files, never overwritten."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultproxy import ca as ca_mod
from vaultproxy.errors import CAError, PermissionProblem, UsageError
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home


def make_home(path: Path) -> Home:
    home = Home(path)
    home.create()
    ca_mod.ensure_ca(home)
    return home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- properties -----------------------------------------------------------------------------


def test_ca_is_ec_p256_with_ca_extensions(home: Home) -> None:
    cert = ca_mod.load_ca(home).cert
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(public)


def test_ca_subject_and_validity(home: Home) -> None:
    ca = ca_mod.load_ca(home)
    cn = ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    org = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert re.fullmatch(r"vaultproxy local CA [0-9a-f]{8}", str(cn))
    assert org == "vaultproxy"
    assert ca.cert.issuer == ca.cert.subject
    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(days=2) < ca.cert.not_valid_before_utc
    assert ca.cert.not_valid_before_utc <= now - datetime.timedelta(hours=23)
    assert ca.not_after - now > datetime.timedelta(days=9 * 365)
    assert ca.not_after - now < datetime.timedelta(days=11 * 365)
    assert not ca.is_expired()
    assert ca.is_expired(ca.not_after + datetime.timedelta(seconds=1))


def test_two_homes_get_different_cas(tmp_path: Path) -> None:
    a = ca_mod.load_ca(make_home(tmp_path / "a"))
    b = ca_mod.load_ca(make_home(tmp_path / "b"))
    assert a.fingerprint_sha256 != b.fingerprint_sha256
    assert a.subject != b.subject


def test_fingerprint_format(home: Home) -> None:
    ca = ca_mod.load_ca(home)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", ca.fingerprint_sha256)
    assert ca_mod.fingerprint(ca.cert) == ca.fingerprint_sha256
    assert ca.subject == ca.cert.subject.rfc4514_string()


# --- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_modes_whatever_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    home = Home(tmp_path / "home")
    home.create()
    os.umask(mask)
    assert ca_mod.ensure_ca(home) is True
    assert mode(home.ca_key) == 0o600
    assert mode(home.ca_cert) == 0o644
    assert not [p.name for p in home.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.security
@pytest.mark.parametrize("bad", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_refuses_key_open_to_group_or_other(home: Home, bad: int) -> None:
    os.chmod(home.ca_key, bad)
    with pytest.raises(PermissionProblem) as err:
        ca_mod.load_ca(home)
    message = str(err.value)
    assert str(home.ca_key) in message
    assert f"chmod 0600 {home.ca_key}" in message
    # Every consumer goes through load_ca, so none of them proceeds either.
    with pytest.raises(PermissionProblem):
        ca_mod.materialize_mitm_confdir(home)
    with pytest.raises(PermissionProblem):
        ca_mod.build_bundle(home)


@pytest.mark.security
def test_load_accepts_the_same_key_at_0600(home: Home) -> None:
    # The twin of the refusal above: the fix named in the message works.
    os.chmod(home.ca_key, 0o644)
    with pytest.raises(PermissionProblem):
        ca_mod.load_ca(home)
    os.chmod(home.ca_key, 0o600)
    assert ca_mod.load_ca(home).key_path == home.ca_key


@pytest.mark.security
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown")
def test_load_refuses_key_owned_by_someone_else(home: Home) -> None:
    os.chown(home.ca_key, 12345, -1)
    with pytest.raises(PermissionProblem, match=r"owned by uid 12345.*chown"):
        ca_mod.load_ca(home)


@pytest.mark.security
def test_load_refuses_symlinked_key(home: Home, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.key"
    os.rename(home.ca_key, elsewhere)
    os.symlink(elsewhere, home.ca_key)
    with pytest.raises(PermissionProblem, match="symbolic link"):
        ca_mod.load_ca(home)


@pytest.mark.security
def test_load_refuses_cert_writable_by_others(home: Home) -> None:
    os.chmod(home.ca_cert, 0o666)
    with pytest.raises(PermissionProblem, match=f"chmod 0644 {re.escape(str(home.ca_cert))}"):
        ca_mod.load_ca(home)


def test_load_refuses_mismatched_pair(home: Home, tmp_path: Path) -> None:
    other = make_home(tmp_path / "other")
    shutil.copyfile(other.ca_cert, home.ca_cert)
    with pytest.raises(CAError, match="does not belong"):
        ca_mod.load_ca(home)


def test_load_refuses_garbage_key_without_quoting_it(home: Home) -> None:
    home.ca_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nvpnotakey\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CAError) as err:
        ca_mod.load_ca(home)
    assert "vpnotakey" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


# --- missing / half pairs, never overwritten -----------------------------------------------


def test_load_without_ca_names_init(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.create()
    with pytest.raises(CAError, match=f"vaultproxy init --home {re.escape(str(home.path))}"):
        ca_mod.load_ca(home)


def test_load_without_home_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="vaultproxy init"):
        ca_mod.load_ca(Home(tmp_path / "absent"))


@pytest.mark.parametrize("keep", ["ca_key", "ca_cert"])
def test_half_pair_is_refused_and_left_alone(home: Home, keep: str) -> None:
    gone = home.ca_cert if keep == "ca_key" else home.ca_key
    kept: Path = getattr(home, keep)
    before = kept.read_bytes()
    gone.unlink()
    for call in (ca_mod.ensure_ca, ca_mod.load_ca):
        with pytest.raises(CAError) as err:
            call(home)
        message = str(err.value)
        assert str(gone) in message and "is missing" in message
        assert f"move {kept} away" in message and "vaultproxy init --home" in message
    assert kept.read_bytes() == before
    assert not gone.exists()


def test_ensure_ca_never_overwrites(home: Home) -> None:
    first = ca_mod.load_ca(home).fingerprint_sha256
    key_stat = os.stat(home.ca_key)
    key_bytes = home.ca_key.read_bytes()
    for _ in range(3):
        assert ca_mod.ensure_ca(home) is False
    assert ca_mod.load_ca(home).fingerprint_sha256 == first
    assert home.ca_key.read_bytes() == key_bytes
    assert os.stat(home.ca_key).st_ino == key_stat.st_ino


def test_ensure_ca_does_not_fix_up_an_unsafe_existing_key(home: Home) -> None:
    # ensure_ca leaves an existing pair alone; the unsafe mode is caught at load time.
    os.chmod(home.ca_key, 0o644)
    assert ca_mod.ensure_ca(home) is False
    assert mode(home.ca_key) == 0o644
    with pytest.raises(PermissionProblem):
        ca_mod.load_ca(home)


def test_no_clobber_write_refuses_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new", mode=0o600, exclusive=True)  # how the CA files are made
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
