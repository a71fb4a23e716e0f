"""Hand our CA to mitmproxy: a private confdir in mitmproxy's layout, so it never generates
a CA of its own. mitmproxy reads ``<confdir>/mitmproxy-ca.pem`` (key + cert in one PEM)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from vaultproxy.ca.authority import _read_nofollow, _update_file, load_ca
from vaultproxy.errors import PermissionProblem
from vaultproxy.files.home import Home

MITM_BASENAME = "mitmproxy"
# Files mitmproxy writes when it generates a CA itself; stale copies would hold another CA.
_MITM_STALE = ("mitmproxy-ca.p12", "mitmproxy-ca-cert.p12", "mitmproxy-ca-cert.cer")


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


