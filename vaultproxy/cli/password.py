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
import os
from collections.abc import Callable
from pathlib import Path

from vaultproxy.cli import tty
from vaultproxy.errors import KeystoreError, UsageError, VaultproxyError
from vaultproxy.files.home import Home, check_private
from vaultproxy.files.password_file import read_file, warn
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.store import WrongPassword
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


BACKGROUND = (
    "running in the background of a terminal (`&`), where a prompt would stop the "
    "process; supply the master password with --password-file FILE or "
    "VAULTPROXY_PASSWORD_FILE=FILE, or start it in the foreground"
)
TRIES = 3  # wrong passwords typed at a terminal, as sudo


def has_terminal() -> bool:
    """True when this process has a controlling terminal we can prompt on (in the
    foreground: a background job that touched it would be stopped by SIGTTIN/SIGTTOU)."""
    try:
        fd = tty.terminal()
    except tty.Background:
        return False
    if fd is None:
        return False
    os.close(fd)
    return True


def in_background() -> bool:
    try:
        fd = tty.terminal()
    except tty.Background:
        return True
    if fd is not None:
        os.close(fd)
    return False


def ask_hidden(prompt: str) -> str:
    """One hidden line typed at the controlling terminal (echo off, typed-ahead kept)."""
    try:
        return tty.read_hidden(prompt)
    except tty.Background:
        raise UsageError(BACKGROUND) from None
    except OSError:
        raise UsageError("no terminal to prompt on; " + HOW) from None
    except EOFError:
        raise PromptCancelled("no input at the prompt (Ctrl-D); nothing was changed", 1) from None
    except KeyboardInterrupt:
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
    elif in_background():
        raise UsageError("no master password source: " + BACKGROUND)
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
    return with_password(args.password_file, lambda pw: Keystore.open(home.keystore, pw),
                         prompt=prompt, home=home.path)


def with_password[T](flag: str | None, attempt: Callable[[Secret], T], *,
                     prompt: str = "Master password: ", home: Path | None = None) -> T:
    """``attempt(password)``; a wrong password typed at a terminal is asked again, up to
    TRIES times (a password file is read once: asking again would read the same)."""
    tries = TRIES if source_of(flag) is None else 1
    for n in range(1, tries + 1):
        password = get_password(flag, prompt=prompt, home=home)
        assert password is not None  # required=True never returns None
        try:
            return attempt(password)
        except WrongPassword as e:
            if n >= tries:
                raise KeystoreError(f"{e}; {wrong_password_hint(flag)}") from None
            tty.say(f"wrong master password, try again ({tries - n} more)")
        finally:
            password.wipe()
    raise AssertionError("unreachable")
