"""The MITM CA: create it once, load it safely, hand it to mitmproxy, and bundle it for agents.

Files (SPEC.md §2): ``ca.key`` 0600 and ``ca.crt`` 0644 in the home. mitmproxy reads its CA
from ``<confdir>/mitmproxy-ca.pem`` (key + cert in one PEM); we materialise that file from
ours in a private 0700 confdir so mitmproxy never generates a CA of its own.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import logging
import os
import re
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultproxy.atomic_file import fsync_dir, write_atomic
from vaultproxy.errors import CAError, PermissionProblem
from vaultproxy.home import Home, check_mode, check_private

logger = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=3650)
BACKDATE = datetime.timedelta(days=1)
MITM_BASENAME = "mitmproxy"
SYSTEM_BUNDLE_FALLBACK = Path("/etc/ssl/certs/ca-certificates.crt")
# Files mitmproxy writes when it generates a CA itself; stale copies would hold another CA.
_MITM_STALE = ("mitmproxy-ca.p12", "mitmproxy-ca-cert.p12", "mitmproxy-ca-cert.cer")
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(.+?)-----END CERTIFICATE-----", re.DOTALL
)


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


# --- mitmproxy confdir ----------------------------------------------------------------------


def materialize_mitm_confdir(home: Home) -> Path:
    """Make ``home.mitm_confdir`` hold our CA in mitmproxy's layout; return the confdir.

    ``CertStore.from_store(confdir, "mitmproxy", ...)`` then loads our CA instead of
    generating one. Files are rewritten only when their content changed.
    """
    ca = load_ca(home)
    confdir = home.mitm_confdir
    confdir.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(confdir)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionProblem(f"{confdir} is not a directory; remove it and run again")
    if st.st_uid != os.getuid():
        raise PermissionProblem(
            f"{confdir} is owned by uid {st.st_uid}, not by you; fix with: "
            f"chown {os.getuid()} {confdir}"
        )
    os.chmod(confdir, 0o700)
    cert_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _read_nofollow(ca.key_path)
    _update_file(
        confdir / f"{MITM_BASENAME}-ca.pem", key_pem.rstrip(b"\n") + b"\n" + cert_pem, 0o600
    )
    _update_file(confdir / f"{MITM_BASENAME}-ca-cert.pem", cert_pem, 0o644)
    for name in _MITM_STALE:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(confdir / name)
    return confdir


# --- bundle for agents ----------------------------------------------------------------------


def build_bundle(home: Home) -> Path:
    """Write ``home.ca_bundle`` = system CAs + ours (0644); rewrite only when it changed."""
    ca = load_ca(home)
    ours = ca.cert.public_bytes(serialization.Encoding.DER)
    source, system = _system_certs(home, ours)
    parts = [b"# vaultproxy CA bundle: system CAs from " + os.fsencode(source) + b"\n"]
    parts += [_pem(der) for der in system]
    parts.append(
        f"# vaultproxy local CA {ca.subject}\n# SHA-256 {ca.fingerprint_sha256}\n".encode()
    )
    parts.append(_pem(ours))
    upcoming = _next_cert(home)
    if upcoming is not None:
        parts.append(
            f"# vaultproxy NEXT CA (rotation) SHA-256 {fingerprint(upcoming)}\n".encode()
        )
        parts.append(_pem(upcoming.public_bytes(serialization.Encoding.DER)))
    seen = {ours, *system}
    for name, cert in extra_cas(home):
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in seen:
            continue
        seen.add(der)
        subject = cert.subject.rfc4514_string()
        parts.append(f"# extra CA from {name} ([agent] extra_ca): {subject}\n".encode())
        parts.append(_pem(der))
    _update_file(home.ca_bundle, b"".join(parts), 0o644)
    return home.ca_bundle


def extra_cas(home: Home) -> list[tuple[str, x509.Certificate]]:
    """The certificates of ``[agent] extra_ca`` in services.toml (e.g. the private CA of an
    internal package index that agents reach through passthrough), in file order."""
    from vaultproxy.config.load import load_config  # lazy: the CA sits below the config
    from vaultproxy.errors import ConfigError

    if not home.services.exists():
        return []
    try:
        names = load_config(home.services).agent.extra_ca
    except ConfigError as e:
        logger.warning("services.toml is invalid, [agent] extra_ca not added to the CA "
                       "bundle: %s", e)
        return []
    out: list[tuple[str, x509.Certificate]] = []
    for name in names:
        try:
            certs = x509.load_pem_x509_certificates((home.path / name).read_bytes())
        except (OSError, ValueError):
            raise CAError(f"[agent] extra_ca file {name} cannot be read as PEM "
                          "certificates (a relative path is resolved against the home)") from None
        out.extend((name, c) for c in certs)
    return out


def system_ca_file(home: Home) -> Path:
    """The system trust store file: OpenSSL's defaults, then Debian's path, then certifi.

    Our own bundle is skipped (an agent shell exports SSL_CERT_FILE=<our bundle>).
    """
    paths = ssl.get_default_verify_paths()
    candidates: list[str | None] = [paths.cafile, paths.openssl_cafile, str(SYSTEM_BUNDLE_FALLBACK)]
    with contextlib.suppress(ImportError):
        import certifi

        candidates.append(certifi.where())
    ours = {_real(home.ca_bundle), _real(home.ca_cert)}
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and _real(Path(candidate)) not in ours:
            return Path(candidate)
    raise CAError("no system CA store found; install the ca-certificates package")


def _system_certs(home: Home, ours: bytes) -> tuple[Path, list[bytes]]:
    source = system_ca_file(home)
    try:
        raw = source.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read the system CA store {source}: {e.strerror}") from None
    certs: list[bytes] = []
    seen: set[bytes] = {ours}
    for match in _PEM_CERT.finditer(raw):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except binascii.Error:
            continue
        if der not in seen:
            seen.add(der)
            certs.append(der)
    if not certs:
        raise CAError(f"the system CA store {source} holds no certificates")
    return source, certs


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def _real(path: Path) -> str:
    return os.path.realpath(path)


# --- rotation -------------------------------------------------------------------------------
#
# Overlap: `ca rotate` writes the next CA beside the current one (ca.next.key/ca.next.crt);
# the proxy keeps signing with the current CA while the bundle carries both, so agents and
# system stores can learn the next CA ahead of the switch. `ca rotate --finish` promotes
# the next CA (ca.key/ca.crt replaced; the old certificate kept as ca.retired.crt so it can
# be untrusted; the old key is deleted). Restart the proxy to sign with the new CA.
# `ca rotate --abort` drops the next CA. A --finish interrupted between its two renames is
# resumed by running it again.


def next_paths(home: Home) -> tuple[Path, Path]:
    return home.path / "ca.next.key", home.path / "ca.next.crt"


def retired_cert_path(home: Home) -> Path:
    return home.path / "ca.retired.crt"


def _next_cert(home: Home) -> x509.Certificate | None:
    _key, cert = next_paths(home)
    return _read_cert(cert) if os.path.lexists(cert) else None


def rotate_start(home: Home) -> x509.Certificate:
    """Create the next CA beside the current one and add it to the bundle."""
    load_ca(home)
    key_path, cert_path = next_paths(home)
    if os.path.lexists(key_path) or os.path.lexists(cert_path):
        raise CAError(
            f"a CA rotation is already in progress ({cert_path}); finish it with "
            "`vaultproxy ca rotate --finish` or drop it with `vaultproxy ca rotate --abort`"
        )
    key, cert = _generate()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_file(key_path, key_pem, 0o600, clobber=False)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, clobber=False)
    build_bundle(home)
    logger.info("next CA %s (SHA-256 %s)", cert_path, fingerprint(cert))
    return cert


def rotate_finish(home: Home) -> CA:
    """Promote the next CA to ca.key/ca.crt; keep the old cert as ca.retired.crt."""
    home.require()
    key_path, cert_path = next_paths(home)
    if not os.path.lexists(cert_path):
        raise CAError("no CA rotation in progress; start one with `vaultproxy ca rotate`")
    _check_public_file(cert_path)
    new_cert = _read_cert(cert_path)
    if os.path.lexists(key_path):
        check_private(key_path, 0o600)
        if _read_key(key_path).public_key() != new_cert.public_key():
            raise CAError(f"{key_path} does not belong to {cert_path}; `ca rotate --abort`")
        if os.path.lexists(home.ca_cert):
            _update_file(retired_cert_path(home), _read_nofollow(home.ca_cert), 0o644)
        os.replace(key_path, home.ca_key)
        fsync_dir(home.path)
    elif _read_key(home.ca_key).public_key() != new_cert.public_key():
        raise CAError(f"{key_path} is missing; `vaultproxy ca rotate --abort` and start again")
    os.replace(cert_path, home.ca_cert)
    fsync_dir(home.path)
    build_bundle(home)
    return load_ca(home)


def rotate_abort(home: Home) -> bool:
    """Drop an unfinished rotation's next CA. True when there was one."""
    home.require()
    found = False
    for path in next_paths(home):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            found = True
    build_bundle(home)
    return found


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
