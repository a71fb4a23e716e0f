"""The CA bundle agents trust (system CAs + ours + a rotation's next CA + ``[agent]
extra_ca``), and the system trust store the proxy verifies upstreams against."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vaultproxy.ca.authority import _next_cert, _update_file, fingerprint, load_ca
from vaultproxy.errors import CAError
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home

logger = logging.getLogger(__name__)

SYSTEM_BUNDLE_FALLBACK = Path("/etc/ssl/certs/ca-certificates.crt")


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


def trust_with(home: Home, ca_cert: str | None, name: str) -> Path:
    """The system CAs, plus ``ca_cert`` (relative to the home) when set: a trust file for an
    outbound client (a source, the breach check), written as ``trust-<name>.pem`` next to
    the services' trust files."""
    system = system_ca_file(home)
    if not ca_cert:
        return system
    extra = (home.path / ca_cert).read_bytes()
    home.mitm_confdir.mkdir(mode=0o700, exist_ok=True)
    path = home.mitm_confdir / f"trust-{name}.pem"
    write_atomic(path, system.read_bytes().rstrip(b"\n") + b"\n" + extra, mode=0o644)
    return path


def _system_certs(home: Home, ours: bytes) -> tuple[Path, list[bytes]]:
    source = system_ca_file(home)
    try:
        raw = source.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read the system CA store {source}: {e.strerror}") from None
    certs: list[bytes] = []
    seen: set[bytes] = {ours}
    for der in _pem_blocks(raw):
        if der not in seen:
            seen.add(der)
            certs.append(der)
    if not certs:
        raise CAError(f"the system CA store {source} holds no certificates")
    return source, certs


_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def _pem_blocks(raw: bytes) -> list[bytes]:
    """The DER of each readable certificate of a PEM file, in order (ssl's PEM helper; a
    malformed block is skipped, as OpenSSL's own loaders would not read past it)."""
    out: list[bytes] = []
    for chunk in raw.split(_END)[:-1]:
        start = chunk.find(_BEGIN)
        if start < 0:
            continue
        try:
            out.append(ssl.PEM_cert_to_DER_cert((chunk[start:] + _END).decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def _pem(der: bytes) -> bytes:
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def _real(path: Path) -> str:
    return os.path.realpath(path)


