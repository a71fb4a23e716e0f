"""`vaultproxy init`: create the home (0700), an empty keystore, the CA and services.toml.

Never overwrites an existing keystore, CA or services.toml: it says so and moves on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import get_password
from vaultproxy.errors import KeystoreError
from vaultproxy.files.home import Home, check_private
from vaultproxy.keystore import Keystore
from vaultproxy.secret import Secret

FALLBACK_EXAMPLE = """\
# vaultproxy services.toml: which hosts get which credential. Never put secret values here;
# store them with `vaultproxy secret set NAME` (value from stdin or a hidden prompt).
#
# [[service]]
# name = "openai"
# hosts = ["api.openai.com"]
# mode = "placeholder"
# auth = "bearer"
# env = "OPENAI_API_KEY"
"""


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _keystore(home: Home, args: argparse.Namespace) -> None:
    if _exists(home.keystore):
        _say(f"keystore {home.keystore} already exists; left unchanged"
             + ("; add a TPM slot to it with `vaultproxy tpm seal`" if args.tpm else ""))
        return
    if args.tpm:
        from vaultproxy.keystore import tpm

        tpm.probe()  # no TPM: say so before any password is typed or file written
    password = get_password(args.password_file, confirm=True, prompt="New master password: ",
                            new=True, home=home.path)
    assert password is not None
    try:
        home.create()
        Keystore.create(home.keystore, password)
        _say(f"created keystore {home.keystore}")
        if getattr(args, "tpm", False):
            _seal_tpm(home, password)
    finally:
        password.wipe()


def _seal_tpm(home: Home, password: Secret) -> None:
    from vaultproxy.cli.tpm import seal_new
    from vaultproxy.keystore import tpm

    try:
        seal_new(home, password)
    except tpm.TpmError as e:
        raise KeystoreError(f"the keystore was created, but not sealed to the TPM: {e}; "
                            "then run `vaultproxy tpm seal`") from None
    _say(f"sealed its data key to the TPM at {tpm.tcti()} (`vaultproxy run` unlocks without "
         "a password on this machine; the master password stays the recovery)")


def _ca(home: Home) -> None:
    try:
        from vaultproxy.ca import ensure_ca
    except ImportError:
        _say("note: this build has no CA support yet; CA creation skipped")
        return
    if ensure_ca(home):
        _say(f"created CA {home.ca_cert} (trust it in your agents; see `vaultproxy ca show`)")
    else:
        _say(f"CA {home.ca_cert} already exists; left unchanged")


def _example_text() -> str:
    try:
        from vaultproxy.config.example import EXAMPLE
    except ImportError:
        return FALLBACK_EXAMPLE
    return str(EXAMPLE)


def _services(home: Home) -> None:
    if _exists(home.services):
        _say(f"{home.services} already exists; left unchanged")
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(home.services, flags, 0o600)
    except OSError as e:
        raise KeystoreError(f"cannot create {home.services}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(_example_text())
    _say(f"wrote example {home.services} (edit it, then run `vaultproxy check`)")


def run(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    if home.path.is_dir():
        check_private(home.path, 0o700)
    _keystore(home, args)  # asks for the password before anything is written
    home.create()
    _ca(home)
    _services(home)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="create the home, CA, empty keystore and services.toml",
                       description="Create the vaultproxy home (0700), an empty keystore, the "
                       "MITM CA and an example services.toml. Never overwrites existing files.")
    add_home(p)
    add_password_file(p)
    p.add_argument("--tpm", action="store_true",
                   help="also seal the keystore to this machine's TPM 2.0 ($VAULTPROXY_TCTI), "
                   "so `vaultproxy run` unlocks without a password; see `vaultproxy tpm`")
    p.set_defaults(func=run)
