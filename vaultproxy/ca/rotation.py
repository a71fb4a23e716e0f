"""CA rotation with overlap.

Overlap: `ca rotate` writes the next CA beside the current one (ca.next.key/ca.next.crt);
the proxy keeps signing with the current CA while the bundle carries both, so agents and
system stores can learn the next CA ahead of the switch. `ca rotate --finish` promotes
the next CA (ca.key/ca.crt replaced; the old certificate kept as ca.retired.crt so it can
be untrusted; the old key is deleted). Restart the proxy to sign with the new CA.
`ca rotate --abort` drops the next CA. A --finish interrupted between its two renames is
resumed by running it again.
"""

from __future__ import annotations

import contextlib
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vaultproxy.ca.authority import (
    CA,
    _check_public_file,
    _generate,
    _read_cert,
    _read_key,
    _read_nofollow,
    _update_file,
    _write_file,
    fingerprint,
    load_ca,
    next_paths,
    retired_cert_path,
)
from vaultproxy.ca.bundle import build_bundle
from vaultproxy.errors import CAError
from vaultproxy.files.atomic_file import fsync_dir
from vaultproxy.files.home import Home, check_private

logger = logging.getLogger(__name__)

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


