"""Where the master password comes from: ``--password-file``, ``$VAULTPROXY_PASSWORD_FILE``,
or a hidden prompt on the controlling terminal.

The prompt reads ``/dev/tty``, not stdin, so it also works when stdin is a pipe carrying a
secret value (``printf %s "$KEY" | vaultproxy secret set NAME``). Ctrl-D or Ctrl-C at a
prompt ends the command cleanly (``PromptCancelled``), never with a traceback.

Weak settings are warned about, never silently accepted: a password file readable by
group/other, a password file inside the home it unlocks, a master password shorter than
``MIN_LENGTH`` characters.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
from pathlib import Path

from vaultproxy.errors import KeystoreError, UsageError, VaultproxyError
from vaultproxy.home import Home, check_private
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.store import WrongPassword
from vaultproxy.password_file import read_file, warn
from vaultproxy.secret import Secret

HOW = (
    "supply the master password with --password-file FILE, "
    "or set VAULTPROXY_PASSWORD_FILE=FILE, or run in a terminal to be prompted"
)
MIN_LENGTH = 12
TTY = "/dev/tty"


class PromptCancelled(VaultproxyError):
    """Ctrl-D / Ctrl-C at a prompt; the CLI exits ``exit_code`` with the message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def has_terminal() -> bool:
    """True when this process has a controlling terminal we can prompt on."""
    try:
        fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _tty_newline() -> None:
    with contextlib.suppress(OSError):
        fd = os.open(TTY, os.O_WRONLY | os.O_NOCTTY)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)


def ask_hidden(prompt: str) -> str:
    """One hidden line typed at the controlling terminal (getpass reads /dev/tty)."""
    try:
        return getpass.getpass(prompt)
    except EOFError:
        _tty_newline()
        raise PromptCancelled("no input at the prompt (Ctrl-D); nothing was changed", 1) from None
    except KeyboardInterrupt:
        _tty_newline()
        raise PromptCancelled("interrupted at the prompt (Ctrl-C); nothing was changed",
                              130) from None


def check_strength(password: Secret) -> None:
    """Warn about a master password shorter than MIN_LENGTH characters."""
    length = len(password.reveal().decode("utf-8", "replace"))
    if length < MIN_LENGTH:
        warn(f"the master password has {length} characters; use {MIN_LENGTH} or more "
             "(several random words make a good one)")


def source_of(flag: str | None) -> str | None:
    """The password file that ``get_password`` would read, or None (a prompt)."""
    return flag or os.environ.get("VAULTPROXY_PASSWORD_FILE") or None


def wrong_password_hint(flag: str | None) -> str:
    """What to do after a wrong password, naming the source that supplied it."""
    if flag:
        return f"the password in {flag} (--password-file) is not this keystore's"
    env = os.environ.get("VAULTPROXY_PASSWORD_FILE")
    if env:
        return f"the password in {env} (VAULTPROXY_PASSWORD_FILE) is not this keystore's"
    return "run the command again and type the master password"


def get_password(flag: str | None, *, confirm: bool = False, prompt: str = "Master password: ",
                 required: bool = True, new: bool = False,
                 home: Path | None = None) -> Secret | None:
    """Return the master password, or None when ``required`` is False and no source exists.

    ``new`` marks a password being set (init, passwd): a short one is warned about.
    """
    source = source_of(flag)
    if source:
        password = read_file(source, home)
    elif has_terminal():
        first = ask_hidden(prompt)
        if not first:
            raise UsageError("empty master password; " + HOW)
        if confirm and ask_hidden("Repeat master password: ") != first:
            raise UsageError("the two passwords differ; run the command again")
        password = Secret(first)
    elif not required:
        return None
    else:
        raise UsageError("no master password source; " + HOW)
    if new or confirm:
        check_strength(password)
    return password


def open_store(args: argparse.Namespace, prompt: str = "Master password: ") -> Keystore:
    """Check the home and keystore exist (before prompting), then unlock the keystore."""
    home = Home.resolve(args.home)
    if not home.path.is_dir():
        raise KeystoreError(
            f"vaultproxy home {home.path} does not exist; run `vaultproxy init --home "
            f"{home.path}` first (or pass --home / set VAULTPROXY_HOME)"
        )
    check_private(home.path, 0o700)
    if not home.keystore.exists() and not home.keystore.is_symlink():
        raise KeystoreError(
            f"no keystore at {home.keystore}; run `vaultproxy init --home {home.path}` first"
        )
    password = get_password(args.password_file, prompt=prompt, home=home.path)
    assert password is not None  # required=True never returns None
    try:
        return Keystore.open(home.keystore, password)
    except WrongPassword as e:
        raise KeystoreError(f"{e}; {wrong_password_hint(args.password_file)}") from None
    finally:
        password.wipe()
