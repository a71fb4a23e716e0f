"""Where the master password comes from: --password-file, $VAULTPROXY_PASSWORD_FILE, or a TTY."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from vaultproxy.errors import UsageError
from vaultproxy.secret import Secret

HOW = (
    "supply the master password with --password-file FILE, "
    "or set VAULTPROXY_PASSWORD_FILE=FILE, or run in a terminal to be prompted"
)


def _from_file(path: str) -> Secret:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    value = raw.rstrip(b"\r\n")
    if not value:
        raise UsageError(f"password file {path} is empty; put the master password in it")
    return Secret(value)


def get_password(flag: str | None, *, confirm: bool = False, prompt: str = "Master password: ",
                 required: bool = True) -> Secret | None:
    """Return the master password, or None when ``required`` is False and no source exists."""
    source = flag or os.environ.get("VAULTPROXY_PASSWORD_FILE")
    if source:
        return _from_file(source)
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if not first:
            raise UsageError("empty master password; " + HOW)
        if confirm and getpass.getpass("Repeat master password: ") != first:
            raise UsageError("the two passwords differ; run the command again")
        return Secret(first)
    if not required:
        return None
    raise UsageError("no master password source; " + HOW)
