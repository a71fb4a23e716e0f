"""The MITM CA itself: create it once, load and check it, and the files it lives in.

Files (SPEC.md §2): ``ca.key`` 0600 and ``ca.crt`` 0644 in the home; during a rotation
``ca.next.key``/``ca.next.crt`` beside them (ca/rotation.py).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultproxy.errors import CAError, PermissionProblem
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home, check_mode, check_private

logger = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=3650)
BACKDATE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CA:
    """Our CA as loaded from the home (the private key stays on disk)."""

    cert: x509.Certificate
    key_path: Path
    cert_path: Path
    fingerprint_sha256: str
    subject: str
    not_after: datetime.datetime

    def is_expired(self, now: datetime.datetime | None = None) -> bool:
        return (now or datetime.datetime.now(datetime.UTC)) >= self.not_after


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, upper-case hex pairs joined by colons (as openssl)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# --- creation -------------------------------------------------------------------------------


def ensure_ca(home: Home) -> bool:
    """Create the CA in ``home`` unless it exists. True when created; never overwrites."""
    home.require()
    key_there = os.path.lexists(home.ca_key)
    cert_there = os.path.lexists(home.ca_cert)
    if key_there and cert_there:
        return False
    if key_there or cert_there:
        raise CAError(_half_pair_message(home))
    key, cert = _generate()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # The key first: a crash in between leaves a lone ca.key, which load_ca reports.
        _write_file(home.ca_key, key_pem, 0o600, clobber=False)
        _write_file(
            home.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, clobber=False
        )
    except FileExistsError:
        raise CAError(
            f"another process created a CA in {home.path} at the same time; run the command again"
        ) from None
    logger.info("created MITM CA %s (SHA-256 %s)", home.ca_cert, fingerprint(cert))
    return True


def _generate() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"vaultproxy local CA {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vaultproxy"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _half_pair_message(home: Home) -> str:
    present, missing = (
        (home.ca_key, home.ca_cert) if os.path.lexists(home.ca_key) else (home.ca_cert, home.ca_key)
    )
    return (
        f"{present} exists but {missing} is missing; restore {missing.name} from a backup, or "
        f"move {present} away and run `vaultproxy init --home {home.path}` to create a new CA "
        "(agents must then trust the new ca.crt)"
    )


# --- loading --------------------------------------------------------------------------------


def load_ca(home: Home) -> CA:
    """Load and check the CA: key private and ours, cert a CA matching the key."""
    home.require()
    key_there = os.path.lexists(home.ca_key)
    cert_there = os.path.lexists(home.ca_cert)
    if not key_there and not cert_there:
        raise CAError(
            f"no CA in {home.path}; run `vaultproxy init --home {home.path}` to create one"
        )
    if not (key_there and cert_there):
        raise CAError(_half_pair_message(home))
    check_private(home.ca_key, 0o600)
    _check_public_file(home.ca_cert)
    cert = _read_cert(home.ca_cert)
    key = _read_key(home.ca_key)
    if key.public_key() != cert.public_key():
        raise CAError(
            f"{home.ca_key} does not belong to {home.ca_cert}; restore the matching pair "
            "from a backup"
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{home.ca_cert} is not a CA certificate (BasicConstraints CA:TRUE)")
    return CA(
        cert=cert,
        key_path=home.ca_key,
        cert_path=home.ca_cert,
        fingerprint_sha256=fingerprint(cert),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
    )


def _check_public_file(path: Path) -> None:
    """ca.crt may be world-readable but must be ours, a regular file, and not writable by others."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise PermissionProblem(f"{path} is not a regular file; replace it with the certificate")
    check_mode(path, 0o644, deny=0o022, what="writable")


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read_nofollow(path))
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise CAError(f"{path} is not a PEM certificate") from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_nofollow(path), password=None)
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        # `from None`: the parser's message could quote key material.
        raise CAError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{path} is not an EC private key")
    return key


# --- rotation files -------------------------------------------------------------------------


def next_paths(home: Home) -> tuple[Path, Path]:
    return home.path / "ca.next.key", home.path / "ca.next.crt"


def retired_cert_path(home: Home) -> Path:
    return home.path / "ca.retired.crt"


def _next_cert(home: Home) -> x509.Certificate | None:
    _key, cert = next_paths(home)
    return _read_cert(cert) if os.path.lexists(cert) else None


# --- files ----------------------------------------------------------------------------------


def _update_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically write ``data`` unless the file already holds exactly it (mode enforced)."""
    try:
        current = _read_nofollow(path)
    except OSError:
        current = None
    if current is not None and hashlib.sha256(current).digest() == hashlib.sha256(data).digest():
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)
        return
    _write_file(path, data, mode, clobber=True)


def _write_file(path: Path, data: bytes, mode: int, *, clobber: bool) -> None:
    """Without ``clobber`` an existing ``path`` raises FileExistsError and is left untouched."""
    write_atomic(path, data, mode=mode, exclusive=not clobber)
