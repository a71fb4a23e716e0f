"""The master password kept in a file (``--password-file``, ``$VAULTPROXY_PASSWORD_FILE``,
the mitmdump option): read it, and warn when the file is weakly kept."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from vaultproxy.errors import UsageError
from vaultproxy.secret import Secret


def warn(message: str) -> None:
    """A weak-setting warning on stderr (never contains a secret value)."""
    sys.stderr.write(f"vaultproxy: SECURITY: {message}\n")
    sys.stderr.flush()


def check_file(path: Path, home: Path | None) -> None:
    """Warn about a password file others can read, or one kept inside the home."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o044:
            warn(f"password file {path} is readable by group/other (mode {mode:04o}); "
                 f"fix with: chmod 600 {path}")
    if home is not None:
        with contextlib.suppress(OSError):
            if path.resolve().is_relative_to(home.resolve()):
                warn(f"password file {path} is inside the vaultproxy home {home}: a copy or "
                     "backup of the home then holds the keystore and its password together; "
                     "keep the file elsewhere")


def read_file(path: str, home: Path | None = None) -> Secret:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    value = raw.rstrip(b"\r\n")
    if not value:
        raise UsageError(f"password file {path} is empty; put the master password in it")
    check_file(Path(path), home)
    return Secret(value)
