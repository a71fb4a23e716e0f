"""`vaultproxy passwd`: change the master password. Only the data key is re-wrapped; every
entry stays as it is, and neither keystore.enc nor keystore.enc.bak opens with the old one."""

from __future__ import annotations

import argparse
import sys

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import (
    ask_hidden,
    check_strength,
    get_password,
    has_terminal,
    open_store,
)
from vaultproxy.errors import UsageError
from vaultproxy.secret import Secret

HOW_NEW = (
    "supply the new master password with --new-password-file FILE, or run in a terminal "
    "to be prompted"
)


def _new_password(flag: str | None) -> Secret:
    if flag:
        new = get_password(flag, new=True)
        assert new is not None
        return new
    if not has_terminal():
        raise UsageError("no source for the new master password; " + HOW_NEW)
    first = ask_hidden("New master password: ")
    if not first:
        raise UsageError("empty master password; " + HOW_NEW)
    if ask_hidden("Repeat new master password: ") != first:
        raise UsageError("the two passwords differ; nothing was changed")
    secret = Secret(first)
    check_strength(secret)
    return secret


def run(args: argparse.Namespace) -> int:
    store = open_store(args, prompt="Current master password: ")
    new = _new_password(args.new_password_file)
    try:
        store.change_password(new)
    finally:
        new.wipe()
    sys.stdout.write(f"master password changed for {store.path}\n")
    from vaultproxy.cli.control import apply_to_running
    from vaultproxy.files.home import Home

    said = apply_to_running(Home.resolve(args.home), "passwd")
    if said is not None:
        sys.stdout.write(f"{said} (`vaultproxy unlock` takes the new password from now on)\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("passwd", help="change the master password (entries are kept)",
                       description="Change the master password. The current one comes from "
                       "--password-file / $VAULTPROXY_PASSWORD_FILE / a prompt; the new one "
                       "from --new-password-file or a prompt (twice).")
    add_home(p)
    add_password_file(p)
    p.add_argument("--new-password-file", metavar="F",
                   help="read the new master password from file F")
    p.set_defaults(func=run)
