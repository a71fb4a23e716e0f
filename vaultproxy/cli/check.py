"""`vaultproxy check`: validate services.toml and, when it can be opened, the keystore refs.

Exit 0 with a one-line summary; exit 1 with every problem on stdout, one per line, as
``path: message``. Messages name fields, rules and secret *names*, never values.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from vaultproxy.cli import add_home, add_password_file
from vaultproxy.cli.password import get_password
from vaultproxy.config.load import load_config
from vaultproxy.config.models import Config
from vaultproxy.errors import ConfigError, KeystoreError, PermissionProblem
from vaultproxy.home import Home

if TYPE_CHECKING:
    from vaultproxy.keystore import Keystore

BASIC_FIELDS = ("username", "password")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate services.toml (and that every referenced secret exists)",
        description="Validate services.toml; with a master password, also check that every "
        "secret it references exists in the keystore. Exit 0 ok, 1 with every problem "
        "listed as `path: message`.",
    )
    add_home(p)
    add_password_file(p)
    p.set_defaults(func=run)


def secret_problems(cfg: Config, keystore: Keystore) -> list[str]:
    """Every service whose keystore entry is missing or lacks what its auth type needs."""
    names = set(keystore.names())
    problems = []
    for i, svc in enumerate(cfg.services):
        where, secret = f"service[{i}].secret", svc.secret_name
        if secret not in names:
            problems.append(f'{where}: keystore has no entry named "{secret}"')
            continue
        entry = keystore.get(secret)
        fields = entry.fields if entry is not None else {}
        if svc.auth == "basic":
            missing = [f for f in BASIC_FIELDS if f not in fields]
            if missing:
                problems.append(f'{where}: keystore entry "{secret}" lacks field(s) '
                                f"{', '.join(missing)} (auth = \"basic\" needs username "
                                "and password)")
        elif entry is None or entry.value is None:
            problems.append(f'{where}: keystore entry "{secret}" has no value '
                            f"(only fields); auth = \"{svc.auth}\" needs a value")
    return problems


def _check_secrets(home: Home, cfg: Config, password_file: str | None) -> tuple[list[str], str]:
    password = get_password(password_file, required=False)
    if password is None:
        return [], "secrets not checked (no master password; use --password-file)"
    if not home.keystore.exists():
        return ["keystore.enc: not found; run `vaultproxy init`"], ""
    from vaultproxy.keystore import Keystore  # lazy: pulls in argon2 and AES-GCM

    try:
        ks = Keystore.open(home.keystore, password)
    except (KeystoreError, PermissionProblem) as e:
        return [f"keystore.enc: {e}"], ""
    finally:
        password.wipe()
    problems = secret_problems(cfg, ks)
    return problems, f"{len(cfg.services)} secret reference(s) found in keystore.enc"


def run(args: argparse.Namespace) -> int:
    home = Home.resolve(args.home)
    try:
        cfg = load_config(home.services)
    except ConfigError as e:
        return _fail(e.problems)
    problems, note = _check_secrets(home, cfg, args.password_file)
    if problems:
        return _fail(problems)
    hosts = sum(len(s.hosts) for s in cfg.services)
    sys.stdout.write(f"services.toml OK: {len(cfg.services)} service(s), {hosts} host(s); "
                     f"{note}\n")
    return 0


def _fail(problems: list[str]) -> int:
    sys.stdout.write("".join(f"{line}\n" for line in problems))
    sys.stderr.write(f"vaultproxy check: {len(problems)} problem(s)\n")
    return 1
