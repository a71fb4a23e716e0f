"""`vaultproxy tpm seal|unseal|status`: a second key slot holding the data key sealed by this
machine's TPM 2.0, so `vaultproxy run` unlocks without a password. The password slot always
stays (recovery, and the only way in on another machine). The TPM is reached through
``$VAULTPROXY_TCTI`` (e.g. ``swtpm:host=127.0.0.1,port=2321``; default ``device:/dev/tpmrm0``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import get_password, wrong_password_hint
from vaultproxy.errors import KeystoreError
from vaultproxy.files.home import Home
from vaultproxy.keystore import Keystore, tpm
from vaultproxy.keystore.store import WrongPassword
from vaultproxy.secret import Secret

logger = logging.getLogger(__name__)


def _change(args: argparse.Namespace, seal: bool) -> bool:
    """Open with the password, then add (``seal``) or remove the TPM slot with it: the slot
    table is in every AES-GCM AAD, so the password slot is re-wrapped and needs it."""
    home = Home.resolve(args.home)
    home.require()
    if not home.keystore.exists():
        raise KeystoreError(f"no keystore at {home.keystore}; run `vaultproxy init --home "
                            f"{home.path}` first")
    if seal:
        tpm.probe()  # say "no TPM" before asking for a password
    password = get_password(args.password_file, home=home.path)
    assert password is not None
    try:
        store = Keystore.open(home.keystore, password)
        if seal:
            store.add_tpm_slot(password)
            return True
        return store.remove_tpm_slot(password)
    except WrongPassword as e:
        raise KeystoreError(f"{e}; {wrong_password_hint(args.password_file)}") from None
    finally:
        password.wipe()


def _seal(args: argparse.Namespace) -> int:
    _change(args, seal=True)
    home = Home.resolve(args.home)
    sys.stdout.write(f"sealed the data key of {home.keystore} to the TPM at {tpm.tcti()}; "
                     "`vaultproxy run` now unlocks without a password on this machine (the "
                     "master password still opens it)\n")
    return 0


def _unseal(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    if _change(args, seal=False):
        sys.stdout.write(f"removed the TPM slot from {home.keystore} (and its .bak); the "
                         "master password is now the only way to unlock it\n")
    else:
        sys.stdout.write(f"{home.keystore} has no TPM slot; nothing changed\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    home.require()
    if not Keystore.has_tpm_slot(home.keystore):
        sys.stdout.write(f"{home.keystore}: no TPM slot (password only)\n")
        return 1
    store = Keystore.open_tpm(home.keystore)  # TpmError: printed by main(), exit 1
    del store
    sys.stdout.write(f"{home.keystore}: TPM slot present; the TPM at {tpm.tcti()} unlocks it\n")
    return 0


def try_unlock(home: Home) -> Keystore | None:
    """For `run`: the keystore opened by its TPM slot, or None (no slot, or the TPM would
    not unseal it: the reason is logged and the caller falls back to the password)."""
    from vaultproxy.keystore.tpm_unlock import try_unlock as unlock

    return unlock(home.keystore)


def seal_new(home: Home, password: Secret) -> None:
    """For `init --tpm`: add the TPM slot to the keystore just created."""
    store = Keystore.open(home.keystore, password)
    store.add_tpm_slot(password)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "tpm", help="seal the keystore to this machine's TPM (unlock without a password)",
        description="Add or remove a key slot holding the keystore's data key sealed by a TPM "
        "2.0. The TPM is found through $VAULTPROXY_TCTI (e.g. swtpm:host=127.0.0.1,port=2321; "
        f"default {tpm.DEFAULT_TCTI}). The master password slot always stays, as recovery.")
    group = parser.add_subparsers(dest="tpm_command", metavar="ACTION", required=True,
                                  parser_class=type(parser))
    p = group.add_parser("seal", help="add (or renew) the TPM slot; asks for the password")
    p.set_defaults(func=_seal)
    p = group.add_parser("unseal", help="remove the TPM slot; asks for the password")
    p.set_defaults(func=_unseal)
    p = group.add_parser("status", help="is there a TPM slot, and does this TPM open it? "
                         "(exit 0 yes, 1 no)")
    p.set_defaults(func=_status)
    for p in group.choices.values():
        add_home(p)
        add_password_file(p)
