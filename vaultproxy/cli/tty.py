"""The controlling terminal, for hidden prompts: echo off from the first byte, no traps.

- ``hide_typing(argv)`` runs first thing in ``main()`` (stdlib only, before the heavy
  imports of a command): when the command is about to prompt, echo goes off at once, so
  text typed before the prompt appears is never shown in clear. ``restore()`` (at exit, and
  after the prompts) puts the terminal back as it was.
- ``read_hidden()`` reads one line with echo off *without* flushing what was typed ahead
  (getpass flushes it: a password typed while Python starts would be silently lost).
- A process in a *background* process group (``vaultproxy run &``) never touches the
  terminal: reading it would stop the process (SIGTTIN), and so would changing its modes
  (SIGTTOU). ``terminal()`` answers None there, and callers say how to supply the password.
"""

from __future__ import annotations

import atexit
import os
import sys
import termios
from collections.abc import Sequence
from typing import Any

TTY = "/dev/tty"

# Commands that may prompt for the master password or a secret value.
PROMPTING = frozenset({"run", "unlock", "secret", "passwd", "init", "check", "agent", "tpm",
                       "sync"})

_saved: tuple[int, list[Any]] | None = None  # (tty fd, attributes before hide_typing)


class Background(Exception):
    """This process runs in the background of its terminal: no prompt is possible."""


def terminal() -> int | None:
    """An fd on the controlling terminal when this process may use it (foreground), else
    None. Raises Background when there is a terminal but we are in a background job."""
    try:
        fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        foreground = os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        foreground = False
    if not foreground:
        os.close(fd)
        raise Background
    return fd


def _will_prompt(argv: Sequence[str]) -> bool:
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] not in PROMPTING:
        return False
    if any(a in ("-h", "--help") or a.startswith("--password-file") for a in argv):
        return False
    return not os.environ.get("VAULTPROXY_PASSWORD_FILE")


def hide_typing(argv: Sequence[str]) -> None:
    """Turn echo off now if this command will prompt (restored at exit)."""
    global _saved
    if _saved is not None or not _will_prompt(argv):
        return
    try:
        fd = terminal()
    except Background:
        return
    if fd is None:
        return
    try:
        attrs = termios.tcgetattr(fd)
        quiet = list(attrs)
        quiet[3] = int(attrs[3]) & ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, quiet)  # TCSANOW: what was typed stays
    except termios.error:
        os.close(fd)
        return
    _saved = (fd, attrs)
    atexit.register(restore)


def restore() -> None:
    """Put the terminal back as ``hide_typing`` found it."""
    global _saved
    if _saved is None:
        return
    fd, attrs = _saved
    _saved = None
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass
    finally:
        os.close(fd)


def read_hidden(prompt: str) -> str:
    """One line typed at the terminal with echo off. EOFError on Ctrl-D at an empty line;
    KeyboardInterrupt on Ctrl-C; Background in a background job; OSError without a tty."""
    fd = terminal()
    if fd is None:
        raise OSError("no controlling terminal")
    try:
        attrs = termios.tcgetattr(fd)
        quiet = list(attrs)
        quiet[3] = int(attrs[3]) & ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        try:
            os.write(fd, prompt.encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = os.read(fd, 4096)
                if not chunk:
                    if not data:
                        raise EOFError
                    break
                data += chunk
        finally:
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            os.write(fd, b"\n")
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    return text[:-1] if text.endswith("\n") else text


def say(text: str) -> None:
    """A line on the terminal (a retry notice), or stderr when there is none."""
    try:
        fd = terminal()
    except Background:
        fd = None
    if fd is None:
        sys.stderr.write(text + "\n")
        return
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)
